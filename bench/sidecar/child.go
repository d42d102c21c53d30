//go:build linux

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"time"

	"postern.dev/postern/bench/internal/loadgen"
	"postern.dev/postern/internal/proxy"
	"postern.dev/postern/internal/server"
)

// The environment through which the parent configures a child: its role
// and one JSON object with what that role needs.
const (
	roleEnv    = "POSTERN_BENCH_ROLE"
	specEnv    = "POSTERN_BENCH_SPEC"
	roleServer = "server"
	roleApp    = "app"
	roleProxy  = "sidecar"
)

// The quickstart's workloads: the gateway obtains the hop-1 token,
// order-processing's sidecar (A) calls inventory's sidecar (B).
const (
	gatewayID = "spiffe://quickstart.local/ns/shop/sa/gateway"
	ordersID  = "spiffe://quickstart.local/ns/shop/sa/order-processing"
	invID     = "spiffe://quickstart.local/ns/shop/sa/inventory"
)

// appBody is what the application answers, 64 bytes.
const appBody = "postern bench app: a small body, the same on every path, 64 B.\n"

// appPeerHeader echoes to the client the X-Postern-Peer header the
// application received, so that the benchmark checks the Postern path went
// through sidecar B's inbound chain.
const appPeerHeader = "X-Bench-Peer"

// childSpec is what the parent tells a child (as JSON in specEnv).
type childSpec struct {
	// Dir is the run's temporary directory.
	Dir string `json:"dir"`
	// Quickstart is the quickstart example's directory (server, sidecar).
	Quickstart string `json:"quickstart"`
	// Audit is file or discard (server, sidecar).
	Audit string `json:"audit,omitempty"`
	// Sidecar is the quickstart sidecar to run: order-processing or
	// inventory (sidecar).
	Sidecar string `json:"sidecar,omitempty"`
	// Issuer is the STS's issuer URL (sidecar).
	Issuer string `json:"issuer,omitempty"`
	// SVID is the sidecar's SVID files (sidecar).
	SVID loadgen.SVIDFiles `json:"svid"`
	// App is the application's address (sidecar).
	App string `json:"app,omitempty"`
	// Upstreams maps an upstream name to its address (sidecar); the
	// others get an address nobody listens on.
	Upstreams map[string]string `json:"upstreams,omitempty"`
}

