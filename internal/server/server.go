// Package server wires the control plane: the store, the key-encryption key,
// the signing keys, the CA, the resource watcher, the token service, the
// node API and the federated bundles (internal/federation), served over HTTPS with optional client certificates (mutual TLS is how
// workloads authenticate). It holds no protocol logic of its own.
package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/go-jose/go-jose/v4"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/attest"
	"postern.dev/postern/internal/ca"
	"postern.dev/postern/internal/federation"
	"postern.dev/postern/internal/keys"
	"postern.dev/postern/internal/nodeapi"
	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/store"
	"postern.dev/postern/internal/sts"
)

// State is the control plane's persistent state, opened from a data dir:
// what both the server and the offline operator commands (postern ca issue,
// postern server rotate-keys) need.
type State struct {
	Config      *Config
	TrustDomain spiffeid.TrustDomain
	Store       store.Store
	KEK         *keys.KEK
}

// Open applies defaults to cfg, creates the data dir and opens the store and
// the key-encryption key.
func Open(ctx context.Context, cfg *Config, logger *slog.Logger) (*State, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	td, _ := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("server: data dir: %w", err)
	}
	_, statErr := os.Stat(filepath.Join(cfg.DataDir, instanceFile))
	existing := statErr == nil
	if err := checkInstance(cfg); err != nil {
		return nil, err
	}
	if existing && cfg.Keys.KEKFile == "" && cfg.Keys.KEKEnv == "" {
		// An existing data dir without its development KEK was set up with
		// a KEK from a file or the environment: generating a new one here
		// would only leave a useless key beside sealed records.
		if _, err := os.Stat(filepath.Join(cfg.DataDir, "kek")); errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("server: %s has no development key-encryption key: its keys are sealed with one from a file or the environment; pass --config with keys.kekFile or keys.kekEnv", cfg.DataDir)
		}
	}
	kek, err := keys.LoadKEK(keys.KEKConfig{File: cfg.Keys.KEKFile, Env: cfg.Keys.KEKEnv, DataDir: cfg.DataDir, Logger: logger})
	if err != nil {
		return nil, err
	}
	dsn := cfg.Store.DSN
	if dsn == "" {
		abs, err := filepath.Abs(filepath.Join(cfg.DataDir, "postern.db"))
		if err != nil {
			return nil, fmt.Errorf("server: data dir: %w", err)
		}
		dsn = "sqlite://" + abs
	}
	st, err := store.Open(ctx, dsn)
	if err != nil {
		return nil, err
	}
	return &State{Config: cfg, TrustDomain: td, Store: st, KEK: kek}, nil
}

// Close closes the store.
func (s *State) Close() error { return s.Store.Close() }

// KeyManager returns the signing-key manager over this state.
func (s *State) KeyManager(ctx context.Context, logger *slog.Logger) (*keys.Manager, error) {
	return keys.NewManager(ctx, keys.Config{
		Store: s.Store, KEK: s.KEK, Algorithm: s.Config.Keys.Algorithm,
		RotationPeriod: time.Duration(s.Config.Keys.RotationPeriod),
		LeadTime:       time.Duration(s.Config.Keys.LeadTime),
		Logger:         logger,
	})
}

// CA returns the certificate authority over this state.
func (s *State) CA(ctx context.Context, logger *slog.Logger) (*ca.CA, error) {
	return ca.New(ctx, ca.Config{
		TrustDomain: s.TrustDomain, Store: s.Store, Sealer: s.KEK,
		CATTL: time.Duration(s.Config.CA.TTL), SVIDTTL: time.Duration(s.Config.CA.SVIDTTL),
		UpstreamCert: s.Config.CA.UpstreamCert, UpstreamKey: s.Config.CA.UpstreamKey,
		Logger: logger,
	})
}

// ClientSecretKey is the key client secrets are hashed under.
func (s *State) ClientSecretKey() []byte { return s.KEK.Derive("postern client secret hash v1") }

// Server is a running control plane.
type Server struct {
	state    *State
	logger   *slog.Logger
	listener net.Listener
	keys     *keys.Manager
	ca       *ca.CA
	sts      *sts.Service
	watcher  *policy.Watcher
	serving  *ca.ServingCertificateSource
	node     *nodeapi.Handler
	fed      *federation.Manager
	k8s      *attest.K8sAttestor // nil unless PSAT attestation is configured
	http     *http.Server
	ready    atomic.Bool
}

