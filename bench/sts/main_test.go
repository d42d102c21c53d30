//go:build linux

package main

import (
	"io"
	"strings"
	"testing"
)

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string // substring of the error; empty: no error
	}{
		{"defaults", nil, ""},
		{"h2", []string{"-proto", "h2", "-d", "5s", "-c", "4"}, ""},
		{"duration too short", []string{"-d", "500ms"}, "-d 500ms: must be between 1s and 2m"},
		{"duration too long", []string{"-d", "3m"}, "-d 3m0s: must be between 1s and 2m"},
		{"no workers", []string{"-c", "0"}, "-c 0: must be between 1 and 512"},
		{"bad proto", []string{"-proto", "h3"}, `-proto "h3": must be h1 or h2`},
		{"bad audit", []string{"-audit", "stdout"}, `-audit "stdout": must be file or discard`},
		{"no rounds", []string{"-rounds", "0"}, "-rounds 0: must be between 1 and 9"},
		{"too few requests", []string{"-max-requests", "10"}, "-max-requests 10: must be between 1000 and 20000000"},
		{"arguments", []string{"extra"}, `unexpected arguments ["extra"]`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseFlags(tc.args, io.Discard)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if !strings.HasPrefix(o.quickstart, "/") {
					t.Errorf("quickstart %q is not absolute", o.quickstart)
				}
				return
			}
			if err == nil || err.Error() != tc.want {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestRoundsMedian(t *testing.T) {
	raws := []rawResult{{PerCPUSecond: 1000}, {PerCPUSecond: 800}, {PerCPUSecond: 1200}, {PerCPUSecond: 1000}}
	rounds := []*phaseResult{{}, {}, {}}
	rounds[0].PerServerCore = 500 // limit max(1000, 800) = 1000: 0.50
	rounds[1].PerServerCore = 300 // limit max(800, 1200) = 1200: 0.25
	rounds[2].PerServerCore = 480 // limit max(1200, 1000) = 1200: 0.40
	got := newRounds(rounds, raws)
	want := []roundResult{{500, 1000, 0.5}, {300, 1200, 0.25}, {480, 1200, 0.4}}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("round %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if m := medianRound(rounds, raws); m != rounds[2] {
		t.Errorf("median round = %p, want round 3 (%p)", m, rounds[2])
	}
	var rep report
	rep.finish(rounds, raws, &phaseResult{})
	if rep.Ratio != 0.4 || rep.RawLimit != 1200 || rep.ExchangesPerCore != 480 || rep.RatioMet {
		t.Errorf("headline = %v at %v/%v (met %v), want the median round's 0.4", rep.Ratio, rep.ExchangesPerCore, rep.RawLimit, rep.RatioMet)
	}
	// Two rounds: the lower middle one, never the better of the two.
	if m := median([]roundResult{{Ratio: 0.6}, {Ratio: 0.4}}); m != 1 {
		t.Errorf("median of two = round %d, want the lower (1)", m+1)
	}
}
