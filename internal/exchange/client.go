package exchange

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/sync/singleflight"

	"postern.dev/postern/internal/token"
)

// Grant and token type identifiers sent to the STS.
const (
	grantTokenExchange     = "urn:ietf:params:oauth:grant-type:token-exchange"
	grantClientCredentials = "client_credentials"
	tokenTypeAccessToken   = "urn:ietf:params:oauth:token-type:access_token"
)

// Defaults for Config's zero values.
const (
	DefaultRefreshAt  = 0.8
	DefaultMaxEntries = 100_000
	DefaultTimeout    = 10 * time.Second
	// MaxSubjectTokenBytes bounds the subject token accepted from the
	// application (the STS refuses more than 16 KiB anyway).
	MaxSubjectTokenBytes = 16 << 10
	maxAudienceBytes     = 2 << 10
)

// Config configures a Client. Zero values mean defaults.
type Config struct {
	// TokenEndpoint is the STS's token endpoint, https://.../oauth2/token.
	TokenEndpoint string
	// Roots verifies the STS's serving certificate (the trust domain's
	// bundle, read per connection so a CA rotation applies at once).
	Roots x509bundle.Source
	// TrustDomain names the bundle in Roots.
	TrustDomain spiffeid.TrustDomain
	// ServerID, when set, is the SPIFFE ID the STS's certificate must carry
	// (e.g. spiffe://<trust domain>/postern/server), checked instead of the
	// endpoint's host name.
	ServerID spiffeid.ID
	// SVID is the workload's own X.509-SVID, presented to the STS
	// (tls_client_auth); issued tokens are bound to it.
	SVID x509svid.Source
	// RefreshAt is the fraction of a token's lifetime after which a cached
	// token is renewed; default 0.8.
	RefreshAt float64
	// MaxEntries bounds the cache; default 100,000.
	MaxEntries int
	// Timeout bounds one STS call; default 10s.
	Timeout time.Duration
	// MaxInFlight bounds the token requests in flight at once; default 64.
	// The subject tokens come from the application: many distinct ones at
	// once must not become as many concurrent calls to the STS. A call that
	// finds no free slot before its Timeout counts as the STS unavailable
	// (a cached token, if any, is served).
	MaxInFlight int
	// HTTPClient replaces the mTLS client built from Roots and SVID
	// (tests). Tokens are then not pinned to the certificate in SVID.
	HTTPClient *http.Client
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger receives warnings about the STS (never tokens); default
	// discards.
	Logger *slog.Logger
}

// Token is an access token obtained from the STS. A *Token returned by
// Client is shared between callers and must not be modified.
type Token struct {
	// Raw is the compact JWT, sent as "Authorization: Bearer <Raw>".
	Raw string
	// Expiry is when the token expires (from expires_in, by the Client's
	// clock).
	Expiry time.Time
	// Scope is the granted scope, space separated.
	Scope string
	// Thumbprint is the x5t#S256 of the certificate the token was
	// requested with, hence bound to: the caller must present that
	// certificate to the next hop. Empty with Config.HTTPClient.
	Thumbprint string
}

// Stats are the client's counters since it was created.
type Stats struct {
	CacheHits   uint64 // served from the cache without an STS call
	CacheMisses uint64 // needed an STS call (or joined one in flight)
	StaleServed uint64 // served from the cache past RefreshAt because the STS was unreachable
	Issued      uint64 // STS calls that returned a token
	Refused     uint64 // STS calls refused with an OAuth error
	Unavailable uint64 // STS calls that failed to reach a working STS
}

// Client obtains and caches tokens. It is safe for concurrent use.
type Client struct {
	cfg      Config
	endpoint string
	host     string // TLS server name of the endpoint
	log      *slog.Logger

	mu    sync.RWMutex
	cache map[string]*entry

	group singleflight.Group
	slots chan struct{} // MaxInFlight

	tmu  sync.Mutex
	cur  atomic.Pointer[pinned] // STS client for the current certificate
	last atomic.Pointer[thumbCache]

	hits, misses, stale, issued, refused, unavailable atomic.Uint64
}

type entry struct {
	tok       *Token
	refreshAt time.Time
}

// pinned is an HTTP client whose connections present one fixed SVID, so a
// token is bound to exactly the certificate it is cached under.
type pinned struct {
	thumbprint string
	client     *http.Client
}

type thumbCache struct {
	leaf       *x509.Certificate
	thumbprint string
}

