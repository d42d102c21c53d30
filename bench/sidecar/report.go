//go:build linux

package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"postern.dev/postern/bench/internal/loadgen"
)

// Targets from the issue, for the hop with cached tokens.
const (
	targetAddedP50   = 0.2  // ms added at p50 at the open-loop rate
	targetAddedP99   = 0.5  // ms added at p99
	targetCoresPer1k = 0.1  // cores per 1,000 requests per second, per sidecar
	targetPeakRatio  = 1.0  // Postern peak / nginx peak
	targetRSSAtRest  = 30.0 // MB per sidecar at rest
)

// Path and process group names.
const (
	pathDirect  = "direct"
	pathNginx   = "nginx"
	pathPostern = "postern"

	groupSidecarA = "sidecar A"
	groupSidecarB = "sidecar B"
	groupNginxA   = "nginx A"
	groupNginxB   = "nginx B"
	groupApp      = "app"
	groupSTS      = "STS"
)

// report is everything one run measured; it is what -json prints.
type report struct {
	loadgen.Machine
	SidecarProc int     `json:"sidecarGOMAXPROCS"`
	Nginx       string  `json:"nginx"` // version line, or why it was skipped
	NginxWork   string  `json:"nginxWorkers,omitempty"`
	Workers     int     `json:"workers"`
	Rate        float64 `json:"openLoopRate"`
	Duration    string  `json:"duration"`
	Audit       string  `json:"audit"`
	// CPUProfile is where the sidecars' profiles of the Postern open loop
	// went, if they were recorded (a few percent of overhead).
	CPUProfile string `json:"cpuProfile,omitempty"`
	// PIDs of the processes measured, by group.
	PIDs map[string][]int `json:"pids"`
	// ClockTicks is the USER_HZ assumed when reading /proc/<pid>/stat.
	ClockTicks int `json:"clockTicks"`

	Phases []*phaseResult `json:"phases"`
	// MemoryAtRest is each proxy's memory after start, before any request;
	// MemoryAfter right after the last phase.
	MemoryAtRest map[string]loadgen.Memory `json:"memoryAtRest"`
	MemoryAfter  map[string]loadgen.Memory `json:"memoryAfterLoad"`
	// Exchange is sidecar A's exchange counters at the end of the run.
	Exchange exchangeStats `json:"exchange"`

	Verdicts []verdict `json:"verdicts"`
}

// phaseResult is one phase's figures on one path.
type phaseResult struct {
	Path string `json:"path"`
	Kind string `json:"kind"` // open or peak
	// Phase is the counts, the rate (TargetRate: open loop only) and the
	// latency of successful requests: from the scheduled send time (open
	// loop) or from the send (peak).
	loadgen.Phase
	// Service is the time from the actual send to the response (open
	// loop): Latency less the wait for the send.
	Service *loadgen.Percentiles `json:"serviceMs,omitempty"`
	// TimerLag is how late the open loop's dispatcher woke up for each
	// scheduled request: the load generator's own delay.
	TimerLag *loadgen.Percentiles `json:"timerLagMs,omitempty"`
	// CPU is each process group's CPU-seconds during the phase.
	CPU []cpuShare `json:"cpu"`
	// ClientCPUSec is the CPU time the load generator used.
	ClientCPUSec float64 `json:"clientCPUSec"`
	// OtherCores is the cores the rest of the machine kept busy meanwhile
	// (all CPUs' busy time less every measured process's, per elapsed
	// second): other work that competed with the benchmark.
	OtherCores float64 `json:"otherCores"`
}

// cpuShare is one process group's CPU time in a phase.
type cpuShare struct {
	Name   string  `json:"name"`
	CPUSec float64 `json:"cpuSec"`
}

// cores returns group name's CPU-seconds per elapsed second.
func (p *phaseResult) cores(name string) float64 {
	for _, g := range p.CPU {
		if g.Name == name {
			return g.CPUSec / p.ElapsedSec
		}
	}
	return 0
}

// coresPer1k returns group name's cores per 1,000 successful requests per
// second.
func (p *phaseResult) coresPer1k(name string) float64 {
	if p.Rate == 0 {
		return 0
	}
	return p.cores(name) / (p.Rate / 1000)
}

// meter measures a phase's wall time and the CPU time of the measured
// process groups, of the load generator and of the whole machine.
type meter struct {
	*loadgen.Meter
	groups []loadgen.Group
}

func startMeter(groups []loadgen.Group) (*meter, error) {
	m, err := loadgen.StartMeter(groups)
	if err != nil {
		return nil, err
	}
	return &meter{Meter: m, groups: groups}, nil
}

