package gateway

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/token"
)

func TestGatewayForwards(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	user := h.idp.token(t, h.clock.Now(), "alice", "orders:read orders:write", nil)
	for _, h2 := range []bool{true, false} {
		t.Run(fmt.Sprintf("h2=%v", h2), func(t *testing.T) {
			h.client = userClient(h.ca.Pool(), h2)
			r := h.do(t, "GET", "/orders/42/../43?access_token="+user+"&x=1", "", map[string]string{
				"X-Postern-Claims":  "eyJzdWIiOiJtYWxsb3J5In0",
				"X-Postern-Peer":    "spiffe://quickstart.local/ns/shop/sa/finance",
				"X-Postern-Context": "spoofed",
				"x-postern-other":   "spoofed",
			})
			if r.status != 200 || string(r.body) != "ok" {
				t.Fatalf("status %d body %s", r.status, r.body)
			}
			if want := map[bool]int{true: 2, false: 1}[h2]; r.proto != want {
				t.Errorf("protocol HTTP/%d, want HTTP/%d", r.proto, want)
			}
			if v := r.header.Get("X-Postern-Claims"); v != "" {
				t.Errorf("an X-Postern-* header of the upstream reached the user: %q", v)
			}
			seen := h.up.last()
			if seen.URL.Path != "/orders/43" || seen.URL.RawQuery != "x=1" {
				t.Errorf("upstream got %s?%s, want /orders/43?x=1", seen.URL.Path, seen.URL.RawQuery)
			}
			if a := seen.Header.Get("Authorization"); !strings.HasPrefix(a, "Bearer internal-") {
				t.Errorf("upstream Authorization = %q, want the exchanged token", a)
			}
			for k, vs := range seen.Header {
				if strings.HasPrefix(strings.ToLower(k), "x-postern-") {
					t.Errorf("spoofed header %s reached the upstream", k)
				}
				for _, v := range vs {
					if strings.Contains(v, user) {
						t.Errorf("the user's token reached the upstream in %s", k)
					}
				}
			}
			if seen.Host != "order-processing" {
				t.Errorf("upstream Host = %q", seen.Host)
			}
			f := h.sts.lastForm()
			if f.Get("subject_token") != user || f.Get("audience") != ordersID {
				t.Errorf("STS got subject %.10q… audience %q", f.Get("subject_token"), f.Get("audience"))
			}
		})
	}
	if n := h.sts.calls.Load(); n != 1 {
		t.Errorf("%d STS calls for one user and one audience, want 1 (cached)", n)
	}
}

// TestGatewayInformationalHeaders: X-Postern-* headers of an upstream's
// 1xx response (103 Early Hints) do not reach the user either.
func TestGatewayInformationalHeaders(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	user := h.idp.token(t, h.clock.Now(), "alice", "orders:read orders:write", nil)
	var hints []http.Header
	trace := &httptrace.ClientTrace{Got1xxResponse: func(code int, hdr textproto.MIMEHeader) error {
		hints = append(hints, http.Header(hdr).Clone())
		return nil
	}}
	// POST: it reaches the upstream through the transport that relays 1xx.
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), "POST", h.base+"/orders/42/early-hints", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+user)
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if len(hints) == 0 {
		t.Skip("no 1xx response reached the client; nothing to check")
	}
	for _, hdr := range hints {
		for k := range hdr {
			if strings.HasPrefix(strings.ToLower(k), "x-postern-") {
				t.Errorf("1xx header %s reached the user", k)
			}
		}
	}
}