// New returns a Client.
func New(cfg Config) (*Client, error) {
	if cfg.RefreshAt == 0 {
		cfg.RefreshAt = DefaultRefreshAt
	}
	if cfg.RefreshAt <= 0 || cfg.RefreshAt > 1 {
		return nil, fmt.Errorf("exchange: RefreshAt %v is not in (0, 1]", cfg.RefreshAt)
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = DefaultMaxEntries
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 64
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	u, err := url.Parse(cfg.TokenEndpoint)
	if err != nil {
		return nil, fmt.Errorf("exchange: token endpoint: %w", err)
	}
	if u.Scheme != "https" || u.Host == "" || u.User != nil || u.Fragment != "" {
		return nil, errors.New("exchange: token endpoint must be an https URL without credentials or fragment")
	}
	if cfg.HTTPClient == nil {
		if cfg.SVID == nil || cfg.Roots == nil {
			return nil, errors.New("exchange: SVID and Roots are required")
		}
		if cfg.TrustDomain.IsZero() {
			return nil, errors.New("exchange: TrustDomain is required")
		}
	}
	return &Client{cfg: cfg, endpoint: u.String(), host: u.Hostname(), log: cfg.Logger, cache: map[string]*entry{}, slots: make(chan struct{}, cfg.MaxInFlight)}, nil
}

// Exchange returns a token for audience on behalf of the subject token (RFC
// 8693), cached per (sha256(subject), audience, own certificate) until
// RefreshAt of its lifetime; concurrent identical calls collapse into one.
// Refusals are *Error; an unreachable STS is ErrUnavailable, unless a cached
// token is still valid, which is then returned.
func (c *Client) Exchange(ctx context.Context, subjectToken, audience string) (*Token, error) {
	if subjectToken == "" {
		return nil, errors.New("exchange: empty subject token")
	}
	if len(subjectToken) > MaxSubjectTokenBytes {
		return nil, fmt.Errorf("exchange: subject token exceeds %d bytes", MaxSubjectTokenBytes)
	}
	return c.get(ctx, subjectToken, audience)
}

// ClientCredentials returns a token for the workload itself (the client
// credentials grant) for audience, cached and collapsed like Exchange.
func (c *Client) ClientCredentials(ctx context.Context, audience string) (*Token, error) {
	return c.get(ctx, "", audience)
}

// Stats returns the counters; reading them costs a few atomic loads.
func (c *Client) Stats() Stats {
	return Stats{
		CacheHits: c.hits.Load(), CacheMisses: c.misses.Load(), StaleServed: c.stale.Load(),
		Issued: c.issued.Load(), Refused: c.refused.Load(), Unavailable: c.unavailable.Load(),
	}
}

// Len returns the number of cached tokens.
func (c *Client) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.cache)
}

// Close releases idle connections to the STS.
func (c *Client) Close() {
	if p := c.cur.Load(); p != nil {
		p.client.CloseIdleConnections()
	}
}

// request is one STS call: subject empty means client credentials.
type request struct {
	subject, audience string
	svid              *x509svid.SVID
	thumbprint        string
	key               string
}

