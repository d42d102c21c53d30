// Package introspect is an RFC 7662 token introspection client with a
// bounded cache, for the opaque access tokens of external identity
// providers: the STS introspects opaque subject tokens, the gateway opaque
// user tokens. An active result is cached until the token's exp (bounded);
// an inactive one briefly; a failure never counts as active.
//
// It does not verify JWTs (package token does).
package introspect

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/singleflight"

	"postern.dev/postern/internal/token"
)

// Errors returned by Introspect. ErrInactive means the issuer said the
// token is not active (or its answer did not qualify it as usable);
// ErrUnavailable that the issuer could not be asked.
var (
	ErrInactive    = errors.New("introspect: token is not active")
	ErrUnavailable = errors.New("introspect: introspection endpoint unavailable")
)

// Config configures a Client. Endpoint, ClientID, ClientSecret and Issuer
// are required.
type Config struct {
	// Endpoint is the issuer's introspection endpoint (https; http only
	// for loopback test issuers).
	Endpoint string
	// ClientID and ClientSecret authenticate this client (HTTP Basic,
	// RFC 7662 §2.1).
	ClientID, ClientSecret string
	// Issuer is the issuer the results belong to: a result naming another
	// iss is refused; a result without iss gets this one.
	Issuer string
	// MaxTTL caps how long an active result is cached; default 5m.
	MaxTTL time.Duration
	// NegativeTTL is how long an inactive result is cached; default 10s.
	NegativeTTL time.Duration
	// MaxEntries bounds the cache; default 10,000.
	MaxEntries int
	// MaxTokenBytes bounds the tokens sent; default 16 KiB.
	MaxTokenBytes int
	// MaxInFlight bounds the introspection requests in flight at once;
	// default 32. Every token not in the cache costs a request to the
	// issuer, so a flood of made-up tokens would otherwise become a flood
	// of requests to it; a call that finds no free slot within
	// MaxInFlightWait fails with ErrUnavailable.
	MaxInFlight int
	// MaxInFlightWait is how long a call waits for a free slot; default 2s.
	MaxInFlightWait time.Duration
	// HTTPClient sends the requests; default 10s timeout, no redirects.
	HTTPClient *http.Client
	// Now returns the current time; default time.Now.
	Now func() time.Time
}

// Client introspects tokens. It is safe for concurrent use.
type Client struct {
	cfg   Config
	group singleflight.Group
	slots chan struct{} // MaxInFlight

	mu    sync.Mutex
	cache map[[32]byte]entry
}

type entry struct {
	claims *token.Claims // nil: inactive
	until  time.Time
}

