//go:build linux

// Command sts is the load generator for the token service (STS): it drives
// the real HTTPS token endpoint of `postern server` over loopback with
// mutual-TLS clients and reports throughput and latency, side by side with
// the machine's raw ES256 verify+sign rate, the limit a token exchange (one
// verify, one sign) cannot beat.
//
//	go run ./bench/sts [-d 10s] [-c 16] [-proto h1|h2] [-json]
//
// It starts the control plane in a child process (itself, re-executed with
// POSTERN_BENCH_ROLE=server) on the quickstart example's resources with a
// temporary data dir, so that the server's CPU time can be read from
// /proc/<pid>/stat apart from the load generator's. The child is killed when
// the run ends, on every path. Everything listens on 127.0.0.1 only.
//
// The phases, each bounded in time and in request count:
//
//   - raw: one ES256 verify + one ES256 sign per op, one goroutine, ~2s,
//     before the first round of A and after each (the higher of the two
//     measurements around a round is that round's limit);
//   - A, peak: C closed-loop workers on keep-alive connections, -rounds
//     times; the headline ratio is the median of the rounds' ratios;
//   - B, latency: open loop at half of A's rate, latency measured from each
//     request's scheduled send time (no coordinated omission);
//   - C, handshakes: a new TLS connection per request, first with full
//     handshakes, then with session resumption.
//
// It is Linux-only (it reads /proc). See README.md for what each figure means.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"postern.dev/postern/bench/internal/loadgen"
)

// options are the command-line flags.
type options struct {
	duration    time.Duration
	rounds      int
	workers     int
	proto       string
	rawDuration time.Duration
	maxRequests int64
	quickstart  string
	serverProcs int
	audit       string
	cpuProfile  string
	jsonOut     bool
}

