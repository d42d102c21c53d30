package policy

import (
	"slices"
	"strings"
	"testing"
	"time"
)

const exchangeSet = workloads + `---
apiVersion: postern.dev/v1
kind: TrustedIssuer
metadata: {name: idp}
spec: {issuer: "https://idp.shop.local", discovery: true, audiences: [postern], claims: [email]}
---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: gateway-to-orders}
spec:
  clients: ["spiffe://shop.local/ns/edge/sa/gateway"]
  subjectIssuers: ["https://idp.shop.local"]
  audiences: ["spiffe://shop.local/ns/shop/sa/orders"]
  scopes: ["orders:read", "orders:write"]
  claims: [email, name]
---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: orders-to-inventory}
spec:
  clients: ["spiffe://shop.local/ns/shop/sa/orders"]
  subjectIssuers: [self]
  audiences: ["spiffe://shop.local/ns/shop/sa/inventory"]
  maxLifetime: 2m
  when: 'subject.scope.split(" ").exists(s, s == "orders:write") && actors.size() > 0 && actors[size(actors)-1] == "spiffe://shop.local/ns/edge/sa/gateway"'
---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: orders-any-shop}
spec:
  grantTypes: [client-credentials]
  clients: ["spiffe://shop.local/ns/shop/sa/orders"]
  audiences: ["spiffe://shop.local/ns/shop/**", "spiffe://shop.local/ns/foo/sa/httpbin"]
  scopes: []
---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: no-bob}
spec:
  action: DENY
  clients: ["*"]
  subjectIssuers: [self, "https://idp.shop.local"]
  audiences: ["*"]
  when: 'subject.sub == "bob"'
`

