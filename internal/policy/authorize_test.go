package policy

import (
	"errors"
	"strings"
	"testing"
)

const td = "spiffe://shop.local"

// mustEngine parses and compiles YAML documents.
func mustEngine(t testing.TB, docs string) *Engine {
	t.Helper()
	set, err := Parse("test.yaml", []byte(docs))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	e, err := Compile(set, CompileOptions{SelfIssuer: "https://sts.shop.local", TrustDomain: "shop.local"})
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return e
}

const workloads = `
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: inventory, labels: {app: inventory}}
spec: {spiffeID: "spiffe://shop.local/ns/shop/sa/inventory"}
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: orders, labels: {app: orders}}
spec: {spiffeID: "spiffe://shop.local/ns/shop/sa/orders"}
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: httpbin, labels: {app: httpbin}}
spec: {spiffeID: "spiffe://shop.local/ns/foo/sa/httpbin"}
`

const (
	inventory = td + "/ns/shop/sa/inventory"
	orders    = td + "/ns/shop/sa/orders"
	httpbin   = td + "/ns/foo/sa/httpbin"
	sleep     = td + "/ns/default/sa/sleep"
	gateway   = td + "/ns/edge/sa/gateway"
	idp       = "https://idp.shop.local"
)

func tok(claims map[string]any, actors ...string) func(*Request) {
	return func(r *Request) {
		r.HasToken = true
		r.Claims = claims
		r.Issuer, _ = claims["iss"].(string)
		r.Subject, _ = claims["sub"].(string)
		r.Actors = actors
	}
}

func req(workload, peer, method, path string, opts ...func(*Request)) *Request {
	r := &Request{Workload: workload, Peer: peer, Method: method, Path: path, Host: "svc.shop.local", Port: 8080}
	for _, o := range opts {
		o(r)
	}
	return r
}

var user = map[string]any{"iss": idp, "sub": "alice", "scope": "orders:read orders:write", "groups": []any{"staff"}}

