//go:build linux

// Command sidecar is the benchmark of one Postern hop: the latency, CPU and
// memory the two sidecars of a call add (sidecar A, outbound, exchanging
// the caller's token for the callee's audience; sidecar B, inbound,
// verifying it and applying the AuthorizationPolicy, mutual TLS between
// them), measured in the same run against a direct call to the application
// and against a pair of nginx proxies doing plain mutual TLS.
//
//	go run ./bench/sidecar [-d 10s] [-rate 1000] [-c 16] [-json]
//
// Every server runs in its own process, so that its CPU time and memory
// can be read from /proc: the application, the control plane (the STS,
// `postern server` on the quickstart example), the two sidecars (this
// program re-executed with POSTERN_BENCH_ROLE), and Debian's nginx (two
// instances with a generated configuration and a throwaway P-256 CA) when
// `nginx` is on PATH. Children are killed when the run ends, on every
// path; everything listens on 127.0.0.1 only.
//
// Per path (direct, nginx, postern), the phases, each bounded in time and
// in request count:
//
//   - open loop at -rate requests per second for -d, latency measured from
//     each request's scheduled send time (no coordinated omission);
//   - peak: -c closed-loop workers on keep-alive connections for -d.
//
// It is Linux-only (it reads /proc). See README.md for what each figure
// means.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"postern.dev/postern/bench/internal/loadgen"
	"postern.dev/postern/internal/proxy"
)

// options are the command-line flags.
type options struct {
	duration     time.Duration
	rate         float64
	workers      int
	maxRequests  int64
	quickstart   string
	audit        string
	nginx        string
	nginxWorkers int
	sidecarProcs int
	cpuProfile   string
	jsonOut      bool
}

func main() {
	if role := os.Getenv(roleEnv); role != "" {
		os.Exit(childMain(role))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// parseFlags parses and validates the flags.
func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("sidecar", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&o.duration, "d", 10*time.Second, "duration of each measured phase (open loop, peak) per path, 1s to 2m")
	fs.Float64Var(&o.rate, "rate", 1000, "open-loop rate, requests per second, 100 to 20000")
	fs.IntVar(&o.workers, "c", 16, "keep-alive connections per path: closed-loop workers (peak) and open-loop senders, 1 to 512")
	fs.Int64Var(&o.maxRequests, "max-requests", 2_000_000, "upper bound on requests per phase (and on stored latency samples)")
	fs.StringVar(&o.quickstart, "quickstart", "examples/quickstart", "directory of the quickstart example (server.yaml, resources/, sidecars/, idp/idp-key.pem)")
	fs.StringVar(&o.audit, "audit", "file", "where the sidecars write their audit lines: file (a file in the temp dir, as in production) or discard")
	fs.StringVar(&o.nginx, "nginx", "nginx", "the nginx executable, looked up on PATH; off skips the nginx comparison")
	fs.IntVar(&o.nginxWorkers, "nginx-workers", 0, "worker_processes of each nginx (0: auto, one per CPU)")
	fs.IntVar(&o.sidecarProcs, "sidecar-procs", proxy.DefaultMaxProcs, "GOMAXPROCS of each sidecar process, as maxProcs in its configuration (default: the sidecar's default; 0: inherit this program's)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write both sidecars' CPU profiles during the Postern open-loop phase into this directory (sidecar-a.pprof, sidecar-b.pprof)")
	fs.BoolVar(&o.jsonOut, "json", false, "print the report as one JSON object instead of text")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	case o.duration < time.Second || o.duration > 2*time.Minute:
		// The hop-1 token lives 5 minutes; it is refreshed before each
		// Postern phase.
		return nil, fmt.Errorf("-d %s: must be between 1s and 2m", o.duration)
	case o.rate < 100 || o.rate > 20000:
		return nil, fmt.Errorf("-rate %g: must be between 100 and 20000", o.rate)
	case o.workers < 1 || o.workers > 512:
		return nil, fmt.Errorf("-c %d: must be between 1 and 512", o.workers)
	case o.maxRequests < 1000 || o.maxRequests > 20_000_000:
		return nil, fmt.Errorf("-max-requests %d: must be between 1000 and 20000000", o.maxRequests)
	case o.audit != "file" && o.audit != "discard":
		return nil, fmt.Errorf("-audit %q: must be file or discard", o.audit)
	case o.nginx == "":
		return nil, errors.New("-nginx: must name an executable or be off")
	case o.nginxWorkers < 0 || o.nginxWorkers > 64:
		return nil, fmt.Errorf("-nginx-workers %d: must be between 0 and 64", o.nginxWorkers)
	case o.sidecarProcs < 0 || o.sidecarProcs > 1024:
		return nil, fmt.Errorf("-sidecar-procs %d: must be between 0 and 1024", o.sidecarProcs)
	}
	if err := loadgen.AbsPaths(&o.quickstart, &o.cpuProfile); err != nil {
		return nil, err
	}
	return o, nil
}

