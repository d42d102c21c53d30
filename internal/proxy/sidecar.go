package proxy

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/token"
)

// Identity is what the sidecar needs from a SPIFFE source: its own SVID and
// the trust bundles. go-spiffe's workloadapi.X509Source and FileSource
// implement it.
type Identity interface {
	x509svid.Source
	x509bundle.Source
}

// SidecarOptions are the parts of a sidecar that are not configuration.
// Zero values mean defaults.
type SidecarOptions struct {
	// Logger receives operational logs; default discard.
	Logger *slog.Logger
	// Audit receives the access/audit line of every request; default
	// Logger with log=audit.
	Audit *slog.Logger
	// Identity replaces the source named in the configuration (tests).
	Identity Identity
	// Now returns the current time; default time.Now.
	Now func() time.Time
}

// Sidecar is a running postern sidecar: the inbound mTLS listener in front
// of the app, the outbound listener the app calls through, and the admin
// listener. Build it with NewSidecar, serve with Run, release with Close.
type Sidecar struct {
	cfg      *Config
	logger   *slog.Logger
	now      func() time.Time
	id       spiffeid.ID
	identity Identity
	closeID  func() error

	keys     *token.RemoteKeySet
	verdicts *VerdictCache
	revoked  *RevocationList
	watcher  *policy.Watcher
	contexts *ContextStore
	inbound  *Inbound
	outbound *Outbound
	registry *prometheus.Registry

	inLn, outLn, adminLn net.Listener
	inSrv, outSrv, admin *http.Server
	closers              []func()

	draining  atomic.Bool
	closeOnce sync.Once
}