func TestAuthorizeSemantics(t *testing.T) {
	tests := []struct {
		name     string
		policies string
		req      *Request
		allow    bool
		policy   string
		rule     int
		reason   string // substring
		audit    bool
	}{
		{
			name:   "no ALLOW policy selects the workload: deny by default",
			req:    req(httpbin, sleep, "GET", "/", tok(user)),
			rule:   -1,
			reason: ReasonNoAllowPolicy,
		},
		{
			name: "istio allow-nothing: ALLOW policy without rules",
			policies: `
kind: AuthorizationPolicy
metadata: {name: allow-nothing}
spec: {selector: {matchLabels: {app: httpbin}}}`,
			req:    req(httpbin, sleep, "GET", "/", tok(user)),
			rule:   -1,
			reason: ReasonNoRuleMatched,
		},
		{
			name: "istio allow-all: one empty rule",
			policies: `
kind: AuthorizationPolicy
metadata: {name: allow-all}
spec: {rules: [{}]}`,
			req:    req(httpbin, sleep, "GET", "/", tok(user)),
			allow:  true,
			policy: "allow-all",
			reason: `ALLOW policy "allow-all" rule 0 matched`,
		},
		{
			name: "allow-all still needs a token",
			policies: `
kind: AuthorizationPolicy
metadata: {name: allow-all}
spec: {rules: [{}]}`,
			req:    req(httpbin, sleep, "GET", "/"),
			rule:   -1,
			reason: ReasonNoRuleMatched,
		},
		{
			name: "istio example: GET /info* from sleep with google issuer",
			policies: `
kind: AuthorizationPolicy
metadata: {name: httpbin}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["spiffe://shop.local/ns/default/sa/sleep"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/info*"]}}]
    when: [{key: "request.auth.claims[iss]", values: ["https://accounts.google.com"]}]`,
			req:    req(httpbin, sleep, "GET", "/info/x?y=1", tok(map[string]any{"iss": "https://accounts.google.com", "sub": "bob"})),
			allow:  true,
			policy: "httpbin",
		},
		{
			name: "istio example: wrong method",
			policies: `
kind: AuthorizationPolicy
metadata: {name: httpbin}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: ["spiffe://shop.local/ns/default/sa/sleep"]}}]
    to: [{operation: {methods: ["GET"], paths: ["/info*"]}}]`,
			req:  req(httpbin, sleep, "POST", "/info", tok(user)),
			rule: -1,
		},
		{
			name: "istio example: deny requests without a JWT (notRequestPrincipals *)",
			policies: `
kind: AuthorizationPolicy
metadata: {name: require-jwt}
spec:
  action: DENY
  rules: [{from: [{source: {notRequestPrincipals: ["*"]}}]}]
---
kind: AuthorizationPolicy
metadata: {name: allow-probe}
spec:
  rules: [{allowWithoutToken: true, to: [{operation: {paths: [/healthz]}}]}]`,
			req:    req(httpbin, sleep, "GET", "/healthz"),
			policy: "require-jwt",
			reason: `DENY policy "require-jwt" rule 0 matched`,
		},
		{
			name: "istio example: deny POST from outside namespace foo",
			policies: `
kind: AuthorizationPolicy
metadata: {name: deny-post}
spec:
  selector: {spiffeIDs: ["spiffe://shop.local/ns/foo/**"]}
  action: DENY
  rules:
  - from: [{source: {notNamespaces: ["foo"]}}]
    to: [{operation: {methods: ["POST"]}}]
---
kind: AuthorizationPolicy
metadata: {name: allow-all}
spec: {rules: [{}]}`,
			req:    req(httpbin, sleep, "POST", "/", tok(user)),
			policy: "deny-post",
		},
		{
			name: "istio example: deny POST does not affect GET",
			policies: `
kind: AuthorizationPolicy
metadata: {name: deny-post}
spec:
  action: DENY
  rules:
  - from: [{source: {notNamespaces: ["foo"]}}]
    to: [{operation: {methods: ["POST"]}}]
---
kind: AuthorizationPolicy
metadata: {name: allow-all}
spec: {rules: [{}]}`,
			req:    req(httpbin, sleep, "GET", "/", tok(user)),
			allow:  true,
			policy: "allow-all",
		},
		{
			name: "istio example: requestPrincipals iss/sub",
			policies: `
kind: AuthorizationPolicy
metadata: {name: jwt}
spec:
  rules: [{from: [{source: {requestPrincipals: ["https://idp.shop.local/alice"]}}]}]`,
			req:    req(httpbin, sleep, "GET", "/", tok(user)),
			allow:  true,
			policy: "jwt",
		},
		{
			name: "requestPrincipals prefix does not match another issuer",
			policies: `
kind: AuthorizationPolicy
metadata: {name: jwt}
spec:
  rules: [{from: [{source: {requestPrincipals: ["https://other.example/*"]}}]}]`,
			req:  req(httpbin, sleep, "GET", "/", tok(user)),
			rule: -1,
		},
		{
			name: "istio example: AUDIT marks, does not decide",
			policies: `
kind: AuthorizationPolicy
metadata: {name: audit-data}
spec:
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/data"]}}]}]
---
kind: AuthorizationPolicy
metadata: {name: allow-all}
spec: {rules: [{}]}`,
			req:    req(httpbin, sleep, "GET", "/data", tok(user)),
			allow:  true,
			policy: "allow-all",
			audit:  true,
		},
		{
			name: "confused deputy: caller, user scope and first actor all required",
			policies: `
kind: AuthorizationPolicy
metadata: {name: inventory-writes}
spec:
  selector: {matchLabels: {app: inventory}}
  rules:
  - from: [{source: {principals: ["spiffe://shop.local/ns/shop/sa/orders"]}}]
    when:
    - {key: "actors[0]", values: ["spiffe://shop.local/ns/shop/sa/orders"]}
    - {key: "request.auth.claims[scope]", values: ["orders:write"]}
    - {key: "actors[-1]", values: ["spiffe://shop.local/ns/edge/sa/*"]}`,
			req:    req(inventory, orders, "POST", "/reserve", tok(user, orders, gateway)),
			allow:  true,
			policy: "inventory-writes",
		},
		{
			name: "confused deputy: chain that did not start at the gateway",
			policies: `
kind: AuthorizationPolicy
metadata: {name: inventory-writes}
spec:
  selector: {matchLabels: {app: inventory}}
  rules:
  - from: [{source: {principals: ["spiffe://shop.local/ns/shop/sa/orders"]}}]
    when:
    - {key: "request.auth.claims[scope]", values: ["orders:write"]}
    - {key: "actors[-1]", values: ["spiffe://shop.local/ns/edge/sa/*"]}`,
			req:  req(inventory, orders, "POST", "/reserve", tok(user, orders, sleep)),
			rule: -1,
		},
		{
			name: "missing claim: ALLOW rule does not match and says so",
			policies: `
kind: AuthorizationPolicy
metadata: {name: need-email}
spec:
  rules: [{when: [{key: "request.auth.claims[email]", notValues: ["*@evil.example"]}]}]`,
			req:    req(httpbin, sleep, "GET", "/", tok(user)),
			rule:   -1,
			reason: `no ALLOW rule matched (ALLOW policy "need-email" rule 0: a condition could not be evaluated, so the rule does not match)`,
		},
		{
			name: "missing claim: DENY rule matches (fail closed)",
			policies: `
kind: AuthorizationPolicy
metadata: {name: deny-evil}
spec:
  action: DENY
  rules: [{when: [{key: "request.auth.claims[email]", values: ["*@evil.example"]}]}]
---
kind: AuthorizationPolicy
metadata: {name: allow-all}
spec: {rules: [{}]}`,
			req:    req(httpbin, sleep, "GET", "/", tok(user)),
			policy: "deny-evil",
			reason: `DENY policy "deny-evil" rule 0: a condition could not be evaluated, so the rule matches (fail closed)`,
		},
		{
			name: "DENY with a false part does not match even if another part is unknown",
			policies: `
kind: AuthorizationPolicy
metadata: {name: deny-evil}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}], when: [{key: "request.auth.claims[email]", values: ["x"]}]}]
---
kind: AuthorizationPolicy
metadata: {name: allow-all}
spec: {rules: [{}]}`,
			req:    req(httpbin, sleep, "GET", "/", tok(user)),
			allow:  true,
			policy: "allow-all",
		},
		{
			name: "CEL runtime error in DENY: deny",
			policies: `
kind: AuthorizationPolicy
metadata: {name: deny-cel}
spec:
  action: DENY
  rules: [{condition: 'subject.email.endsWith("@evil.example")'}]
---
kind: AuthorizationPolicy
metadata: {name: allow-all}
spec: {rules: [{}]}`,
			req:    req(httpbin, sleep, "GET", "/", tok(user)),
			policy: "deny-cel",
			reason: "fail closed",
		},
		{
			name: "CEL condition true",
			policies: `
kind: AuthorizationPolicy
metadata: {name: cel}
spec:
  rules: [{condition: '"staff" in subject.groups && method == "GET" && port == 8080 && actors.size() == 0'}]`,
			req:    req(httpbin, sleep, "GET", "/", tok(user)),
			allow:  true,
			policy: "cel",
		},
		{
			name: "scope claim is split on spaces, list claims match any element",
			policies: `
kind: AuthorizationPolicy
metadata: {name: scopes}
spec:
  rules: [{when: [{key: "request.auth.claims[scope]", values: ["orders:read"]}, {key: "request.auth.claims[groups]", values: ["staff"]}]}]`,
			req:    req(httpbin, sleep, "GET", "/", tok(user)),
			allow:  true,
			policy: "scopes",
		},
		{
			name: "path templates",
			policies: `
kind: AuthorizationPolicy
metadata: {name: tmpl}
spec:
  rules: [{to: [{operation: {paths: ["/orders/{id}/items/{**}"], hosts: ["*.shop.local"], ports: ["8080"]}}]}]`,
			req:    req(httpbin, sleep, "GET", "/orders/42/items/a/b", tok(user)),
			allow:  true,
			policy: "tmpl",
		},
		{
			// "admin.shop.local." is the same host: it must not slip past
			// a DENY on "admin.shop.local".
			name: "a trailing dot on the host meets the host rules",
			policies: `
kind: AuthorizationPolicy
metadata: {name: allow-all}
spec:
  rules: [{}]
---
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  action: DENY
  rules: [{to: [{operation: {hosts: ["admin.shop.local"]}}]}]`,
			req:    req(httpbin, sleep, "GET", "/", tok(user), func(r *Request) { r.Host = "admin.shop.local.:8080" }),
			allow:  false,
			policy: "no-admin",
		},
		{
			name: "path template does not match an empty segment",
			policies: `
kind: AuthorizationPolicy
metadata: {name: tmpl}
spec:
  rules: [{to: [{operation: {paths: ["/orders/{id}"]}}]}]`,
			req:  req(httpbin, sleep, "GET", "/orders/", tok(user)),
			rule: -1,
		},
		{
			name: "header condition, missing header in ALLOW",
			policies: `
kind: AuthorizationPolicy
metadata: {name: hdr}
spec:
  rules: [{when: [{key: "request.headers[X-Tenant]", values: ["acme"]}]}]`,
			req:    req(httpbin, sleep, "GET", "/", tok(user)),
			rule:   -1,
			reason: "could not be evaluated",
		},
		{
			name: "selector by SPIFFE ID glob and labels must both match",
			policies: `
kind: AuthorizationPolicy
metadata: {name: both}
spec:
  selector: {matchLabels: {app: orders}, spiffeIDs: ["spiffe://shop.local/ns/foo/*"]}
  rules: [{}]`,
			req:    req(httpbin, sleep, "GET", "/", tok(user)),
			rule:   -1,
			reason: ReasonNoAllowPolicy,
		},
		{
			name: "unknown workload: selectors checked against request labels",
			policies: `
kind: AuthorizationPolicy
metadata: {name: by-label}
spec:
  selector: {matchLabels: {app: payments}}
  rules: [{}]`,
			req: req(td+"/ns/pay/sa/payments", sleep, "GET", "/", tok(user), func(r *Request) {
				r.Labels = map[string]string{"app": "payments"}
			}),
			allow:  true,
			policy: "by-label",
		},
		{
			name: "allowWithoutToken exempts only its exact path",
			policies: `
kind: AuthorizationPolicy
metadata: {name: probes}
spec:
  rules: [{allowWithoutToken: true, to: [{operation: {methods: [GET], paths: [/healthz]}}]}]`,
			req:  req(httpbin, "", "GET", "/healthz/x"),
			rule: -1,
		},
		{
			name: "allowWithoutToken health probe",
			policies: `
kind: AuthorizationPolicy
metadata: {name: probes}
spec:
  rules: [{allowWithoutToken: true, to: [{operation: {methods: [GET], paths: [/healthz]}}]}]`,
			req:    req(httpbin, "", "GET", "/healthz"),
			allow:  true,
			policy: "probes",
		},
		{
			name: "dry-run DENY is not enforced",
			policies: `
kind: AuthorizationPolicy
metadata: {name: deny-all-dry}
spec: {action: DENY, mode: DryRun, rules: [{}]}
---
kind: AuthorizationPolicy
metadata: {name: allow-all}
spec: {rules: [{}]}`,
			req:    req(httpbin, sleep, "GET", "/", tok(user)),
			allow:  true,
			policy: "allow-all",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			docs := workloads
			for d := range strings.SplitSeq(tt.policies, "\n---\n") {
				if strings.TrimSpace(d) != "" {
					docs += "---\napiVersion: postern.dev/v1\n" + strings.TrimLeft(d, "\n") + "\n"
				}
			}
			e := mustEngine(t, docs)
			d := e.Authorize(tt.req)
			if d.Allow != tt.allow || d.Audit != tt.audit {
				t.Errorf("allow=%v audit=%v, want allow=%v audit=%v (reason %q)", d.Allow, d.Audit, tt.allow, tt.audit, d.Reason)
			}
			if d.Policy != tt.policy {
				t.Errorf("policy %q, want %q (reason %q)", d.Policy, tt.policy, d.Reason)
			}
			if tt.policy == "" && d.Rule != -1 || tt.policy != "" && d.Rule != tt.rule {
				t.Errorf("rule %d, want %d", d.Rule, tt.rule)
			}
			if !strings.Contains(d.Reason, tt.reason) {
				t.Errorf("reason %q, want it to contain %q", d.Reason, tt.reason)
			}
			if d.DecisionID.IsZero() {
				t.Error("no decision id")
			}
			// Explain must reach the same decision.
			d2, lines := e.Explain(tt.req)
			if d2.Allow != d.Allow || d2.Policy != d.Policy || d2.Reason != d.Reason {
				t.Errorf("Explain decided %+v, Authorize %+v", d2, d)
			}
			if len(lines) < 3 {
				t.Errorf("Explain gave %d lines", len(lines))
			}
		})
	}
}

