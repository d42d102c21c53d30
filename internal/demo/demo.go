package demo

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/ca"
	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/proxy"
	"postern.dev/postern/internal/server"
)

// The demo's workloads, as named in the quickstart example.
const (
	Gateway         = "gateway"
	OrderProcessing = "order-processing"
	Inventory       = "inventory"
	Finance         = "finance"
	// Attacker is a workload of the trust domain that no policy mentions:
	// it holds a valid certificate and nothing else.
	Attacker = "attacker"
)

// DefaultExamples is where the quickstart example lives in the repository.
const DefaultExamples = "examples/quickstart"

// startTimeout bounds how long Start waits for every component to be ready.
const startTimeout = 30 * time.Second

// Config configures a demo. Zero values mean defaults.
type Config struct {
	// Examples is the quickstart example directory (server.yaml,
	// resources/, sidecars/); default examples/quickstart in the working
	// directory or the nearest parent directory that has it.
	Examples string
	// Dir is where the demo writes its files (resources, data dir,
	// certificates); default a new temporary directory, removed by Close.
	// A Dir given here is left in place.
	Dir string
	// Logger receives the components' operational and audit logs; default
	// discard.
	Logger *slog.Logger
	// Now returns the current time for the identity provider, the sidecars
	// and the story; default time.Now.
	Now func() time.Time
}

// Demo is the whole system running on loopback. Build it with Start, play
// the story with Story, stop it with Close.
type Demo struct {
	cfg      Config
	dir      string
	ownDir   bool
	examples string
	td       spiffeid.TrustDomain
	logger   *slog.Logger
	rec      *recorder

	idp      *IdP
	srv      *server.Server
	apps     *apps
	appSrv   []*http.Server
	appAddr  map[string]string
	sidecars map[string]*proxy.Sidecar
	edge     edge
	ids      map[string]*workload

	// The workloads (renewal, sidecars, gateway) stop one by one in the
	// reverse of their start order, each after its callers, whose pools
	// are closed by then: nothing is left to drain. Then the control plane,
	// the apps and the IdP stop.
	stops     []func()
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	errMu     sync.Mutex
	runErrs   []error
	closeOnce sync.Once
	closeErr  error
}

// workload is one SPIFFE identity of the demo: a key generated once and an
// X.509-SVID from the server's CA, written to <dir>/certs/<name>/ as
// svid.pem, svid.key and bundle.pem and renewed at half-life with the same
// key.
type workload struct {
	name string
	id   spiffeid.ID
	key  *ecdsa.PrivateKey
	dir  string
	svid atomic.Pointer[x509svid.SVID]
}

func (w *workload) certFile() string   { return filepath.Join(w.dir, "svid.pem") }
func (w *workload) keyFile() string    { return filepath.Join(w.dir, "svid.key") }
func (w *workload) bundleFile() string { return filepath.Join(w.dir, "bundle.pem") }

