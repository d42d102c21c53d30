package sts

import (
	"context"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/store"
	"postern.dev/postern/internal/token"
)

// Client authentication methods, as named in Workload resources and in
// RFC 8414 metadata.
const (
	AuthTLSClient    = "tls_client_auth"
	AuthJWTSPIFFE    = "jwt_spiffe"
	AuthPrivateKey   = "private_key_jwt"
	AuthSecretBasic  = "client_secret_basic"
	assertionBearer  = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	assertionSPIFFE  = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
	defaultAuthMetho = ""
)

// client is a Workload as the token endpoint sees it.
type client struct {
	id       string // SPIFFE ID
	audience string
	workload *policy.Workload
	methods  map[string]bool
	keys     token.KeySet // for private_key_jwt; nil if not allowed
}

// caller is an authenticated client for one request.
type caller struct {
	*client
	method string
	cert   *x509.Certificate // the mTLS certificate when it names the same client
}

func (s *Service) newClient(w policy.Workload) (*client, error) {
	c := &client{id: w.SPIFFEID, audience: w.Audience, methods: map[string]bool{}}
	wc := w
	c.workload = &wc
	if c.audience == "" {
		c.audience = c.id
	}
	methods := w.ClientAuthentication
	if len(methods) == 0 {
		methods = []string{AuthTLSClient, AuthJWTSPIFFE}
	}
	for _, m := range methods {
		c.methods[m] = true
	}
	if c.methods[AuthPrivateKey] {
		switch {
		case w.JWKS != nil:
			ks, err := token.NewStaticKeySet(*w.JWKS)
			if err != nil {
				return nil, err
			}
			c.keys = ks
		case w.JWKSURI != "":
			ks, err := s.remoteKeySet("uri "+w.JWKSURI, token.RemoteConfig{JWKSURI: w.JWKSURI, HTTPClient: s.cfg.HTTPClient, Logger: s.cfg.Logger})
			if err != nil {
				return nil, err
			}
			c.keys = ks
		default:
			return nil, errors.New("private_key_jwt needs jwks or jwksURI")
		}
	}
	return c, nil
}

// peerID returns the SPIFFE ID of the verified TLS client certificate, if
// any. The TLS layer has already verified the chain against the trust
// bundle; a certificate without a SPIFFE ID of this trust domain counts as
// none.
func (s *Service) peerID(r *http.Request) (spiffeid.ID, *x509.Certificate, bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return spiffeid.ID{}, nil, false
	}
	leaf := r.TLS.VerifiedChains[0][0]
	id, err := x509svid.IDFromCert(leaf)
	if err != nil || id.TrustDomain() != s.cfg.TrustDomain {
		return spiffeid.ID{}, nil, false
	}
	return id, leaf, true
}

// authenticate identifies the client by exactly one method.
func (s *Service) authenticate(ctx context.Context, r *http.Request, f form, st *state) (*caller, *Error) {
	assertionType, assertion := f.get("client_assertion_type"), f.get("client_assertion")
	basicUser, basicPass, hasBasic := r.BasicAuth()
	if r.Header.Get("Authorization") != "" && !hasBasic {
		return nil, oauthErr(codeInvalidClient, "the Authorization header must use the Basic scheme")
	}
	if f.get("client_secret") != "" {
		return nil, oauthErr(codeInvalidClient, "client_secret_post is not supported; use client_secret_basic")
	}
	if hasBasic && (assertion != "" || assertionType != "") {
		return nil, oauthErr(codeInvalidRequest, "use exactly one client authentication method")
	}
	peer, cert, hasPeer := s.peerID(r)
	var (
		c      *caller
		oerr   *Error
		method string
	)
	switch {
	case hasBasic:
		method = AuthSecretBasic
		c, oerr = s.authBasic(basicUser, basicPass, st)
	case assertionType != "" || assertion != "":
		if assertion == "" || assertionType == "" {
			return nil, oauthErr(codeInvalidRequest, "client_assertion and client_assertion_type go together")
		}
		switch assertionType {
		case assertionSPIFFE:
			method = AuthJWTSPIFFE
			c, oerr = s.authJWTSVID(ctx, assertion, st)
		case assertionBearer:
			method = AuthPrivateKey
			c, oerr = s.authPrivateKeyJWT(ctx, assertion, st)
		default:
			return nil, oauthErr(codeInvalidClient, "unsupported client_assertion_type")
		}
	case hasPeer:
		method = AuthTLSClient
		cl, ok := st.clients[peer.String()]
		if !ok {
			return nil, oauthErr(codeInvalidClient, fmt.Sprintf("no Workload is registered for %s", peer))
		}
		c = &caller{client: cl}
	default:
		return nil, oauthErr(codeInvalidClient, "client authentication is required (mutual TLS, client assertion or HTTP Basic)")
	}
	if oerr != nil {
		oerr.basic = hasBasic
		return nil, oerr
	}
	if !c.methods[method] {
		return nil, oauthErr(codeUnauthorizedClient, fmt.Sprintf("client %s may not authenticate with %s", c.id, method))
	}
	if id := f.get("client_id"); id != "" && id != c.id {
		return nil, oauthErr(codeInvalidClient, "client_id does not match the authenticated client")
	}
	c.method = method
	// A certificate binds tokens only when it names the authenticated client.
	if hasPeer && peer.String() == c.id {
		c.cert = cert
	} else if hasPeer {
		return nil, oauthErr(codeInvalidClient, "the TLS client certificate names another workload than the client authentication")
	}
	return c, nil
}