func TestDryRunReport(t *testing.T) {
	e := mustEngine(t, workloads+`---
apiVersion: postern.dev/v1
kind: AuthorizationPolicy
metadata: {name: only-get}
spec:
  mode: DryRun
  rules: [{to: [{operation: {methods: [GET]}}]}]
`)
	d := e.Authorize(req(httpbin, sleep, "POST", "/", tok(user)))
	if d.Allow || d.Reason != ReasonNoAllowPolicy {
		t.Fatalf("decision %+v", d)
	}
	want := []string{
		`dry-run ALLOW policy "only-get": no rule matched`,
		"dry-run: with DryRun policies enforced the decision would be deny: " + ReasonNoRuleMatched,
	}
	if strings.Join(d.DryRun, "\n") != strings.Join(want, "\n") {
		t.Errorf("DryRun = %q, want %q", d.DryRun, want)
	}
	d = e.Authorize(req(httpbin, sleep, "GET", "/", tok(user)))
	if len(d.DryRun) != 2 || d.DryRun[0] != `dry-run ALLOW policy "only-get" rule 0 matched: would allow` {
		t.Errorf("DryRun = %q", d.DryRun)
	}
}

func TestDecisionIDsUnique(t *testing.T) {
	e := mustEngine(t, workloads)
	seen := map[DecisionID]bool{}
	for range 1000 {
		id := e.Authorize(req(httpbin, sleep, "GET", "/")).DecisionID
		if seen[id] {
			t.Fatalf("duplicate id %s", id)
		}
		seen[id] = true
	}
	if s := (DecisionID{1}).String(); len(s) != 32 || !strings.HasPrefix(s, "01") {
		t.Errorf("String() = %q", s)
	}
}