// finish closes the measurement and summarises rec and, if any, the
// dispatcher's lateness lag.
func (m *meter) finish(path, kind string, workers int, rec *loadgen.Recorder, lag []time.Duration) (*phaseResult, error) {
	u, err := m.Stop()
	if err != nil {
		return nil, err
	}
	t := rec.Tally()
	r := &phaseResult{
		Path: path, Kind: kind,
		Phase:        loadgen.NewPhase(workers, u.Elapsed, t),
		Service:      t.Service,
		ClientCPUSec: u.Client.Seconds(),
		OtherCores:   u.OtherCores(),
	}
	for i, g := range m.groups {
		r.CPU = append(r.CPU, cpuShare{Name: g.Name, CPUSec: u.Groups[i].Seconds()})
	}
	if lag != nil {
		p := loadgen.Summarize(lag)
		r.TimerLag = &p
	}
	return r, nil
}

// verdict is one target and what this run measured against it.
type verdict struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Target string  `json:"target"`
	Met    bool    `json:"met"`
	// Note says why a verdict could not be given (e.g. no nginx).
	Note string `json:"note,omitempty"`
}

// phase returns the result of kind on path, or nil.
func (r *report) phase(path, kind string) *phaseResult {
	for _, p := range r.Phases {
		if p.Path == path && p.Kind == kind {
			return p
		}
	}
	return nil
}

// finish computes the verdicts against the targets.
func (r *report) finish() {
	direct, postern := r.phase(pathDirect, "open"), r.phase(pathPostern, "open")
	clean := direct.Errors == 0 && postern.Errors == 0 && postern.OK > 0
	addP50 := postern.Latency.P50 - direct.Latency.P50
	addP99 := postern.Latency.P99 - direct.Latency.P99
	r.Verdicts = append(r.Verdicts,
		verdict{Name: "added latency p50 (Postern - direct)", Value: addP50, Unit: "ms", Target: fmt.Sprintf("< %.1f ms", targetAddedP50), Met: clean && addP50 < targetAddedP50},
		verdict{Name: "added latency p99 (Postern - direct)", Value: addP99, Unit: "ms", Target: fmt.Sprintf("< %.1f ms", targetAddedP99), Met: clean && addP99 < targetAddedP99},
	)
	for _, g := range []string{groupSidecarA, groupSidecarB} {
		v := postern.coresPer1k(g)
		r.Verdicts = append(r.Verdicts, verdict{Name: g + " CPU per 1,000 req/s", Value: v, Unit: "cores",
			Target: fmt.Sprintf("< %.1f core", targetCoresPer1k), Met: clean && v < targetCoresPer1k})
	}
	pp, np := r.phase(pathPostern, "peak"), r.phase(pathNginx, "peak")
	if np == nil || np.Rate == 0 {
		r.Verdicts = append(r.Verdicts, verdict{Name: "peak throughput Postern / nginx", Unit: "x",
			Target: fmt.Sprintf(">= %.1f", targetPeakRatio), Note: "not measured: " + r.Nginx})
	} else {
		v := pp.Rate / np.Rate
		r.Verdicts = append(r.Verdicts, verdict{Name: "peak throughput Postern / nginx", Value: v, Unit: "x",
			Target: fmt.Sprintf(">= %.1f", targetPeakRatio), Met: pp.Errors == 0 && v >= targetPeakRatio})
	}
	for _, g := range []string{groupSidecarA, groupSidecarB} {
		v := float64(r.MemoryAtRest[g].RSS) / (1 << 20)
		r.Verdicts = append(r.Verdicts, verdict{Name: g + " RSS at rest", Value: v, Unit: "MB",
			Target: fmt.Sprintf("< %.0f MB", targetRSSAtRest), Met: v > 0 && v < targetRSSAtRest})
	}
}

