package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"postern.dev/postern/internal/demo"
)

// TestDemoCommand runs postern demo --json in process: one JSON line per step,
// every step as expected, exit status 0.
func TestDemoCommand(t *testing.T) {
	var stdout, stderr bytes.Buffer
	e := &env{ctx: context.Background(), stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr}
	cmd := newDemoCmd(e)
	cmd.SetArgs([]string{"--json", "--examples", "../../examples/quickstart"})
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	if err := cmd.ExecuteContext(context.Background()); err != nil {
		t.Fatalf("demo: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	if len(lines) != demo.Steps {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), demo.Steps, stdout.String())
	}
	for i, l := range lines {
		var s struct {
			Step int  `json:"step"`
			OK   bool `json:"ok"`
		}
		if err := json.Unmarshal([]byte(l), &s); err != nil || s.Step != i+1 || !s.OK {
			t.Errorf("line %d: %s (%v)", i+1, l, err)
		}
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr without --verbose: %s", stderr.String())
	}
}

func TestDemoCommandBadExamples(t *testing.T) {
	var stdout, stderr bytes.Buffer
	e := &env{ctx: context.Background(), stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr}
	cmd := newDemoCmd(e)
	cmd.SetArgs([]string{"--examples", t.TempDir()})
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	err := cmd.ExecuteContext(context.Background())
	if err == nil || !strings.Contains(err.Error(), "is not the quickstart example") {
		t.Errorf("err = %v", err)
	}
}
