//go:build linux

package loadgen

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// percentileBase is the unit of Percentiles: milliseconds.
const percentileBase = float64(time.Millisecond)

// Percentiles summarises a latency distribution in milliseconds.
type Percentiles struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

// Summarize sorts s in place and returns its nearest-rank percentiles; an
// empty s gives the zero Percentiles.
func Summarize(s []time.Duration) Percentiles {
	if len(s) == 0 {
		return Percentiles{}
	}
	slices.Sort(s)
	at := func(p float64) float64 {
		i := int(p*float64(len(s))+0.999999) - 1
		return float64(s[max(0, min(i, len(s)-1))]) / percentileBase
	}
	return Percentiles{N: len(s), P50: at(0.50), P90: at(0.90), P99: at(0.99), Max: float64(s[len(s)-1]) / percentileBase}
}

// Millis returns d in the unit of Percentiles.
func Millis(d time.Duration) float64 { return float64(d) / percentileBase }

// Recorder is one phase's tally, shared by its workers. Its sample slices
// are allocated once (untouched pages cost nothing) and never grow: a
// sample past their end is counted but not kept.
type Recorder struct {
	lat, hs, svc      []time.Duration
	nLat, nHS, nSvc   atomic.Int64
	ok, errs, resumed atomic.Int64
	errOnce           sync.Once
	firstErr          string
}

// NewRecorder returns a recorder for at most capacity samples of latency
// and, if asked, of handshake time and of service time.
func NewRecorder(capacity int64, handshakes, service bool) *Recorder {
	capacity = max(capacity, 0)
	r := &Recorder{lat: make([]time.Duration, capacity)}
	if handshakes {
		r.hs = make([]time.Duration, capacity)
	}
	if service {
		r.svc = make([]time.Duration, capacity)
	}
	return r
}

// put stores d in the next free slot of s, if any.
func put(s []time.Duration, n *atomic.Int64, d time.Duration) {
	if i := n.Add(1) - 1; i < int64(len(s)) {
		s[i] = d
	}
}

// kept returns the filled part of s.
func kept(s []time.Duration, n *atomic.Int64) []time.Duration {
	return s[:min(n.Load(), int64(len(s)))]
}

// Record counts one request; a success adds its latency and, if recorded,
// its service time. The first error's text is kept for the report: it must
// not hold a secret.
func (r *Recorder) Record(lat, svc time.Duration, err error) {
	if err != nil {
		r.errs.Add(1)
		r.errOnce.Do(func() { r.firstErr = err.Error() })
		return
	}
	r.ok.Add(1)
	put(r.lat, &r.nLat, lat)
	if r.svc != nil {
		put(r.svc, &r.nSvc, svc)
	}
}

// RecordsHandshakes reports whether r keeps handshake times.
func (r *Recorder) RecordsHandshakes() bool { return r.hs != nil }

// RecordHandshake adds one TLS handshake's time, if r keeps them, and
// counts it as resumed if it was.
func (r *Recorder) RecordHandshake(d time.Duration, resumed bool) {
	if r.hs == nil {
		return
	}
	put(r.hs, &r.nHS, d)
	if resumed {
		r.resumed.Add(1)
	}
}

// Tally is what a Recorder counted, summarised. Call Recorder.Tally once
// the phase's workers are done.
type Tally struct {
	OK, Errors int64
	// FirstError is the first error's text, if any.
	FirstError string
	// Resumed is how many handshakes resumed a session.
	Resumed int64
	// Latency of successful requests.
	Latency Percentiles
	// Handshake and Service are nil unless the recorder kept them.
	Handshake, Service *Percentiles
}

// Tally sorts the samples kept and summarises them. It must not be called
// while workers still record.
func (r *Recorder) Tally() Tally {
	t := Tally{
		OK: r.ok.Load(), Errors: r.errs.Load(), FirstError: r.firstErr, Resumed: r.resumed.Load(),
		Latency: Summarize(kept(r.lat, &r.nLat)),
	}
	if r.hs != nil {
		p := Summarize(kept(r.hs, &r.nHS))
		t.Handshake = &p
	}
	if r.svc != nil {
		p := Summarize(kept(r.svc, &r.nSvc))
		t.Service = &p
	}
	return t
}

// Phase is the figures every load phase reports. Load generators embed it
// in their phase results, where its fields keep their JSON names and
// order.
type Phase struct {
	Workers    int     `json:"workers"`
	ElapsedSec float64 `json:"elapsedSec"`
	OK         int64   `json:"ok"`
	Errors     int64   `json:"errors"`
	FirstError string  `json:"firstError,omitempty"`
	// Rate is successful requests per wall-clock second.
	Rate float64 `json:"rate"`
	// TargetRate is an open loop's scheduled rate.
	TargetRate float64 `json:"targetRate,omitempty"`
	// Latency of successful requests, in milliseconds.
	Latency Percentiles `json:"latencyMs"`
}

// NewPhase returns the figures of a phase of workers that lasted elapsed
// and counted t.
func NewPhase(workers int, elapsed time.Duration, t Tally) Phase {
	p := Phase{
		Workers: workers, ElapsedSec: elapsed.Seconds(),
		OK: t.OK, Errors: t.Errors, FirstError: t.FirstError, Latency: t.Latency,
	}
	p.Rate = float64(p.OK) / p.ElapsedSec
	return p
}
