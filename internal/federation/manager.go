package federation

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"postern.dev/postern/internal/policy"
)

// Refresh bounds. A bundle's refresh hint is honoured within [MinRefresh,
// MaxRefresh]; a bundle without one is refreshed every DefaultRefresh.
const (
	MinRefresh     = 30 * time.Second
	MaxRefresh     = time.Hour
	DefaultRefresh = 5 * time.Minute
)

// MaxBundleBytes bounds a bundle endpoint's answer.
const MaxBundleBytes = 1 << 20

// retryInitial is the delay after a first failed fetch; it doubles per
// consecutive failure up to the refresh interval.
const retryInitial = 10 * time.Second

// Config configures a Manager. Zero values mean defaults.
type Config struct {
	// TrustDomain is our own trust domain; a Federation naming it is
	// ignored (policy.Compile already refuses it).
	TrustDomain spiffeid.TrustDomain
	// Now is the clock that schedules refreshes (default time.Now).
	Now func() time.Time
	// Logger receives bundle updates and fetch failures (default: discard).
	Logger *slog.Logger
	// PollInterval is how often Run looks for due refreshes (default 1s).
	PollInterval time.Duration
	// Timeout bounds one fetch (default 30s).
	Timeout time.Duration
}

// Manager fetches and refreshes the bundles of federated trust domains. It
// is safe for concurrent use. There is no HTTP client to inject: each
// Federation gets its own, whose TLS configuration is the authentication of
// its endpoint.
type Manager struct {
	cfg     Config
	bundles atomic.Pointer[map[spiffeid.TrustDomain]*spiffebundle.Bundle]
	wake    chan struct{}

	mu       sync.Mutex // guards watchers and serializes writes to bundles
	watchers map[spiffeid.TrustDomain]*watcher
}

// watcher is the state of one Federation.
type watcher struct {
	fed    policy.Federation
	client *http.Client
	// last is the last good bundle (or the bootstrap bundle): with
	// https_spiffe it authenticates the endpoint.
	last atomic.Pointer[spiffebundle.Bundle]

	// Guarded by Manager.mu.
	next     time.Time
	failures int
	inflight bool
	stopped  bool
}

// New returns a Manager with no federations; call Update and Run.
func New(cfg Config) *Manager {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	m := &Manager{cfg: cfg, wake: make(chan struct{}, 1), watchers: map[spiffeid.TrustDomain]*watcher{}}
	empty := map[spiffeid.TrustDomain]*spiffebundle.Bundle{}
	m.bundles.Store(&empty)
	return m
}

// Bundles returns the current bundle of every federated trust domain that
// has one (a new map; the bundles are shared and must not be modified).
func (m *Manager) Bundles() map[spiffeid.TrustDomain]*spiffebundle.Bundle {
	return maps.Clone(*m.bundles.Load())
}

