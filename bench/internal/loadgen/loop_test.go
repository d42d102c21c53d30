//go:build linux

package loadgen

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

func TestClosedLoopBounds(t *testing.T) {
	for _, tc := range []struct {
		name     string
		workers  int
		maxReq   int64
		deadline time.Duration
		want     int64 // -1: only check it ended
	}{
		{"request bound", 4, 100, time.Minute, 100},
		{"one worker", 1, 7, time.Minute, 7},
		{"past deadline", 4, 100, -time.Second, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var n atomic.Int64
			var perWorker [8]atomic.Int64
			err := ClosedLoop(context.Background(), tc.workers, time.Now().Add(tc.deadline), tc.maxReq, func(w int) {
				n.Add(1)
				perWorker[w].Add(1)
			})
			if err != nil {
				t.Fatal(err)
			}
			if n.Load() != tc.want {
				t.Errorf("%d calls, want %d", n.Load(), tc.want)
			}
			for w := tc.workers; w < len(perWorker); w++ {
				if perWorker[w].Load() != 0 {
					t.Errorf("worker %d of %d ran", w, tc.workers)
				}
			}
		})
	}
}

func TestClosedLoopCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	err := ClosedLoop(ctx, 2, time.Now().Add(time.Minute), 1<<40, func(int) { cancel() })
	if err != context.Canceled {
		t.Errorf("err = %v, want %v", err, context.Canceled)
	}
}

func TestOpenLoopSize(t *testing.T) {
	for _, tc := range []struct {
		name    string
		rate    float64
		d       time.Duration
		max     int64
		want    int64
		wantErr string
	}{
		{"rate times duration", 1000, 2 * time.Second, 1 << 20, 2000, ""},
		{"capped", 1000, 2 * time.Second, 500, 500, ""},
		{"fraction", 3, 1500 * time.Millisecond, 100, 4, ""},
		{"zero rate", 0, time.Second, 100, 0, "open loop: rate must be positive"},
		{"negative rate", -1, time.Second, 100, 0, "open loop: rate must be positive"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := OpenLoopSize(tc.rate, tc.d, tc.max)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("OpenLoopSize = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

func TestOpenLoopSchedule(t *testing.T) {
	const rate, total = 2000.0, 40
	start := time.Now()
	var n atomic.Int64
	var late atomic.Int64 // calls seen before their due time
	lag, err := OpenLoop(context.Background(), start, rate, total, 3, func(w int, due time.Time) {
		if time.Now().Before(due) {
			late.Add(1)
		}
		if d := due.Sub(start); d < 0 || d%time.Duration(float64(time.Second)/rate) != 0 {
			t.Errorf("due %s after start, not on the schedule", d)
		}
		n.Add(1)
	})
	if err != nil {
		t.Fatal(err)
	}
	if n.Load() != total || len(lag) != total || late.Load() != 0 {
		t.Errorf("%d calls, %d lags, %d early; want %d, %d, 0", n.Load(), len(lag), late.Load(), total, total)
	}
	if _, err := OpenLoop(context.Background(), start, 0, 1, 1, func(int, time.Time) {}); err == nil {
		t.Error("no error for rate 0")
	}
}

func TestOpenLoopCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var n atomic.Int64
	_, err := OpenLoop(ctx, time.Now().Add(time.Hour), 1, 10, 2, func(int, time.Time) { n.Add(1) })
	if err != context.Canceled || n.Load() != 0 {
		t.Errorf("err = %v, %d calls; want %v, 0", err, n.Load(), context.Canceled)
	}
}
