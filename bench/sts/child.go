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
	SVIDs map[string]svidFiles `json:"svids"`
}

// svidFiles names an SVID's certificate chain and private key files.
type svidFiles struct {
	Cert string `json:"cert"`
	Key  string `json:"key"`
}

// serverMain is the child: it runs the control plane until its stdin is
// closed (the parent ended, however it ended) or it is signalled. Lines on
// stdin are commands (see control).
func serverMain() int {
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
	if err := copyDir(filepath.Join(quickstart, "resources"), res); err != nil {
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
		SVIDs: map[string]svidFiles{},
	}
	for i, id := range []string{gatewayID, ordersID} {
		files, err := writeSVID(ctx, srv.CA(), id, filepath.Join(dir, "svid-"+strconv.Itoa(i)))
		if err != nil {
			return err
		}
		info.SVIDs[id] = files
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	line, _ := json.Marshal(info)
	if _, err := fmt.Fprintf(os.Stdout, "%s\n", line); err != nil {
		return err
	}
	return <-done
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

// writeSVID issues an X.509-SVID for id with a new P-256 key and writes the
// chain and the key as PEM files next to prefix.
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

// child is the parent's handle on the server process.
type child struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	info    childInfo
	replies chan string // the child's stdout lines after its announcement
}

// startChild re-executes this program as the server in dir and waits (at
// most 60s) for its announcement. The child dies with the parent: its stdin
// is a pipe from the parent, and the kernel kills it (Pdeathsig) if the
// parent dies first.
func startChild(ctx context.Context, o *options, dir string) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start server: %w", err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), roleEnv+"="+roleServer, dirEnv+"="+dir, quickstartEnv+"="+o.quickstart, auditEnv+"="+o.audit)
	if o.serverProcs > 0 {
		cmd.Env = append(cmd.Env, "GOMAXPROCS="+strconv.Itoa(o.serverProcs))
	}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start server: %w", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("start server: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start server: %w", err)
	}
	c := &child{cmd: cmd, stdin: stdin, replies: make(chan string, 4)}
	type result struct {
		line []byte
		err  error
	}
	got := make(chan result, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
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
			return nil, fmt.Errorf("start server: no announcement on stdout: %w", r.err)
		}
		if err := json.Unmarshal(r.line, &c.info); err != nil {
			c.stop()
			return nil, fmt.Errorf("start server: announcement: %w", err)
		}
	case <-wait.Done():
		c.stop()
		return nil, fmt.Errorf("start server: %w", wait.Err())
	}
	if c.info.PID != cmd.Process.Pid {
		c.stop()
		return nil, fmt.Errorf("start server: announced pid %d, started %d", c.info.PID, cmd.Process.Pid)
	}
	return c, nil
}

// command sends one control command to the child and waits (at most 30s)
// for its answer.
func (c *child) command(ctx context.Context, line string) error {
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		return fmt.Errorf("server command: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	select {
	case r := <-c.replies:
		if r != "ok" {
			return fmt.Errorf("server command: %s", r)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("server command: %w", ctx.Err())
	}
}

// stop kills the child and reaps it. It is safe to call more than once.
func (c *child) stop() {
	_ = c.stdin.Close()
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
}