// Start brings the whole system up and returns once every component is
// ready. On error everything started so far is stopped.
func Start(ctx context.Context, cfg Config) (_ *Demo, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	d := &Demo{cfg: cfg, logger: cfg.Logger, rec: newRecorder(), appAddr: map[string]string{},
		sidecars: map[string]*proxy.Sidecar{}, ids: map[string]*workload{}}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.cancel = cancel
	defer func() {
		if err != nil {
			_ = d.Close()
		}
	}()
	if d.examples, err = findExamples(cfg.Examples); err != nil {
		return nil, err
	}
	if d.dir = cfg.Dir; d.dir == "" {
		if d.dir, err = os.MkdirTemp("", "postern-demo-"); err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		d.ownDir = true
	}
	if err := d.startIdP(); err != nil {
		return nil, err
	}
	if err := d.startServer(ctx, runCtx); err != nil {
		return nil, err
	}
	for _, name := range []string{Gateway, OrderProcessing, Inventory, Finance, Attacker} {
		if err := d.newWorkload(ctx, name); err != nil {
			return nil, err
		}
	}
	d.goWorkload(func(ctx context.Context) error { d.renew(ctx); return nil }, nil)
	if err := copyDir(filepath.Join(d.examples, "sidecars", "policies"), filepath.Join(d.dir, "policies"), nil); err != nil {
		return nil, err
	}
	d.apps = newApps()
	for name, h := range map[string]http.Handler{OrderProcessing: d.apps.orders(), Inventory: d.apps.inventory(), Finance: d.apps.finance()} {
		if err := d.serveApp(name, h); err != nil {
			return nil, err
		}
	}
	// Upstreams first: order-processing's sidecar needs their addresses,
	// and the gateway needs order-processing's.
	if err := d.startSidecar(ctx, Inventory, nil); err != nil {
		return nil, err
	}
	if err := d.startSidecar(ctx, Finance, nil); err != nil {
		return nil, err
	}
	if err := d.startSidecar(ctx, OrderProcessing, map[string]string{
		Inventory: d.sidecars[Inventory].InboundAddr().String(),
		Finance:   d.sidecars[Finance].InboundAddr().String(),
	}); err != nil {
		return nil, err
	}
	out := d.sidecars[OrderProcessing].OutboundAddr().String()
	d.apps.ordersOutbound.Store(&out)
	if d.edge, err = d.startEdge(ctx); err != nil {
		return nil, err
	}
	d.goWorkload(d.edge.Run, d.edge.Close)
	if err := d.waitReady(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

// go1 runs f in the background until Close, keeping its error.
func (d *Demo) go1(f func() error) { d.goIn(&d.wg, f) }

// goWorkload runs f like go1, with a context of its own that Close
// cancels (then waits for f, then calls done) before anything started
// earlier.
func (d *Demo) goWorkload(f func(context.Context) error, done func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	d.goIn(&wg, func() error { return f(ctx) })
	d.stops = append(d.stops, func() {
		cancel()
		wg.Wait()
		if done != nil {
			done()
		}
	})
}

func (d *Demo) goIn(wg *sync.WaitGroup, f func() error) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := f(); err != nil {
			d.errMu.Lock()
			d.runErrs = append(d.runErrs, err)
			d.errMu.Unlock()
		}
	}()
}

// component returns a logger for name's operational logs.
func (d *Demo) component(name string) *slog.Logger {
	return d.logger.With(slog.String("component", name))
}

// audit returns a logger for name's audit lines: recorded for the story
// and passed on to the demo's logger.
func (d *Demo) audit(name string) *slog.Logger {
	return slog.New(d.rec.handler(name, d.logger.Handler())).With(slog.String("component", name), slog.String("log", "audit"))
}

func (d *Demo) startIdP() error {
	p, err := NewIdP("127.0.0.1:0", d.cfg.Now)
	if err != nil {
		return err
	}
	d.idp = p
	d.go1(p.Serve)
	return nil
}

// startServer runs postern server on a copy of the quickstart resources in
// which the example identity provider is replaced by the demo's own, with
// its public key inline (nothing to fetch).
func (d *Demo) startServer(ctx, runCtx context.Context) error {
	res := filepath.Join(d.dir, "resources")
	replace := strings.NewReplacer(quickstartIdP, d.idp.Issuer())
	skip := func(name string) bool { return name == "idp.yaml" || strings.HasSuffix(name, "_test.yaml") }
	if err := copyDir(filepath.Join(d.examples, "resources"), res, func(name string, b []byte) ([]byte, bool) {
		if skip(name) {
			return nil, false
		}
		return []byte(replace.Replace(string(b))), true
	}); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(res, "idp.yaml"), d.trustedIssuer(), 0o644); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	cfg, err := server.LoadConfig(filepath.Join(d.examples, "server.yaml"))
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	cfg.Listen = "127.0.0.1:0"
	cfg.Issuer = ""
	cfg.DataDir = filepath.Join(d.dir, "data")
	cfg.Resources = res
	if d.td, err = spiffeid.TrustDomainFromString(cfg.TrustDomain); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	srv, err := server.New(ctx, cfg, d.component("server"), d.audit("server"))
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	d.srv = srv
	d.go1(func() error { return srv.Run(runCtx) })
	return nil
}

// quickstartIdP is the issuer of the quickstart's example identity
// provider, replaced in the demo's copy by the demo's own.
const quickstartIdP = "https://idp.quickstart.local"