func main() {
	if os.Getenv(roleEnv) == roleServer {
		os.Exit(serverMain())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// parseFlags parses and validates the flags.
func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	fs := flag.NewFlagSet("sts", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&o.duration, "d", 10*time.Second, "duration of phases A and B (each phase C half of it), 1s to 2m")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds of phase A, each between two raw ES256 measurements, 1 to 9 (the ratio is their median)")
	fs.IntVar(&o.workers, "c", 16, "concurrent workers (closed loop) and open-loop senders, 1 to 512")
	fs.StringVar(&o.proto, "proto", "h1", "h1: HTTP/1.1, one keep-alive connection per worker; h2: HTTP/2, one shared connection")
	fs.DurationVar(&o.rawDuration, "raw", 2*time.Second, "duration of each raw ES256 measurement, 100ms to 30s")
	fs.Int64Var(&o.maxRequests, "max-requests", 2_000_000, "upper bound on requests per phase (and on stored latency samples)")
	fs.StringVar(&o.quickstart, "quickstart", "examples/quickstart", "directory of the quickstart example (server.yaml, resources/, idp/idp-key.pem)")
	fs.IntVar(&o.serverProcs, "server-procs", 0, "GOMAXPROCS of the server process (0: inherit)")
	fs.StringVar(&o.audit, "audit", "file", "where the server writes its audit lines: file (a file in the temp dir, as in production) or discard")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write the server's CPU profile during phase A to this file (go tool pprof)")
	fs.BoolVar(&o.jsonOut, "json", false, "print the report as one JSON object instead of text")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	switch {
	case fs.NArg() > 0:
		return nil, fmt.Errorf("unexpected arguments %q", fs.Args())
	case o.duration < time.Second || o.duration > 2*time.Minute:
		// The hop-1 token lives 5 minutes; it is refreshed before each phase.
		return nil, fmt.Errorf("-d %s: must be between 1s and 2m", o.duration)
	case o.rounds < 1 || o.rounds > 9:
		return nil, fmt.Errorf("-rounds %d: must be between 1 and 9", o.rounds)
	case o.workers < 1 || o.workers > 512:
		return nil, fmt.Errorf("-c %d: must be between 1 and 512", o.workers)
	case o.proto != "h1" && o.proto != "h2":
		return nil, fmt.Errorf("-proto %q: must be h1 or h2", o.proto)
	case o.rawDuration < 100*time.Millisecond || o.rawDuration > 30*time.Second:
		return nil, fmt.Errorf("-raw %s: must be between 100ms and 30s", o.rawDuration)
	case o.maxRequests < 1000 || o.maxRequests > 20_000_000:
		return nil, fmt.Errorf("-max-requests %d: must be between 1000 and 20000000", o.maxRequests)
	case o.serverProcs < 0 || o.serverProcs > 1024:
		return nil, fmt.Errorf("-server-procs %d: must be between 0 and 1024", o.serverProcs)
	case o.audit != "file" && o.audit != "discard":
		return nil, fmt.Errorf("-audit %q: must be file or discard", o.audit)
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
		Name: "bench/sts",
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

// benchmark runs every phase against a child server and returns the report.
func benchmark(ctx context.Context, o *options, log io.Writer) (*report, error) {
	rep := &report{
		Machine:    loadgen.ThisMachine(),
		Workers:    o.workers,
		Duration:   o.duration.String(),
		Audit:      o.audit,
		ClockTicks: loadgen.ClockTicks,
	}

	progress(log, "raw ES256 verify+sign, one goroutine, %s", o.rawDuration)
	before, err := rawES256(ctx, o.rawDuration)
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp("", "postern-bench-sts-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(dir)

	progress(log, "starting the server (child process)")
	child, err := startChild(ctx, o, dir)
	if err != nil {
		return nil, err
	}
	defer child.Stop()
	rep.ServerGOMAXPROC = child.info.GOMAXPROCS
	rep.ServerPID = child.info.PID

	wl, err := newWorkload(ctx, o, child.info)
	if err != nil {
		return nil, err
	}
	defer wl.close()
	rep.Transport = wl.describe()

	// A: warm up (connections, caches, the heap), then peak, in rounds
	// each followed by a raw measurement: the machine's speed drifts (it is
	// shared), so each round is compared with the raw rate measured next to
	// it, and the median round is the figure.
	warm := min(o.duration/5, 2*time.Second)
	raws := []rawResult{before}
	var rounds []*phaseResult
	for i := range o.rounds {
		name := "A peak"
		if o.rounds > 1 {
			name = fmt.Sprintf("A peak %d", i+1)
		}
		progress(log, "phase %s: warm-up %s, then peak for %s with %d workers", name, warm, o.duration, o.workers)
		if err := wl.refreshSubject(ctx); err != nil {
			return nil, err
		}
		if _, err := wl.closedLoop(ctx, "warm-up", child.info.PID, wl.keepAlive, warm, o.maxRequests); err != nil {
			return nil, err
		}
		profile := o.cpuProfile != "" && i == 0
		if profile {
			if err := child.Command(ctx, "cpuprofile-start "+o.cpuProfile); err != nil {
				return nil, err
			}
		}
		peak, err := wl.closedLoop(ctx, name, child.info.PID, wl.keepAlive, o.duration, o.maxRequests)
		if err != nil {
			return nil, err
		}
		if profile {
			if err := child.Command(ctx, "cpuprofile-stop"); err != nil {
				return nil, err
			}
			progress(log, "server CPU profile of the first round of phase A written to %s", o.cpuProfile)
		}
		if peak.OK == 0 {
			return nil, fmt.Errorf("phase %s: no successful exchange (%d errors, first: %s)", name, peak.Errors, peak.FirstError)
		}
		rounds = append(rounds, peak)
		progress(log, "raw ES256 verify+sign after %s", name)
		raw, err := rawES256(ctx, o.rawDuration)
		if err != nil {
			return nil, err
		}
		raws = append(raws, raw)
	}
	peak := medianRound(rounds, raws)

	// B: open loop at half of the peak.
	rate := peak.Rate / 2
	progress(log, "phase B: open loop at %.0f/s (half of peak) for %s", rate, o.duration)
	if err := wl.refreshSubject(ctx); err != nil {
		return nil, err
	}
	half, err := wl.openLoop(ctx, "B half peak", child.info.PID, rate, o.duration, o.maxRequests)
	if err != nil {
		return nil, err
	}

	// C: a new TLS connection per request, full then resumed handshakes.
	hsDur := o.duration / 2
	hsMax := min(o.maxRequests, maxNewConnections)
	progress(log, "phase C: new connection per request, %s full handshakes, then %s resumed", hsDur, hsDur)
	if err := wl.refreshSubject(ctx); err != nil {
		return nil, err
	}
	full, err := wl.closedLoop(ctx, "C full handshake", child.info.PID, wl.fullHandshake, hsDur, hsMax)
	if err != nil {
		return nil, err
	}
	resumed, err := wl.closedLoop(ctx, "C resumed", child.info.PID, wl.resumedHandshake, hsDur, hsMax)
	if err != nil {
		return nil, err
	}

	rep.Raw = raws
	rep.Phases = append(rounds, half, full, resumed)
	rep.finish(rounds, raws, half)
	return rep, nil
}

// maxNewConnections bounds each handshake phase, so that a long run does not
// exhaust loopback ephemeral ports (closed connections linger in TIME_WAIT).
const maxNewConnections = 20_000

func progress(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "bench/sts: "+format+"\n", args...)
}
