package proxy

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/token"
)

func TestInbound(t *testing.T) {
	h := newHarness(t, nil)
	caller := h.ca.SVID(t, testCaller)
	other := h.ca.SVID(t, testOther)
	good := h.token(t, testSelf, caller.Cert, nil)
	unbound := h.token(t, testSelf, nil, nil)
	wrongAud := h.token(t, "spiffe://test.local/ns/shop/sa/inventory", caller.Cert, nil)
	expired := h.token(t, testSelf, caller.Cert, func(c *token.Claims) { c.Expiry = h.clock.Now().Add(-time.Minute) })
	bearer := func(tok string) func(*http.Request) {
		return func(r *http.Request) { r.Header.Add("Authorization", "Bearer "+tok) }
	}

	tests := []struct {
		name    string
		method  string
		target  string
		peer    *testca.SVID
		setup   []func(*http.Request)
		status  int
		code    string // problem.error
		reason  string // substring of problem.reason
		www     string // WWW-Authenticate
		forward bool
	}{
		{name: "bound token from its holder", target: "/orders/1", peer: caller, setup: []func(*http.Request){bearer(good)}, status: 200, forward: true},
		{name: "unbound token", target: "/orders/1", peer: caller, setup: []func(*http.Request){bearer(unbound)}, status: 200, forward: true},
		{name: "token in the query", target: "/orders/1?x=1&access_token=" + good, peer: caller, status: 200, forward: true},
		{name: "health probe without a token", target: "/healthz", peer: other, status: 200, forward: true},
		{name: "missing token", target: "/orders/1", peer: caller, status: 401, code: "unauthorized",
			reason: "a bearer token is required", www: `Bearer realm="postern"`},
		{name: "two Authorization headers", target: "/orders/1", peer: caller, setup: []func(*http.Request){bearer(good), bearer(good)},
			status: 401, code: "invalid_request", reason: "more than one token in the request",
			www: `Bearer error="invalid_request", error_description="more than one token in the request"`},
		{name: "header and query token", target: "/orders/1?access_token=" + good, peer: caller, setup: []func(*http.Request){bearer(good)},
			status: 401, code: "invalid_request", reason: "more than one token in the request"},
		{name: "basic credentials", target: "/orders/1", peer: caller,
			setup:  []func(*http.Request){func(r *http.Request) { r.Header.Set("Authorization", "Basic YTpi") }},
			status: 401, code: "invalid_request", reason: "the Authorization header is not a Bearer token"},
		{name: "wrong audience", target: "/orders/1", peer: caller, setup: []func(*http.Request){bearer(wrongAud)},
			status: 401, code: "invalid_token", reason: `token: wrong audience: token is not addressed to "spiffe://test.local/ns/shop/sa/orders"`},
		{name: "token presented by another workload", target: "/orders/1", peer: other, setup: []func(*http.Request){bearer(good)},
			status: 401, code: "invalid_token", reason: "token: certificate binding mismatch: token is bound to another certificate",
			www: `Bearer error="invalid_token", error_description="token: certificate binding mismatch: token is bound to another certificate"`},
		{name: "expired token", target: "/orders/1", peer: caller, setup: []func(*http.Request){bearer(expired)},
			status: 401, code: "invalid_token", reason: "token: expired at"},
		{name: "garbage token", target: "/orders/1", peer: caller, setup: []func(*http.Request){bearer("a.b.c")},
			status: 401, code: "invalid_token", reason: "token: malformed"},
		{name: "policy denial (DENY rule)", target: "/orders/admin/x", peer: caller, setup: []func(*http.Request){bearer(good)},
			status: 403, code: "access_denied", reason: `DENY policy "no-admin" rule 0 matched`},
		{name: "policy denial (no ALLOW rule)", target: "/invoices/1", peer: caller, setup: []func(*http.Request){bearer(good)},
			status: 403, code: "access_denied", reason: "no ALLOW rule matched"},
		{name: "dot segments are resolved before the policy", target: "/orders/../orders/admin/x", peer: caller, setup: []func(*http.Request){bearer(good)},
			status: 403, code: "access_denied", reason: `DENY policy "no-admin"`},
		{name: "encoded slash", target: "/orders/admin%2Fx", peer: caller, setup: []func(*http.Request){bearer(good)},
			status: 400, code: "invalid_request", reason: "encoded slash"},
		{name: "no client certificate", target: "/healthz", status: 403, code: "access_denied", reason: "no peer SPIFFE ID"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			method := tc.method
			if method == "" {
				method = http.MethodGet
			}
			r := h.request(method, tc.target, certOf(tc.peer))
			r.Header.Set("X-Postern-Claims", "spoofed")
			r.Header.Set("x-postern-peer", "spoofed")
			r.Header.Set("X-Postern-Anything", "spoofed")
			for _, f := range tc.setup {
				f(r)
			}
			before := h.seenCount()
			w := h.serve(r)
			if w.Code != tc.status {
				t.Fatalf("status %d, want %d; body %s", w.Code, tc.status, w.Body)
			}
			forwarded := h.seenCount() > before
			if forwarded != tc.forward {
				t.Fatalf("forwarded = %v, want %v", forwarded, tc.forward)
			}
			if got := w.Header().Get("X-Postern-Peer"); got != "" {
				t.Errorf("the app's X-Postern-Peer reached the caller: %q", got)
			}
			if tc.forward {
				app := h.lastSeen()
				for k := range app.Header {
					if strings.HasPrefix(k, "X-Postern-") && k != HeaderClaims && k != HeaderPeer && k != HeaderContext {
						t.Errorf("header %s reached the app", k)
					}
				}
				if got := app.Header.Get(HeaderPeer); got != tc.peer.ID.String() {
					t.Errorf("X-Postern-Peer = %q", got)
				}
				if app.Header.Get("Authorization") != "" || strings.Contains(app.URL.RawQuery, "access_token") {
					t.Error("the token reached the app")
				}
				if tc.target == "/healthz" {
					if app.Header.Get(HeaderClaims) != "" || app.Header.Get(HeaderContext) != "" {
						t.Error("claims for a token-less request")
					}
					return
				}
				claims := decodeClaimsHeader(t, app.Header.Get(HeaderClaims))
				if claims["sub"] != "alice" || claims["act"].(map[string]any)["sub"] != testCaller {
					t.Errorf("claims = %v", claims)
				}
				if id := app.Header.Get(HeaderContext); id == "" {
					t.Error("no X-Postern-Context")
				} else if tok, ok := h.contexts.Get(id); !ok || (tok != good && tok != unbound) {
					t.Error("X-Postern-Context does not stand for the token")
				}
				return
			}
			p := decodeProblem(t, w.Body.Bytes())
			if p.Error != tc.code || !strings.Contains(p.Reason, tc.reason) || len(p.DecisionID) != 32 {
				t.Errorf("problem = %+v, want error %q reason containing %q and a decision id", p, tc.code, tc.reason)
			}
			if tc.www != "" && w.Header().Get("WWW-Authenticate") != tc.www {
				t.Errorf("WWW-Authenticate = %q, want %q", w.Header().Get("WWW-Authenticate"), tc.www)
			}
			if tc.status == 401 && w.Header().Get("WWW-Authenticate") == "" {
				t.Error("401 without WWW-Authenticate")
			}
		})
	}
}

func TestInboundVerdictCache(t *testing.T) {
	h := newHarness(t, nil)
	caller := h.ca.SVID(t, testCaller)
	other := h.ca.SVID(t, testOther)
	tok := h.token(t, testSelf, caller.Cert, nil)
	get := func(peer *testca.SVID) int {
		r := h.request("GET", "/orders/1", peer.Cert)
		r.Header.Set("Authorization", "Bearer "+tok)
		return h.serve(r).Code
	}
	for range 5 {
		if c := get(caller); c != 200 {
			t.Fatalf("status %d", c)
		}
	}
	if n := h.verifier.count(); n != 1 {
		t.Errorf("%d signature checks for one token, want 1", n)
	}
	// The binding is checked on every request, cached or not.
	if c := get(other); c != 401 {
		t.Errorf("cached token from another workload: %d", c)
	}
	// Expiry is checked on every request, too.
	h.clock.Add(5*time.Minute + 6*time.Second)
	if c := get(caller); c != 401 {
		t.Errorf("expired cached token: %d", c)
	}
	if h.verdicts.Len() != 0 {
		t.Error("an expired verdict stays cached")
	}
}

func TestInboundForwardToken(t *testing.T) {
	h := newHarness(t, func(c *InboundConfig) { c.ForwardToken = true })
	caller := h.ca.SVID(t, testCaller)
	tok := h.token(t, testSelf, caller.Cert, nil)
	r := h.request("GET", "/orders/1?access_token="+tok, caller.Cert)
	if w := h.serve(r); w.Code != 200 {
		t.Fatalf("status %d", w.Code)
	}
	app := h.lastSeen()
	if got := app.Header.Get("Authorization"); got != "Bearer "+tok {
		t.Errorf("Authorization at the app = %q", got)
	}
	if app.URL.RawQuery != "" {
		t.Errorf("query at the app = %q", app.URL.RawQuery)
	}
}