func TestGatewayOpaqueToken(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	now := h.clock.Now()
	h.idp.addOpaque("opaque-bob", map[string]any{
		"sub": "bob", "aud": shopAud, "scope": "orders:read", "exp": now.Add(time.Hour).Unix(), "client_id": "shop-web",
	})
	h.idp.addOpaque("opaque-other-aud", map[string]any{"sub": "bob", "aud": "elsewhere", "scope": "orders:read", "exp": now.Add(time.Hour).Unix()})
	// Sender-constrained tokens (DPoP's jkt here) are refused as the JWT
	// path refuses them: the gateway cannot check the proof of possession.
	h.idp.addOpaque("opaque-dpop", map[string]any{"sub": "bob", "aud": shopAud, "scope": "orders:read", "exp": now.Add(time.Hour).Unix(),
		"cnf": map[string]any{"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}})
	if r := h.do(t, "GET", "/orders", "", bearer("opaque-bob")); r.status != 200 {
		t.Fatalf("active opaque token: %d %s", r.status, r.body)
	}
	if r := h.do(t, "GET", "/orders", "", bearer("opaque-bob")); r.status != 200 {
		t.Fatalf("active opaque token again: %d %s", r.status, r.body)
	}
	if n := h.idp.intros.Load(); n != 1 {
		t.Errorf("%d introspections, want 1 (cached)", n)
	}
	for _, tc := range []struct{ name, tok, desc string }{
		{"unknown", "opaque-unknown", "neither a valid JWT nor an active token"},
		{"other audience", "opaque-other-aud", "not addressed to an audience"},
		{"DPoP-bound", "opaque-dpop", "confirmation method other than x5t#S256"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do(t, "GET", "/orders", "", bearer(tc.tok))
			if r.status != 401 || !strings.Contains(r.header.Get("WWW-Authenticate"), tc.desc) {
				t.Errorf("got %d %q, want 401 with %q", r.status, r.header.Get("WWW-Authenticate"), tc.desc)
			}
		})
	}
}

func TestGatewayRefusals(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	now := h.clock.Now()
	good := h.idp.token(t, now, "alice", "orders:read", nil)
	other := testca.NewKey(t)
	forger, _ := token.NewSigner("idp-1", jose.ES256, other, "JWT")
	forged, _ := forger.Sign(&token.Claims{Issuer: h.idp.issuer(), Subject: "alice", Audience: []string{shopAud}, Scope: "orders:read", Expiry: now.Add(time.Hour)})
	claims := map[string]any{"iss": h.idp.issuer(), "sub": "alice", "aud": shopAud, "scope": "orders:read", "exp": now.Add(time.Hour).Unix()}
	stranger, _ := token.NewSigner("x", jose.ES256, other, "JWT")
	untrusted, _ := stranger.Sign(&token.Claims{Issuer: "https://idp.evil.example", Subject: "alice", Audience: []string{shopAud}, Expiry: now.Add(time.Hour)})

	cases := []struct {
		name      string
		method    string
		target    string
		host      string
		hdr       map[string]string
		status    int
		code      string
		challenge string // substring of WWW-Authenticate
	}{
		{"no token", "GET", "/orders", "", nil, 401, codeUnauthorized, `Bearer realm="postern"`},
		{"basic auth", "GET", "/orders", "", map[string]string{"Authorization": "Basic YTpi"}, 401, codeInvalidRequest, `error="invalid_request"`},
		{"two tokens", "GET", "/orders?access_token=" + good, "", bearer(good), 401, codeInvalidRequest, "more than one token"},
		{"expired", "GET", "/orders", "", bearer(h.idp.token(t, now, "alice", "orders:read", func(c *token.Claims) {
			c.IssuedAt, c.Expiry = now.Add(-2*time.Hour), now.Add(-time.Hour)
		})), 401, codeInvalidToken, "token: expired"},
		{"not yet valid", "GET", "/orders", "", bearer(h.idp.token(t, now, "alice", "orders:read", func(c *token.Claims) { c.NotBefore = now.Add(time.Hour) })), 401, codeInvalidToken, "not yet valid"},
		{"wrong audience", "GET", "/orders", "", bearer(h.idp.token(t, now, "alice", "orders:read", func(c *token.Claims) { c.Audience = []string{"other-app"} })), 401, codeInvalidToken, "wrong audience"},
		{"no sub", "GET", "/orders", "", bearer(h.idp.token(t, now, "", "orders:read", nil)), 401, codeInvalidToken, "no sub"},
		{"bound to a certificate", "GET", "/orders", "", bearer(h.idp.token(t, now, "alice", "orders:read", func(c *token.Claims) { c.Cnf = &token.Confirmation{X5tS256: "abc"} })), 401, codeInvalidToken, "binding"},
		{"wrongly signed", "GET", "/orders", "", bearer(forged), 401, codeInvalidToken, "invalid signature"},
		{"alg none", "GET", "/orders", "", bearer(unsigned(map[string]any{"alg": "none", "typ": "JWT"}, claims, "")), 401, codeInvalidToken, `error="invalid_token"`},
		{"HS256", "GET", "/orders", "", bearer(unsigned(map[string]any{"alg": "HS256", "kid": "idp-1"}, claims, "c2ln")), 401, codeInvalidToken, `error="invalid_token"`},
		{"untrusted issuer", "GET", "/orders", "", bearer(untrusted), 401, codeInvalidToken, "not trusted"},
		{"unknown route", "GET", "/admin", "", bearer(good), 404, codeNotFound, ""},
		{"unknown route, segment-wise", "GET", "/ordersx", "", bearer(good), 404, codeNotFound, ""},
		{"missing scope", "GET", "/orders", "", bearer(h.idp.token(t, now, "alice", "profile", nil)), 403, codeInsufficientScope, `scope="orders:read"`},
		{"when condition", "GET", "/orders/vip/1", "a.shop.example", bearer(good), 403, codeAccessDenied, ""},
		{"CEL condition", "GET", "/anything", "staff.example", bearer(good), 403, codeAccessDenied, ""},
		{"encoded slash", "GET", "/orders%2f..%2fadmin", "", bearer(good), 400, codeInvalidRequest, ""},
		{"CONNECT", "CONNECT", "/", "", bearer(good), 405, codeMethodNotAllowed, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := h.up.count()
			var r response
			if tc.method == "CONNECT" {
				r = h.connect(t)
			} else {
				r = h.do(t, tc.method, tc.target, tc.host, tc.hdr)
			}
			if r.status != tc.status {
				t.Fatalf("status %d, want %d (%s)", r.status, tc.status, r.body)
			}
			p := problemOf(t, r.body)
			if p.Error != tc.code {
				t.Errorf("error %q, want %q (reason %q)", p.Error, tc.code, p.Reason)
			}
			if got := r.header.Get("WWW-Authenticate"); !strings.Contains(got, tc.challenge) || (tc.challenge == "") != (got == "") {
				t.Errorf("WWW-Authenticate %q, want it to contain %q", got, tc.challenge)
			}
			if h.up.count() != before {
				t.Error("the request reached the upstream")
			}
		})
	}
	t.Run("allowed by the conditions", func(t *testing.T) {
		vip := h.idp.token(t, now, "carol", "", func(c *token.Claims) { c.Extra["groups"] = []any{"vip"} })
		if r := h.do(t, "GET", "/orders/vip/1", "b.shop.example:443", bearer(vip)); r.status != 200 {
			t.Errorf("vip: %d %s", r.status, r.body)
		}
		staff := h.idp.token(t, now, "dave", "", func(c *token.Claims) { c.Extra["email"] = "dave@staff.example" })
		if r := h.do(t, "GET", "/anything", "STAFF.example", bearer(staff)); r.status != 200 {
			t.Errorf("staff: %d %s", r.status, r.body)
		}
	})
}

// connect sends a CONNECT request over HTTP/1.1.
func (h *harness) connect(t *testing.T) response {
	t.Helper()
	c := userClient(h.ca.Pool(), false)
	req, _ := http.NewRequest("CONNECT", h.base, nil)
	req.Host = "upstream:443"
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

func TestGatewayRateLimit(t *testing.T) {
	h := newHarness(t, harnessOptions{rateLimit: "{requestsPerSecond: 0.5, burst: 2, by: client_id}"})
	now := h.clock.Now()
	web := h.idp.token(t, now, "alice", "orders:read", func(c *token.Claims) { c.ClientID = "web" })
	web2 := h.idp.token(t, now, "bob", "orders:read", func(c *token.Claims) { c.ClientID = "web" })
	mobile := h.idp.token(t, now, "alice", "orders:read", func(c *token.Claims) { c.ClientID = "mobile" })
	for i, tok := range []string{web, web2} {
		if r := h.do(t, "GET", "/orders", "", bearer(tok)); r.status != 200 {
			t.Fatalf("request %d: %d %s", i, r.status, r.body)
		}
	}
	r := h.do(t, "GET", "/orders", "", bearer(web))
	if r.status != 429 || r.header.Get("Retry-After") != "2" {
		t.Fatalf("third request of client web: %d Retry-After %q, want 429 and 2", r.status, r.header.Get("Retry-After"))
	}
	if p := problemOf(t, r.body); p.Error != codeRateLimited {
		t.Errorf("error %q", p.Error)
	}
	if r := h.do(t, "GET", "/orders", "", bearer(mobile)); r.status != 200 {
		t.Errorf("another client is limited too: %d", r.status)
	}
	h.clock.Add(2 * time.Second)
	if r := h.do(t, "GET", "/orders", "", bearer(web)); r.status != 200 {
		t.Errorf("after the refill: %d", r.status)
	}
}

func TestGatewayUpstreamFaults(t *testing.T) {
	dead, _ := net.Listen("tcp", "127.0.0.1:0")
	deadAddr := dead.Addr().String()
	dead.Close()
	ca := testca.New(t, td)
	impostor := newUpstream(t, ca, "spiffe://quickstart.local/ns/shop/sa/finance")
	h := newHarness(t, harnessOptions{extraRoutes: fmt.Sprintf(`- name: dead
  pathPrefix: /dead
  upstream: {name: dead, addresses: [%q], spiffeID: %s}
- name: impostor
  pathPrefix: /impostor
  upstream: {name: impostor, addresses: [%q], spiffeID: %s}
`, deadAddr, ordersID, impostor.addr, ordersID)})
	user := h.idp.token(t, h.clock.Now(), "alice", "orders:read", nil)
	for _, tc := range []struct {
		name, mode, target string
		status             int
		code               string
	}{
		{"upstream down", "ok", "/dead", 502, codeBadGateway},
		{"upstream has another identity", "ok", "/impostor", 502, codeBadGateway},
		{"STS refuses", "refuse", "/orders/1", 403, codeExchangeRefused},
		{"STS refuses the gateway", "badclient", "/orders/2", 502, codeExchangeFailed},
		{"STS down", "down", "/orders/3", 503, codeTokenService},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.sts.mode.Store(tc.mode)
			tok := h.idp.token(t, h.clock.Now(), "u-"+tc.mode+tc.target, "orders:read", nil) // not in the exchange cache
			if tc.mode == "ok" {
				tok = user
			}
			r := h.do(t, "GET", tc.target, "", bearer(tok))
			if r.status != tc.status {
				t.Fatalf("status %d, want %d (%s)", r.status, tc.status, r.body)
			}
			p := problemOf(t, r.body)
			if p.Error != tc.code {
				t.Errorf("error %q, want %q", p.Error, tc.code)
			}
			if strings.Contains(string(r.body), "127.0.0.1") || strings.Contains(string(r.body), "spiffe://") || strings.Contains(string(r.body), "ExchangePolicy") {
				t.Errorf("the body tells internal detail: %s", r.body)
			}
		})
	}
}

func TestGatewayAdmin(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	_ = h.do(t, "GET", "/orders", "", nil)
	admin := "http://" + h.gw.AdminAddr().String()
	for path, want := range map[string]string{
		"/healthz": "ok",
		"/readyz":  "ok",
		"/metrics": `postern_gateway_requests_total{decision="unauthenticated",route="orders"} 1`,
	} {
		resp, err := http.Get(admin + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("%s: %d, want 200 with %q", path, resp.StatusCode, want)
		}
	}
	if !h.gw.Ready() {
		t.Error("not ready")
	}
}

func TestSVIDCertificate(t *testing.T) {
	ca := testca.New(t, td)
	id := newIdentity(ca, ca.SVID(t, gatewayID))
	sc := &svidCert{src: id}
	c1, err := sc.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := sc.GetCertificate(nil)
	if c1 != c2 || c1.Leaf != id.svid.Certificates[0] {
		t.Error("the certificate is not the SVID, memoized")
	}
	if _, err := x509.ParseCertificate(c1.Certificate[0]); err != nil {
		t.Error(err)
	}
}

// A route's condition sees the host as the route matched it (lower case,
// no port, no trailing dot): spellings of a host must not slip past a
// condition that names it.
func TestGatewayConditionHostNormalised(t *testing.T) {
	h := newHarness(t, harnessOptions{extraRoutes: `- name: reports
  pathPrefix: /reports
  upstream: {name: reports, addresses: ["127.0.0.1:1"], spiffeID: "spiffe://quickstart.local/ns/shop/sa/reports"}
  condition: 'host != "partners.example"'
`})
	user := h.idp.token(t, h.clock.Now(), "alice", "orders:read", nil)
	for _, host := range []string{"partners.example", "PARTNERS.example", "partners.example.", "partners.example:443"} {
		if r := h.do(t, "GET", "/reports/x", host, bearer(user)); r.status != 403 {
			t.Errorf("Host %q: %d, want 403 from the condition", host, r.status)
		}
	}
}