// trustedIssuer is the TrustedIssuer resource of the demo's identity
// provider: http is accepted for loopback issuers, and the key is inline.
func (d *Demo) trustedIssuer() []byte {
	return fmt.Appendf(nil, `# The demo's identity provider, started by postern demo on loopback.
apiVersion: postern.dev/v1
kind: TrustedIssuer
metadata:
  name: quickstart-idp
spec:
  issuer: %s
  audiences: [%s]
  algorithms: [ES256]
  claims: [email, name]
  jwks: %s
`, d.idp.Issuer(), IdPAudience, d.idp.JWKS())
}

// newWorkload generates name's key and issues its first SVID.
func (d *Demo) newWorkload(ctx context.Context, name string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("demo: key: %w", err)
	}
	id, err := spiffeid.FromSegments(d.td, "ns", "shop", "sa", name)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	w := &workload{name: name, id: id, key: key, dir: filepath.Join(d.dir, "certs", name)}
	if err := os.MkdirAll(w.dir, 0o700); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	d.ids[name] = w
	return d.issue(ctx, w)
}

// issue gets w an SVID from the server's CA (with DNS name localhost, so
// that curl can check the sidecars' certificates too) and writes it.
func (d *Demo) issue(ctx context.Context, w *workload) error {
	s, err := d.srv.CA().IssueX509SVID(ctx, ca.X509SVIDRequest{ID: w.id, PublicKey: w.key.Public(), DNSNames: []string{"localhost"}})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	svid := &x509svid.SVID{ID: w.id, Certificates: s.Certificates, PrivateKey: w.key}
	certs, key, err := svid.Marshal()
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	for _, f := range []struct {
		path string
		b    []byte
	}{{w.keyFile(), key}, {w.certFile(), certs}, {w.bundleFile(), d.srv.CA().BundlePEM()}} {
		if err := writeAtomic(f.path, f.b); err != nil {
			return err
		}
	}
	w.svid.Store(svid)
	return nil
}

// renew re-issues every SVID at half its lifetime, keeping the keys, for
// demos left running with --serve.
func (d *Demo) renew(ctx context.Context) {
	for {
		s := d.ids[Gateway].svid.Load()
		leaf := s.Certificates[0]
		wait := leaf.NotAfter.Sub(leaf.NotBefore) / 2
		wait -= d.cfg.Now().Sub(leaf.NotBefore)
		if wait < time.Second {
			wait = time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		for _, name := range []string{Gateway, OrderProcessing, Inventory, Finance, Attacker} {
			if err := d.issue(ctx, d.ids[name]); err != nil && ctx.Err() == nil {
				d.logger.Warn("could not renew an SVID", slog.String("workload", name), slog.String("error", err.Error()))
			}
		}
	}
}

func (d *Demo) serveApp(name string, h http.Handler) error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("demo: %s app: %w", name, err)
	}
	s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second}
	d.appSrv = append(d.appSrv, s)
	d.appAddr[name] = ln.Addr().String()
	d.go1(func() error {
		if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("demo: %s app: %w", name, err)
		}
		return nil
	})
	return nil
}

// startSidecar runs name's quickstart sidecar configuration with loopback
// listeners on free ports, the demo's server as STS, its SVID files and the
// quickstart's AuthorizationPolicies, in front of name's app.
func (d *Demo) startSidecar(ctx context.Context, name string, upstreams map[string]string) error {
	cfg, err := d.sidecarConfig(name, upstreams)
	if err != nil {
		return err
	}
	sc, err := proxy.NewSidecar(ctx, cfg, proxy.SidecarOptions{Logger: d.component(name + "-sidecar"), Audit: d.audit(name), Now: d.cfg.Now})
	if err != nil {
		return fmt.Errorf("demo: %s sidecar: %w", name, err)
	}
	d.sidecars[name] = sc
	d.goWorkload(sc.Run, func() { _ = sc.Close() })
	return nil
}