func TestProblemsErrorsAs(t *testing.T) {
	_, err := Parse("x.yaml", []byte("kind: Nope\n"))
	var ps Problems
	if !errors.As(err, &ps) || len(ps) != 1 {
		t.Fatalf("err %v", err)
	}
}

func TestAuthorizeConcurrent(t *testing.T) {
	e := mustEngine(t, workloads+"---\napiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: all}\nspec: {rules: [{}]}\n")
	done := make(chan bool)
	for range 4 {
		go func() {
			ok := true
			for range 200 {
				ok = ok && e.Authorize(req(httpbin, sleep, "GET", "/", tok(user))).Allow
				e.Exchange(&ExchangeRequest{GrantType: "client-credentials", Client: orders, Audience: "x"})
			}
			done <- ok
		}()
	}
	for range 4 {
		if !<-done {
			t.Error("a concurrent decision was wrong")
		}
	}
}

// A list claim holding a null, object or list cannot be judged: whatever
// its order, notValues must not be skipped (the rule does not match in an
// ALLOW policy, and matches in a DENY policy).
func TestListClaimWithNonScalars(t *testing.T) {
	e := mustEngine(t, workloads+`
---
apiVersion: postern.dev/v1
kind: AuthorizationPolicy
metadata: {name: eng-not-banned}
spec:
  rules: [{when: [{key: "request.auth.claims[groups]", values: ["eng"], notValues: ["banned"]}]}]`)
	with := func(groups []any) *Request {
		return &Request{Workload: httpbin, Peer: sleep, Method: "GET", Path: "/", HasToken: true,
			Issuer: idp, Subject: "alice", Claims: map[string]any{"iss": idp, "sub": "alice", "groups": groups}}
	}
	for _, groups := range [][]any{
		{"eng", "banned"},
		{"eng", nil, "banned"},
		{"eng", map[string]any{}, "banned"},
		{"eng", []any{"banned"}},
		{nil, "eng"},
	} {
		if d := e.Authorize(with(groups)); d.Allow {
			t.Errorf("groups %v allowed: %s", groups, d.Reason)
		}
	}
	if d := e.Authorize(with([]any{"ops", "eng"})); !d.Allow {
		t.Errorf("groups [ops eng] refused: %s", d.Reason)
	}
}
