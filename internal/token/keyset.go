package token

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// KeySetFunc adapts a lookup function to KeySet.
type KeySetFunc func(ctx context.Context, kid string) (jose.JSONWebKey, error)

// Key calls f.
func (f KeySetFunc) Key(ctx context.Context, kid string) (jose.JSONWebKey, error) { return f(ctx, kid) }

// StaticKeySet is a fixed set of public keys, such as an inline JWKS.
type StaticKeySet struct {
	keys []jose.JSONWebKey
}

// NewStaticKeySet returns a key set of the public halves of set's keys. It
// refuses symmetric keys and an empty set.
func NewStaticKeySet(set jose.JSONWebKeySet) (*StaticKeySet, error) {
	keys, err := publicKeys(set)
	if err != nil {
		return nil, err
	}
	return &StaticKeySet{keys: keys}, nil
}

// Key returns the key with kid.
func (s *StaticKeySet) Key(_ context.Context, kid string) (jose.JSONWebKey, error) {
	return lookup(s.keys, kid)
}

func publicKeys(set jose.JSONWebKeySet) ([]jose.JSONWebKey, error) {
	if len(set.Keys) == 0 {
		return nil, errors.New("token: key set is empty")
	}
	out := make([]jose.JSONWebKey, 0, len(set.Keys))
	for _, k := range set.Keys {
		if _, ok := k.Key.([]byte); ok {
			return nil, fmt.Errorf("token: key %q is symmetric; only public keys verify tokens", k.KeyID)
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		pub := k
		if !k.IsPublic() {
			pub = k.Public()
		}
		if !pub.Valid() {
			return nil, fmt.Errorf("token: key %q is not a valid public key", k.KeyID)
		}
		out = append(out, pub)
	}
	if len(out) == 0 {
		return nil, errors.New("token: key set has no signing keys")
	}
	return out, nil
}

func lookup(keys []jose.JSONWebKey, kid string) (jose.JSONWebKey, error) {
	if kid == "" {
		if len(keys) == 1 {
			return keys[0], nil
		}
		return jose.JSONWebKey{}, fmt.Errorf("%w: token has no kid and the key set has %d keys", ErrUnknownKey, len(keys))
	}
	for _, k := range keys {
		if k.KeyID == kid {
			return k, nil
		}
	}
	return jose.JSONWebKey{}, fmt.Errorf("%w: kid %q", ErrUnknownKey, kid)
}

// RemoteConfig configures a RemoteKeySet. Exactly one of JWKSURI and
// DiscoveryIssuer is required.
type RemoteConfig struct {
	// JWKSURI is the key set's URL.
	JWKSURI string
	// DiscoveryIssuer, when set, finds jwks_uri in the issuer's
	// /.well-known/openid-configuration (falling back to
	// /.well-known/oauth-authorization-server), whose "issuer" must equal it.
	DiscoveryIssuer string
	// HTTPClient fetches; default a client with a 10s timeout.
	HTTPClient *http.Client
	// MinRefreshInterval rate-limits refreshes (on an unknown kid and
	// after failures); default 10s.
	MinRefreshInterval time.Duration
	// DefaultMaxAge is how long keys are fresh when the response has no
	// Cache-Control max-age; default 5m. MaxMaxAge caps a server's
	// max-age; default 24h.
	DefaultMaxAge, MaxMaxAge time.Duration
	// MaxBodyBytes bounds a response; default 1 MiB.
	MaxBodyBytes int64
	// Now returns the current time; default time.Now.
	Now func() time.Time
	// Logger reports refresh failures; default discards.
	Logger *slog.Logger
}

// RemoteKeySet is a JWKS fetched over HTTP(S) and cached. A kid it does not
// know triggers a refresh, at most once per MinRefreshInterval. A failed
// refresh keeps the last good keys; an empty or invalid set is never
// accepted. It is safe for concurrent use.
type RemoteKeySet struct {
	cfg   RemoteConfig
	state atomic.Pointer[remoteState]

	mu          sync.Mutex // serialises fetches
	lastAttempt time.Time  // last fetch of any kind
	lastKid     time.Time  // last fetch caused by an unknown kid
	lastErr     error
}

type remoteState struct {
	keys    []jose.JSONWebKey
	fetched time.Time
	expires time.Time
}

// fetchableURL accepts https URLs, and http ones for loopback hosts only:
// anyone on the path of a plain HTTP fetch could hand out signing keys.
func fetchableURL(s string) bool {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || u.User != nil {
		return false
	}
	switch u.Scheme {
	case "https":
		return true
	case "http":
		h := u.Hostname()
		if h == "localhost" {
			return true
		}
		ip := net.ParseIP(h)
		return ip != nil && ip.IsLoopback()
	}
	return false
}

// NewRemoteKeySet returns a RemoteKeySet; it fetches nothing until first used
// or refreshed.
func NewRemoteKeySet(cfg RemoteConfig) (*RemoteKeySet, error) {
	if (cfg.JWKSURI == "") == (cfg.DiscoveryIssuer == "") {
		return nil, errors.New("token: remote key set needs exactly one of a JWKS URI and a discovery issuer")
	}
	for _, u := range []string{cfg.JWKSURI, cfg.DiscoveryIssuer} {
		if u == "" {
			continue
		}
		if !fetchableURL(u) {
			return nil, fmt.Errorf("token: %q is not an https URL (http only for a loopback host)", u)
		}
	}
	if cfg.HTTPClient == nil {
		// No redirects: a key set is fetched from exactly where it is
		// configured, never from wherever a response points.
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	}
	if cfg.MinRefreshInterval <= 0 {
		cfg.MinRefreshInterval = 10 * time.Second
	}
	if cfg.DefaultMaxAge <= 0 {
		cfg.DefaultMaxAge = 5 * time.Minute
	}
	if cfg.MaxMaxAge <= 0 {
		cfg.MaxMaxAge = 24 * time.Hour
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &RemoteKeySet{cfg: cfg}, nil
}

// Ready reports whether keys have been loaded.
func (r *RemoteKeySet) Ready() bool { return r.state.Load() != nil }

// Holds reports whether the keys loaded now include the one a token with
// kid was verified with, without fetching: a cache of verdicts asks it on
// every hit, so that a key removed from the set (revoked) stops the tokens
// it signed at once.
func (r *RemoteKeySet) Holds(kid string) bool {
	st := r.state.Load()
	if st == nil {
		return false
	}
	_, err := lookup(st.keys, kid)
	return err == nil
}

// Key returns the key with kid, refreshing (rate-limited) when it is not
// known.
func (r *RemoteKeySet) Key(ctx context.Context, kid string) (jose.JSONWebKey, error) {
	if st := r.state.Load(); st != nil {
		if k, err := lookup(st.keys, kid); err == nil {
			return k, nil
		}
	}
	limiter := &r.lastAttempt
	if r.state.Load() != nil {
		// Keys are loaded but this kid is not among them: the issuer may
		// have rotated since the last fetch. Unknown kids have their own
		// rate limit, so a rotation right after a scheduled fetch is still
		// seen, and a flood of made-up kids costs one fetch per interval.
		limiter = &r.lastKid
	}
	if err := r.refreshLimited(ctx, limiter); err != nil && r.state.Load() == nil {
		return jose.JSONWebKey{}, fmt.Errorf("%w: %v", ErrKeysUnavailable, err)
	}
	st := r.state.Load()
	if st == nil {
		return jose.JSONWebKey{}, ErrKeysUnavailable
	}
	return lookup(st.keys, kid)
}

// Refresh fetches the key set now, unless a fetch happened within the
// refresh interval. On failure the last good keys stay in use.
func (r *RemoteKeySet) Refresh(ctx context.Context) error { return r.refresh(ctx, false) }

func (r *RemoteKeySet) refresh(ctx context.Context, force bool) error {
	if force {
		return r.refreshLimited(ctx, nil)
	}
	return r.refreshLimited(ctx, &r.lastAttempt)
}

// refreshLimited fetches unless *limiter (guarded by mu) is within the
// refresh interval; a nil limiter always fetches.
func (r *RemoteKeySet) refreshLimited(ctx context.Context, limiter *time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.cfg.Now()
	if limiter != nil && !limiter.IsZero() && now.Sub(*limiter) < r.cfg.MinRefreshInterval {
		return r.lastErr
	}
	var prevLimit time.Time
	if limiter != nil {
		prevLimit = *limiter
		*limiter = now
	}
	prevAttempt, prevErr := r.lastAttempt, r.lastErr
	r.lastAttempt = now
	keys, maxAge, err := r.fetch(ctx)
	r.lastErr = err
	if err != nil && ctx.Err() != nil {
		// The caller gave up; that says nothing about the issuer, so it
		// must not use up the scheduled refresh for every other caller.
		// An unknown kid's fetch stays charged, though: a flood of made-up
		// kids from callers that hang up must still cost one fetch per
		// interval.
		r.lastAttempt, r.lastErr = prevAttempt, prevErr
		if limiter != nil && limiter != &r.lastKid {
			*limiter = prevLimit
		}
		return err
	}
	if err != nil {
		r.cfg.Logger.Warn("jwks refresh failed; keeping the last good keys",
			slog.String("jwks", r.source()), slog.String("error", err.Error()))
		return err
	}
	r.state.Store(&remoteState{keys: keys, fetched: now, expires: now.Add(maxAge)})
	return nil
}

func (r *RemoteKeySet) source() string {
	if r.cfg.JWKSURI != "" {
		return r.cfg.JWKSURI
	}
	return r.cfg.DiscoveryIssuer
}

// Run fetches the keys at once if none are loaded yet, then refreshes them
// when their cache lifetime ends, until ctx is done.
func (r *RemoteKeySet) Run(ctx context.Context) {
	if r.state.Load() == nil {
		_ = r.refresh(ctx, false)
	}
	for {
		wait := r.cfg.MinRefreshInterval
		if st := r.state.Load(); st != nil {
			if d := st.expires.Sub(r.cfg.Now()); d > wait {
				wait = d
			}
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		_ = r.refresh(ctx, false)
	}
}

func (r *RemoteKeySet) fetch(ctx context.Context) ([]jose.JSONWebKey, time.Duration, error) {
	uri := r.cfg.JWKSURI
	if uri == "" {
		var err error
		uri, err = r.discover(ctx)
		if err != nil {
			return nil, 0, err
		}
	}
	body, hdr, err := r.get(ctx, uri)
	if err != nil {
		return nil, 0, err
	}
	set, err := parseJWKS(body)
	if err != nil {
		return nil, 0, fmt.Errorf("jwks from %s: %v", uri, err)
	}
	keys, err := publicKeys(set)
	if err != nil {
		return nil, 0, fmt.Errorf("jwks from %s: %v", uri, err)
	}
	return keys, r.maxAge(hdr), nil
}

// parseJWKS decodes a fetched JWK Set. Members of a key type go-jose does
// not support are skipped (RFC 7517 §5); a member with private or symmetric
// key material makes the whole set invalid, since go-jose's JWK decoder is
// not meant for untrusted private keys and publishing one is a misconfiguration.
func parseJWKS(body []byte) (jose.JSONWebKeySet, error) {
	var raw struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		return jose.JSONWebKeySet{}, fmt.Errorf("not a JWK set: %v", err)
	}
	var set jose.JSONWebKeySet
	for i, m := range raw.Keys {
		var secret struct {
			D   json.RawMessage `json:"d"`
			P   json.RawMessage `json:"p"`
			Q   json.RawMessage `json:"q"`
			DP  json.RawMessage `json:"dp"`
			DQ  json.RawMessage `json:"dq"`
			QI  json.RawMessage `json:"qi"`
			Oth json.RawMessage `json:"oth"`
			K   json.RawMessage `json:"k"`
		}
		if err := json.Unmarshal(m, &secret); err != nil {
			return jose.JSONWebKeySet{}, fmt.Errorf("key %d is not a JWK: %v", i, err)
		}
		if secret.D != nil || secret.P != nil || secret.Q != nil || secret.DP != nil ||
			secret.DQ != nil || secret.QI != nil || secret.Oth != nil || secret.K != nil {
			return jose.JSONWebKeySet{}, fmt.Errorf("key %d carries private or symmetric key material", i)
		}
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(m); err != nil {
			if errors.Is(err, jose.ErrUnsupportedKeyType) {
				continue
			}
			return jose.JSONWebKeySet{}, fmt.Errorf("key %d: %v", i, err)
		}
		set.Keys = append(set.Keys, k)
	}
	return set, nil
}

func (r *RemoteKeySet) discover(ctx context.Context) (string, error) {
	base := strings.TrimSuffix(r.cfg.DiscoveryIssuer, "/")
	var lastErr error
	for _, p := range []string{"/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"} {
		body, _, err := r.get(ctx, base+p)
		if err != nil {
			lastErr = err
			continue
		}
		var doc struct {
			Issuer  string `json:"issuer"`
			JWKSURI string `json:"jwks_uri"`
		}
		if err := json.Unmarshal(body, &doc); err != nil {
			return "", fmt.Errorf("discovery document at %s is not JSON: %v", base+p, err)
		}
		if doc.Issuer != r.cfg.DiscoveryIssuer {
			return "", fmt.Errorf("discovery document names issuer %q, want %q", doc.Issuer, r.cfg.DiscoveryIssuer)
		}
		// Keys are the issuer's trust: they come over TLS, whatever the
		// discovery document says (http only on loopback, for tests).
		if !fetchableURL(doc.JWKSURI) || strings.HasPrefix(r.cfg.DiscoveryIssuer, "https:") && !strings.HasPrefix(doc.JWKSURI, "https:") {
			return "", fmt.Errorf("discovery document has no usable jwks_uri (want https; http only for a loopback issuer)")
		}
		return doc.JWKSURI, nil
	}
	return "", lastErr
}

func (r *RemoteKeySet) get(ctx context.Context, uri string) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, uri, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := r.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("get %s: %v", uri, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4096))
		return nil, nil, fmt.Errorf("get %s: status %d", uri, resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		mt, _, _ := mime.ParseMediaType(ct)
		if mt != "application/json" && mt != "application/jwk-set+json" && !strings.HasSuffix(mt, "+json") {
			return nil, nil, fmt.Errorf("get %s: content type %q is not JSON", uri, mt)
		}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, r.cfg.MaxBodyBytes+1))
	if err != nil {
		return nil, nil, fmt.Errorf("get %s: %v", uri, err)
	}
	if int64(len(body)) > r.cfg.MaxBodyBytes {
		return nil, nil, fmt.Errorf("get %s: response over %d bytes", uri, r.cfg.MaxBodyBytes)
	}
	return body, resp.Header, nil
}

func (r *RemoteKeySet) maxAge(h http.Header) time.Duration {
	for _, d := range strings.Split(h.Get("Cache-Control"), ",") {
		d = strings.TrimSpace(strings.ToLower(d))
		if v, ok := strings.CutPrefix(d, "max-age="); ok {
			if n, err := strconv.Atoi(v); err == nil && n >= 0 {
				age := time.Duration(n) * time.Second
				if age < r.cfg.MinRefreshInterval {
					age = r.cfg.MinRefreshInterval
				}
				if age > r.cfg.MaxMaxAge {
					age = r.cfg.MaxMaxAge
				}
				return age
			}
		}
	}
	return r.cfg.DefaultMaxAge
}
