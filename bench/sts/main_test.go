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