// Update makes feds the set of federations: new ones are fetched at once,
// removed ones stop and their bundles are no longer served, changed ones
// start afresh (an https_spiffe one from its bootstrap bundle, an https_web
// one with no bundle until its first fetch). Unchanged ones keep running.
func (m *Manager) Update(feds []policy.Federation) {
	m.mu.Lock()
	defer m.mu.Unlock()
	next := make(map[spiffeid.TrustDomain]*watcher, len(feds))
	bundles := maps.Clone(*m.bundles.Load())
	for _, f := range feds {
		td := f.TrustDomain
		switch {
		case td.IsZero() || td == m.cfg.TrustDomain:
			m.cfg.Logger.Warn("federation: ignoring a Federation that names no other trust domain", "federation", f.Name)
			continue
		case next[td] != nil:
			m.cfg.Logger.Warn("federation: ignoring a second Federation for a trust domain", "federation", f.Name, "trust_domain", td.Name())
			continue
		}
		if old := m.watchers[td]; old != nil && sameFederation(old.fed, f) {
			next[td] = old
			continue
		}
		w, err := newWatcher(f)
		if err != nil {
			m.cfg.Logger.Error("federation: ignoring a Federation", "federation", f.Name, "trust_domain", td.Name(), "error", err.Error())
			continue
		}
		next[td] = w
		delete(bundles, td)
		if f.BootstrapBundle != nil {
			bundles[td] = f.BootstrapBundle
		}
		m.cfg.Logger.Info("federation: watching a bundle endpoint", "federation", f.Name, "trust_domain", td.Name(),
			"url", f.BundleEndpointURL, "profile", f.Profile)
	}
	for td, w := range m.watchers {
		if next[td] != w {
			w.stopped = true
			w.client.CloseIdleConnections()
		}
		if next[td] == nil {
			delete(bundles, td)
			m.cfg.Logger.Info("federation: trust domain no longer federated", "trust_domain", td.Name())
		}
	}
	m.watchers = next
	m.bundles.Store(&bundles)
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// sameFederation reports whether two Federations fetch the same way.
func sameFederation(a, b policy.Federation) bool {
	if a.TrustDomain != b.TrustDomain || a.BundleEndpointURL != b.BundleEndpointURL || a.Profile != b.Profile ||
		a.EndpointSPIFFEID != b.EndpointSPIFFEID {
		return false
	}
	if (a.BootstrapBundle == nil) != (b.BootstrapBundle == nil) ||
		(a.BootstrapBundle != nil && !a.BootstrapBundle.Equal(b.BootstrapBundle)) {
		return false
	}
	return slices.EqualFunc(a.CABundle, b.CABundle, func(x, y *x509.Certificate) bool { return x.Equal(y) })
}

func newWatcher(f policy.Federation) (*watcher, error) {
	w := &watcher{fed: f}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	switch f.Profile {
	case policy.ProfileHTTPSWeb:
		if len(f.CABundle) > 0 {
			pool := x509.NewCertPool()
			for _, c := range f.CABundle {
				pool.AddCert(c)
			}
			tc.RootCAs = pool
		}
	case policy.ProfileHTTPSSPIFFE:
		if f.BootstrapBundle == nil || f.EndpointSPIFFEID.IsZero() {
			return nil, errors.New("https_spiffe needs a bootstrap bundle and an endpoint SPIFFE ID")
		}
		w.last.Store(f.BootstrapBundle)
		// go-spiffe verifies the endpoint's X.509-SVID against the last
		// good bundle, read per handshake, and authorizes its exact ID.
		tlsconfig.HookTLSClientConfig(tc, (*lastGood)(w), tlsconfig.AuthorizeID(f.EndpointSPIFFEID))
	default:
		return nil, fmt.Errorf("unknown profile %q", f.Profile)
	}
	w.client = &http.Client{
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			TLSClientConfig:       tc,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 20 * time.Second,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   1,
			ForceAttemptHTTP2:     true,
		},
		// A redirect could lead to an endpoint the Federation does not name.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return w, nil
}

// lastGood is a watcher seen as the x509bundle.Source of its trust domain.
type lastGood watcher

// GetX509BundleForTrustDomain returns the last good bundle's X.509
// authorities for the watcher's own trust domain only.
func (l *lastGood) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b := l.last.Load()
	if b == nil || td != l.fed.TrustDomain {
		return nil, fmt.Errorf("federation: no bundle for trust domain %q", td.Name())
	}
	return b.X509Bundle(), nil
}

// Run refreshes the bundles until ctx is done, then waits for the fetches
// in flight.
func (m *Manager) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	t := time.NewTicker(m.cfg.PollInterval)
	defer t.Stop()
	for {
		m.startDue(ctx, &wg)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.wake:
		}
	}
}

// startDue starts a fetch for every watcher whose refresh is due.
func (m *Manager) startDue(ctx context.Context, wg *sync.WaitGroup) {
	now := m.cfg.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.watchers {
		if w.inflight || now.Before(w.next) {
			continue
		}
		w.inflight = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			b, err := m.fetch(ctx, w)
			m.done(w, b, err)
		}()
	}
}

