//go:build linux

package main

import (
	"fmt"
	"io"
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

	RawBefore rawResult `json:"rawES256Before"`
	RawAfter  rawResult `json:"rawES256After"`
	// RawLimit is the higher per-CPU-second rate of the two raw
	// measurements: verify+sign per second on one core.
	RawLimit float64 `json:"rawES256PerCore"`

	Phases []*phaseResult `json:"phases"`

	// ExchangesPerCore is phase A's exchanges per server CPU-second.
	ExchangesPerCore float64 `json:"exchangesPerServerCore"`
	// Ratio is ExchangesPerCore / RawLimit; the target is at least 0.5.
	Ratio      float64 `json:"ratio"`
	RatioMet   bool    `json:"ratioTargetMet"`
	HalfP99Ms  float64 `json:"halfPeakP99Ms"`
	HalfP99Met bool    `json:"halfPeakP99TargetMet"`
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

// finish computes the headline figures from phases A (peak) and B (half).
func (r *report) finish(peak, half *phaseResult) {
	r.ExchangesPerCore = peak.PerServerCore
	if r.RawLimit > 0 {
		r.Ratio = r.ExchangesPerCore / r.RawLimit
	}
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
	fmt.Fprintf(w, "raw ES256  %.0f verify+sign/s per core (before %.0f, after %.0f per CPU-second; wall %.0f, %.0f/s)\n\n",
		r.RawLimit, r.RawBefore.PerCPUSecond, r.RawAfter.PerCPUSecond, r.RawBefore.PerSecond, r.RawAfter.PerSecond)

	tw := loadgen.NewTable(w)
	fmt.Fprintln(tw, "phase\tok\terrors\trate/s\tp50 ms\tp90 ms\tp99 ms\tmax ms\tsrv cores\tper srv core\tvs ES256\tnew conns\t")
	for _, p := range r.Phases {
		vs := 0.0
		if r.RawLimit > 0 {
			vs = p.PerServerCore / r.RawLimit
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