func (d *Demo) sidecarConfig(name string, upstreams map[string]string) (*proxy.Config, error) {
	cfg, err := proxy.LoadConfig(filepath.Join(d.examples, "sidecars", name+".yaml"))
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	w := d.ids[name]
	cfg.SPIFFE = proxy.IdentitySource{Files: &proxy.FilesSource{Cert: w.certFile(), Key: w.keyFile(), Bundle: w.bundleFile()}}
	cfg.STS.Issuer = d.srv.Issuer()
	cfg.STS.TokenEndpoint, cfg.STS.JWKSURI, cfg.STS.RevocationsURI = "", "", ""
	// Step 6 waits for the sidecars to learn of a revocation; the default
	// poll (5s) would make it the slowest step by far.
	cfg.STS.RevocationPollInterval = policy.Duration(500 * time.Millisecond)
	cfg.Policies = filepath.Join(d.dir, "policies")
	cfg.Inbound.Listen = "127.0.0.1:0"
	cfg.Inbound.App = d.appAddr[name]
	if cfg.Inbound.App == "" {
		cfg.Inbound.App = "127.0.0.1:9" // no app: nothing calls this workload
	}
	// inventory's app receives the token itself, so step 4 can show what
	// a token stolen there is worth.
	cfg.Inbound.ForwardToken = name == Inventory
	cfg.Outbound.Listen = "127.0.0.1:0"
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.DrainTimeout = policy.Duration(2 * time.Second)
	for i, u := range cfg.Outbound.Upstreams {
		a, ok := upstreams[u.Name]
		if !ok {
			return nil, fmt.Errorf("demo: %s sidecar: no address for upstream %q", name, u.Name)
		}
		cfg.Outbound.Upstreams[i].Addresses = []string{a}
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("demo: %s sidecar: %w", name, err)
	}
	return cfg, nil
}

// waitReady waits for the sidecars and the gateway to hold their SVIDs
// and the token service's keys.
func (d *Demo) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		var waiting []string
		for _, name := range []string{Inventory, Finance, OrderProcessing} {
			if !d.sidecars[name].Ready() {
				waiting = append(waiting, name+" sidecar")
			}
		}
		if !d.edge.Ready() {
			waiting = append(waiting, "gateway")
		}
		if len(waiting) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo: not ready after %s: %s", startTimeout, strings.Join(waiting, ", "))
		case <-t.C:
		}
	}
}

// Close stops every component, waits for them, and removes the temporary
// directory. It returns the errors components reported while running.
func (d *Demo) Close() error {
	d.closeOnce.Do(func() {
		var errs []error
		for i := len(d.stops) - 1; i >= 0; i-- {
			d.stops[i]()
		}
		d.cancel()
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		for _, s := range d.appSrv {
			_ = s.Shutdown(sctx)
		}
		if d.idp != nil {
			_ = d.idp.Close(sctx)
		}
		d.wg.Wait()
		if d.apps != nil {
			d.apps.close()
		}
		d.errMu.Lock()
		errs = append(errs, d.runErrs...)
		d.errMu.Unlock()
		if d.ownDir && d.dir != "" {
			if err := os.RemoveAll(d.dir); err != nil {
				errs = append(errs, fmt.Errorf("demo: %w", err))
			}
		}
		d.closeErr = errors.Join(errs...)
	})
	return d.closeErr
}

// Dir returns the directory holding the demo's files.
func (d *Demo) Dir() string { return d.dir }

// findExamples returns dir, or by default the nearest examples/quickstart
// from the working directory up.
func findExamples(dir string) (string, error) {
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "server.yaml")); err != nil {
			return "", fmt.Errorf("demo: %s is not the quickstart example: %w", dir, err)
		}
		return dir, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	for d := wd; ; d = filepath.Dir(d) {
		p := filepath.Join(d, DefaultExamples)
		if _, err := os.Stat(filepath.Join(p, "server.yaml")); err == nil {
			return p, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("demo: no %s in %s or above: run from the Postern repository, or pass --examples", DefaultExamples, wd)
		}
	}
}

// copyDir copies the regular files of src into dst (created), passing each
// through edit when it is given (false: skip the file).
func copyDir(src, dst string, edit func(name string, b []byte) ([]byte, bool)) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		if edit != nil {
			var keep bool
			if b, keep = edit(e.Name(), b); !keep {
				continue
			}
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
	}
	return nil
}

// writeAtomic writes b to path through a temporary file and a rename, so a
// reader never sees half a file.
func writeAtomic(path string, b []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	return nil
}