// childInfo is the one JSON line a child prints on stdout once it serves.
type childInfo struct {
	PID        int    `json:"pid"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	Addr       string `json:"addr,omitempty"` // app: its address
	// Server only.
	Issuer string                       `json:"issuer,omitempty"`
	Bundle string                       `json:"bundle,omitempty"`
	SVIDs  map[string]loadgen.SVIDFiles `json:"svids,omitempty"`
	// Sidecar only.
	Inbound  string `json:"inbound,omitempty"`
	Outbound string `json:"outbound,omitempty"`
	Admin    string `json:"admin,omitempty"`
}

// childMain runs the role named in the environment until its stdin is
// closed (the parent ended, however it ended) or it is signalled.
func childMain(role string) int {
	// GOGC=400 unless set, as the postern commands do (internal/cli).
	ctx, stop := loadgen.ChildContext()
	defer stop()
	var spec childSpec
	err := json.Unmarshal([]byte(os.Getenv(specEnv)), &spec)
	if err == nil {
		switch role {
		case roleServer:
			err = runServer(ctx, spec)
		case roleApp:
			err = runApp(ctx)
		case roleProxy:
			err = runSidecar(ctx, spec)
		default:
			err = fmt.Errorf("unknown role %q", role)
		}
	}
	if err != nil && ctx.Err() == nil {
		fmt.Fprintf(os.Stderr, "bench/sidecar %s: %v\n", role, err)
		return 1
	}
	return 0
}

// announce prints info as the child's one JSON line.
func announce(info childInfo) error {
	info.PID, info.GOMAXPROCS = os.Getpid(), runtime.GOMAXPROCS(0)
	return loadgen.Announce(os.Stdout, info)
}

// runApp serves the application: every request gets appBody, and the
// X-Postern-Peer it carried is echoed in appPeerHeader.
func runApp(ctx context.Context) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	body := []byte(appBody)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			if p := r.Header.Get(proxy.HeaderPeer); p != "" {
				h.Set(appPeerHeader, p)
			}
			h.Set("Content-Type", "text/plain")
			h.Set("Content-Length", strconv.Itoa(len(body)))
			_, _ = w.Write(body)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := announce(childInfo{Addr: ln.Addr().String()}); err != nil {
		return err
	}
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// runServer starts the quickstart control plane in spec.Dir, issues the
// SVIDs of the gateway (whose hop-1 token the client carries) and of the two
// sidecars, announces itself and serves until ctx is done.
func runServer(ctx context.Context, spec childSpec) error {
	if spec.Dir == "" || spec.Quickstart == "" {
		return errors.New("missing dir or quickstart")
	}
	res := filepath.Join(spec.Dir, "resources")
	if err := loadgen.CopyDir(filepath.Join(spec.Quickstart, "resources"), res); err != nil {
		return err
	}
	cfg, err := server.LoadConfig(filepath.Join(spec.Quickstart, "server.yaml"))
	if err != nil {
		return err
	}
	cfg.Listen = "127.0.0.1:0"
	cfg.Issuer = ""
	cfg.DataDir = filepath.Join(spec.Dir, "data")
	cfg.Resources = res
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv, err := server.New(ctx, cfg, logger, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	info := childInfo{Issuer: srv.Issuer(), Bundle: srv.BundlePath(), SVIDs: map[string]loadgen.SVIDFiles{}}
	for i, id := range []string{gatewayID, ordersID, invID} {
		files, err := loadgen.WriteSVID(ctx, srv.CA(), id, filepath.Join(spec.Dir, "svid-"+strconv.Itoa(i)))
		if err != nil {
			return err
		}
		files.Bundle = srv.BundlePath()
		info.SVIDs[id] = files
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	if err := announce(info); err != nil {
		return err
	}
	return <-done
}

// runSidecar runs the quickstart's sidecar spec.Sidecar as `postern
// sidecar` would, with its SVID from files, listeners on 127.0.0.1:0, the
// child server as STS, and its audit lines in a file (or discarded). It
// announces itself once the sidecar is ready (SVID and STS keys held).
func runSidecar(ctx context.Context, spec childSpec) error {
	cfg, err := proxy.LoadConfig(filepath.Join(spec.Quickstart, "sidecars", spec.Sidecar+".yaml"))
	if err != nil {
		return err
	}
	cfg.SPIFFE.Files = &proxy.FilesSource{Cert: spec.SVID.Cert, Key: spec.SVID.Key, Bundle: spec.SVID.Bundle}
	cfg.STS.Issuer = spec.Issuer
	cfg.STS.TokenEndpoint, cfg.STS.RevocationsURI = "", ""
	cfg.STS.JWKSURI = ""
	cfg.Inbound.Listen = "127.0.0.1:0"
	cfg.Inbound.App = spec.App
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.Outbound.Listen = "127.0.0.1:0"
	for i, u := range cfg.Outbound.Upstreams {
		addr, ok := spec.Upstreams[u.Name]
		if !ok {
			addr = "127.0.0.1:1" // not used by the benchmark
		}
		cfg.Outbound.Upstreams[i].Addresses = []string{addr}
	}
	cfg.DrainTimeout = 0
	if err := cfg.Validate(); err != nil {
		return err
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	audit := slog.New(slog.DiscardHandler)
	if spec.Audit == "file" {
		f, err := os.OpenFile(filepath.Join(spec.Dir, spec.Sidecar+"-audit.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return err
		}
		defer f.Close()
		audit = slog.New(slog.NewJSONHandler(f, nil)).With(slog.String("log", "audit"))
	}
	sc, err := proxy.NewSidecar(ctx, cfg, proxy.SidecarOptions{Logger: logger, Audit: audit})
	if err != nil {
		return err
	}
	defer sc.Close()
	done := make(chan error, 1)
	go func() { done <- sc.Run(ctx) }()
	for deadline := time.Now().Add(30 * time.Second); !sc.Ready(); {
		if time.Now().After(deadline) {
			return errors.New("the sidecar was not ready within 30s")
		}
		select {
		case err := <-done:
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
	info := childInfo{Inbound: sc.InboundAddr().String(), Outbound: sc.OutboundAddr().String(), Admin: sc.AdminAddr().String()}
	if err := announce(info); err != nil {
		return err
	}
	return <-done
}

// child is the parent's handle on a child process.
type child struct {
	*loadgen.Child
	info childInfo
}

// startChild re-executes this program in role with spec and waits (at most
// 60s) for its announcement. The child dies with the parent (see
// loadgen.StartChild). procs > 0 sets its GOMAXPROCS.
func startChild(ctx context.Context, name, role string, spec childSpec, procs int) (*child, error) {
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{}
	env := []string{roleEnv + "=" + role, specEnv + "=" + string(b)}
	if c.Child, err = loadgen.StartChild(ctx, name, env, procs, &c.info); err != nil {
		return nil, err
	}
	return c, nil
}