// NewSidecar builds a sidecar from a validated configuration and opens its
// listeners. It waits for the first SVID from the Workload API (bounded by
// ctx); the STS keys are fetched by Run.
func NewSidecar(ctx context.Context, cfg *Config, opts SidecarOptions) (_ *Sidecar, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("proxy: config: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Audit == nil {
		opts.Audit = opts.Logger.With(slog.String("log", "audit"))
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	s := &Sidecar{cfg: cfg, logger: opts.Logger, now: opts.Now, closeID: func() error { return nil }}
	defer func() {
		if err != nil {
			s.Close()
		}
	}()

	switch {
	case opts.Identity != nil:
		s.identity = opts.Identity
	case cfg.SPIFFE.Attest != nil:
		as, err := NewAttestedSource(ctx, *cfg.SPIFFE.Attest, td, opts.Logger, opts.Now)
		if err != nil {
			return nil, err
		}
		go as.Run(context.Background())
		s.identity, s.closeID = as, as.Close
	case cfg.SPIFFE.Files != nil:
		f := cfg.SPIFFE.Files
		fs, err := NewFileSource(f.Cert, f.Key, f.Bundle, td)
		if err != nil {
			return nil, err
		}
		s.identity, s.closeID = fs, fs.Close
	default:
		opts := []workloadapi.X509SourceOption{workloadapi.WithClientOptions(workloadapi.WithAddr(cfg.SPIFFE.WorkloadAPI.Socket))}
		if cfg.SPIFFEID != "" {
			// Several workloads may run as the same user on one node: take
			// exactly the configured identity, never whichever comes first.
			opts = append(opts, workloadapi.WithDefaultX509SVIDPicker(svidPicker(cfg.SPIFFEID)))
		}
		src, err := workloadapi.NewX509Source(ctx, opts...)
		if err != nil {
			return nil, fmt.Errorf("proxy: workload API: %w", err)
		}
		s.identity, s.closeID = src, src.Close
	}
	svid, err := s.identity.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("proxy: no SVID: %w", err)
	}
	s.id = svid.ID
	if svid.ID.TrustDomain() != td {
		return nil, fmt.Errorf("proxy: the SVID %s is not in trust domain %s", svid.ID, td)
	}
	if cfg.SPIFFEID != "" && svid.ID.String() != cfg.SPIFFEID {
		return nil, fmt.Errorf("proxy: the SVID is for %s, the configuration says %s", svid.ID, cfg.SPIFFEID)
	}
	audience := cfg.Audience
	if audience == "" {
		audience = svid.ID.String()
	}

	stsID, err := spiffeid.FromString(cfg.STS.SPIFFEID)
	if err != nil {
		return nil, fmt.Errorf("proxy: sts.spiffeID: %w", err)
	}
	stsTransport := &http.Transport{
		TLSClientConfig:   tlsconfig.TLSClientConfig(s.identity, tlsconfig.AuthorizeID(stsID)),
		ForceAttemptHTTP2: true,
		IdleConnTimeout:   90 * time.Second,
	}
	s.closers = append(s.closers, func() { stsTransport.CloseIdleConnections() })
	stsClient := &http.Client{Timeout: 10 * time.Second, Transport: stsTransport}
	rc := token.RemoteConfig{HTTPClient: stsClient, Now: opts.Now, Logger: opts.Logger}
	if cfg.STS.JWKSURI != "" {
		rc.JWKSURI = cfg.STS.JWKSURI
	} else {
		rc.DiscoveryIssuer = cfg.STS.Issuer
	}
	if s.keys, err = token.NewRemoteKeySet(rc); err != nil {
		return nil, err
	}
	skew := time.Duration(cfg.ClockSkew)
	if skew == 0 {
		skew = 30 * time.Second
	}
	verifier, err := token.NewVerifier(token.VerifierConfig{
		Issuer:     cfg.STS.Issuer,
		Audience:   audience,
		Algorithms: []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA},
		Types:      []string{"at+jwt"},
		Leeway:     skew,
		Keys:       s.keys,
		Now:        opts.Now,
	})
	if err != nil {
		return nil, err
	}
	if s.verdicts, err = NewVerdictCache(VerdictCacheConfig{Verifier: verifier, Leeway: skew, Now: opts.Now, KeyHeld: s.keys.Holds}); err != nil {
		return nil, err
	}
	s.watcher, err = policy.NewWatcher(policy.WatcherConfig{
		Dir:      cfg.Policies,
		Interval: time.Duration(cfg.PolicyReloadInterval),
		Options:  policy.CompileOptions{SelfIssuer: cfg.STS.Issuer, TrustDomain: cfg.TrustDomain},
		Logger:   opts.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("proxy: policies: %w", err)
	}
	s.contexts = NewContextStore(0, opts.Now)

	// The revocation list is fetched with the workload's own SVID.
	revTransport := &http.Transport{
		TLSClientConfig:   tlsconfig.MTLSClientConfig(s.identity, s.identity, tlsconfig.AuthorizeID(stsID)),
		ForceAttemptHTTP2: true,
		IdleConnTimeout:   90 * time.Second,
	}
	s.closers = append(s.closers, func() { revTransport.CloseIdleConnections() })
	if s.revoked, err = NewRevocationList(RevocationListConfig{
		URL:      cfg.STS.RevocationsURL(),
		Client:   &http.Client{Timeout: 10 * time.Second, Transport: revTransport},
		Interval: time.Duration(cfg.STS.RevocationPollInterval),
		Leeway:   skew,
		Logger:   opts.Logger,
		Now:      opts.Now,
	}); err != nil {
		return nil, err
	}

	s.registry = prometheus.NewRegistry()
	s.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := NewInboundMetrics(s.registry)
	if err != nil {
		return nil, err
	}
	if err := registerSidecarGauges(s.registry, s.identity, opts.Now, s.keys.Ready, s.verdicts.Len, s.contexts.Len); err != nil {
		return nil, err
	}
	if err := registerRevocationMetrics(s.registry, s.revoked); err != nil {
		return nil, err
	}
	s.inbound, err = NewInbound(InboundConfig{
		Workload:          svid.ID.String(),
		Verdicts:          s.verdicts,
		Policy:            s.watcher.Engine,
		App:               cfg.Inbound.App,
		ForwardToken:      cfg.Inbound.ForwardToken,
		Revoked:           s.revoked.Revoked,
		RevocationsLoaded: func() bool { return s.revoked.Age() >= 0 },
		Contexts:          s.contexts,
		Metrics:           metrics,
		Logger:            opts.Audit,
		Now:               opts.Now,
	})
	if err != nil {
		return nil, err
	}
	if s.outbound, err = s.newOutbound(td, opts); err != nil {
		return nil, err
	}

	tlsCfg := tlsconfig.MTLSServerConfig(s.identity, s.identity, tlsconfig.AuthorizeMemberOf(td))
	verifyEveryHandshake(tlsCfg)
	tlsCfg.MinVersion = tls.VersionTLS12
	tlsCfg.NextProtos = []string{"h2", "http/1.1"}
	errLog := slog.NewLogLogger(opts.Logger.Handler(), slog.LevelDebug)
	s.inSrv = &http.Server{
		Handler:           s.inbound,
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          errLog,
	}
	s.admin = &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 5 * time.Second, ErrorLog: errLog}
	if s.inLn, err = net.Listen("tcp", cfg.Inbound.Listen); err != nil {
		return nil, fmt.Errorf("proxy: inbound listener: %w", err)
	}
	if s.adminLn, err = net.Listen("tcp", cfg.Admin.Listen); err != nil {
		return nil, fmt.Errorf("proxy: admin listener: %w", err)
	}
	s.outSrv = s.outbound.NewServer(errLog)
	if s.outLn, err = net.Listen("tcp", s.outbound.Listen()); err != nil {
		return nil, fmt.Errorf("proxy: outbound listener: %w", err)
	}
	return s, nil
}

