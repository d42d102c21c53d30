//go:build linux

package loadgen

import (
	"errors"
	"testing"
	"time"
)

func ms(v ...int) []time.Duration {
	s := make([]time.Duration, len(v))
	for i, x := range v {
		s[i] = time.Duration(x) * time.Millisecond
	}
	return s
}

func TestSummarize(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[len(hundred)-1-i] = time.Duration(i+1) * time.Millisecond // 100..1 ms, unsorted
	}
	thousand := make([]time.Duration, 1000)
	for i := range thousand {
		thousand[i] = time.Duration(1000-i) * time.Millisecond
	}
	for _, tc := range []struct {
		name string
		in   []time.Duration
		want Percentiles
	}{
		{"empty", nil, Percentiles{}},
		{"one sample", ms(3), Percentiles{N: 1, P50: 3, P90: 3, P99: 3, Max: 3}},
		{"two samples", ms(2, 1), Percentiles{N: 2, P50: 1, P90: 2, P99: 2, Max: 2}},
		{"ten samples", ms(10, 9, 8, 7, 6, 5, 4, 3, 2, 1), Percentiles{N: 10, P50: 5, P90: 9, P99: 10, Max: 10}},
		{"hundred, nearest rank", hundred, Percentiles{N: 100, P50: 50, P90: 90, P99: 99, Max: 100}},
		{"thousand", thousand, Percentiles{N: 1000, P50: 500, P90: 900, P99: 990, Max: 1000}},
		{"sub-millisecond", []time.Duration{250 * time.Microsecond}, Percentiles{N: 1, P50: 0.25, P90: 0.25, P99: 0.25, Max: 0.25}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Summarize(tc.in); got != tc.want {
				t.Errorf("Summarize = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestSummarizeSortsInPlace(t *testing.T) {
	s := ms(3, 1, 2)
	Summarize(s)
	for i, want := range ms(1, 2, 3) {
		if s[i] != want {
			t.Fatalf("s = %v, want sorted", s)
		}
	}
}

func TestMillis(t *testing.T) {
	if got := Millis(5 * time.Millisecond); got != 5 {
		t.Errorf("Millis(5ms) = %v", got)
	}
}

func TestRecorder(t *testing.T) {
	for _, tc := range []struct {
		name                string
		capacity            int64
		handshakes, service bool
		oks, errs           int
		wantKept            int
	}{
		{"bounded samples", 2, false, false, 5, 0, 2},
		{"room to spare", 10, false, true, 3, 1, 3},
		{"handshakes", 4, true, false, 4, 2, 4},
		{"zero capacity", 0, true, true, 3, 0, 0},
		{"negative capacity", -5, false, false, 1, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := NewRecorder(tc.capacity, tc.handshakes, tc.service)
			for i := range tc.oks {
				r.Record(time.Duration(i+1)*time.Millisecond, time.Millisecond, nil)
				r.RecordHandshake(2*time.Millisecond, i%2 == 0)
			}
			for i := range tc.errs {
				r.Record(0, 0, errors.New("refused "+string(rune('a'+i))))
			}
			if r.RecordsHandshakes() != tc.handshakes {
				t.Errorf("RecordsHandshakes = %v", r.RecordsHandshakes())
			}
			got := r.Tally()
			if got.OK != int64(tc.oks) || got.Errors != int64(tc.errs) || got.Latency.N != tc.wantKept {
				t.Errorf("tally %+v: want %d ok, %d errors, %d kept", got, tc.oks, tc.errs, tc.wantKept)
			}
			wantErr := ""
			if tc.errs > 0 {
				wantErr = "refused a"
			}
			if got.FirstError != wantErr {
				t.Errorf("FirstError = %q, want %q", got.FirstError, wantErr)
			}
			if (got.Service != nil) != tc.service || (got.Handshake != nil) != tc.handshakes {
				t.Errorf("service %v, handshake %v", got.Service, got.Handshake)
			}
			if got.Service != nil && got.Service.N != tc.wantKept {
				t.Errorf("service samples %d, want %d", got.Service.N, tc.wantKept)
			}
			wantResumed := int64(0)
			if tc.handshakes {
				wantResumed = int64((tc.oks + 1) / 2)
				if got.Handshake.N != min(tc.wantKept, tc.oks) {
					t.Errorf("handshake samples %d", got.Handshake.N)
				}
			}
			if got.Resumed != wantResumed {
				t.Errorf("Resumed = %d, want %d", got.Resumed, wantResumed)
			}
		})
	}
}

func TestNewPhase(t *testing.T) {
	got := NewPhase(4, 2*time.Second, Tally{OK: 10, Errors: 1, FirstError: "x", Latency: Percentiles{N: 10, P50: 1}})
	want := Phase{Workers: 4, ElapsedSec: 2, OK: 10, Errors: 1, FirstError: "x", Rate: 5, Latency: Percentiles{N: 10, P50: 1}}
	if got != want {
		t.Errorf("NewPhase = %+v, want %+v", got, want)
	}
}