// New opens the control plane described by cfg and listens; Run serves.
// Audit lines go to audit (the logger if nil).
func New(ctx context.Context, cfg *Config, logger, audit *slog.Logger) (*Server, error) {
	if audit == nil {
		audit = logger
	}
	if cfg.Resources == "" {
		return nil, errors.New("server: config: resources (a directory of resource files) is required")
	}
	st, err := Open(ctx, cfg, logger)
	if err != nil {
		return nil, err
	}
	s := &Server{state: st, logger: logger}
	ok := false
	defer func() {
		if !ok {
			if s.listener != nil {
				s.listener.Close()
			}
			st.Close()
		}
	}()
	if s.keys, err = st.KeyManager(ctx, logger); err != nil {
		return nil, err
	}
	if s.ca, err = st.CA(ctx, logger); err != nil {
		return nil, err
	}
	if s.listener, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("server: listen: %w", err)
	}
	issuer := cfg.Issuer
	if issuer == "" {
		issuer = "https://" + s.listener.Addr().String()
	}
	if err := s.newServingSource(); err != nil {
		return nil, err
	}
	if err := s.writeBundle(); err != nil {
		return nil, err
	}
	s.sts, err = sts.New(sts.Config{
		Issuer: issuer, TrustDomain: st.TrustDomain, Keys: s.keys, Store: st.Store,
		ClientSecretKey: st.ClientSecretKey(),
		DefaultLifetime: time.Duration(cfg.Tokens.DefaultLifetime),
		MaxChainDepth:   cfg.Tokens.MaxChainDepth,
		Logger:          logger, Audit: audit,
	})
	if err != nil {
		return nil, err
	}
	s.fed = federation.New(federation.Config{TrustDomain: st.TrustDomain, Logger: logger})
	s.watcher, err = policy.NewWatcher(policy.WatcherConfig{
		Dir:      cfg.Resources,
		Interval: time.Duration(cfg.ReloadInterval),
		Options:  policy.CompileOptions{SelfIssuer: issuer, TrustDomain: cfg.TrustDomain},
		Logger:   logger,
		OnUpdate: s.applyPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("server: resources: %w", err)
	}
	if err := s.sts.SetEngine(s.watcher.Engine()); err != nil {
		return nil, err
	}
	s.fed.Update(s.watcher.Engine().Federations())
	if err := s.newNodeAPI(cfg, issuer, logger, audit); err != nil {
		return nil, err
	}
	st0 := s.watcher.Engine()
	logger.Info("resources loaded", slog.String("dir", cfg.Resources),
		slog.Int("workloads", len(st0.Workloads())), slog.Int("trusted_issuers", len(st0.TrustedIssuers())),
		slog.Int("federations", len(st0.Federations())))
	s.ready.Store(true)
	s.http = &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    32 << 10,
		TLSConfig:         s.tlsConfig(),
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	ok = true
	return s, nil
}

// newNodeAPI builds the node API handler (/node/v1/) with join tokens from
// the store and, when configured, Kubernetes PSAT attestation.
func (s *Server) newNodeAPI(cfg *Config, issuer string, logger, audit *slog.Logger) error {
	nc := nodeapi.Config{
		TrustDomain: s.state.TrustDomain, CA: s.ca, Keys: s.keys, Issuer: issuer,
		Policy:           s.watcher.Engine,
		FederatedBundles: s.fed.Bundles,
		JoinTokens:       nodeapi.StoreJoinTokens{Store: s.state.Store},
		Agents:           s.state.Store,
		SVIDTTL:          time.Duration(cfg.CA.SVIDTTL),
		Logger:           logger, Audit: audit,
	}
	if k := cfg.Attestation.K8s; k.Issuer != "" {
		a, err := attest.NewK8sAttestor(attest.K8sConfig{Issuer: k.Issuer, Audience: k.Audience, JWKSFile: k.JWKSFile})
		if err != nil {
			return fmt.Errorf("server: attestation.k8s: %w", err)
		}
		s.k8s, nc.K8s = a, a
		nc.K8sAgents = k.AgentServiceAccounts
	}
	h, err := nodeapi.NewHandler(nc)
	if err != nil {
		return err
	}
	s.node = h
	return nil
}

func (s *Server) applyPolicy(e *policy.Engine) {
	if err := s.sts.SetEngine(e); err != nil {
		s.logger.Error("resource update refused; the last good set stays in force", slog.String("error", err.Error()))
		return
	}
	s.fed.Update(e.Federations())
	s.logger.Info("resources loaded", slog.Int("workloads", len(e.Workloads())), slog.Int("trusted_issuers", len(e.TrustedIssuers())),
		slog.Int("federations", len(e.Federations())))
}

// Addr returns the address the server listens on.
func (s *Server) Addr() net.Addr { return s.listener.Addr() }

// Issuer returns the STS issuer URL.
func (s *Server) Issuer() string { return s.sts.Issuer() }

// BundlePath returns where the trust bundle PEM is written.
func (s *Server) BundlePath() string { return filepath.Join(s.state.Config.DataDir, "bundle.pem") }

// CA returns the server's certificate authority.
func (s *Server) CA() *ca.CA { return s.ca }

