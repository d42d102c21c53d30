//go:build linux

package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"postern.dev/postern/bench/internal/loadgen"
)

// Targets from the issue.
const (
	targetRatio   = 0.5                  // exchanges per server core / raw ES256 per core
	targetHalfP99 = 5 * time.Millisecond // p99 at half the peak rate
)

// report is everything one run measured; it is what -json prints.
type report struct {
	loadgen.Machine
	ServerGOMAXPROC int    `json:"serverGOMAXPROCS"`
	ServerPID       int    `json:"serverPID"`
	Transport       string `json:"transport"`
	Workers         int    `json:"workers"`
	Duration        string `json:"duration"`
	Audit           string `json:"audit"`
	// ClockTicks is the USER_HZ assumed when reading /proc/<pid>/stat.
	ClockTicks int `json:"clockTicks"`

	// Raw is the raw ES256 measurements: one before the first round of
	// phase A and one after each round.
	Raw []rawResult `json:"rawES256"`
	// Rounds is each round of phase A against the raw rate measured next
	// to it.
	Rounds []roundResult `json:"rounds"`

	Phases []*phaseResult `json:"phases"`

	// The headline figures are those of the median round (by ratio).
	// ExchangesPerCore is its exchanges per server CPU-second.
	ExchangesPerCore float64 `json:"exchangesPerServerCore"`
	// RawLimit is its raw ES256 verify+sign rate per core.
	RawLimit float64 `json:"rawES256PerCore"`
	// Ratio is ExchangesPerCore / RawLimit; the target is at least 0.5.
	Ratio      float64 `json:"ratio"`
	RatioMet   bool    `json:"ratioTargetMet"`
	HalfP99Ms  float64 `json:"halfPeakP99Ms"`
	HalfP99Met bool    `json:"halfPeakP99TargetMet"`
}

// roundResult is one round of phase A with the raw rate around it.
type roundResult struct {
	// ExchangesPerCore is the round's exchanges per server CPU-second.
	ExchangesPerCore float64 `json:"exchangesPerServerCore"`
	// RawLimit is the higher per-CPU-second rate of the raw measurements
	// just before and just after the round: verify+sign per second on one
	// core. Other load can only slow a measurement down, so the higher one
	// is closer to the machine's rate at the time.
	RawLimit float64 `json:"rawES256PerCore"`
	// Ratio is ExchangesPerCore / RawLimit.
	Ratio float64 `json:"ratio"`
}

// newRounds pairs each round of phase A with the raw measurements around
// it: raws[i] before rounds[i], raws[i+1] after it.
func newRounds(rounds []*phaseResult, raws []rawResult) []roundResult {
	out := make([]roundResult, len(rounds))
	for i, p := range rounds {
		r := roundResult{ExchangesPerCore: p.PerServerCore}
		if i+1 < len(raws) {
			r.RawLimit = max(raws[i].PerCPUSecond, raws[i+1].PerCPUSecond)
		}
		if r.RawLimit > 0 {
			r.Ratio = r.ExchangesPerCore / r.RawLimit
		}
		out[i] = r
	}
	return out
}

// median returns the index of the median round by ratio (the lower
// middle one for an even count).
func median(rounds []roundResult) int {
	idx := make([]int, len(rounds))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(a, b int) bool { return rounds[idx[a]].Ratio < rounds[idx[b]].Ratio })
	return idx[(len(idx)-1)/2]
}

// medianRound returns the round of phase A with the median ratio.
func medianRound(rounds []*phaseResult, raws []rawResult) *phaseResult {
	return rounds[median(newRounds(rounds, raws))]
}