func (s *Service) authBasic(user, pass string, st *state) (*caller, *Error) {
	id, err1 := url.QueryUnescape(user)
	secret, err2 := url.QueryUnescape(pass)
	if err1 != nil || err2 != nil || id == "" || secret == "" {
		return nil, oauthErr(codeInvalidClient, "malformed HTTP Basic credentials")
	}
	cl, ok := st.clients[id]
	if !ok {
		return nil, oauthErr(codeInvalidClient, "client authentication failed")
	}
	got := HashSecret(s.cfg.ClientSecretKey, secret)
	unavailable := oauthErr(codeServerError, "client secrets cannot be checked now; retry later").withStatus(http.StatusServiceUnavailable)
	want, ok, err := s.secrets.lookup(id)
	if err != nil {
		return nil, unavailable.withCause(err)
	}
	if !ok || subtle.ConstantTimeCompare(want, got) != 1 {
		// The secret may have been replaced since it was loaded: reload
		// (at most once per refresh interval) and compare again.
		if !s.secrets.reload() {
			return nil, oauthErr(codeInvalidClient, "client authentication failed")
		}
		want, ok, err = s.secrets.lookup(id)
		if err != nil {
			return nil, unavailable.withCause(err)
		}
		if !ok || subtle.ConstantTimeCompare(want, got) != 1 {
			return nil, oauthErr(codeInvalidClient, "client authentication failed")
		}
	}
	return &caller{client: cl}, nil
}

// checkAssertionAudience accepts an assertion addressed to this STS alone
// (the token endpoint URL or the issuer): one also addressed to another
// service could be replayed here by that service.
func (s *Service) checkAssertionAudience(c *token.Claims) bool {
	return len(c.Audience) == 1 && (c.Audience[0] == s.TokenEndpoint() || c.Audience[0] == s.cfg.Issuer)
}

func (s *Service) checkAssertionLifetime(c *token.Claims) *Error {
	if c.Expiry.Sub(s.cfg.Now()) > s.cfg.MaxAssertionLifetime {
		return oauthErr(codeInvalidClient, fmt.Sprintf("client assertion lives too long (the limit is %s)", s.cfg.MaxAssertionLifetime))
	}
	return nil
}

func (s *Service) authJWTSVID(ctx context.Context, assertion string, st *state) (*caller, *Error) {
	c, err := s.svid.Verify(ctx, assertion)
	if err != nil {
		return nil, oauthErr(codeInvalidClient, "invalid JWT-SVID client assertion: "+err.Error()).withCause(err)
	}
	if c.Act != nil || c.ClientID != "" {
		// Tokens this STS issued carry client_id (and act): never a JWT-SVID.
		return nil, oauthErr(codeInvalidClient, "the client assertion is an issued token, not a JWT-SVID")
	}
	if !s.checkAssertionAudience(c) {
		return nil, oauthErr(codeInvalidClient, "JWT-SVID client assertion must name the token endpoint as audience")
	}
	if e := s.checkAssertionLifetime(c); e != nil {
		return nil, e
	}
	id, err := spiffeid.FromString(c.Subject)
	if err != nil || id.TrustDomain() != s.cfg.TrustDomain {
		return nil, oauthErr(codeInvalidClient, "JWT-SVID subject is not a SPIFFE ID of this trust domain")
	}
	cl, ok := st.clients[id.String()]
	if !ok {
		return nil, oauthErr(codeInvalidClient, fmt.Sprintf("no Workload is registered for %s", id))
	}
	return &caller{client: cl}, nil
}

