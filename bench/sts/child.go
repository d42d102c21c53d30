//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"postern.dev/postern/bench/internal/loadgen"
	"postern.dev/postern/internal/server"
)

// The environment through which the parent configures the child.
const (
	roleEnv       = "POSTERN_BENCH_ROLE"
	roleServer    = "server"
	dirEnv        = "POSTERN_BENCH_DIR"
	quickstartEnv = "POSTERN_BENCH_QUICKSTART"
	auditEnv      = "POSTERN_BENCH_AUDIT"
)

// The quickstart's workloads the benchmark acts as.
const (
	gatewayID = "spiffe://quickstart.local/ns/shop/sa/gateway"
	ordersID  = "spiffe://quickstart.local/ns/shop/sa/order-processing"
	invID     = "spiffe://quickstart.local/ns/shop/sa/inventory"
)

// childInfo is the one JSON line the child prints on stdout once it serves.
type childInfo struct {
	PID        int    `json:"pid"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	Issuer     string `json:"issuer"`
	DataDir    string `json:"dataDir"`
	Bundle     string `json:"bundle"`
	// SVIDs maps a SPIFFE ID to the PEM files of an X.509-SVID the child's
	// CA issued for it.
	SVIDs map[string]loadgen.SVIDFiles `json:"svids"`
}

// serverMain is the child: it runs the control plane until its stdin is
// closed (the parent ended, however it ended) or it is signalled. Lines on
// stdin are commands (see loadgen.Control).
func serverMain() int {
	// GOGC=400 unless set, as the postern commands do (internal/cli).
	ctx, stop := loadgen.ChildContext()
	defer stop()
	if err := runServer(ctx, os.Getenv(dirEnv), os.Getenv(quickstartEnv), os.Getenv(auditEnv)); err != nil {
		fmt.Fprintln(os.Stderr, "bench/sts server:", err)
		return 1
	}
	return 0
}

// runServer starts the quickstart control plane in dir, issues the SVIDs the
// load generator presents, announces itself and serves until ctx is done.
func runServer(ctx context.Context, dir, quickstart, audit string) error {
	if dir == "" || quickstart == "" {
		return errors.New("missing " + dirEnv + " or " + quickstartEnv)
	}
	res := filepath.Join(dir, "resources")
	if err := loadgen.CopyDir(filepath.Join(quickstart, "resources"), res); err != nil {
		return err
	}
	cfg, err := server.LoadConfig(filepath.Join(quickstart, "server.yaml"))
	if err != nil {
		return err
	}
	cfg.Listen = "127.0.0.1:0"
	cfg.Issuer = ""
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Resources = res

	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	auditLog := slog.New(slog.DiscardHandler)
	if audit == "file" {
		f, err := os.OpenFile(filepath.Join(dir, "audit.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		auditLog = slog.New(slog.NewJSONHandler(f, nil)).With(slog.String("log", "audit"))
	}
	srv, err := server.New(ctx, cfg, logger, auditLog)
	if err != nil {
		return err
	}
	info := childInfo{
		PID: os.Getpid(), GOMAXPROCS: runtime.GOMAXPROCS(0),
		Issuer: srv.Issuer(), DataDir: cfg.DataDir, Bundle: srv.BundlePath(),
		SVIDs: map[string]loadgen.SVIDFiles{},
	}
	for i, id := range []string{gatewayID, ordersID} {
		files, err := loadgen.WriteSVID(ctx, srv.CA(), id, filepath.Join(dir, "svid-"+strconv.Itoa(i)))
		if err != nil {
			return err
		}
		info.SVIDs[id] = files
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	if err := loadgen.Announce(os.Stdout, info); err != nil {
		return err
	}
	return <-done
}

// child is the parent's handle on the server process.
type child struct {
	*loadgen.Child
	info childInfo
}

// startChild re-executes this program as the server in dir and waits (at
// most 60s) for its announcement. The child dies with the parent (see
// loadgen.StartChild).
func startChild(ctx context.Context, o *options, dir string) (*child, error) {
	c := &child{}
	env := []string{roleEnv + "=" + roleServer, dirEnv + "=" + dir, quickstartEnv + "=" + o.quickstart, auditEnv + "=" + o.audit}
	var err error
	if c.Child, err = loadgen.StartChild(ctx, "server", env, o.serverProcs, &c.info); err != nil {
		return nil, err
	}
	return c, nil
}