func TestExchange(t *testing.T) {
	e := mustEngine(t, exchangeSet)
	self := "https://sts.shop.local"
	tests := []struct {
		name     string
		req      ExchangeRequest
		allow    bool
		policy   string
		reason   string
		audience string
		scopes   []string
		claims   []string
		lifetime time.Duration
	}{
		{
			name:     "gateway exchanges an IdP token for orders; claims limited by the issuer",
			req:      ExchangeRequest{GrantType: "token-exchange", Client: gateway, SubjectIssuer: idp, Subject: map[string]any{"sub": "alice"}, Audience: orders},
			allow:    true,
			policy:   "gateway-to-orders",
			audience: orders,
			scopes:   []string{"orders:read", "orders:write"},
			claims:   []string{"email"},
			lifetime: 0, // the policy names none: the STS default
			reason:   `ExchangePolicy "gateway-to-orders" allows client spiffe://shop.local/ns/edge/sa/gateway tokens for audience spiffe://shop.local/ns/shop/sa/orders`,
		},
		{
			name:     "audience resolved when only one is possible",
			req:      ExchangeRequest{GrantType: "token-exchange", Client: gateway, SubjectIssuer: idp, Subject: map[string]any{"sub": "alice"}},
			allow:    true,
			policy:   "gateway-to-orders",
			audience: orders,
			scopes:   []string{"orders:read", "orders:write"},
			claims:   []string{"email"},
			lifetime: 0,
		},
		{
			name:   "audience not resolved when a glob is possible",
			req:    ExchangeRequest{GrantType: "client-credentials", Client: orders},
			reason: "audience required: no single audience can be chosen for client spiffe://shop.local/ns/shop/sa/orders",
		},
		{
			name:   "gateway may not reach inventory directly",
			req:    ExchangeRequest{GrantType: "token-exchange", Client: gateway, SubjectIssuer: idp, Subject: map[string]any{"sub": "alice"}, Audience: inventory},
			reason: "no ExchangePolicy allows client spiffe://shop.local/ns/edge/sa/gateway to exchange tokens from issuer https://idp.shop.local for audience spiffe://shop.local/ns/shop/sa/inventory",
		},
		{
			name:     "orders acts for the user towards inventory",
			req:      ExchangeRequest{GrantType: "token-exchange", Client: orders, SubjectIssuer: self, Subject: map[string]any{"sub": "alice", "scope": "orders:write"}, Actors: []string{gateway}, Audience: inventory},
			allow:    true,
			policy:   "orders-to-inventory",
			audience: inventory,
			lifetime: 2 * time.Minute,
		},
		{
			name:   "condition false: user lacks scope",
			req:    ExchangeRequest{GrantType: "token-exchange", Client: orders, SubjectIssuer: self, Subject: map[string]any{"sub": "alice", "scope": "orders:read"}, Actors: []string{gateway}, Audience: inventory},
			reason: "no ExchangePolicy allows client spiffe://shop.local/ns/shop/sa/orders to exchange tokens from issuer https://sts.shop.local for audience spiffe://shop.local/ns/shop/sa/inventory",
		},
		{
			name:   "missing claim in ALLOW condition: no match, and the reason says so",
			req:    ExchangeRequest{GrantType: "token-exchange", Client: orders, SubjectIssuer: self, Subject: map[string]any{"sub": "alice"}, Actors: []string{gateway}, Audience: inventory},
			reason: `; ExchangePolicy "orders-to-inventory": condition could not be evaluated: no such key: scope`,
		},
		{
			name:   "DENY policy wins",
			req:    ExchangeRequest{GrantType: "token-exchange", Client: gateway, SubjectIssuer: idp, Subject: map[string]any{"sub": "bob"}, Audience: orders},
			policy: "no-bob",
			reason: `ExchangePolicy "no-bob" denies client spiffe://shop.local/ns/edge/sa/gateway tokens for audience spiffe://shop.local/ns/shop/sa/orders`,
		},
		{
			name:   "DENY condition that cannot be evaluated denies",
			req:    ExchangeRequest{GrantType: "token-exchange", Client: gateway, SubjectIssuer: idp, Subject: map[string]any{}, Audience: orders},
			policy: "no-bob",
			reason: "(its condition could not be evaluated: no such key: sub; fail closed)",
		},
		{
			name:     "client credentials with a glob audience and an empty scope ceiling",
			req:      ExchangeRequest{GrantType: "client-credentials", Client: orders, Audience: inventory},
			allow:    true,
			policy:   "orders-any-shop",
			audience: inventory,
			scopes:   []string{},
			lifetime: 0,
		},
		{
			name:   "wrong grant type for the policy",
			req:    ExchangeRequest{GrantType: "jwt-bearer", Client: gateway, SubjectIssuer: idp, Subject: map[string]any{"sub": "alice"}, Audience: orders},
			reason: "no ExchangePolicy allows",
		},
		{
			name:   "unknown grant type",
			req:    ExchangeRequest{GrantType: "password", Client: gateway},
			reason: `unsupported grant type "password"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := e.Exchange(&tt.req)
			if d.Allow != tt.allow || d.Policy != tt.policy {
				t.Errorf("allow=%v policy=%q, want %v %q (reason %q)", d.Allow, d.Policy, tt.allow, tt.policy, d.Reason)
			}
			if !strings.Contains(d.Reason, tt.reason) {
				t.Errorf("reason %q, want it to contain %q", d.Reason, tt.reason)
			}
			if d.Audience != tt.audience || d.MaxLifetime != tt.lifetime {
				t.Errorf("audience %q lifetime %v, want %q %v", d.Audience, d.MaxLifetime, tt.audience, tt.lifetime)
			}
			if !slices.Equal(d.Scopes, tt.scopes) || (d.Scopes == nil) != (tt.scopes == nil) {
				t.Errorf("scopes %#v, want %#v", d.Scopes, tt.scopes)
			}
			if !slices.Equal(d.Claims, tt.claims) {
				t.Errorf("claims %q, want %q", d.Claims, tt.claims)
			}
			if len(d.DecisionID) != 32 {
				t.Errorf("decision id %q", d.DecisionID)
			}
		})
	}
}

func TestExchangeSelfWithoutSelfIssuer(t *testing.T) {
	set, err := Parse("f.yaml", []byte(exchangeSet))
	if err != nil {
		t.Fatal(err)
	}
	e, err := Compile(set, CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := e.Exchange(&ExchangeRequest{GrantType: "token-exchange", Client: orders, SubjectIssuer: "self", Subject: map[string]any{"sub": "alice", "scope": "orders:write"}, Actors: []string{gateway}, Audience: inventory})
	if d.Allow {
		t.Errorf("\"self\" matched without a SelfIssuer: %+v", d)
	}
}

func TestExchangeDryRun(t *testing.T) {
	e := mustEngine(t, workloads+`---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: try}
spec: {mode: DryRun, grantTypes: [client-credentials], clients: ["*"], audiences: ["x"]}
`)
	d := e.Exchange(&ExchangeRequest{GrantType: "client-credentials", Client: orders, Audience: "x"})
	if d.Allow || len(d.DryRun) != 1 || !strings.Contains(d.DryRun[0], `dry-run: ExchangePolicy "try" would allow`) {
		t.Errorf("decision %+v", d)
	}
}