// phaseResult is one phase's figures.
type phaseResult struct {
	Name string `json:"name"`
	// Phase is the counts, the rate of successful exchanges (TargetRate:
	// phase B only) and their latency.
	loadgen.Phase
	// Handshake is the TLS handshake time alone (phase C only).
	Handshake *loadgen.Percentiles `json:"handshakeMs,omitempty"`
	// Service is the time from the actual send to the response (phase B
	// only): Latency less the wait for the send.
	Service *loadgen.Percentiles `json:"serviceMs,omitempty"`
	// TimerLag is how late the open loop's dispatcher woke up for each
	// scheduled request (phase B only): the load generator's own delay.
	TimerLag *loadgen.Percentiles `json:"timerLagMs,omitempty"`
	// NewConnections is how many TLS handshakes the clients completed.
	NewConnections int64 `json:"newConnections"`
	// Resumed is how many of them resumed a session (phase C only).
	Resumed int64 `json:"resumed"`
	// ServerCPUSec is the CPU time the server process used.
	ServerCPUSec float64 `json:"serverCPUSec"`
	// ServerCores is ServerCPUSec per elapsed second.
	ServerCores float64 `json:"serverCores"`
	// PerServerCore is successful exchanges per server CPU-second.
	PerServerCore float64 `json:"perServerCore"`
	// ClientCPUSec is the CPU time the load generator used.
	ClientCPUSec float64 `json:"clientCPUSec"`
	// OtherCores is the cores the rest of the machine kept busy meanwhile
	// (all CPUs' busy time less the server's and the load generator's, per
	// elapsed second): other work that competed with the benchmark.
	OtherCores float64 `json:"otherCores"`
}

// meter measures a phase's wall time, the server's and the load
// generator's CPU time, and the handshakes done meanwhile.
type meter struct {
	*loadgen.Meter
	handshakes *atomic.Int64
	hs0        int64
}

func startMeter(pid int, handshakes *atomic.Int64) (*meter, error) {
	m, err := loadgen.StartMeter([]loadgen.Group{{Name: "server", PIDs: []int{pid}}})
	if err != nil {
		return nil, err
	}
	return &meter{Meter: m, handshakes: handshakes, hs0: handshakes.Load()}, nil
}

// finish closes the measurement and summarises rec and, if any, the
// dispatcher's lateness lag.
func (m *meter) finish(name string, workers int, rec *loadgen.Recorder, lag []time.Duration) (*phaseResult, error) {
	u, err := m.Stop()
	if err != nil {
		return nil, err
	}
	t := rec.Tally()
	r := &phaseResult{
		Name:           name,
		Phase:          loadgen.NewPhase(workers, u.Elapsed, t),
		Handshake:      t.Handshake,
		Service:        t.Service,
		NewConnections: m.handshakes.Load() - m.hs0,
		Resumed:        t.Resumed,
		ServerCPUSec:   u.Groups[0].Seconds(),
		ClientCPUSec:   u.Client.Seconds(),
		OtherCores:     u.OtherCores(),
	}
	r.ServerCores = r.ServerCPUSec / r.ElapsedSec
	if r.ServerCPUSec > 0 {
		r.PerServerCore = float64(r.OK) / r.ServerCPUSec
	}
	if lag != nil {
		p := loadgen.Summarize(lag)
		r.TimerLag = &p
	}
	return r, nil
}

// finish computes the headline figures from the rounds of phase A (their
// median) and phase B (half).
func (r *report) finish(rounds []*phaseResult, raws []rawResult, half *phaseResult) {
	r.Rounds = newRounds(rounds, raws)
	m := r.Rounds[median(r.Rounds)]
	r.ExchangesPerCore, r.RawLimit, r.Ratio = m.ExchangesPerCore, m.RawLimit, m.Ratio
	r.RatioMet = r.Ratio >= targetRatio
	r.HalfP99Ms = half.Latency.P99
	r.HalfP99Met = half.Latency.N > 0 && half.Errors == 0 && half.Latency.P99 < loadgen.Millis(targetHalfP99)
}

