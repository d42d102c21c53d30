package cli

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"postern.dev/postern/internal/attest"
	"postern.dev/postern/internal/server"
)

func TestCAJoinToken(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "server.yaml")
	if err := os.WriteFile(cfgPath, []byte("trustDomain: example.test\ndataDir: data\nresources: res\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	id := "spiffe://example.test/postern/agent/node-1"
	code, stdout, errs := run(t, "", "ca", "join-token", "--config", cfgPath, "--spiffe-id", id, "--ttl", "10m")
	if code != 0 {
		t.Fatalf("join-token: %d %s", code, errs)
	}
	tok := strings.TrimSpace(stdout)
	if len(tok) != 43 || strings.Count(stdout, "\n") != 1 {
		t.Fatalf("output %q is not one token", stdout)
	}
	// The token redeems once, for the ID, from the data dir alone.
	cfg, err := server.LoadDataDirConfig(filepath.Join(dir, "data"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := server.Open(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got, err := attest.ConsumeJoinToken(context.Background(), st.Store, tok, time.Now())
	if err != nil || got.String() != id {
		t.Fatalf("consume: %v %v", got, err)
	}
	if _, err := attest.ConsumeJoinToken(context.Background(), st.Store, tok, time.Now()); err == nil {
		t.Error("the token redeemed twice")
	}

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no id", []string{"--data-dir", filepath.Join(dir, "data")}, "--spiffe-id is required"},
		{"bad id", []string{"--data-dir", filepath.Join(dir, "data"), "--spiffe-id", "agent"}, "--spiffe-id"},
		{"other trust domain", []string{"--data-dir", filepath.Join(dir, "data"), "--spiffe-id", "spiffe://other.test/postern/agent/x"}, "not in trust domain"},
		{"ttl too long", []string{"--data-dir", filepath.Join(dir, "data"), "--spiffe-id", id, "--ttl", "48h"}, "ttl"},
		{"no state", []string{"--spiffe-id", id}, "--config or --data-dir is required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, errs := run(t, "", append([]string{"ca", "join-token"}, tc.args...)...)
			if code != 1 || stdout != "" || !strings.Contains(errs, tc.want) {
				t.Errorf("got %d %q %q, want an error saying %q", code, stdout, errs, tc.want)
			}
		})
	}
}

// The join token is taken out of the environment, so that no process the
// agent or sidecar starts inherits it.
func TestTakeEnv(t *testing.T) {
	t.Setenv(joinTokenEnv, "secret-token")
	if got := takeEnv(joinTokenEnv); got != "secret-token" {
		t.Errorf("takeEnv = %q", got)
	}
	if v, ok := os.LookupEnv(joinTokenEnv); ok {
		t.Errorf("%s still set to %q", joinTokenEnv, v)
	}
	if got := takeEnv(joinTokenEnv); got != "" {
		t.Errorf("second takeEnv = %q", got)
	}
}