// run is the whole benchmark; it returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var o *options
	return loadgen.Command{
		Name: "bench/sidecar",
		Parse: func(args []string, stderr io.Writer) (bool, error) {
			var err error
			o, err = parseFlags(args, stderr)
			return err == nil && o.jsonOut, err
		},
		Bench: func(ctx context.Context, log io.Writer) (loadgen.Report, error) {
			return benchmark(ctx, o, log)
		},
	}.Run(ctx, args, stdout, stderr)
}

// stack runs cleanup functions in reverse order.
type stack []func()

func (s *stack) push(f func()) { *s = append(*s, f) }

func (s *stack) run() {
	for i := len(*s) - 1; i >= 0; i-- {
		(*s)[i]()
	}
	*s = nil
}

// benchmark starts every process, runs every phase on every path and
// returns the report.
func benchmark(ctx context.Context, o *options, log io.Writer) (*report, error) {
	rep := &report{
		Machine: loadgen.ThisMachine(),
		Workers: o.workers, Rate: o.rate, Duration: o.duration.String(), Audit: o.audit,
		CPUProfile: o.cpuProfile, ClockTicks: loadgen.ClockTicks, PIDs: map[string][]int{},
		MemoryAtRest: map[string]loadgen.Memory{}, MemoryAfter: map[string]loadgen.Memory{},
	}
	if o.cpuProfile != "" {
		if err := os.MkdirAll(o.cpuProfile, 0o755); err != nil {
			return nil, fmt.Errorf("-cpuprofile: %w", err)
		}
	}
	dir, err := os.MkdirTemp("", "postern-bench-sidecar-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	var cleanup stack
	defer cleanup.run()
	cleanup.push(func() { os.RemoveAll(dir) })

	progress(log, "starting the STS, the app and the two sidecars (child processes)")
	spec := childSpec{Dir: dir, Quickstart: o.quickstart, Audit: o.audit}
	srv, err := startChild(ctx, "server", roleServer, spec, 0)
	if err != nil {
		return nil, err
	}
	cleanup.push(srv.Stop)
	app, err := startChild(ctx, "app", roleApp, spec, 0)
	if err != nil {
		return nil, err
	}
	cleanup.push(app.Stop)
	bSpec := spec
	bSpec.Sidecar, bSpec.Issuer, bSpec.SVID, bSpec.App = "inventory", srv.info.Issuer, srv.info.SVIDs[invID], app.info.Addr
	sidecarB, err := startChild(ctx, "sidecar B (inventory)", roleProxy, bSpec, o.sidecarProcs)
	if err != nil {
		return nil, err
	}
	cleanup.push(sidecarB.Stop)
	aSpec := bSpec
	aSpec.Sidecar, aSpec.SVID = "order-processing", srv.info.SVIDs[ordersID]
	aSpec.Upstreams = map[string]string{"inventory": sidecarB.info.Inbound}
	sidecarA, err := startChild(ctx, "sidecar A (order-processing)", roleProxy, aSpec, o.sidecarProcs)
	if err != nil {
		return nil, err
	}
	cleanup.push(sidecarA.Stop)
	rep.SidecarProc = sidecarA.info.GOMAXPROCS
	groups := []loadgen.Group{
		{Name: groupApp, PIDs: []int{app.PID()}},
		{Name: groupSidecarA, PIDs: []int{sidecarA.PID()}},
		{Name: groupSidecarB, PIDs: []int{sidecarB.PID()}},
		{Name: groupSTS, PIDs: []int{srv.PID()}},
	}

	var nginxA *nginxProc
	bin, err := findNginx(o.nginx)
	switch {
	case errors.Is(err, errNoNginx):
		rep.Nginx = "skipped: " + err.Error()
		if o.nginx != "off" {
			rep.Nginx += "; install it with apt-get install -y nginx-light"
		}
		progress(log, "NOTE: %s: the nginx comparison is SKIPPED", rep.Nginx)
	case err != nil:
		return nil, err
	default:
		progress(log, "starting nginx B (mTLS in) and nginx A (mTLS out) with a throwaway P-256 CA")
		rep.Nginx = nginxVersion(bin)
		var n int
		rep.NginxWork, n = nginxWorkers(o.nginxWorkers, runtime.NumCPU())
		var nginxB *nginxProc
		if nginxA, nginxB, err = startNginxPair(ctx, bin, dir, rep.NginxWork, n, app.info.Addr); err != nil {
			return nil, err
		}
		cleanup.push(nginxB.stop)
		cleanup.push(nginxA.stop)
		groups = append(groups, loadgen.Group{Name: groupNginxA, PIDs: nginxA.pids()}, loadgen.Group{Name: groupNginxB, PIDs: nginxB.pids()})
	}
	for _, g := range groups {
		rep.PIDs[g.Name] = g.PIDs
	}
	l := &load{meterGroups: func() []loadgen.Group { return groups }}

	// Memory at rest: every process started, no request made yet.
	for _, g := range groups[1:] {
		if g.Name == groupSTS {
			continue
		}
		if rep.MemoryAtRest[g.Name], err = loadgen.ProcMemory(g.PIDs); err != nil {
			return nil, err
		}
	}

	h1, err := newHop1(srv.info.Issuer, srv.info.SVIDs[gatewayID], filepath.Join(o.quickstart, "idp", "idp-key.pem"))
	if err != nil {
		return nil, err
	}
	defer h1.close()
	refresh := func() error {
		tok, err := h1.get(ctx)
		if err != nil {
			return err
		}
		auth := "Bearer " + tok
		l.auth.Store(&auth)
		return nil
	}
	if err := refresh(); err != nil {
		return nil, err
	}

	targets := []*target{newTarget(pathDirect, app.info.Addr, "", o.workers)}
	if nginxA != nil {
		targets = append(targets, newTarget(pathNginx, nginxA.listen, "", o.workers))
	}
	pt := newTarget(pathPostern, sidecarA.info.Outbound, "inventory", o.workers)
	pt.wantPeer = ordersID
	targets = append(targets, pt)
	for _, t := range targets {
		defer t.close()
		if err := l.checkOnce(ctx, t); err != nil {
			return nil, err
		}
	}

	warm := min(o.duration/5, 2*time.Second)
	for _, kind := range []string{"open", "peak"} {
		for _, t := range targets {
			if t.name == pathPostern {
				if err := refresh(); err != nil {
					return nil, err
				}
			}
			var res *phaseResult
			if kind == "open" {
				progress(log, "%s: open loop at %.0f/s, %s warm-up then %s", t.name, o.rate, warm, o.duration)
				if _, err := l.openLoop(ctx, t, o.rate, warm, o.maxRequests); err != nil {
					return nil, err
				}
				profiling := o.cpuProfile != "" && t.name == pathPostern
				if profiling {
					if err := profiles(ctx, o.cpuProfile, "start", sidecarA, sidecarB); err != nil {
						return nil, err
					}
				}
				res, err = l.openLoop(ctx, t, o.rate, o.duration, o.maxRequests)
				if profiling && err == nil {
					err = profiles(ctx, o.cpuProfile, "stop", sidecarA, sidecarB)
					progress(log, "sidecar CPU profiles of the Postern open loop written to %s", o.cpuProfile)
				}
			} else {
				progress(log, "%s: peak with %d workers, %s warm-up then %s", t.name, o.workers, warm, o.duration)
				if _, err := l.closedLoop(ctx, "peak", t, warm, o.maxRequests); err != nil {
					return nil, err
				}
				res, err = l.closedLoop(ctx, "peak", t, o.duration, o.maxRequests)
			}
			if err != nil {
				return nil, err
			}
			if res.OK == 0 {
				return nil, fmt.Errorf("%s %s: no successful request (%d errors, first: %s)", t.name, kind, res.Errors, res.FirstError)
			}
			rep.Phases = append(rep.Phases, res)
		}
	}

	for _, g := range groups[1:] {
		if g.Name == groupSTS {
			continue
		}
		if rep.MemoryAfter[g.Name], err = loadgen.ProcMemory(g.PIDs); err != nil {
			return nil, err
		}
	}
	if rep.Exchange, err = scrapeExchangeStats(ctx, sidecarA.info.Admin); err != nil {
		return nil, err
	}
	rep.finish()
	return rep, nil
}

// startNginxPair writes the throwaway CA and certificates and starts nginx
// B (mutual TLS in, plain HTTP to app) and nginx A (plain HTTP in, mutual
// TLS to B), each with its own prefix directory under dir.
func startNginxPair(ctx context.Context, bin, dir, workers string, n int, app string) (a, b *nginxProc, err error) {
	certDir := filepath.Join(dir, "nginx-certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return nil, nil, err
	}
	certs, err := writePairCerts(certDir)
	if err != nil {
		return nil, nil, err
	}
	bAddr, err := freePort()
	if err != nil {
		return nil, nil, err
	}
	b, err = startNginx(ctx, bin, nginxParams{Role: "B", Workers: workers, Dir: filepath.Join(dir, "nginx-b"),
		Listen: bAddr, Upstream: app, ServerName: nginxServerName, Certs: certs}, n)
	if err != nil {
		return nil, nil, err
	}
	aAddr, err := freePort()
	if err != nil {
		b.stop()
		return nil, nil, err
	}
	a, err = startNginx(ctx, bin, nginxParams{Role: "A", Workers: workers, Dir: filepath.Join(dir, "nginx-a"),
		Listen: aAddr, Upstream: bAddr, ServerName: nginxServerName, Certs: certs}, n)
	if err != nil {
		b.stop()
		return nil, nil, err
	}
	return a, b, nil
}

// profiles starts or stops the CPU profiles of sidecars a and b, written
// to dir/sidecar-a.pprof and dir/sidecar-b.pprof.
func profiles(ctx context.Context, dir, verb string, a, b *child) error {
	for name, c := range map[string]*child{"sidecar-a": a, "sidecar-b": b} {
		line := "cpuprofile-stop"
		if verb == "start" {
			line = "cpuprofile-start " + filepath.Join(dir, name+".pprof")
		}
		if err := c.Command(ctx, line); err != nil {
			return err
		}
	}
	return nil
}

// nginxVersion returns what `nginx -v` prints, e.g. "nginx/1.22.1".
func nginxVersion(bin string) string {
	out, err := exec.Command(bin, "-v").CombinedOutput()
	if err != nil {
		return bin
	}
	v := strings.TrimSpace(string(out))
	return strings.TrimPrefix(v, "nginx version: ")
}

func progress(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "bench/sidecar: "+format+"\n", args...)
}
