//go:build linux

package loadgen

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"testing"
)

func TestMachine(t *testing.T) {
	m := Machine{CPUModel: "Some CPU", NumCPU: 2, GoVersion: "go1.26.0", GOOS: "linux", GOARCH: "amd64", ClientGOMAXPROCS: 2}
	if got, want := m.String(), "Some CPU, 2 CPUs, go1.26.0 linux/amd64"; got != want {
		t.Errorf("String = %q, want %q", got, want)
	}
	if here := ThisMachine(); here.NumCPU < 1 || here.ClientGOMAXPROCS < 1 || here.GOOS != "linux" {
		t.Errorf("ThisMachine = %+v", here)
	}
}

func TestWriteReport(t *testing.T) {
	rep := struct {
		Machine
		Rate float64 `json:"rate"`
	}{Machine: Machine{CPUModel: "c", NumCPU: 1}, Rate: 2}
	text := func(w io.Writer) { fmt.Fprintln(w, "text") }
	for _, tc := range []struct {
		name   string
		asJSON bool
		want   string
	}{
		{"text", false, "text\n"},
		{"json", true, "{\n  \"cpuModel\": \"c\",\n  \"numCPU\": 1,\n  \"goVersion\": \"\",\n  \"goos\": \"\",\n  \"goarch\": \"\",\n  \"clientGOMAXPROCS\": 0,\n  \"rate\": 2\n}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			if err := WriteReport(&b, rep, tc.asJSON, text); err != nil {
				t.Fatal(err)
			}
			if b.String() != tc.want {
				t.Errorf("got %q, want %q", b.String(), tc.want)
			}
		})
	}
}

func TestNewTable(t *testing.T) {
	var b bytes.Buffer
	tw := NewTable(&b)
	fmt.Fprintln(tw, "a\tbbb\t")
	fmt.Fprintln(tw, "ccc\td\t")
	tw.Flush()
	if got, want := b.String(), "    a  bbb\n  ccc    d\n"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestAbsPaths(t *testing.T) {
	a, empty := "rel/dir", ""
	if err := AbsPaths(&a, &empty); err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(a) || empty != "" {
		t.Errorf("a = %q, empty = %q", a, empty)
	}
}

type textReport struct {
	Figure int `json:"figure"`
}

func (r *textReport) WriteText(w io.Writer) { fmt.Fprintf(w, "figure %d\n", r.Figure) }

func TestCommandRun(t *testing.T) {
	for _, tc := range []struct {
		name                   string
		args                   []string
		benchErr               error
		code                   int
		wantStdout, wantStderr string
	}{
		{"text", nil, nil, 0, "figure 7\n", ""},
		{"json", []string{"-json"}, nil, 0, "{\n  \"figure\": 7\n}\n", ""},
		{"help", []string{"-h"}, nil, 0, "", ""},
		{"bad flag", []string{"-x"}, nil, 2, "", "bench/test: unknown flag -x\n"},
		{"benchmark failed", nil, errors.New("no server"), 1, "", "bench/test: no server\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := Command{
				Name: "bench/test",
				Parse: func(args []string, _ io.Writer) (bool, error) {
					switch {
					case len(args) == 0:
						return false, nil
					case args[0] == "-json":
						return true, nil
					case args[0] == "-h":
						return false, flag.ErrHelp
					}
					return false, errors.New("unknown flag " + args[0])
				},
				Bench: func(context.Context, io.Writer) (Report, error) {
					if tc.benchErr != nil {
						return nil, tc.benchErr
					}
					return &textReport{Figure: 7}, nil
				},
			}.Run(context.Background(), tc.args, &stdout, &stderr)
			if code != tc.code || stdout.String() != tc.wantStdout || stderr.String() != tc.wantStderr {
				t.Errorf("code %d, stdout %q, stderr %q; want %d, %q, %q", code, stdout.String(), stderr.String(), tc.code, tc.wantStdout, tc.wantStderr)
			}
		})
	}
}
