// Package testserver runs a real postern server for tests: on 127.0.0.1
// with port 0, with its data in a temporary directory, stopped when the
// test ends. Nothing it starts is meant to outlive a test.
package testserver

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"postern.dev/postern/internal/server"
)

// Start runs a server for cfg until the test ends, listening on
// 127.0.0.1:0 and, when cfg.DataDir is empty, keeping its data in a
// temporary directory. A failure to start fails the test; so does an error
// from Run.
func Start(tb testing.TB, cfg *server.Config, logger *slog.Logger) *server.Server {
	tb.Helper()
	cfg.Listen = "127.0.0.1:0"
	if cfg.DataDir == "" {
		cfg.DataDir = filepath.Join(tb.TempDir(), "data")
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
		if testing.Verbose() {
			logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, logger, nil)
	if err != nil {
		cancel()
		tb.Fatalf("testserver: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("testserver: run: %v", err)
		}
	})
	return srv
}

// Quickstart runs a server on a copy of examples/quickstart's resources
// plus extra files (name → content), and returns it with the resources
// directory the test may change (the server reloads it).
func Quickstart(tb testing.TB, extra map[string]string) (*server.Server, string) {
	tb.Helper()
	root := moduleRoot(tb)
	examples := filepath.Join(root, "examples", "quickstart")
	res := filepath.Join(tb.TempDir(), "resources")
	if err := os.MkdirAll(res, 0o755); err != nil {
		tb.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Join(examples, "resources"))
	if err != nil {
		tb.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(examples, "resources", e.Name()))
		if err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(res, e.Name()), b, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	for name, body := range extra {
		if err := os.WriteFile(filepath.Join(res, name), []byte(body), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	cfg, err := server.LoadConfig(filepath.Join(examples, "server.yaml"))
	if err != nil {
		tb.Fatalf("testserver: the quickstart config does not load: %v", err)
	}
	cfg.Resources = res
	cfg.DataDir = ""
	return Start(tb, cfg, nil), res
}

// moduleRoot finds the directory holding go.mod above the working directory.
func moduleRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatal("testserver: no go.mod above the working directory")
		}
		dir = parent
	}
}