// WriteText prints the human-readable report.
func (r *report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "Postern sidecar benchmark: one hop (client -> sidecar A -> mTLS -> sidecar B -> app) vs direct vs an nginx mTLS pair\n\n")
	fmt.Fprintf(w, "machine    %s\n", r.Machine)
	fmt.Fprintf(w, "processes  load generator GOMAXPROCS=%d; sidecars GOMAXPROCS=%d; nginx: %s", r.ClientGOMAXPROCS, r.SidecarProc, r.Nginx)
	if r.NginxWork != "" {
		fmt.Fprintf(w, ", worker_processes %s each", r.NginxWork)
	}
	fmt.Fprintln(w)
	var pids []string
	for _, g := range []string{groupApp, groupSidecarA, groupSidecarB, groupSTS, groupNginxA, groupNginxB} {
		if p, ok := r.PIDs[g]; ok {
			pids = append(pids, fmt.Sprintf("%s %v", g, p))
		}
	}
	fmt.Fprintf(w, "pids       %s\n", strings.Join(pids, "; "))
	fmt.Fprintf(w, "paths      direct: client -> app; nginx: client -> nginx A -> (mTLS, HTTP/1.1 keep-alive pool) -> nginx B -> app;\n")
	fmt.Fprintf(w, "           postern: client -> sidecar A outbound -> (mTLS, HTTP/1.1 keep-alive pool, token exchanged once and cached) -> sidecar B inbound (token verified once, cached; policy) -> app\n")
	fmt.Fprintf(w, "client     HTTP/1.1 keep-alive, %d connections per path; GET %s with the same Authorization: Bearer <hop-1 token> on every path; audit lines: %s\n",
		r.Workers, requestPath, r.Audit)
	if r.CPUProfile != "" {
		fmt.Fprintf(w, "profiles   the sidecars' CPU profiles of the Postern open loop are in %s (a few percent of overhead in that phase)\n", r.CPUProfile)
	}
	fmt.Fprintf(w, "TLS        ECDSA P-256 certificates on both proxies; TLS 1.3; sessions resumed on reconnect\n\n")

	for _, kind := range []string{"open", "peak"} {
		if kind == "open" {
			fmt.Fprintf(w, "Open loop at %.0f req/s for %s (latency from each scheduled send time):\n", r.Rate, r.Duration)
		} else {
			fmt.Fprintf(w, "Peak, closed loop, %d workers for %s (latency from each send):\n", r.Workers, r.Duration)
		}
		tw := loadgen.NewTable(w)
		fmt.Fprintln(tw, "path\tok\terrors\trate/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\tadded p50\tadded p99\tproxy A cores\tproxy B cores\tA per 1k/s\tB per 1k/s\tapp cores\tclient cores\tother cores\t")
		direct := r.phase(pathDirect, kind)
		for _, path := range []string{pathDirect, pathNginx, pathPostern} {
			p := r.phase(path, kind)
			if p == nil {
				continue
			}
			a, b := groupNginxA, groupNginxB
			if path == pathPostern {
				a, b = groupSidecarA, groupSidecarB
			}
			added := "-\t-"
			if path != pathDirect && direct != nil {
				added = fmt.Sprintf("%+.3f\t%+.3f", p.Latency.P50-direct.Latency.P50, p.Latency.P99-direct.Latency.P99)
			}
			proxies := "-\t-\t-\t-"
			if path != pathDirect {
				proxies = fmt.Sprintf("%.3f\t%.3f\t%.3f\t%.3f", p.cores(a), p.cores(b), p.coresPer1k(a), p.coresPer1k(b))
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.3f\t%.3f\t%.3f\t%.2f\t%s\t%s\t%.3f\t%.2f\t%.2f\t\n",
				path, p.OK, p.Errors, p.Rate, p.Latency.P50, p.Latency.P90, p.Latency.P99, p.Latency.Max,
				added, proxies, p.cores(groupApp), p.ClientCPUSec/p.ElapsedSec, p.OtherCores)
		}
		tw.Flush()
		for _, path := range []string{pathDirect, pathNginx, pathPostern} {
			p := r.phase(path, kind)
			if p == nil {
				continue
			}
			if p.Service != nil && p.TimerLag != nil {
				fmt.Fprintf(w, "  %s: scheduled %.0f/s, achieved %.0f/s; service time (send to response) p50 %.3f ms, p99 %.3f ms; load generator timer lag p50 %.3f ms, p99 %.3f ms\n",
					path, p.TargetRate, p.Rate, p.Service.P50, p.Service.P99, p.TimerLag.P50, p.TimerLag.P99)
			}
			if p.Errors > 0 {
				fmt.Fprintf(w, "  %s: %d errors, first: %s\n", path, p.Errors, p.FirstError)
			}
		}
		fmt.Fprintln(w)
	}
	if pp, np := r.phase(pathPostern, "peak"), r.phase(pathNginx, "peak"); pp != nil && np != nil && np.Rate > 0 {
		fmt.Fprintf(w, "peak throughput: Postern %.0f/s, nginx %.0f/s, direct %.0f/s; Postern / nginx = %.2f\n\n",
			pp.Rate, np.Rate, r.phase(pathDirect, "peak").Rate, pp.Rate/np.Rate)
	}

	fmt.Fprintln(w, "Memory (VmRSS; peak is VmHWM; nginx: master + workers):")
	tw := loadgen.NewTable(w)
	fmt.Fprintln(tw, "process\tat rest MB\tafter load MB\tpeak MB\t")
	for _, g := range []string{groupSidecarA, groupSidecarB, groupNginxA, groupNginxB} {
		rest, ok := r.MemoryAtRest[g]
		if !ok {
			continue
		}
		after := r.MemoryAfter[g]
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t\n", g, mb(rest.RSS), mb(after.RSS), mb(after.HWM))
	}
	tw.Flush()
	fmt.Fprintf(w, "\nsidecar A's token exchanges: %d issued by the STS, %d cache misses, %d cache hits (the hop's token is cached)\n\n",
		r.Exchange.Issued, r.Exchange.Misses, r.Exchange.Hits)

	fmt.Fprintln(w, "Targets (Postern hop with cached tokens):")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, v := range r.Verdicts {
		res := "NOT met"
		switch {
		case v.Note != "":
			res = v.Note
		case v.Met:
			res = "met"
		}
		fmt.Fprintf(tw, "%s\t%.3f %s\t(target %s)\t%s\n", v.Name, v.Value, v.Unit, v.Target, res)
	}
	tw.Flush()
	fmt.Fprintf(w, "\nCPU times are from /proc/<pid>/stat (utime+stime) assuming USER_HZ=%d (getconf CLK_TCK): 10 ms resolution per process.\n", r.ClockTicks)
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }
