//go:build linux

package main

import (
	"io"
	"os"
	"strings"
	"testing"
	"time"
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

func TestSummarize(t *testing.T) {
	s := make([]time.Duration, 100)
	for i := range s {
		s[len(s)-1-i] = time.Duration(i+1) * time.Millisecond // 100..1 ms, unsorted
	}
	got := summarize(s)
	want := percentiles{N: 100, P50: 50, P90: 90, P99: 99, Max: 100}
	if got != want {
		t.Errorf("summarize = %+v, want %+v", got, want)
	}
	if got := summarize(nil); got != (percentiles{}) {
		t.Errorf("summarize(nil) = %+v", got)
	}
	if got := summarize([]time.Duration{3 * time.Millisecond}); got.P50 != 3 || got.P99 != 3 || got.Max != 3 {
		t.Errorf("one sample: %+v", got)
	}
}

func TestProcCPU(t *testing.T) {
	start := time.Now()
	for time.Since(start) < 50*time.Millisecond { // burn some CPU
	}
	d, err := procCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if d <= 0 || d > time.Hour {
		t.Errorf("procCPU = %s", d)
	}
	if _, err := procCPU(-1); err == nil {
		t.Error("no error for a missing process")
	}
	if busy, err := machineBusy(); err != nil || busy < d {
		t.Errorf("machineBusy = %s, %v; want at least this process's %s", busy, err, d)
	}
}

func TestCopyDirAndRecorderBounds(t *testing.T) {
	r := newRecorder(2, false, false)
	for range 5 {
		r.record(time.Millisecond, 0, nil)
	}
	if lat := kept(r.lat, &r.nLat); len(lat) != 2 || r.ok.Load() != 5 {
		t.Errorf("kept %d samples of %d, want 2 of 5", len(lat), r.ok.Load())
	}
	src, dst := t.TempDir(), t.TempDir()+"/copy"
	if err := os.WriteFile(src+"/a.yaml", []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := copyDir(src, dst); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(dst + "/a.yaml"); err != nil || string(b) != "x" {
		t.Errorf("copy: %q, %v", b, err)
	}
}
