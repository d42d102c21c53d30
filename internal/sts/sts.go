package sts

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/introspect"
	"postern.dev/postern/internal/keys"
	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/store"
	"postern.dev/postern/internal/token"
)

// Endpoint paths, relative to the issuer URL.
const (
	PathToken      = "/oauth2/token"
	PathIntrospect = "/oauth2/introspect"
	PathRevoke     = "/oauth2/revoke"
	PathJWKS       = "/oauth2/jwks"
	// PathRevocations is Postern's revocation list: the revoked token ids
	// and sessions, for sidecars to refuse revoked tokens before they
	// expire.
	PathRevocations = "/oauth2/revocations"
)

// KeySource is the signing-key state the service needs (package keys).
type KeySource interface {
	Current() *keys.Key
	PublicKey(kid string) (jose.JSONWebKey, bool)
	JWKS() []byte
	MaxAge() time.Duration
}

// Store is the persistence the service needs beyond memory: replay
// protection for private_key_jwt, client secrets and revocations.
type Store interface {
	UseJTI(ctx context.Context, issuer, jti string, exp time.Time) error
	ClientSecrets(ctx context.Context) ([]store.ClientSecret, error)
	Revocations(ctx context.Context, now time.Time) ([]store.Revocation, error)
	PutRevocation(ctx context.Context, r store.Revocation) error
}

// Config configures a Service. Issuer, TrustDomain, Keys and Store are
// required; zero values of the rest mean their defaults.
type Config struct {
	// Issuer is this STS's issuer URL (the "iss" of every token), e.g.
	// https://127.0.0.1:8443. Endpoints are served below it.
	Issuer string
	// TrustDomain is the SPIFFE trust domain whose workloads are clients.
	TrustDomain spiffeid.TrustDomain
	// Keys signs issued tokens and verifies this STS's own tokens and
	// JWT-SVIDs.
	Keys KeySource
	// Store persists replay ids, client secrets and revocations.
	Store Store
	// ClientSecretKey keys the HMAC that client secrets are stored as.
	ClientSecretKey []byte
	// DefaultLifetime of issued tokens when a policy names none; 5m.
	DefaultLifetime time.Duration
	// MaxChainDepth caps the act chain; default 8.
	MaxChainDepth int
	// MaxBodyBytes bounds request bodies; default 64 KiB.
	MaxBodyBytes int64
	// MaxTokenBytes bounds any token presented; default 16 KiB.
	MaxTokenBytes int
	// MaxAssertionLifetime bounds how far in the future a client
	// assertion (JWT-SVID or private_key_jwt) may expire; default 15m.
	MaxAssertionLifetime time.Duration
	// Leeway is the clock skew tolerated on token times; default 30s.
	Leeway time.Duration
	// HTTPClient fetches external issuers' keys; default 10s timeout.
	HTTPClient *http.Client
	// Now returns the current time; default time.Now.
	Now func() time.Time
	// Logger receives operational logs; Audit receives one line per
	// decision. Both default to discarding.
	Logger *slog.Logger
	Audit  *slog.Logger
}

// Service is the token service. Create it with New, give it a policy engine
// with SetEngine, and serve Handler. It is safe for concurrent use.
type Service struct {
	cfg   Config
	state atomic.Pointer[state]
	self  *token.Verifier // this STS's access tokens (typ at+jwt), any audience
	svid  *token.Verifier // JWT-SVIDs signed by this trust domain (typ JWT or none)

	signers sync.Map // kid+typ → *token.Signer

	revoked *revocations
	secrets *secretCache
	metrics *metrics

	remoteMu      sync.Mutex
	remotes       map[string]*remote            // by JWKS URI or discovery issuer
	introspectors map[string]*introspect.Client // by configuration hash
	// used collects, during SetEngine, the keys of the remotes and
	// introspectors the new resources use; the others are dropped.
	used map[string]bool

	runCtx context.Context // set by Run; nil before
}

// remote is an external issuer's key set and, once Run started it, the
// cancellation of its poller.
type remote struct {
	ks   *token.RemoteKeySet
	stop context.CancelFunc
}