// Keys returns the server's signing-key manager.
func (s *Server) Keys() *keys.Manager { return s.keys }

// Store returns the server's store.
func (s *Server) Store() store.Store { return s.state.Store }

// ClientSecretKey is the key client secrets are hashed under.
func (s *Server) ClientSecretKey() []byte { return s.state.ClientSecretKey() }

func (s *Server) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1"},
		GetCertificate: s.serving.GetCertificate,
		// Client certificates are optional (mTLS is one of several client
		// authentication methods) and verified against the current bundle,
		// read per handshake so CA rotation needs no restart.
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			pool := x509.NewCertPool()
			for _, c := range s.ca.X509Authorities() {
				pool.AddCert(c)
			}
			return &tls.Config{
				MinVersion:     tls.VersionTLS12,
				NextProtos:     []string{"h2", "http/1.1"},
				GetCertificate: s.serving.GetCertificate,
				ClientAuth:     tls.VerifyClientCertIfGiven,
				ClientCAs:      pool,
			}, nil
		},
	}
}

// newServingSource sets up the server's own certificate, renewed at
// half-life by the CA on demand during handshakes.
func (s *Server) newServingSource() error {
	var ips []net.IP
	for _, ip := range s.state.Config.Serving.IPAddresses {
		ips = append(ips, net.ParseIP(ip))
	}
	if host, _, err := net.SplitHostPort(s.listener.Addr().String()); err == nil {
		if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
			ips = appendIP(ips, ip)
		}
	}
	src, err := s.ca.ServingCertificateSource(s.state.Config.Serving.DNSNames, ips, 24*time.Hour)
	if err != nil {
		return fmt.Errorf("server: serving certificate: %w", err)
	}
	s.serving = src
	return nil
}

func appendIP(ips []net.IP, ip net.IP) []net.IP {
	for _, x := range ips {
		if x.Equal(ip) {
			return ips
		}
	}
	return append(ips, ip)
}

func (s *Server) writeBundle() error {
	path := s.BundlePath()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, s.ca.BundlePEM(), 0o644); err != nil {
		return fmt.Errorf("server: write bundle: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("server: write bundle: %w", err)
	}
	return nil
}

func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	stsh := s.sts.Handler()
	mux.Handle("/oauth2/", stsh)
	mux.Handle("/.well-known/", stsh)
	mux.Handle("/bundle", s.ca.BundleHandler(func() []jose.JSONWebKey { return s.keys.KeySet().Keys }, 5*time.Minute))
	mux.HandleFunc("/bundle.pem", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, _ = w.Write(s.ca.BundlePEM())
	})
	mux.Handle(nodeapi.Prefix, s.node)
	reg := prometheus.NewRegistry()
	reg.MustRegister(s.sts.Collector(), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !s.ready.Load() || !s.sts.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	return mux
}

// Run serves until ctx is done, then drains for up to 10 seconds.
func (s *Server) Run(ctx context.Context) error {
	defer s.state.Close()
	bg, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// Runs before the store is closed (defers run last first): the
	// background loops stop, and are waited for, so that none of them uses
	// a closed store. A loop that does not stop within 5s is logged.
	defer func() {
		cancel()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			s.logger.Warn("server: background loops still running at shutdown; closing the store anyway")
		}
	}()
	for _, run := range []func(context.Context){s.keys.Run, s.ca.Run, s.sts.Run, s.watcher.Run, s.fed.Run, s.maintain} {
		wg.Go(func() { run(bg) })
	}
	if s.k8s != nil {
		wg.Go(func() { s.k8s.Run(bg) })
	}
	s.logger.Info("postern server listening",
		slog.String("addr", s.listener.Addr().String()),
		slog.String("issuer", s.sts.Issuer()),
		slog.String("trust_domain", s.state.TrustDomain.Name()),
		slog.String("bundle", s.BundlePath()))
	errc := make(chan error, 1)
	go func() { errc <- s.http.Serve(tls.NewListener(s.listener, s.http.TLSConfig)) }()
	select {
	case err := <-errc:
		return fmt.Errorf("server: %w", err)
	case <-ctx.Done():
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := s.http.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("server: shutdown: %w", err)
	}
	return nil
}

// maintain rewrites bundle.pem when the bundle changes and purges expired
// records from the store.
func (s *Server) maintain(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	last := string(s.ca.BundlePEM())
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if b := string(s.ca.BundlePEM()); b != last {
			if err := s.writeBundle(); err != nil {
				s.logger.Error("could not write the bundle", slog.String("error", err.Error()))
			} else {
				last = b
			}
		}
		if err := s.state.Store.Purge(ctx, time.Now()); err != nil && ctx.Err() == nil {
			s.logger.Warn("could not purge expired records", slog.String("error", err.Error()))
		}
	}
}