func TestInboundAuditLine(t *testing.T) {
	var buf bytes.Buffer
	h := newHarness(t, func(c *InboundConfig) { c.Logger = slog.New(slog.NewJSONHandler(&buf, nil)) })
	caller := h.ca.SVID(t, testCaller)
	tok := h.token(t, testSelf, caller.Cert, nil)
	r := h.request("GET", "/orders/admin", caller.Cert)
	r.Header.Set("Authorization", "Bearer "+tok)
	w := h.serve(r)
	p := decodeProblem(t, w.Body.Bytes())
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("audit line %q: %v", buf.String(), err)
	}
	for k, want := range map[string]any{"decision_id": p.DecisionID, "peer": testCaller, "method": "GET", "path": "/orders/admin",
		"status": float64(403), "policy": "no-admin", "decision": "deny"} {
		if line[k] != want {
			t.Errorf("audit %s = %v, want %v", k, line[k], want)
		}
	}
	if strings.Contains(buf.String(), tok) || strings.Contains(buf.String(), strings.Split(tok, ".")[2]) {
		t.Error("the token is in the audit line")
	}
	if _, ok := line["duration"]; !ok {
		t.Error("no duration")
	}
}

func TestExtractToken(t *testing.T) {
	tests := []struct {
		name  string
		auth  []string
		query string
		raw   string
		rest  string
		fault string
	}{
		{name: "none", query: "a=1", rest: "a=1"},
		{name: "header", auth: []string{"Bearer abc"}, raw: "abc"},
		{name: "scheme is case-insensitive", auth: []string{"bearer abc"}, raw: "abc"},
		{name: "query", query: "access_token=abc&b=2", raw: "abc", rest: "b=2"},
		{name: "two headers", auth: []string{"Bearer a", "Bearer b"}, fault: "more than one token in the request"},
		{name: "header and query", auth: []string{"Bearer a"}, query: "access_token=b", fault: "more than one token in the request"},
		{name: "two query params", query: "access_token=a&access_token=b", fault: "more than one token in the request"},
		{name: "other spelling", query: "ACCESS_TOKEN=a", fault: "the query carries an access token under another spelling"},
		{name: "empty query token", query: "access_token=", fault: "empty access token"},
		{name: "basic", auth: []string{"Basic abc"}, fault: "the Authorization header is not a Bearer token"},
		{name: "bare scheme", auth: []string{"Bearer"}, fault: "the Authorization header is not a Bearer token"},
		{name: "two tokens in one header", auth: []string{"Bearer a, Bearer b"}, fault: "the Authorization header is not a Bearer token"},
		{name: "bad query", query: "access_token=%zz", fault: "the query string does not parse"},
		{name: "percent-encoded name", query: "access%5Ftoken=abc&b=2", raw: "abc", rest: "b=2"},
		{name: "token after a semicolon, name escaped", query: "x=1;%61ccess_token=abc", fault: "the query string does not parse"},
		{name: "token among bad escapes", query: "a=%zz&x=1;ACCESS%5Ftoken%zz=1;access_token=abc", fault: "the query string does not parse"},
		{name: "semicolons without a token pass", query: "a=1;b=2", rest: "a=1;b=2"},
		{name: "name with a trailing space", query: "ACCess_token%20=abc", fault: "the query carries an access token under another spelling"},
		{name: "PHP reads a dot as an underscore", query: "access.token=abc", fault: "the query carries an access token under another spelling"},
		{name: "percent-encoded letter", query: "%61ccess_token=abc", raw: "abc", rest: ""},
		{name: "odd query without a token passes unchanged", query: "z=1&a=%zz", rest: "z=1&a=%zz"},
		{name: "query order kept without a token", query: "z=1&a=2", rest: "z=1&a=2"},
		{name: "too many headers", auth: slices.Repeat([]string{"Bearer a"}, 9), fault: "too many Authorization headers"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := http.NewRequest("GET", "http://x/p?"+tc.query, nil)
			r.URL.RawQuery = tc.query
			for _, a := range tc.auth {
				r.Header.Add("Authorization", a)
			}
			raw, rest, fault := ExtractToken(r)
			if fault != tc.fault {
				t.Fatalf("fault %q, want %q", fault, tc.fault)
			}
			if fault == "" && (raw != tc.raw || rest != tc.rest) {
				t.Errorf("got %q %q, want %q %q", raw, rest, tc.raw, tc.rest)
			}
		})
	}
}