func (s *Service) authPrivateKeyJWT(ctx context.Context, assertion string, st *state) (*caller, *Error) {
	iss, err := token.PeekIssuer(assertion)
	if err != nil {
		return nil, oauthErr(codeInvalidClient, "invalid client assertion: "+err.Error())
	}
	cl, ok := st.clients[iss]
	if !ok || cl.keys == nil {
		return nil, oauthErr(codeInvalidClient, "client authentication failed")
	}
	v, err := token.NewVerifier(token.VerifierConfig{
		Issuer: cl.id, Keys: cl.keys, Leeway: s.cfg.Leeway, MaxSize: s.cfg.MaxTokenBytes, Now: s.cfg.Now,
		Algorithms: privateKeyAlgs,
	})
	if err != nil {
		return nil, oauthErr(codeServerError, "could not verify the client assertion").withCause(err)
	}
	c, err := v.Verify(ctx, assertion)
	if err != nil {
		return nil, oauthErr(codeInvalidClient, "invalid client assertion: "+err.Error()).withCause(err)
	}
	if c.Subject != cl.id {
		return nil, oauthErr(codeInvalidClient, "client assertion iss and sub must both be the client id")
	}
	if !s.checkAssertionAudience(c) {
		return nil, oauthErr(codeInvalidClient, "client assertion must name the token endpoint as audience")
	}
	if e := s.checkAssertionLifetime(c); e != nil {
		return nil, e
	}
	if c.ID == "" {
		return nil, oauthErr(codeInvalidClient, "client assertion needs a jti")
	}
	if err := s.cfg.Store.UseJTI(ctx, cl.id, c.ID, c.Expiry.Add(s.cfg.Leeway)); err != nil {
		if errors.Is(err, store.ErrReplay) {
			return nil, oauthErr(codeInvalidClient, "client assertion was already used (jti replay)")
		}
		return nil, oauthErr(codeServerError, "could not record the client assertion").withStatus(http.StatusServiceUnavailable).withCause(err)
	}
	return &caller{client: cl}, nil
}

var privateKeyAlgs, _ = token.ParseAlgorithms([]string{"ES256", "ES384", "EdDSA", "RS256", "PS256"})

// secretCache holds client-secret hashes in memory. A client unknown to it
// reloads the set from the store, at most once per refresh interval.
type secretCache struct {
	store  Store
	now    func() time.Time
	m      atomic.Pointer[map[string]store.ClientSecret]
	loaded atomic.Int64 // UnixNano of the last successful load
	mu     sync.Mutex
	last   time.Time
}

func newSecretCache(st Store, now func() time.Time) *secretCache {
	return &secretCache{store: st, now: now}
}

// secretMaxAge is how old the cached secrets may be when a client
// authenticates: a secret replaced or removed in the store stops working
// within it even on a replica that nobody told (Service.Run also reloads
// every 10 seconds).
const secretMaxAge = 30 * time.Second

// secretStaleLimit is how long the secrets last loaded keep serving while
// the store cannot be read: the last good state, for a while. Past it a
// secret removed meanwhile could be working indefinitely, so client
// secret authentication stops (503) until the store answers.
const secretStaleLimit = 10 * time.Minute

// errSecretsUnavailable is lookup's answer past secretStaleLimit.
var errSecretsUnavailable = errors.New("client secrets could not be loaded from the store")

func (c *secretCache) lookup(id string) ([]byte, bool, error) {
	age := func() time.Duration { return c.now().Sub(time.Unix(0, c.loaded.Load())) }
	if m := c.m.Load(); m == nil || age() > secretMaxAge {
		c.reload()
	}
	m := c.m.Load()
	if m == nil || age() > secretStaleLimit {
		return nil, false, errSecretsUnavailable
	}
	if s, ok := (*m)[id]; ok && (s.ExpiresAt.IsZero() || c.now().Before(s.ExpiresAt)) {
		return s.Hash, true, nil
	}
	return nil, false, nil
}

// reload re-reads every secret hash from the store unless that was done
// within the refresh interval (so failed logins cannot hammer the store).
// It reports whether it loaded a new set.
func (c *secretCache) reload() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	if !c.last.IsZero() && now.Sub(c.last) < 5*time.Second {
		return false
	}
	c.last = now
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, err := c.store.ClientSecrets(ctx)
	if err != nil {
		return false // keep the last good set
	}
	m := make(map[string]store.ClientSecret, len(list))
	for _, s := range list {
		m[s.ClientID] = s
	}
	c.m.Store(&m)
	c.loaded.Store(now.UnixNano())
	return true
}

// canonicalScopes joins scopes in order with single spaces.
func canonicalScopes(s []string) string { return strings.Join(s, " ") }