// ID returns the sidecar's SPIFFE ID.
func (s *Sidecar) ID() spiffeid.ID { return s.id }

// InboundAddr returns the address of the mutual TLS listener.
func (s *Sidecar) InboundAddr() net.Addr { return s.inLn.Addr() }

// AdminAddr returns the address of the admin listener.
func (s *Sidecar) AdminAddr() net.Addr { return s.adminLn.Addr() }

// OutboundAddr returns the address of the outbound listener.
func (s *Sidecar) OutboundAddr() net.Addr { return s.outLn.Addr() }

// Ready reports whether the sidecar holds a valid SVID and the STS keys, and
// is not draining.
func (s *Sidecar) Ready() bool {
	// Not ready before the token service's keys and its revocation list
	// have been fetched once: without them a sidecar could refuse every
	// token, or accept a revoked one.
	if s.draining.Load() || !s.keys.Ready() || s.revoked.Age() < 0 {
		return false
	}
	svid, err := s.identity.GetX509SVID()
	return err == nil && len(svid.Certificates) > 0 && s.now().Before(svid.Certificates[0].NotAfter)
}

func (s *Sidecar) adminHandler() http.Handler { return AdminHandler(s.Ready, s.registry) }

// Run serves until ctx is done, then drains: /readyz turns 503, the
// listeners stop accepting, and requests in flight finish (bounded by
// drainTimeout).
func (s *Sidecar) Run(ctx context.Context) error {
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	go s.keys.Run(bg)
	go s.watcher.Run(bg)
	go s.revoked.Run(bg)
	s.logger.Info("postern sidecar listening",
		slog.String("spiffe_id", s.id.String()),
		slog.String("inbound", s.inLn.Addr().String()),
		slog.String("app", s.cfg.Inbound.App),
		slog.String("outbound", s.outLn.Addr().String()),
		slog.String("admin", s.adminLn.Addr().String()))

	err := ServeAndDrain(ctx,
		[]Listening{{Server: s.inSrv, Listener: s.inLn, TLS: true}, {Server: s.outSrv, Listener: s.outLn}},
		Listening{Server: s.admin, Listener: s.adminLn},
		time.Duration(s.cfg.DrainTimeout), func() { s.draining.Store(true) }, s.logger)
	var runErr error
	if err != nil {
		runErr = fmt.Errorf("proxy: serve: %w", err)
	}
	s.logger.Info("postern sidecar stopped", slog.String("spiffe_id", s.id.String()))
	return runErr
}

// Close releases the listeners, the pools and the identity source. Call it
// after Run returns (or instead of Run).
func (s *Sidecar) Close() error {
	var err error
	s.closeOnce.Do(func() {
		for _, l := range []net.Listener{s.inLn, s.outLn, s.adminLn} {
			if l != nil {
				_ = l.Close()
			}
		}
		if s.inbound != nil {
			s.inbound.Close()
		}
		if s.outbound != nil {
			s.outbound.Close()
		}
		// Idle connections to the STS go now, so a server stopping after
		// its sidecars is not kept waiting for them.
		for _, c := range s.closers {
			c()
		}
		err = s.closeID()
	})
	return err
}

// svidPicker chooses the SVID for want among those the Workload API offers;
// without it, the first is returned and then refused by the identity check.
func svidPicker(want string) func([]*x509svid.SVID) *x509svid.SVID {
	return func(svids []*x509svid.SVID) *x509svid.SVID {
		for _, sv := range svids {
			if sv.ID.String() == want {
				return sv
			}
		}
		return svids[0]
	}
}