func TestCleanPath(t *testing.T) {
	tests := []struct {
		target, want string
		ok           bool
	}{
		{"/a/b", "/a/b", true},
		{"/a/b/", "/a/b/", true},
		{"/a/../b", "/b", true},
		{"/a/./b/", "/a/b/", true},
		{"//a//b", "/a/b", true},
		{"/../../etc", "/etc", true},
		{"/a%2Fb", "", false},
		{"/a%5cb", "", false},
		{"/a%20b", "/a b", true},
		// Tomcat and Spring drop ";params" and then resolve the dot
		// segment: "/orders/x/..;/admin" is "/orders/admin" to them.
		{"/orders/x/..;/admin/x", "", false},
		{"/orders/x/%2e%2e;v=1/admin", "", false},
		{"/a/.;x/b", "", false},
		{"/a;v=1/b", "/a;v=1/b", true},
		{"/a/b..;/c", "/a/b..;/c", true},
	}
	for _, tc := range tests {
		t.Run(tc.target, func(t *testing.T) {
			r, err := http.NewRequest("GET", "http://x"+tc.target, nil)
			if err != nil {
				t.Fatal(err)
			}
			got, ok := CleanPath(r)
			if ok != tc.ok || got != tc.want {
				t.Errorf("CleanPath = %q %v, want %q %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// A token accepted within the clock-skew allowance comes with a context id
// the application can use, not one already expired.
func TestContextIDLivesAsLongAsTheToken(t *testing.T) {
	h := newHarness(t, nil)
	caller := h.ca.SVID(t, testCaller)
	tok := h.token(t, testSelf, caller.Cert, func(c *token.Claims) { c.Expiry = h.clock.Now().Add(-2 * time.Second) })
	r := h.request("GET", "/orders/1", caller.Cert)
	r.Header.Set("Authorization", "Bearer "+tok)
	if w := h.serve(r); w.Code != 200 {
		t.Fatalf("a token within the leeway: %d", w.Code)
	}
	id := h.lastSeen().Header.Get(HeaderContext)
	if _, ok := h.contexts.Get(id); !ok {
		t.Errorf("context id %q of an accepted token is not usable", id)
	}
}

// Until the revocation list has been fetched once, a request with a token
// is answered 503: a revoked token must not pass in the first seconds after
// a start.
func TestInboundWaitsForTheRevocationList(t *testing.T) {
	loaded := false
	h := newHarness(t, func(c *InboundConfig) { c.RevocationsLoaded = func() bool { return loaded } })
	caller := h.ca.SVID(t, testCaller)
	tok := h.token(t, testSelf, caller.Cert, nil)
	r := h.request("GET", "/orders/1", caller.Cert)
	r.Header.Set("Authorization", "Bearer "+tok)
	if w := h.serve(r); w.Code != 503 || !strings.Contains(w.Body.String(), "revocation list is not loaded") {
		t.Errorf("before the first fetch: %d %s", w.Code, w.Body)
	}
	loaded = true
	r = h.request("GET", "/orders/1", caller.Cert)
	r.Header.Set("Authorization", "Bearer "+tok)
	if w := h.serve(r); w.Code != 200 {
		t.Errorf("after it: %d %s", w.Code, w.Body)
	}
}