// New validates cfg and returns a Client.
func New(cfg Config) (*Client, error) {
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || u.Host == "" || (u.Scheme != "https" && !(u.Scheme == "http" && isLoopback(u.Hostname()))) {
		return nil, fmt.Errorf("introspect: endpoint %q must be an https URL", cfg.Endpoint)
	}
	if cfg.ClientID == "" || cfg.ClientSecret == "" {
		return nil, errors.New("introspect: client id and secret are required")
	}
	if cfg.Issuer == "" {
		return nil, errors.New("introspect: issuer is required")
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = 5 * time.Minute
	}
	if cfg.NegativeTTL <= 0 {
		cfg.NegativeTTL = 10 * time.Second
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = 10_000
	}
	if cfg.MaxTokenBytes <= 0 {
		cfg.MaxTokenBytes = token.DefaultMaxSize
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 32
	}
	if cfg.MaxInFlightWait <= 0 {
		cfg.MaxInFlightWait = 2 * time.Second
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Client{cfg: cfg, cache: map[[32]byte]entry{}, slots: make(chan struct{}, cfg.MaxInFlight)}, nil
}

func isLoopback(host string) bool {
	return host == "localhost" || host == "127.0.0.1" || host == "::1"
}

// Introspect returns the claims of an active token. The result is cached
// per token (by hash) until its exp, at most MaxTTL; concurrent calls for
// the same token share one request, which a caller that gives up does not
// cancel for the others.
func (c *Client) Introspect(ctx context.Context, tok string) (*token.Claims, error) {
	if tok == "" || len(tok) > c.cfg.MaxTokenBytes {
		return nil, fmt.Errorf("%w: empty or over %d bytes", ErrInactive, c.cfg.MaxTokenBytes)
	}
	key := sha256.Sum256([]byte(tok))
	now := c.cfg.Now()
	c.mu.Lock()
	e, ok := c.cache[key]
	c.mu.Unlock()
	if ok && now.Before(e.until) {
		if e.claims == nil {
			return nil, ErrInactive
		}
		if now.Before(e.claims.Expiry) {
			cp := *e.claims
			return &cp, nil
		}
	}
	// The shared request runs detached from this caller's context (the
	// HTTP client's timeout bounds it); each caller waits on its own.
	shared := context.WithoutCancel(ctx)
	ch := c.group.DoChan(string(key[:]), func() (any, error) { return c.fetch(shared, tok, key) })
	select {
	case r := <-ch:
		if r.Err != nil {
			return nil, r.Err
		}
		cp := *(r.Val.(*token.Claims))
		return &cp, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
	}
}

// Cached reports whether Introspect would answer tok from the cache (an
// active or an inactive result not yet expired), without a request.
func (c *Client) Cached(tok string) bool {
	key := sha256.Sum256([]byte(tok))
	now := c.cfg.Now()
	c.mu.Lock()
	e, ok := c.cache[key]
	c.mu.Unlock()
	return ok && now.Before(e.until) && (e.claims == nil || now.Before(e.claims.Expiry))
}

func (c *Client) fetch(ctx context.Context, tok string, key [32]byte) (*token.Claims, error) {
	t := time.NewTimer(c.cfg.MaxInFlightWait)
	select {
	case c.slots <- struct{}{}:
		t.Stop()
		defer func() { <-c.slots }()
	case <-t.C:
		return nil, fmt.Errorf("%w: %d introspection requests already in flight", ErrUnavailable, c.cfg.MaxInFlight)
	}
	form := url.Values{"token": {tok}, "token_type_hint": {"access_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.Endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.SetBasicAuth(url.QueryEscape(c.cfg.ClientID), url.QueryEscape(c.cfg.ClientSecret))
	resp, err := c.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, redact(err, tok))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("%w: status %d", ErrUnavailable, resp.StatusCode)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "application/json" {
		return nil, fmt.Errorf("%w: content type %q is not JSON", ErrUnavailable, mt)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20+1))
	if err != nil || len(body) > 1<<20 {
		return nil, fmt.Errorf("%w: unreadable or oversized response", ErrUnavailable)
	}
	claims, err := c.parse(body)
	now := c.cfg.Now()
	if err != nil {
		c.store(key, entry{until: now.Add(c.cfg.NegativeTTL)})
		return nil, err
	}
	until := claims.Expiry
	if max := now.Add(c.cfg.MaxTTL); until.After(max) {
		until = max
	}
	c.store(key, entry{claims: claims, until: until})
	return claims, nil
}

// parse turns an introspection response into claims. Only "active": true
// with an exp in the future, and an iss that is the configured one (or
// none), qualifies.
func (c *Client) parse(body []byte) (*token.Claims, error) {
	// Exact member name: encoding/json would match "ACTIVE" into a field.
	var head map[string]json.RawMessage
	if err := json.Unmarshal(body, &head); err != nil {
		return nil, fmt.Errorf("%w: response is not a JSON object", ErrInactive)
	}
	if string(head["active"]) != "true" {
		return nil, ErrInactive
	}
	var claims token.Claims
	if err := json.Unmarshal(body, &claims); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInactive, err)
	}
	delete(claims.Extra, "active")
	delete(claims.Extra, "token_type")
	if claims.Issuer == "" {
		claims.Issuer = c.cfg.Issuer
	}
	if claims.Issuer != c.cfg.Issuer {
		return nil, fmt.Errorf("%w: result names issuer %q", ErrInactive, claims.Issuer)
	}
	// A token the issuer says becomes valid later is not valid now (30s of
	// clock skew allowed, as the verifiers allow).
	if !claims.NotBefore.IsZero() && c.cfg.Now().Add(30*time.Second).Before(claims.NotBefore) {
		return nil, fmt.Errorf("%w: result has an nbf in the future", ErrInactive)
	}
	if claims.Expiry.IsZero() || !c.cfg.Now().Before(claims.Expiry) {
		return nil, fmt.Errorf("%w: result has no exp in the future", ErrInactive)
	}
	if claims.Subject == "" {
		return nil, fmt.Errorf("%w: result has no sub", ErrInactive)
	}
	return &claims, nil
}

func (c *Client) store(key [32]byte, e entry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.cache) >= c.cfg.MaxEntries {
		now := c.cfg.Now()
		for k, v := range c.cache {
			if !now.Before(v.until) || len(c.cache) >= c.cfg.MaxEntries {
				delete(c.cache, k)
			}
			if len(c.cache) < c.cfg.MaxEntries*9/10 {
				break
			}
		}
	}
	c.cache[key] = e
}

// redact keeps the token out of an error that might quote the request.
func redact(err error, tok string) error {
	msg := err.Error()
	if strings.Contains(msg, tok) {
		return errors.New(strings.ReplaceAll(msg, tok, "[token]"))
	}
	return err
}