// WriteText prints the human-readable report.
func (r *report) WriteText(w io.Writer) {
	fmt.Fprintf(w, "Postern STS benchmark: hop-2 token exchange (order-processing -> inventory), mTLS over loopback\n\n")
	fmt.Fprintf(w, "machine    %s\n", r.Machine)
	fmt.Fprintf(w, "processes  load generator GOMAXPROCS=%d; server (child pid %d) GOMAXPROCS=%d; both on this machine\n", r.ClientGOMAXPROCS, r.ServerPID, r.ServerGOMAXPROC)
	fmt.Fprintf(w, "transport  %s; audit lines: %s\n", r.Transport, r.Audit)
	var raws []string
	for _, raw := range r.Raw {
		raws = append(raws, fmt.Sprintf("%.0f (wall %.0f)", raw.PerCPUSecond, raw.PerSecond))
	}
	fmt.Fprintf(w, "raw ES256  verify+sign/s per CPU-second, before phase A and after each round: %s\n\n", strings.Join(raws, ", "))

	tw := loadgen.NewTable(w)
	fmt.Fprintln(tw, "phase\tok\terrors\trate/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\tsrv cores\tper srv core\tvs ES256\tnew conns\t")
	for i, p := range r.Phases {
		// A round is compared with the raw rate measured around it; the
		// other phases with the median round's.
		limit := r.RawLimit
		if i < len(r.Rounds) {
			limit = r.Rounds[i].RawLimit
		}
		vs := 0.0
		if limit > 0 {
			vs = p.PerServerCore / limit
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%.0f\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t%.0f\t%.2f\t%d\t\n",
			p.Name, p.OK, p.Errors, p.Rate, p.Latency.P50, p.Latency.P90, p.Latency.P99, p.Latency.Max,
			p.ServerCores, p.PerServerCore, vs, p.NewConnections)
	}
	tw.Flush()
	fmt.Fprintln(w)
	for _, p := range r.Phases {
		if p.TargetRate > 0 {
			fmt.Fprintf(w, "%s: scheduled %.0f/s, achieved %.0f/s; latency measured from each scheduled send time\n", p.Name, p.TargetRate, p.Rate)
		}
		if p.Service != nil && p.TimerLag != nil {
			fmt.Fprintf(w, "%s: of which service time (send to response) p50 %.2f ms, p99 %.2f ms; load generator timer lag p50 %.2f ms, p99 %.2f ms\n",
				p.Name, p.Service.P50, p.Service.P99, p.TimerLag.P50, p.TimerLag.P99)
		}
		if p.Handshake != nil {
			fmt.Fprintf(w, "%s: TLS handshake alone p50 %.2f ms, p99 %.2f ms; %d of %d handshakes resumed\n",
				p.Name, p.Handshake.P50, p.Handshake.P99, p.Resumed, p.NewConnections)
		}
		if p.Errors > 0 {
			fmt.Fprintf(w, "%s: %d errors, first: %s\n", p.Name, p.Errors, p.FirstError)
		}
	}
	fmt.Fprintf(w, "load generator CPU: %s\n", r.cpuBy(func(p *phaseResult) float64 { return p.ClientCPUSec }))
	fmt.Fprintf(w, "other processes' CPU (competing with the benchmark): %s\n\n", r.cpuBy(func(p *phaseResult) float64 { return p.OtherCores * p.ElapsedSec }))

	var ratios []string
	for _, rd := range r.Rounds {
		ratios = append(ratios, fmt.Sprintf("%.2f", rd.Ratio))
	}
	fmt.Fprintf(w, "phase A rounds' ratios                %s (the median round is the figure)\n", strings.Join(ratios, ", "))
	fmt.Fprintf(w, "exchanges per server core (phase A)   %.0f/s\n", r.ExchangesPerCore)
	fmt.Fprintf(w, "raw ES256 verify+sign per core        %.0f/s\n", r.RawLimit)
	fmt.Fprintf(w, "ratio                                 %.2f  (target >= %.2f: %s)\n", r.Ratio, targetRatio, verdict(r.RatioMet))
	fmt.Fprintf(w, "p99 at half the peak rate (phase B)   %.2f ms  (target < %s: %s)\n", r.HalfP99Ms, targetHalfP99, verdict(r.HalfP99Met))
	fmt.Fprintf(w, "\nCPU times are from /proc/<pid>/stat (utime+stime) assuming USER_HZ=%d (getconf CLK_TCK), so they have 10 ms resolution.\n", r.ClockTicks)
}

// cpuBy lists, per phase, the cores cpuSec(phase) CPU-seconds amount to.
func (r *report) cpuBy(cpuSec func(*phaseResult) float64) string {
	var parts []string
	for _, p := range r.Phases {
		parts = append(parts, fmt.Sprintf("%s %.2f cores", p.Name, cpuSec(p)/p.ElapsedSec))
	}
	return strings.Join(parts, ", ")
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT met"
}
