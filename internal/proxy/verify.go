package proxy

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"postern.dev/postern/internal/token"
)

// Verdict cache defaults.
const (
	defaultVerdictEntries  = 100_000
	defaultNegativeEntries = 10_000
	defaultNegativeTTL     = 5 * time.Second
)

// TokenVerifier is the interface VerdictCache needs from token.Verifier.
type TokenVerifier interface {
	Verify(ctx context.Context, raw string) (*token.Claims, error)
}

// VerdictCacheConfig configures a VerdictCache. Zero values mean defaults.
type VerdictCacheConfig struct {
	// Verifier checks a token completely (signature, iss, aud, typ, alg,
	// exp, nbf). Required.
	Verifier TokenVerifier
	// MaxEntries bounds the cache of verified tokens; default 100,000.
	MaxEntries int
	// NegativeTTL is how long a token that failed verification is
	// remembered as bad; default 5s. Failures caused by unavailable keys
	// are never remembered.
	NegativeTTL time.Duration
	// MaxNegative bounds the cache of failures; default 10,000.
	MaxNegative int
	// Leeway is the clock skew tolerated on exp and nbf when a cached
	// verdict is reused; it should equal the verifier's; default 30s.
	Leeway time.Duration
	// KeyHeld, when set, reports whether the signing key with the given
	// kid is still in the issuer's key set; a cached verdict whose key was
	// removed (revoked) is dropped and the token verified again.
	KeyHeld func(kid string) bool
	// Now returns the current time; default time.Now.
	Now func() time.Time
}

// Verified is what the inbound chain knows about a token once verified:
// its claims and the forms derived from them once per token rather than
// once per request. It is shared between requests and must not be changed.
type Verified struct {
	// Claims are the verified claims.
	Claims *token.Claims
	// Map is Claims.Map(), the form policies see.
	Map map[string]any
	// Actors is the act chain, newest first.
	Actors []string
	// Header is the X-Postern-Claims value: base64url of the claims JSON.
	Header string

	kid   string                 // the key id the token was verified with
	ctxID atomic.Pointer[string] // X-Postern-Context id, see contextID
}

// VerdictCache verifies bearer tokens once and remembers the verdict until
// the token expires, keyed by the token's SHA-256. The certificate binding
// (cnf) and the time window are checked on every call, since the same token
// may arrive later, or over another connection. It is safe for concurrent
// use.
type VerdictCache struct {
	cfg VerdictCacheConfig

	mu  sync.RWMutex
	ok  map[[32]byte]*Verified
	bad map[[32]byte]negative
}

type negative struct {
	err   error
	until time.Time
}

// NewVerdictCache returns a cache over cfg.Verifier.
func NewVerdictCache(cfg VerdictCacheConfig) (*VerdictCache, error) {
	if cfg.Verifier == nil {
		return nil, errors.New("proxy: verdict cache needs a verifier")
	}
	if cfg.MaxEntries <= 0 {
		cfg.MaxEntries = defaultVerdictEntries
	}
	if cfg.MaxNegative <= 0 {
		cfg.MaxNegative = defaultNegativeEntries
	}
	if cfg.NegativeTTL <= 0 {
		cfg.NegativeTTL = defaultNegativeTTL
	}
	if cfg.Leeway <= 0 {
		cfg.Leeway = 30 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &VerdictCache{cfg: cfg, ok: map[[32]byte]*Verified{}, bad: map[[32]byte]negative{}}, nil
}

// Leeway is the clock skew tolerated on exp and nbf.
func (c *VerdictCache) Leeway() time.Duration { return c.cfg.Leeway }

// Len returns the number of verified tokens held.
func (c *VerdictCache) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.ok)
}

// Verify returns the verified form of raw presented over a connection whose
// client certificate is cert. Errors wrap the token package's sentinels and
// never contain the token.
func (c *VerdictCache) Verify(ctx context.Context, raw string, cert *x509.Certificate) (*Verified, error) {
	key := sha256.Sum256([]byte(raw))
	now := c.cfg.Now()
	c.mu.RLock()
	v, hit := c.ok[key]
	neg, bad := c.bad[key]
	c.mu.RUnlock()
	if bad && now.Before(neg.until) {
		return nil, neg.err
	}
	if hit && c.cfg.KeyHeld != nil && !c.cfg.KeyHeld(v.kid) {
		// Its signing key is no longer published: verify afresh (which
		// refuses the token unless the key comes back).
		c.mu.Lock()
		delete(c.ok, key)
		c.mu.Unlock()
		hit = false
	}
	if hit {
		if err := c.window(v.Claims, now); err != nil {
			c.mu.Lock()
			delete(c.ok, key)
			c.mu.Unlock()
			return nil, err
		}
		if err := v.Claims.CheckBinding(cert); err != nil {
			return nil, err
		}
		return v, nil
	}
	claims, err := c.cfg.Verifier.Verify(ctx, raw)
	if err != nil {
		if !errors.Is(err, token.ErrKeysUnavailable) && ctx.Err() == nil {
			c.remember(key, negative{err: err, until: now.Add(c.cfg.NegativeTTL)}, now)
		}
		return nil, err
	}
	v, err = newVerified(claims)
	if err != nil {
		return nil, err
	}
	if c.cfg.KeyHeld != nil {
		// The kid as the verifier's JOSE library read it (the one whose
		// key checked the signature), once per token.
		if p, err := token.Parse(raw, 0); err == nil {
			v.kid = p.KeyID()
		}
	}
	c.store(key, v, now)
	if err := claims.CheckBinding(cert); err != nil {
		return nil, err
	}
	return v, nil
}

func newVerified(claims *token.Claims) (*Verified, error) {
	js, err := claims.MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("%w: claims do not encode", token.ErrMalformed)
	}
	return &Verified{
		Claims: claims,
		Map:    claims.Map(),
		Actors: claims.Act.Chain(),
		Header: base64.RawURLEncoding.EncodeToString(js),
	}, nil
}

// window checks exp and nbf of a cached verdict, as the verifier did.
func (c *VerdictCache) window(cl *token.Claims, now time.Time) error {
	if !now.Before(cl.Expiry.Add(c.Leeway())) {
		return fmt.Errorf("%w at %s", token.ErrExpired, cl.Expiry.UTC().Format(time.RFC3339))
	}
	if !cl.NotBefore.IsZero() && now.Add(c.cfg.Leeway).Before(cl.NotBefore) {
		return fmt.Errorf("%w until %s", token.ErrNotYetValid, cl.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

func (c *VerdictCache) store(key [32]byte, v *Verified, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.ok) >= c.cfg.MaxEntries {
		for k, e := range c.ok {
			if !now.Before(e.Claims.Expiry.Add(c.cfg.Leeway)) {
				delete(c.ok, k)
			}
		}
		// Still full: drop a tenth at random (map order). A dropped
		// verdict costs one more signature check, nothing else.
		for k := range c.ok {
			if len(c.ok) < c.cfg.MaxEntries-c.cfg.MaxEntries/10 {
				break
			}
			delete(c.ok, k)
		}
	}
	c.ok[key] = v
}

func (c *VerdictCache) remember(key [32]byte, n negative, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.bad) >= c.cfg.MaxNegative {
		for k, e := range c.bad {
			if !now.Before(e.until) {
				delete(c.bad, k)
			}
		}
		for k := range c.bad {
			if len(c.bad) < c.cfg.MaxNegative-c.cfg.MaxNegative/10 {
				break
			}
			delete(c.bad, k)
		}
	}
	c.bad[key] = n
}
