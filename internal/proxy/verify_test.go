package proxy

import (
	"context"
	"errors"
	"testing"
	"time"

	"postern.dev/postern/internal/token"
)

func TestVerdictCacheNegativeAndBounds(t *testing.T) {
	h := newHarness(t, nil)
	caller := h.ca.SVID(t, testCaller)
	vc, err := NewVerdictCache(VerdictCacheConfig{Verifier: h.verifier, MaxEntries: 10, MaxNegative: 10, Leeway: time.Second, Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	// A failure is remembered for the negative TTL only.
	bad := h.token(t, "spiffe://test.local/other", nil, nil)
	for range 3 {
		if _, err := vc.Verify(ctx, bad, caller.Cert); !errors.Is(err, token.ErrAudience) {
			t.Fatalf("err %v", err)
		}
	}
	if n := h.verifier.count(); n != 1 {
		t.Errorf("%d verifications of a bad token within the negative TTL, want 1", n)
	}
	h.clock.Add(6 * time.Second)
	_, _ = vc.Verify(ctx, bad, caller.Cert)
	if n := h.verifier.count(); n != 2 {
		t.Errorf("%d verifications after the negative TTL, want 2", n)
	}

	// The caches stay bounded.
	for i := range 50 {
		tok := h.token(t, testSelf, nil, func(c *token.Claims) { c.ID = string(rune('a' + i)) })
		if _, err := vc.Verify(ctx, tok, caller.Cert); err != nil {
			t.Fatal(err)
		}
		bad := h.token(t, "x", nil, func(c *token.Claims) { c.ID = string(rune('a' + i)) })
		_, _ = vc.Verify(ctx, bad, caller.Cert)
	}
	vc.mu.RLock()
	nok, nbad := len(vc.ok), len(vc.bad)
	vc.mu.RUnlock()
	if nok > 10 || nbad > 10 {
		t.Errorf("caches hold %d and %d entries, bound 10", nok, nbad)
	}

	// Unavailable keys are never remembered.
	down := &countingVerifier{v: nil}
	vc2, _ := NewVerdictCache(VerdictCacheConfig{Verifier: keysDown{down}, Now: h.clock.Now})
	for range 2 {
		if _, err := vc2.Verify(ctx, "a.b.c", nil); !errors.Is(err, token.ErrKeysUnavailable) {
			t.Fatalf("err %v", err)
		}
	}
	if down.count() != 2 {
		t.Errorf("a keys-unavailable failure was cached")
	}
	if _, err := NewVerdictCache(VerdictCacheConfig{}); err == nil || err.Error() != "proxy: verdict cache needs a verifier" {
		t.Errorf("NewVerdictCache without verifier: %v", err)
	}
}

type keysDown struct{ c *countingVerifier }

func (k keysDown) Verify(context.Context, string) (*token.Claims, error) {
	k.c.m.Lock()
	k.c.n++
	k.c.m.Unlock()
	return nil, token.ErrKeysUnavailable
}

// A cached verdict whose signing key has left the issuer's key set (an
// emergency rotation with --revoke-old) is dropped: the token is verified
// afresh instead of passing until it expires.
func TestVerdictCacheDropsVerdictsOfRemovedKeys(t *testing.T) {
	h := newHarness(t, nil)
	caller := h.ca.SVID(t, testCaller)
	held := true
	var asked []string
	vc, err := NewVerdictCache(VerdictCacheConfig{Verifier: h.verifier, Now: h.clock.Now,
		KeyHeld: func(kid string) bool { asked = append(asked, kid); return held }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tok := h.token(t, testSelf, caller.Cert, nil)
	for range 2 {
		if _, err := vc.Verify(ctx, tok, caller.Cert); err != nil {
			t.Fatal(err)
		}
	}
	if n := h.verifier.count(); n != 1 || len(asked) != 1 || asked[0] == "" {
		t.Fatalf("%d verifications, key ids asked %q; want 1 and the token's kid", n, asked)
	}
	held = false
	_, _ = vc.Verify(ctx, tok, caller.Cert)
	if n := h.verifier.count(); n != 2 {
		t.Errorf("%d verifications after the key left the set, want 2 (verified again)", n)
	}
}
