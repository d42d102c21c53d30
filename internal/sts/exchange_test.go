package sts

import (
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"postern.dev/postern/internal/token"
)

func TestQuoteList(t *testing.T) {
	long := strings.Repeat("a", 150)
	for _, tc := range []struct {
		in   []string
		n    int
		want string
	}{
		{nil, 4, "[]"},
		{[]string{"shop"}, 4, `["shop"]`},
		{[]string{"a", "b\n", "c"}, 2, `["a" "b\n" and 1 more]`},
		{[]string{long}, 4, `["` + strings.Repeat("a", 100) + `..."]`},
	} {
		if got := quoteList(tc.in, tc.n); got != tc.want {
			t.Errorf("quoteList(%q, %d) = %s, want %s", tc.in, tc.n, got, tc.want)
		}
	}
}

// A TrustedIssuer names users, not the workloads that acted: an external
// token's act would enter the chain (and the policy's actors) as if this
// STS had verified it, so such a token is refused.
func TestExternalActRefused(t *testing.T) {
	h := newHarness(t)
	user := h.userToken("alice", "orders:read", func(c *token.Claims) {
		c.Act = &token.Actor{Subject: financeID}
	})
	r := h.post(PathToken, exchangeForm(user, TokenTypeJWT, ordersID, ""), h.asPeer(gatewayID))
	if r.status != 400 || r.str("error") != "invalid_grant" || !strings.Contains(r.str("error_description"), "carries an act claim") {
		t.Errorf("external token with act: %d %s", r.status, r.raw)
	}
}

// The secrets last loaded stand in for a failing store for a while, not
// for ever: past secretStaleLimit a removed secret must not keep working.
func TestClientSecretsStaleWhileStoreFails(t *testing.T) {
	h := newHarness(t)
	h.store.secrets = []storeSecret{secretFor(h, batchID, "old")}
	f := url.Values{"grant_type": {GrantClientCredentials}, "audience": {"inventory-api"}, "scope": {"stock:read"}}
	if r := h.post(PathToken, f, basic(batchID, "old")); r.status != 200 {
		t.Fatalf("%d %s", r.status, r.raw)
	}
	h.store.secrets = nil // removed
	h.store.fail = errors.New("db down")
	h.now = h.now.Add(secretStaleLimit - time.Minute)
	if r := h.post(PathToken, f, basic(batchID, "old")); r.status != 200 {
		t.Errorf("within the limit, the last good secrets: %d %s", r.status, r.raw)
	}
	h.now = h.now.Add(2 * time.Minute)
	if r := h.post(PathToken, f, basic(batchID, "old")); r.status != 503 || r.str("error") != "server_error" {
		t.Errorf("past the limit with the store failing: %d %s", r.status, r.raw)
	}
	h.store.fail = nil
	h.now = h.now.Add(10 * time.Second)
	if r := h.post(PathToken, f, basic(batchID, "old")); r.status != 401 {
		t.Errorf("the store back, the removed secret: %d %s", r.status, r.raw)
	}
}

// A policy without maxLifetime leaves the lifetime to tokens.defaultLifetime
// (the policy compiler used to fill in 5m, so the setting did nothing); one
// with maxLifetime keeps its own.
func TestDefaultLifetimeApplies(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.DefaultLifetime = 10 * time.Minute })
	user := h.userToken("alice", "orders:read orders:write")
	t1, c1 := h.exchange(gatewayID, user, ordersID, "") // gateway-to-orders: no maxLifetime
	if got := c1.Expiry.Sub(c1.IssuedAt); got != 10*time.Minute {
		t.Errorf("lifetime %v, want the configured default 10m", got)
	}
	_, c2 := h.exchange(ordersID, t1, "inventory-api", "") // maxLifetime: 2m
	if got := c2.Expiry.Sub(c2.IssuedAt); got != 2*time.Minute {
		t.Errorf("lifetime %v, want the policy's 2m", got)
	}
}