func (c *Client) get(ctx context.Context, subject, audience string) (*Token, error) {
	if audience == "" || len(audience) > maxAudienceBytes {
		return nil, errors.New("exchange: audience is empty or too long")
	}
	req := request{subject: subject, audience: audience}
	if c.cfg.HTTPClient == nil {
		svid, err := c.cfg.SVID.GetX509SVID()
		if err != nil || svid == nil || len(svid.Certificates) == 0 {
			return nil, fmt.Errorf("exchange: no SVID to authenticate with: %w", errors.Join(ErrUnavailable, err))
		}
		req.svid, req.thumbprint = svid, c.thumbprint(svid.Certificates[0])
	}
	req.key = cacheKey(subject, audience, req.thumbprint)
	if e := c.lookup(req.key); e != nil && c.cfg.Now().Before(e.refreshAt) {
		c.hits.Add(1)
		return e.tok, nil
	}
	c.misses.Add(1)
	ch := c.group.DoChan(req.key, func() (any, error) {
		// The call outlives any one waiter: it serves all of them.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.Timeout)
		defer cancel()
		return c.fetch(fctx, req)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		return r.Val.(*Token), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("exchange: %w", ctx.Err())
	}
}

// fetch calls the STS for req and updates the cache; when the STS is
// unreachable it falls back to a cached token that has not expired.
func (c *Client) fetch(ctx context.Context, req request) (*Token, error) {
	now := c.cfg.Now()
	cached := c.lookup(req.key)
	if cached != nil && now.Before(cached.refreshAt) {
		return cached.tok, nil // a flight that just ended filled it
	}
	tok, err := c.callLimited(ctx, req)
	switch {
	case err == nil:
		c.issued.Add(1)
		lifetime := tok.Expiry.Sub(now)
		c.store(req.key, &entry{tok: tok, refreshAt: now.Add(time.Duration(float64(lifetime) * c.cfg.RefreshAt))})
		return tok, nil
	case errors.Is(err, ErrUnavailable):
		c.unavailable.Add(1)
		if cached != nil && c.cfg.Now().Before(cached.tok.Expiry) {
			c.stale.Add(1)
			c.log.Warn("exchange: token service unavailable, serving a cached token", slog.String("audience", req.audience), slog.String("error", err.Error()))
			return cached.tok, nil
		}
		c.log.Warn("exchange: token service unavailable", slog.String("audience", req.audience), slog.String("error", err.Error()))
		return nil, err
	default:
		c.refused.Add(1)
		// The STS said no: a cached token must not outlive the refusal.
		c.remove(req.key)
		return nil, err
	}
}

// callLimited is call within MaxInFlight.
func (c *Client) callLimited(ctx context.Context, req request) (*Token, error) {
	select {
	case c.slots <- struct{}{}:
		defer func() { <-c.slots }()
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %d token requests already in flight", ErrUnavailable, cap(c.slots))
	}
	return c.call(ctx, req)
}

func (c *Client) lookup(key string) *entry {
	c.mu.RLock()
	e := c.cache[key]
	c.mu.RUnlock()
	return e
}

func (c *Client) store(key string, e *entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.cache[key]; !ok && len(c.cache) >= c.cfg.MaxEntries {
		c.evictLocked()
	}
	c.cache[key] = e
}

func (c *Client) remove(key string) {
	c.mu.Lock()
	delete(c.cache, key)
	c.mu.Unlock()
}

// evictLocked drops expired tokens and, if that is not enough, a tenth of
// the cache in map order (random): an evicted token costs one STS call.
func (c *Client) evictLocked() {
	now := c.cfg.Now()
	for k, e := range c.cache {
		if !now.Before(e.tok.Expiry) {
			delete(c.cache, k)
		}
	}
	for k := range c.cache {
		if len(c.cache) < c.cfg.MaxEntries-c.cfg.MaxEntries/10 {
			return
		}
		delete(c.cache, k)
	}
}

// cacheKey is sha256(subject) | audience | thumbprint: the subject token
// itself is never held as a key. Client credentials have their own prefix.
func cacheKey(subject, audience, thumbprint string) string {
	var b strings.Builder
	b.Grow(1 + sha256.Size + len(audience) + len(thumbprint) + 2)
	if subject == "" {
		b.WriteByte('c')
	} else {
		b.WriteByte('x')
		sum := sha256.Sum256([]byte(subject))
		b.Write(sum[:])
	}
	b.WriteString(audience)
	b.WriteByte(0)
	b.WriteString(thumbprint)
	return b.String()
}

// thumbprint memoizes token.Thumbprint of the current leaf: sources hand
// out the same certificate until a rotation.
func (c *Client) thumbprint(leaf *x509.Certificate) string {
	if t := c.last.Load(); t != nil && t.leaf == leaf {
		return t.thumbprint
	}
	t := &thumbCache{leaf: leaf, thumbprint: token.Thumbprint(leaf)}
	c.last.Store(t)
	return t.thumbprint
}

// httpClient returns the client whose connections present req's SVID.
// After a rotation the previous client's idle connections are closed.
func (c *Client) httpClient(req request) *http.Client {
	if c.cfg.HTTPClient != nil {
		return c.cfg.HTTPClient
	}
	if p := c.cur.Load(); p != nil && p.thumbprint == req.thumbprint {
		return p.client
	}
	c.tmu.Lock()
	defer c.tmu.Unlock()
	if p := c.cur.Load(); p != nil && p.thumbprint == req.thumbprint {
		return p.client
	}
	p := &pinned{thumbprint: req.thumbprint, client: &http.Client{Transport: c.transport(req.svid), Timeout: c.cfg.Timeout,
		// Never follow a redirect: the form carries the subject token, and
		// a redirect could send it elsewhere, even in plain HTTP.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
	if old := c.cur.Swap(p); old != nil {
		old.client.CloseIdleConnections()
	}
	return p.client
}

// transport dials the STS with mutual TLS: the fixed svid as client
// certificate; the server verified by tlsConfig.
func (c *Client) transport(svid *x509svid.SVID) *http.Transport {
	fixed := staticSVID{svid}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			cfg, err := c.tlsConfig(fixed)
			if err != nil {
				return nil, err
			}
			raw, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			conn := tls.Client(raw, cfg)
			if err := conn.HandshakeContext(ctx); err != nil {
				raw.Close()
				return nil, err
			}
			return conn, nil
		},
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: c.cfg.Timeout,
	}
}

// tlsConfig presents svid and verifies the STS by SPIFFE ID (ServerID set)
// or by host name, against the trust domain's current bundle either way.
func (c *Client) tlsConfig(svid x509svid.Source) (*tls.Config, error) {
	if !c.cfg.ServerID.IsZero() {
		return tlsconfig.MTLSClientConfig(svid, c.cfg.Roots, tlsconfig.AuthorizeID(c.cfg.ServerID)), nil
	}
	b, err := c.cfg.Roots.GetX509BundleForTrustDomain(c.cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("exchange: trust bundle: %w", err)
	}
	pool := x509.NewCertPool()
	for _, root := range b.X509Authorities() {
		pool.AddCert(root)
	}
	cfg := tlsconfig.MTLSWebClientConfig(svid, pool)
	cfg.ServerName = c.host
	return cfg, nil
}

// staticSVID is an x509svid.Source that always returns one SVID.
type staticSVID struct{ svid *x509svid.SVID }

func (s staticSVID) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }
