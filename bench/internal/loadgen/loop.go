//go:build linux

package loadgen

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// ClosedLoop runs workers goroutines, each calling do(worker) again as soon
// as the previous call returned, until ctx is done, deadline has passed or
// maxReq calls in all have started. It returns when every worker is done,
// with ctx's error if it was cancelled.
func ClosedLoop(ctx context.Context, workers int, deadline time.Time, maxReq int64, do func(worker int)) error {
	var sent atomic.Int64
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(deadline) && sent.Add(1) <= maxReq {
				do(i)
			}
		})
	}
	wg.Wait()
	return ctx.Err()
}

// OpenLoopSize returns how many requests an open loop at rate per second
// sends in d: rate*d, at most maxReq. The rate must be positive.
func OpenLoopSize(rate float64, d time.Duration, maxReq int64) (int64, error) {
	if !(rate > 0) {
		return 0, errors.New("open loop: rate must be positive")
	}
	return max(0, min(int64(rate*d.Seconds()), maxReq)), nil
}

// OpenLoop sends total requests at rate per second on a fixed schedule
// that does not wait for answers: request i is due at start + i/rate, and
// do(worker, due) should measure its latency from that due time, so that a
// stalled server is charged for the requests it delayed (no coordinated
// omission). The workers take due times from a queue. OpenLoop returns how
// late its dispatcher woke up for each request (the load generator's own
// delay), when every worker is done, with ctx's error if it was cancelled.
func OpenLoop(ctx context.Context, start time.Time, rate float64, total int64, workers int, do func(worker int, due time.Time)) ([]time.Duration, error) {
	if !(rate > 0) {
		return nil, errors.New("open loop: rate must be positive")
	}
	total = max(total, 0)
	interval := time.Duration(float64(time.Second) / rate)
	due := make(chan time.Time, 1024)
	lag := make([]time.Duration, 0, total)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Go(func() {
			for at := range due {
				if ctx.Err() == nil {
					do(i, at)
				}
			}
		})
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
schedule:
	for i := range total {
		at := start.Add(time.Duration(i) * interval)
		if wait := time.Until(at); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				break schedule
			}
		}
		lag = append(lag, time.Since(at))
		due <- at
	}
	close(due)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return lag, nil
}