// start runs r's poller under ctx unless it runs already. Callers hold
// remoteMu.
func (r *remote) start(ctx context.Context) {
	if r.stop != nil || ctx == nil {
		return
	}
	ctx, r.stop = context.WithCancel(ctx)
	go r.ks.Run(ctx)
}

// state is everything a request needs that changes with the policy set.
type state struct {
	engine  *policy.Engine
	issuers map[string]*externalIssuer
	opaque  []*externalIssuer  // issuers that introspect opaque tokens, in name order
	clients map[string]*client // by SPIFFE ID
}

type externalIssuer struct {
	res        *policy.TrustedIssuer
	verifier   *token.Verifier    // nil when the issuer only issues opaque tokens
	introspect *introspect.Client // nil without an introspection endpoint
	aud        map[string]bool
	claims     map[string]bool
}

// New returns a Service. It refuses to run without the required parts.
func New(cfg Config) (*Service, error) {
	if cfg.Issuer == "" || !strings.HasPrefix(cfg.Issuer, "https://") {
		return nil, errors.New("sts: issuer must be an https URL")
	}
	cfg.Issuer = strings.TrimSuffix(cfg.Issuer, "/")
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("sts: trust domain is required")
	}
	if cfg.Keys == nil || cfg.Store == nil {
		return nil, errors.New("sts: keys and store are required")
	}
	if len(cfg.ClientSecretKey) < 32 {
		return nil, errors.New("sts: client secret key must be at least 32 bytes")
	}
	if cfg.DefaultLifetime <= 0 {
		cfg.DefaultLifetime = 5 * time.Minute
	}
	if cfg.MaxChainDepth <= 0 {
		cfg.MaxChainDepth = 8
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 64 << 10
	}
	if cfg.MaxTokenBytes <= 0 {
		cfg.MaxTokenBytes = token.DefaultMaxSize
	}
	if cfg.MaxAssertionLifetime <= 0 {
		cfg.MaxAssertionLifetime = 15 * time.Minute
	}
	if cfg.Leeway <= 0 {
		cfg.Leeway = 30 * time.Second
	}
	if cfg.HTTPClient == nil {
		// No redirects: a key set is fetched from exactly where it is
		// configured, never from wherever a response points.
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Audit == nil {
		cfg.Audit = slog.New(slog.DiscardHandler)
	}
	s := &Service{
		cfg:     cfg,
		revoked: newRevocations(),
		metrics: newMetrics(),
		remotes: map[string]*remote{},

		introspectors: map[string]*introspect.Client{},
	}
	s.secrets = newSecretCache(cfg.Store, cfg.Now)
	own := token.KeySetFunc(func(_ context.Context, kid string) (jose.JSONWebKey, error) {
		k, ok := cfg.Keys.PublicKey(kid)
		if !ok {
			return jose.JSONWebKey{}, fmt.Errorf("%w: kid %q", token.ErrUnknownKey, kid)
		}
		return k, nil
	})
	var err error
	s.self, err = token.NewVerifier(token.VerifierConfig{
		Issuer: cfg.Issuer, Keys: own, Types: []string{token.TypeAccessToken},
		Leeway: cfg.Leeway, MaxSize: cfg.MaxTokenBytes, Now: cfg.Now,
	})
	if err != nil {
		return nil, err
	}
	// JWT-SVIDs carry no iss requirement in the SPIFFE spec; Postern's agents
	// obtain them from this STS, so they carry its issuer.
	s.svid, err = token.NewVerifier(token.VerifierConfig{
		Issuer: cfg.Issuer, Keys: own, Types: []string{token.TypeJWT, ""},
		Leeway: cfg.Leeway, MaxSize: cfg.MaxTokenBytes, Now: cfg.Now,
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// TokenEndpoint returns the token endpoint's URL, the audience client
// assertions must name.
func (s *Service) TokenEndpoint() string { return s.cfg.Issuer + PathToken }

// Issuer returns the issuer URL.
func (s *Service) Issuer() string { return s.cfg.Issuer }

// Ready reports whether the service has a policy set to decide with.
func (s *Service) Ready() bool { return s.state.Load() != nil }

// Run loads revocations from the store and keeps them, the client secrets
// and the external issuers' keys fresh until ctx is done.
func (s *Service) Run(ctx context.Context) {
	s.remoteMu.Lock()
	s.runCtx = ctx
	for _, r := range s.remotes {
		r.start(ctx)
	}
	s.remoteMu.Unlock()
	t := time.NewTicker(10 * time.Second)
	defer t.Stop()
	for {
		if err := s.LoadRevocations(ctx); err != nil && ctx.Err() == nil {
			s.cfg.Logger.Warn("could not refresh revocations; keeping the ones in memory", slog.String("error", err.Error()))
		}
		// A secret replaced or removed (on this replica or another) must
		// stop working without waiting for someone to present a new one.
		s.secrets.reload()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// SetEngine swaps in a compiled policy set. Trusted issuers' verifiers are
// rebuilt; remote key caches survive when their source is unchanged. A set
// that cannot be used is refused and the current one stays in force.
func (s *Service) SetEngine(e *policy.Engine) (err error) {
	if e == nil {
		return errors.New("sts: nil policy engine")
	}
	s.remoteMu.Lock()
	s.used = map[string]bool{}
	s.remoteMu.Unlock()
	defer func() {
		if err == nil {
			s.dropUnused()
			return
		}
		s.remoteMu.Lock()
		s.used = nil // the old resources stay in force, with what they use
		s.remoteMu.Unlock()
	}()
	st := &state{engine: e, issuers: map[string]*externalIssuer{}, clients: map[string]*client{}}
	for _, ti := range e.TrustedIssuers() {
		ti := ti
		if ti.Issuer == s.cfg.Issuer {
			return fmt.Errorf("sts: trusted issuer %q is this STS itself", ti.Name)
		}
		ei := &externalIssuer{res: &ti, aud: map[string]bool{}, claims: map[string]bool{}}
		if ti.JWKS != nil || ti.JWKSURI != "" || ti.Discovery {
			ks, err := s.issuerKeys(&ti)
			if err != nil {
				return fmt.Errorf("sts: trusted issuer %q: %w", ti.Name, err)
			}
			algs, err := token.ParseAlgorithms(ti.Algorithms)
			if err != nil {
				return fmt.Errorf("sts: trusted issuer %q: %w", ti.Name, err)
			}
			ei.verifier, err = token.NewVerifier(token.VerifierConfig{
				Issuer: ti.Issuer, Keys: ks, Algorithms: algs,
				Leeway: s.cfg.Leeway, MaxSize: s.cfg.MaxTokenBytes, Now: s.cfg.Now,
			})
			if err != nil {
				return fmt.Errorf("sts: trusted issuer %q: %w", ti.Name, err)
			}
		}
		if in := ti.Introspection; in != nil {
			ic, err := s.introspector(&ti)
			if err != nil {
				return fmt.Errorf("sts: trusted issuer %q: introspection: %w", ti.Name, err)
			}
			ei.introspect = ic
			st.opaque = append(st.opaque, ei)
		}
		if ei.verifier == nil && ei.introspect == nil {
			return fmt.Errorf("sts: trusted issuer %q has neither keys nor an introspection endpoint", ti.Name)
		}
		for _, a := range ti.Audiences {
			ei.aud[a] = true
		}
		for _, c := range ti.Claims {
			ei.claims[c] = true
		}
		st.issuers[ti.Issuer] = ei
	}
	for _, w := range e.Workloads() {
		c, err := s.newClient(w)
		if err != nil {
			return fmt.Errorf("sts: workload %q: %w", w.Name, err)
		}
		st.clients[c.id] = c
	}
	s.state.Store(st)
	return nil
}

// markUsed records that the resources being loaded use the remote or
// introspector with key. Callers hold remoteMu.
func (s *Service) markUsed(key string) {
	if s.used != nil {
		s.used[key] = true
	}
}

// dropUnused stops and forgets the remotes and introspectors the resources
// just loaded do not use (a TrustedIssuer removed or re-pointed, a client
// secret rotated): without it each reload would leave a poller running.
func (s *Service) dropUnused() {
	s.remoteMu.Lock()
	defer s.remoteMu.Unlock()
	for k, r := range s.remotes {
		if !s.used[k] {
			if r.stop != nil {
				r.stop()
			}
			delete(s.remotes, k)
		}
	}
	for k := range s.introspectors {
		if !s.used[k] {
			delete(s.introspectors, k)
		}
	}
	s.used = nil
}

// remoteKeySet returns the remote key set kept under key, creating it from
// cfg the first time; its poller runs once Run has started (before that, a
// lookup still fetches the keys).
func (s *Service) remoteKeySet(key string, cfg token.RemoteConfig) (*token.RemoteKeySet, error) {
	s.remoteMu.Lock()
	defer s.remoteMu.Unlock()
	s.markUsed(key)
	if r, ok := s.remotes[key]; ok {
		return r.ks, nil
	}
	ks, err := token.NewRemoteKeySet(cfg)
	if err != nil {
		return nil, err
	}
	r := &remote{ks: ks}
	r.start(s.runCtx)
	s.remotes[key] = r
	return ks, nil
}

func (s *Service) issuerKeys(ti *policy.TrustedIssuer) (token.KeySet, error) {
	switch {
	case ti.JWKS != nil:
		return token.NewStaticKeySet(*ti.JWKS)
	case ti.JWKSURI != "" || ti.Discovery:
		key := "uri " + ti.JWKSURI
		cfg := token.RemoteConfig{JWKSURI: ti.JWKSURI, HTTPClient: s.cfg.HTTPClient, Logger: s.cfg.Logger}
		if ti.JWKSURI == "" {
			key = "discovery " + ti.Issuer
			cfg = token.RemoteConfig{DiscoveryIssuer: ti.Issuer, HTTPClient: s.cfg.HTTPClient, Logger: s.cfg.Logger}
		}
		return s.remoteKeySet(key, cfg)
	default:
		return nil, errors.New("no key source")
	}
}

// introspector returns the RFC 7662 client of a TrustedIssuer, reading its
// client secret from the configured file. Clients are kept across resource
// updates while their configuration and secret are unchanged, so their
// caches survive.
func (s *Service) introspector(ti *policy.TrustedIssuer) (*introspect.Client, error) {
	in := ti.Introspection
	secret, err := os.ReadFile(in.ClientSecretFile)
	if err != nil {
		return nil, fmt.Errorf("client secret: %w", err)
	}
	sum := sha256.Sum256(append([]byte(ti.Issuer+"\x00"+in.Endpoint+"\x00"+in.ClientID+"\x00"), secret...))
	key := "introspect " + hex.EncodeToString(sum[:])
	s.remoteMu.Lock()
	defer s.remoteMu.Unlock()
	s.markUsed(key)
	if c, ok := s.introspectors[key]; ok {
		return c, nil
	}
	c, err := introspect.New(introspect.Config{
		Endpoint: in.Endpoint, ClientID: in.ClientID, ClientSecret: strings.TrimSpace(string(secret)),
		Issuer: ti.Issuer, HTTPClient: s.cfg.HTTPClient, Now: s.cfg.Now, MaxTokenBytes: s.cfg.MaxTokenBytes,
	})
	if err != nil {
		return nil, err
	}
	s.introspectors[key] = c
	return c, nil
}

// Handler returns the HTTP handler for every STS endpoint.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(PathToken, s.handleToken)
	mux.HandleFunc(PathIntrospect, s.handleIntrospect)
	mux.HandleFunc(PathRevoke, s.handleRevoke)
	mux.HandleFunc(PathRevocations, s.handleRevocations)
	mux.HandleFunc(PathJWKS, s.handleJWKS)
	mux.HandleFunc("/.well-known/oauth-authorization-server", s.handleDiscovery)
	mux.HandleFunc("/.well-known/openid-configuration", s.handleDiscovery)
	return mux
}

// signer returns the cached token signer for the current key and typ.
func (s *Service) signer(typ string) (*token.Signer, error) {
	k := s.cfg.Keys.Current()
	if k == nil {
		return nil, errors.New("no current signing key")
	}
	cacheKey := k.ID + " " + typ
	if v, ok := s.signers.Load(cacheKey); ok {
		return v.(*token.Signer), nil
	}
	sg, err := token.NewSigner(k.ID, k.Algorithm, k.Signer, typ)
	if err != nil {
		return nil, err
	}
	s.signers.Store(cacheKey, sg)
	return sg, nil
}

// HashSecret returns the keyed hash a client secret is stored as.
func HashSecret(key []byte, secret string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(secret))
	return m.Sum(nil)
}