// Headers with which frameworks reroute a request, or take the client's
// address, and an Upgrade to anything but WebSocket never reach the
// upstream.
func TestGatewayDropsOverrideHeaders(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	user := h.idp.token(t, h.clock.Now(), "alice", "orders:read", nil)
	h.client = userClient(h.ca.Pool(), false) // HTTP/1.1: HTTP/2 has no Upgrade
	hdr := bearer(user)
	for _, k := range []string{"X-Original-URL", "X-Rewrite-URL", "X-HTTP-Method-Override", "X-Method-Override", "X-Real-IP", "Upgrade"} {
		hdr[k] = "spoof"
	}
	hdr["Connection"] = "Upgrade"
	if r := h.do(t, "GET", "/orders/1", "", hdr); r.status != 200 {
		t.Fatalf("status %d %s", r.status, r.body)
	}
	seen := h.up.last()
	for k := range hdr {
		if k != "Authorization" && k != "Connection" && seen.Header.Get(k) != "" {
			t.Errorf("%s reached the upstream", k)
		}
	}
}

// With two introspecting issuers, an opaque token goes to the issuer whose
// tokenPrefix it has, and no other IdP sees it.
func TestGatewayOpaqueTokenGoesToItsIssuerOnly(t *testing.T) {
	a, b := newIdP(t), newIdP(t)
	dir := t.TempDir()
	for name, p := range map[string]*idp{"aaa-partner": a, "zzz-corp": b} {
		sub := t.TempDir()
		p.trustedIssuer(t, sub, false)
		doc, err := os.ReadFile(filepath.Join(sub, "test-idp.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		s := strings.Replace(string(doc), "name: test-idp", "name: "+name, 1)
		s = strings.Replace(s, "  introspection:\n", "  introspection:\n    tokenPrefix: "+name[4:]+"_\n", 1)
		if err := os.WriteFile(filepath.Join(dir, name+".yaml"), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b.addOpaque("corp_user-token", map[string]any{"sub": "bob", "aud": shopAud, "exp": time.Now().Add(time.Hour).Unix()})
	is, err := loadIssuers(dir, issuerOptions{skew: 30 * time.Second, now: time.Now, logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	p, err := is.authenticate(context.Background(), "corp_user-token", "192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	if p.claims.Subject != "bob" || a.intros.Load() != 0 || b.intros.Load() != 1 {
		t.Errorf("%s authenticated; introspections: partner %d, corp %d (want 0 and 1)", p.claims.Subject, a.intros.Load(), b.intros.Load())
	}
	if _, err := is.authenticate(context.Background(), "no-prefix-token", "192.0.2.1"); err == nil || a.intros.Load()+b.intros.Load() != 1 {
		t.Errorf("a token with no issuer's prefix: %v; introspections %d", err, a.intros.Load()+b.intros.Load())
	}
}

// Made-up opaque tokens from one address cost at most a burst of requests
// to the identity provider: the rate limit keys on the verified user, which
// they never become, so they are limited per address before that. A token
// whose answer is cached is not counted.
func TestGatewayLimitsIntrospectionMisses(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	now := h.clock.Now()
	h.idp.addOpaque("opaque-bob", map[string]any{"sub": "bob", "aud": shopAud, "scope": "orders:read", "exp": now.Add(time.Hour).Unix()})
	if r := h.do(t, "GET", "/orders", "", bearer("opaque-bob")); r.status != 200 {
		t.Fatalf("active opaque token: %d %s", r.status, r.body)
	}
	before := h.idp.intros.Load()
	limited := 0
	for i := range 3 * introspectMissesBurst {
		r := h.do(t, "GET", "/orders", "", bearer(fmt.Sprintf("made-up-%d", i)))
		if r.status == 429 {
			limited++
		}
	}
	if n := h.idp.intros.Load() - before; n > introspectMissesBurst+1 {
		t.Errorf("%d introspections for %d made-up tokens, want at most about the burst (%d)", n, 3*introspectMissesBurst, introspectMissesBurst)
	}
	if limited == 0 {
		t.Error("no request was limited")
	}
	if r := h.do(t, "GET", "/orders", "", bearer("opaque-bob")); r.status != 200 {
		t.Errorf("a cached opaque token after the flood: %d %s", r.status, r.body)
	}
}