// fetch GETs and parses the bundle of w's trust domain.
func (m *Manager) fetch(ctx context.Context, w *watcher) (*spiffebundle.Bundle, error) {
	ctx, cancel := context.WithTimeout(ctx, m.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, w.fed.BundleEndpointURL, nil)
	if err != nil {
		return nil, fmt.Errorf("federation: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := w.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("federation: fetch bundle: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("federation: fetch bundle: endpoint answered %d", resp.StatusCode)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, MaxBundleBytes+1))
	if err != nil {
		return nil, fmt.Errorf("federation: fetch bundle: %w", err)
	}
	return parseBundle(w.fed, data)
}

// parseBundle parses a bundle endpoint's answer for f's trust domain.
func parseBundle(f policy.Federation, data []byte) (*spiffebundle.Bundle, error) {
	if len(data) > MaxBundleBytes {
		return nil, fmt.Errorf("federation: bundle larger than %d bytes", MaxBundleBytes)
	}
	b, err := spiffebundle.Parse(f.TrustDomain, data)
	if err != nil {
		return nil, fmt.Errorf("federation: %w", err)
	}
	switch {
	case b.Empty() || len(b.X509Authorities())+len(b.JWTAuthorities()) == 0:
		// A bundle of other kinds of keys only would wipe the X.509 and
		// JWT authorities that workloads use.
		return nil, errors.New("federation: bundle holds no X.509 or JWT authority")
	case f.Profile == policy.ProfileHTTPSSPIFFE && len(b.X509Authorities()) == 0:
		// It would be the only trust for the next fetch.
		return nil, errors.New("federation: bundle holds no X.509 authority")
	}
	return b, nil
}

// done records the outcome of a fetch.
func (m *Manager) done(w *watcher, b *spiffebundle.Bundle, err error) {
	now := m.cfg.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	w.inflight = false
	if w.stopped {
		return
	}
	td := w.fed.TrustDomain
	log := m.cfg.Logger.With("federation", w.fed.Name, "trust_domain", td.Name())
	if err != nil {
		w.failures++
		d := retryDelay(w.failures, refreshInterval(w.last.Load()))
		w.next = now.Add(d)
		log.Warn("federation: bundle fetch failed; keeping the last good bundle", "error", err.Error(), "retry_in", d)
		return
	}
	cur := *m.bundles.Load()
	if old := cur[td]; old != nil {
		// An older bundle (a lagging replica of the endpoint, a restored
		// backup) would bring retired roots back: keep the newer one.
		oldSeq, okOld := old.SequenceNumber()
		newSeq, okNew := b.SequenceNumber()
		if okOld && okNew && newSeq < oldSeq {
			w.failures++
			d := retryDelay(w.failures, refreshInterval(w.last.Load()))
			w.next = now.Add(d)
			log.Warn("federation: the endpoint served an older bundle; keeping the last good bundle", "sequence", newSeq, "held_sequence", oldSeq, "retry_in", d)
			return
		}
	}
	w.failures = 0
	w.next = now.Add(refreshInterval(b))
	w.last.Store(b)
	if old := cur[td]; old != nil && old.Equal(b) {
		return
	}
	bundles := maps.Clone(cur)
	bundles[td] = b
	m.bundles.Store(&bundles)
	attrs := []any{"x509_authorities", len(b.X509Authorities()), "jwt_authorities", len(b.JWTAuthorities()), "next_refresh", w.next}
	if seq, ok := b.SequenceNumber(); ok {
		attrs = append(attrs, "sequence", seq)
	}
	log.Info("federation: bundle updated", attrs...)
}

// refreshInterval is b's refresh hint within [MinRefresh, MaxRefresh], or
// DefaultRefresh without one.
func refreshInterval(b *spiffebundle.Bundle) time.Duration {
	if b == nil {
		return DefaultRefresh
	}
	h, ok := b.RefreshHint()
	switch {
	case !ok:
		return DefaultRefresh
	case h < MinRefresh:
		// A hint so large that it overflowed is negative: refresh often
		// rather than never.
		return MinRefresh
	case h > MaxRefresh:
		return MaxRefresh
	}
	return h
}

// retryDelay is the delay after n consecutive failures: doubling from
// retryInitial, at most interval.
func retryDelay(n int, interval time.Duration) time.Duration {
	d := retryInitial
	for i := 1; i < n && d < interval; i++ {
		d *= 2
	}
	return min(d, interval)
}
