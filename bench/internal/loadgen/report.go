//go:build linux

package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"runtime"
	"text/tabwriter"
)

// Machine describes where a benchmark ran. Embedded in a report, its
// fields come first in the report's JSON.
type Machine struct {
	CPUModel  string `json:"cpuModel"`
	NumCPU    int    `json:"numCPU"`
	GoVersion string `json:"goVersion"`
	GOOS      string `json:"goos"`
	GOARCH    string `json:"goarch"`
	// ClientGOMAXPROCS is the load generator's GOMAXPROCS.
	ClientGOMAXPROCS int `json:"clientGOMAXPROCS"`
}

// ThisMachine returns the Machine this process runs on.
func ThisMachine() Machine {
	return Machine{
		CPUModel: CPUModel(), NumCPU: runtime.NumCPU(), GoVersion: runtime.Version(),
		GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, ClientGOMAXPROCS: runtime.GOMAXPROCS(0),
	}
}

// String is the report's machine line, e.g.
// "AMD EPYC 7B13, 2 CPUs, go1.26.0 linux/amd64".
func (m Machine) String() string {
	return fmt.Sprintf("%s, %d CPUs, %s %s/%s", m.CPUModel, m.NumCPU, m.GoVersion, m.GOOS, m.GOARCH)
}

// NewTable returns the reports' table writer: right-aligned cells
// separated by two spaces; end every cell with a tab and call Flush.
func NewTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
}

// WriteReport prints rep on w as one indented JSON object if asJSON, else
// with text.
func WriteReport(w io.Writer, rep any, asJSON bool, text func(io.Writer)) error {
	if !asJSON {
		text(w)
		return nil
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

// AbsPaths makes every non-empty path of ps absolute.
func AbsPaths(ps ...*string) error {
	for _, p := range ps {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return err
		}
		*p = abs
	}
	return nil
}

// Report is what a benchmark returns.
type Report interface {
	// WriteText prints the human-readable report.
	WriteText(w io.Writer)
}

// Command is a load generator's command line: parse the flags, run the
// benchmark, print the report.
type Command struct {
	// Name prefixes the error lines, e.g. "bench/sts".
	Name string
	// Parse parses and validates the flags and reports whether the report
	// is wanted as JSON.
	Parse func(args []string, stderr io.Writer) (asJSON bool, err error)
	// Bench runs the benchmark with the flags Parse read, writing progress
	// lines to log.
	Bench func(ctx context.Context, log io.Writer) (Report, error)
}

// Run is the whole command; it returns the process exit code: 0, 1 if the
// benchmark failed, 2 if the flags were wrong (-h is not an error).
func (c Command) Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	asJSON, err := c.Parse(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, c.Name+":", err)
		return 2
	}
	rep, err := c.Bench(ctx, stderr)
	if err == nil {
		err = WriteReport(stdout, rep, asJSON, rep.WriteText)
	}
	if err != nil {
		fmt.Fprintln(stderr, c.Name+":", err)
		return 1
	}
	return 0
}
