package policy

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWatcherLastKnownGood(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(workloads+"---\n"+s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	allowAll := "apiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: all}\nspec: {rules: [{}]}\n"
	write(allowAll)
	var logs bytes.Buffer
	var updates int
	w, err := NewWatcher(WatcherConfig{Dir: dir, Logger: slog.New(slog.NewTextHandler(&logs, nil)), OnUpdate: func(*Engine) { updates++ }})
	if err != nil {
		t.Fatal(err)
	}
	r := req(httpbin, sleep, "GET", "/", tok(user))
	if !w.Engine().Authorize(r).Allow {
		t.Fatal("first set not in effect")
	}
	first := w.Engine()

	// Unchanged directory: nothing happens.
	if changed, err := w.Reload(); changed || err != nil {
		t.Fatalf("Reload unchanged = %v, %v", changed, err)
	}

	// A broken update is rejected with file:line, the last good set stays.
	write("apiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: all}\nspec: {rules: [{}], bogus: 1}\n")
	changed, err := w.Reload()
	var ps Problems
	if changed || !errors.As(err, &ps) || ps[0].String() != filepath.Join(dir, "p.yaml")+`:20: unknown field "bogus" in spec` {
		t.Fatalf("Reload broken = %v, %v", changed, err)
	}
	if w.Engine() != first || !w.Engine().Authorize(r).Allow {
		t.Fatal("broken update replaced the last good set")
	}
	if !strings.Contains(logs.String(), `problem="unknown field \"bogus\" in spec"`) || !strings.Contains(logs.String(), "line=20") {
		t.Errorf("logs: %s", logs.String())
	}

	// A good update replaces it.
	write("apiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: none}\nspec: {}\n")
	if changed, err := w.Reload(); !changed || err != nil {
		t.Fatalf("Reload good = %v, %v", changed, err)
	}
	if w.Engine().Authorize(r).Allow || updates != 1 {
		t.Fatalf("new set not in effect (updates %d)", updates)
	}

	// Run stops with its context.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not stop")
	}
}

func TestNewWatcherFailsOnBadFirstLoad(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte("kind: Nope\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := NewWatcher(WatcherConfig{Dir: dir})
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("err = %v", err)
	}
}
