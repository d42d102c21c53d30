//go:build linux

package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/ca"
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
	SVID svidFiles `json:"svid"`
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
	Issuer string               `json:"issuer,omitempty"`
	Bundle string               `json:"bundle,omitempty"`
	SVIDs  map[string]svidFiles `json:"svids,omitempty"`
	// Sidecar only.
	Inbound  string `json:"inbound,omitempty"`
	Outbound string `json:"outbound,omitempty"`
	Admin    string `json:"admin,omitempty"`
}

// svidFiles names an SVID's certificate chain, key and trust bundle files.
type svidFiles struct {
	Cert   string `json:"cert"`
	Key    string `json:"key"`
	Bundle string `json:"bundle"`
}

// childMain runs the role named in the environment until its stdin is
// closed (the parent ended, however it ended) or it is signalled.
func childMain(role string) int {
	// As the postern commands do (internal/cli gcPercent): components run
	// with GOGC=400 unless the operator set GOGC.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		control(os.Stdin, os.Stdout)
		cancel()
	}()
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

// control serves the parent's commands, one a line, until in ends:
// "cpuprofile-start FILE" and "cpuprofile-stop", each answered by one line
// on out ("ok" or an error).
func control(in io.Reader, out io.Writer) {
	sc := bufio.NewScanner(in)
	var prof *os.File
	for sc.Scan() {
		cmd, arg, _ := strings.Cut(sc.Text(), " ")
		var err error
		switch {
		case cmd == "cpuprofile-start" && prof == nil:
			if prof, err = os.Create(arg); err == nil {
				if err = pprof.StartCPUProfile(prof); err != nil {
					prof.Close()
					prof = nil
				}
			}
		case cmd == "cpuprofile-stop" && prof != nil:
			pprof.StopCPUProfile()
			err = prof.Close()
			prof = nil
		default:
			err = fmt.Errorf("unexpected command %q", cmd)
		}
		if err != nil {
			fmt.Fprintf(out, "error: %v\n", err)
		} else {
			fmt.Fprintln(out, "ok")
		}
	}
	if prof != nil {
		pprof.StopCPUProfile()
		prof.Close()
	}
}

// announce prints info as the child's one JSON line.
func announce(info childInfo) error {
	info.PID, info.GOMAXPROCS = os.Getpid(), runtime.GOMAXPROCS(0)
	line, err := json.Marshal(info)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(os.Stdout, "%s\n", line)
	return err
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
	if err := copyDir(filepath.Join(spec.Quickstart, "resources"), res); err != nil {
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
	info := childInfo{Issuer: srv.Issuer(), Bundle: srv.BundlePath(), SVIDs: map[string]svidFiles{}}
	for i, id := range []string{gatewayID, ordersID, invID} {
		files, err := writeSVID(ctx, srv.CA(), id, filepath.Join(spec.Dir, "svid-"+strconv.Itoa(i)))
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
	cfg.STS.TokenEndpoint = ""
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

// writeSVID issues an X.509-SVID for id with a new P-256 key and writes the
// chain and the PKCS#8 key as PEM files next to prefix.
func writeSVID(ctx context.Context, authority *ca.CA, id, prefix string) (svidFiles, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return svidFiles{}, err
	}
	svid, err := authority.IssueX509SVID(ctx, ca.X509SVIDRequest{ID: spiffeid.RequireFromString(id), PublicKey: key.Public()})
	if err != nil {
		return svidFiles{}, err
	}
	var chain []byte
	for _, c := range svid.Certificates {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return svidFiles{}, err
	}
	f := svidFiles{Cert: prefix + "-cert.pem", Key: prefix + "-key.pem"}
	if err := os.WriteFile(f.Cert, chain, 0o600); err != nil {
		return svidFiles{}, err
	}
	if err := os.WriteFile(f.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return svidFiles{}, err
	}
	return f, nil
}

// copyDir copies the regular files of src (not recursively) into dst.
func copyDir(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// child is the parent's handle on a child process.
type child struct {
	name    string
	cmd     *exec.Cmd
	in      io.WriteCloser
	info    childInfo
	replies chan string // the child's stdout lines after its announcement
}

// startChild re-executes this program in role with spec and waits (at most
// 60s) for its announcement. The child dies with the parent: its stdin is a
// pipe from the parent, and the kernel kills it (Pdeathsig) if the parent
// dies first. procs > 0 sets its GOMAXPROCS.
func startChild(ctx context.Context, name, role string, spec childSpec, procs int) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	b, err := json.Marshal(spec)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), roleEnv+"="+role, specEnv+"="+string(b))
	if procs > 0 {
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(procs))
	}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, in: in, replies: make(chan string, 4)}
	type result struct {
		line []byte
		err  error
	}
	got := make(chan result, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 64<<10)
		if !sc.Scan() {
			got <- result{nil, fmt.Errorf("%w (%v)", io.ErrUnexpectedEOF, sc.Err())}
			return
		}
		got <- result{append([]byte(nil), sc.Bytes()...), nil}
		for sc.Scan() {
			select {
			case c.replies <- sc.Text():
			default: // unasked-for output is dropped
			}
		}
	}()
	wait, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	select {
	case r := <-got:
		if r.err != nil {
			c.stop()
			return nil, fmt.Errorf("start %s: no announcement on stdout: %w", name, r.err)
		}
		if err := json.Unmarshal(r.line, &c.info); err != nil {
			c.stop()
			return nil, fmt.Errorf("start %s: announcement: %w", name, err)
		}
	case <-wait.Done():
		c.stop()
		return nil, fmt.Errorf("start %s: %w", name, wait.Err())
	}
	if c.info.PID != cmd.Process.Pid {
		c.stop()
		return nil, fmt.Errorf("start %s: announced pid %d, started %d", name, c.info.PID, cmd.Process.Pid)
	}
	return c, nil
}

// command sends one control command to the child and waits (at most 30s)
// for its answer.
func (c *child) command(ctx context.Context, line string) error {
	if _, err := io.WriteString(c.in, line+"\n"); err != nil {
		return fmt.Errorf("%s command: %w", c.name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	select {
	case r := <-c.replies:
		if r != "ok" {
			return fmt.Errorf("%s command: %s", c.name, r)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%s command: %w", c.name, ctx.Err())
	}
}

// pid returns the child's process id.
func (c *child) pid() int { return c.cmd.Process.Pid }

// stop kills the child and reaps it. It is safe to call more than once.
func (c *child) stop() {
	_ = c.in.Close()
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
}
