//go:build linux

package loadgen

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/ca"
)

// Bounds of the parent-child protocol.
const (
	maxAnnouncement = 64 << 10         // the child's JSON line
	startTimeout    = 60 * time.Second // until the child announces itself
	commandTimeout  = 30 * time.Second // until the child answers a command
)

// ChildContext prepares a re-executed child process: it runs with GOGC=400
// unless the operator set GOGC (as the postern commands do), and the
// context it returns is cancelled on SIGINT or SIGTERM and when stdin ends
// (the parent ended, however it ended). Until then Control serves the
// parent's commands on stdin and stdout. Call stop when the child is done.
func ChildContext() (ctx context.Context, stop func()) {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(400)
	}
	ctx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		Control(os.Stdin, os.Stdout)
		cancel()
	}()
	return ctx, func() {
		cancel()
		stopSignals()
	}
}

// Control serves the parent's commands, one a line, until in ends:
// "cpuprofile-start FILE" and "cpuprofile-stop", each answered by one line
// on out ("ok" or an error).
func Control(in io.Reader, out io.Writer) {
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

// Announce writes info as the child's one JSON line on w (its stdout). The
// parent requires a "pid" member equal to the child's process id.
func Announce(w io.Writer, info any) error {
	line, err := json.Marshal(info)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", line)
	return err
}

// Child is the parent's handle on a child process.
type Child struct {
	name    string
	cmd     *exec.Cmd
	in      io.WriteCloser
	replies chan string // the child's stdout lines after its announcement
}

// StartChild re-executes this program with env added to its environment
// (and GOMAXPROCS=procs if procs > 0), waits (at most 60s) for its
// announcement and decodes it into info. The child dies with the parent:
// its stdin is a pipe from the parent, and the kernel kills it (Pdeathsig)
// if the parent dies first. On every error the child is killed and reaped.
func StartChild(ctx context.Context, name string, env []string, procs int, info any) (*Child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), env...)
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
	c := &Child{name: name, cmd: cmd, in: in, replies: make(chan string, 4)}
	type result struct {
		line []byte
		err  error
	}
	got := make(chan result, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, maxAnnouncement)
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
	wait, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	var hello struct {
		PID int `json:"pid"`
	}
	select {
	case r := <-got:
		if r.err != nil {
			c.Stop()
			return nil, fmt.Errorf("start %s: no announcement on stdout: %w", name, r.err)
		}
		if err := json.Unmarshal(r.line, &hello); err != nil {
			c.Stop()
			return nil, fmt.Errorf("start %s: announcement: %w", name, err)
		}
		if err := json.Unmarshal(r.line, info); err != nil {
			c.Stop()
			return nil, fmt.Errorf("start %s: announcement: %w", name, err)
		}
	case <-wait.Done():
		c.Stop()
		return nil, fmt.Errorf("start %s: %w", name, wait.Err())
	}
	if hello.PID != cmd.Process.Pid {
		c.Stop()
		return nil, fmt.Errorf("start %s: announced pid %d, started %d", name, hello.PID, cmd.Process.Pid)
	}
	return c, nil
}

// Command sends one control command to the child and waits (at most 30s)
// for its answer.
func (c *Child) Command(ctx context.Context, line string) error {
	if _, err := io.WriteString(c.in, line+"\n"); err != nil {
		return fmt.Errorf("%s command: %w", c.name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
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

// PID returns the child's process id.
func (c *Child) PID() int { return c.cmd.Process.Pid }

// Stop kills the child and reaps it. It is safe to call more than once.
func (c *Child) Stop() {
	_ = c.in.Close()
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
}

// SVIDFiles names an SVID's certificate chain and key files and, where the
// user needs it, the trust bundle file.
type SVIDFiles struct {
	Cert   string `json:"cert"`
	Key    string `json:"key"`
	Bundle string `json:"bundle,omitempty"`
}

// WriteSVID issues an X.509-SVID for id with a new P-256 key and writes the
// chain and the PKCS#8 key as PEM files (mode 0600) next to prefix.
func WriteSVID(ctx context.Context, authority *ca.CA, id, prefix string) (SVIDFiles, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return SVIDFiles{}, err
	}
	svid, err := authority.IssueX509SVID(ctx, ca.X509SVIDRequest{ID: spiffeid.RequireFromString(id), PublicKey: key.Public()})
	if err != nil {
		return SVIDFiles{}, err
	}
	var chain []byte
	for _, c := range svid.Certificates {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return SVIDFiles{}, err
	}
	f := SVIDFiles{Cert: prefix + "-cert.pem", Key: prefix + "-key.pem"}
	if err := os.WriteFile(f.Cert, chain, 0o600); err != nil {
		return SVIDFiles{}, err
	}
	if err := os.WriteFile(f.Key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return SVIDFiles{}, err
	}
	return f, nil
}

// CopyDir copies the regular files of src (not recursively) into dst.
func CopyDir(src, dst string) error {
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
