package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestGatewayCmd(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantOut string
		wantErr string
	}{
		{name: "check the example", args: []string{"--config", "../../examples/quickstart/gateway.yaml", "--check"},
			wantOut: "../../examples/quickstart/gateway.yaml: configuration is valid\n"},
		{name: "no config", args: nil, wantErr: "--config is required"},
		{name: "missing file", args: []string{"--config", "/nonexistent.yaml"}, wantErr: "gateway: config: stat /nonexistent.yaml: no such file or directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			e := &env{ctx: context.Background(), stdin: strings.NewReader(""), stdout: &out, stderr: &errb}
			cmd := newGatewayCmd(e)
			cmd.SetArgs(tc.args)
			cmd.SetOut(&out)
			cmd.SetErr(&errb)
			cmd.SilenceUsage, cmd.SilenceErrors = true, true
			err := cmd.Execute()
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if out.String() != tc.wantOut {
				t.Errorf("output %q, want %q", out.String(), tc.wantOut)
			}
		})
	}
}
