package gateway

import (
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/ca"
	"postern.dev/postern/internal/proxy"
	"postern.dev/postern/internal/server"
	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/testserver"
	"postern.dev/postern/internal/token"
)

const examples = "../../examples/quickstart"

// startServer runs a real postern server with a copy of the quickstart's
// resources plus the test IdP as a TrustedIssuer (keys by discovery,
// introspection configured) and an ExchangePolicy letting the gateway
// exchange its users' tokens for order-processing.
func startServer(t *testing.T, p *idp) (*server.Server, string) {
	t.Helper()
	// The IdP's TrustedIssuer is written where the test can read it back,
	// then handed to the server with the ExchangePolicy.
	own := t.TempDir()
	p.trustedIssuer(t, own, true)
	extra := map[string]string{"test-exchange.yaml": fmt.Sprintf(`apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: gateway-test-idp-to-order-processing}
spec:
  clients: [%s]
  subjectIssuers: [%s]
  audiences: [%s]
  scopes: [orders:read, orders:write]
  claims: [email]
  maxLifetime: 5m
`, gatewayID, p.issuer(), ordersID)}
	entries, err := os.ReadDir(own)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(own, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		extra[e.Name()] = string(b)
	}
	return testserver.Quickstart(t, extra)
}

// writeSVID issues an SVID for id and writes it with the server's bundle
// as a files source reads them.
func writeSVID(t *testing.T, srv *server.Server, id, dir string) *proxy.FilesSource {
	t.Helper()
	key := testca.NewKey(t)
	s, err := srv.CA().IssueX509SVID(context.Background(), ca.X509SVIDRequest{ID: spiffeid.RequireFromString(id), PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	svid := &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: s.Certificates, PrivateKey: key}
	certs, keyPEM, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(srv.BundlePath())
	if err != nil {
		t.Fatal(err)
	}
	fs := &proxy.FilesSource{Cert: filepath.Join(dir, "svid.pem"), Key: filepath.Join(dir, "svid.key"), Bundle: filepath.Join(dir, "bundle.pem")}
	for path, b := range map[string][]byte{fs.Cert: certs, fs.Key: keyPEM, fs.Bundle: bundle} {
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return fs
}

// app records what reaches order-processing.
type app struct {
	mu   sync.Mutex
	reqs []*http.Request
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.reqs = append(a.reqs, r.Clone(context.Background()))
	a.mu.Unlock()
	_, _ = io.WriteString(w, "order-processing ok")
}

func (a *app) last() *http.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.reqs) == 0 {
		return nil
	}
	return a.reqs[len(a.reqs)-1]
}

// startOrderProcessing runs the quickstart's order-processing sidecar in
// front of a recording app and returns its inbound address.
func startOrderProcessing(t *testing.T, srv *server.Server, a *app) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	appSrv := &http.Server{Handler: a, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = appSrv.Serve(ln) }()
	t.Cleanup(func() { _ = appSrv.Close() })

	cfg, err := proxy.LoadConfig(filepath.Join(examples, "sidecars", "order-processing.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.SPIFFE.Files = writeSVID(t, srv, cfg.SPIFFEID, t.TempDir())
	cfg.STS.Issuer, cfg.STS.TokenEndpoint = srv.Issuer(), ""
	cfg.Inbound.Listen, cfg.Inbound.App = "127.0.0.1:0", ln.Addr().String()
	cfg.Admin.Listen, cfg.Outbound.Listen = "127.0.0.1:0", "127.0.0.1:0"
	for i := range cfg.Outbound.Upstreams {
		cfg.Outbound.Upstreams[i].Addresses = []string{"127.0.0.1:1"}
	}
	cfg.DrainTimeout = 0
	sc, err := proxy.NewSidecar(context.Background(), cfg, proxy.SidecarOptions{Logger: testLogger()})
	if err != nil {
		t.Fatalf("sidecar: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		sc.Close()
	})
	waitFor(t, "sidecar ready", sc.Ready)
	return sc.InboundAddr().String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// quickstartUserToken is a token of the quickstart IdP (its demo key).
func quickstartUserToken(t *testing.T, sub, scope string) string {
	t.Helper()
	b, err := os.ReadFile(examples + "/idp/idp-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	sg, err := token.NewSigner("ugswFpprsg-aAL8qb2ziTscgJloQaLfzb-z683IShO4", jose.ES256, k.(*ecdsa.PrivateKey), "JWT")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	raw, err := sg.Sign(&token.Claims{Issuer: "https://idp.quickstart.local", Subject: sub, Audience: []string{"quickstart-shop"},
		Scope: scope, IssuedAt: now, Expiry: now.Add(time.Hour), Extra: map[string]any{"email": sub + "@example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// TestIntegration runs a test IdP, a real postern server, the gateway (the
// quickstart example's configuration) and order-processing behind a real
// sidecar, and checks the edge end to end.
func TestIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server, a sidecar and a gateway")
	}
	p := newIdP(t)
	srv, res := startServer(t, p)
	a := &app{}
	orders := startOrderProcessing(t, srv, a)

	cfg, err := LoadConfig(examples + "/gateway.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg.SPIFFE.Files = writeSVID(t, srv, gatewayID, t.TempDir())
	cfg.STS = proxy.STSConfig{Issuer: srv.Issuer()}
	cfg.Listen, cfg.Admin.Listen = "127.0.0.1:0", "127.0.0.1:0"
	cfg.Issuers = res
	cfg.RateLimit = &RateLimitConfig{RequestsPerSecond: 0.01, Burst: 10}
	for i := range cfg.Routes {
		cfg.Routes[i].Upstream.Addresses = []string{orders}
	}
	gw, err := New(context.Background(), cfg, Options{Logger: testLogger()})
	if err != nil {
		t.Fatalf("gateway: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("gateway run: %v", err)
		}
		gw.Close()
	})
	waitFor(t, "gateway ready (the IdP's keys by discovery)", gw.Ready)

	// Users trust the trust domain's bundle and the gateway's SPIFFE ID
	// (tls.fromSVID in the example).
	tlsCfg := tlsconfig.TLSClientConfig(srv.CA(), tlsconfig.AuthorizeID(spiffeid.RequireFromString(gatewayID)))
	tlsCfg.NextProtos = []string{"h2", "http/1.1"}
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg, ForceAttemptHTTP2: true}}
	base := "https://" + gw.Addr().String()
	call := func(t *testing.T, path string, hdr map[string]string) (int, http.Header, []byte) {
		t.Helper()
		req, _ := http.NewRequest("GET", base+path, nil)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, b
	}
	// reached checks that the last request at the app carries an internal
	// token for sub with the gateway as actor, and nothing of the user's.
	reached := func(t *testing.T, sub, userToken string) {
		t.Helper()
		r := a.last()
		if r == nil {
			t.Fatal("nothing reached order-processing")
		}
		raw, err := base64.RawURLEncoding.DecodeString(r.Header.Get("X-Postern-Claims"))
		if err != nil {
			t.Fatalf("X-Postern-Claims: %v", err)
		}
		var c map[string]any
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatal(err)
		}
		act, _ := c["act"].(map[string]any)
		if c["sub"] != sub || c["iss"] != srv.Issuer() || c["aud"] != ordersID || act["sub"] != gatewayID {
			t.Errorf("internal token claims = %v; want sub %s from %s for %s, actor %s", c, sub, srv.Issuer(), ordersID, gatewayID)
		}
		if r.Header.Get("X-Postern-Peer") != gatewayID {
			t.Errorf("peer %q, want the gateway", r.Header.Get("X-Postern-Peer"))
		}
		for k, vs := range r.Header {
			for _, v := range vs {
				if strings.Contains(v, userToken) {
					t.Errorf("the user's token reached the service in %s", k)
				}
			}
		}
	}

	t.Run("valid JWT of the test IdP (keys by discovery)", func(t *testing.T) {
		tok := p.token(t, time.Now(), "alice", "orders:read orders:write", nil)
		status, _, body := call(t, "/orders/42", map[string]string{
			"Authorization":     "Bearer " + tok,
			"X-Postern-Claims":  base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"mallory"}`)),
			"X-Postern-Peer":    "spiffe://quickstart.local/ns/shop/sa/finance",
			"X-Postern-Context": "spoofed",
		})
		if status != 200 || string(body) != "order-processing ok" {
			t.Fatalf("%d %s", status, body)
		}
		reached(t, "alice", tok)
		if r := a.last(); r.Header.Get("X-Postern-Context") == "spoofed" {
			t.Error("a spoofed X-Postern-Context reached the service")
		}
	})
	t.Run("valid JWT of the quickstart IdP (inline keys)", func(t *testing.T) {
		tok := quickstartUserToken(t, "erin", "orders:read")
		if status, _, body := call(t, "/orders", map[string]string{"Authorization": "Bearer " + tok}); status != 200 {
			t.Fatalf("%d %s", status, body)
		}
		reached(t, "erin", tok)
	})
	t.Run("active opaque token (introspected by the gateway and the STS)", func(t *testing.T) {
		p.addOpaque("opaque-bob-1", map[string]any{"sub": "bob", "aud": shopAud, "scope": "orders:read", "exp": time.Now().Add(time.Hour).Unix()})
		if status, _, body := call(t, "/orders/7", map[string]string{"Authorization": "Bearer opaque-bob-1"}); status != 200 {
			t.Fatalf("%d %s", status, body)
		}
		reached(t, "bob", "opaque-bob-1")
	})

	now := time.Now()
	other := testca.NewKey(t)
	forger, _ := token.NewSigner("idp-1", jose.ES256, other, "JWT")
	forged, _ := forger.Sign(&token.Claims{Issuer: p.issuer(), Subject: "alice", Audience: []string{shopAud}, Scope: "orders:read", Expiry: now.Add(time.Hour)})
	p.addOpaque("opaque-revoked", map[string]any{"sub": "bob", "aud": shopAud, "scope": "orders:read", "exp": now.Add(time.Hour).Unix()})
	p.revoke("opaque-revoked")
	for _, tc := range []struct {
		name, path, tok string
		status          int
		code            string
	}{
		{"expired", "/orders", p.token(t, now, "alice", "orders:read", func(c *token.Claims) { c.IssuedAt, c.Expiry = now.Add(-2*time.Hour), now.Add(-time.Hour) }), 401, codeInvalidToken},
		{"wrong audience", "/orders", p.token(t, now, "alice", "orders:read", func(c *token.Claims) { c.Audience = []string{"another-app"} }), 401, codeInvalidToken},
		{"wrongly signed", "/orders", forged, 401, codeInvalidToken},
		{"alg none", "/orders", unsigned(map[string]any{"alg": "none"}, map[string]any{"iss": p.issuer(), "sub": "alice", "aud": shopAud, "exp": now.Add(time.Hour).Unix()}, ""), 401, codeInvalidToken},
		{"revoked opaque token", "/orders", "opaque-revoked", 401, codeInvalidToken},
		{"no token", "/orders", "", 401, codeUnauthorized},
		{"missing scope", "/orders", p.token(t, now, "alice", "profile", nil), 403, codeInsufficientScope},
		{"route condition", "/orders/admin", p.token(t, now, "alice", "orders:read orders:write", func(c *token.Claims) { c.Extra["email"] = "alice@elsewhere.example" }), 403, codeAccessDenied},
		{"unknown route", "/finance/reports", p.token(t, now, "alice", "orders:read", nil), 404, codeNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(a.reqs)
			hdr := map[string]string{}
			if tc.tok != "" {
				hdr["Authorization"] = "Bearer " + tc.tok
			}
			status, h, body := call(t, tc.path, hdr)
			if status != tc.status {
				t.Fatalf("%d %s, want %d", status, body, tc.status)
			}
			if p := problemOf(t, body); p.Error != tc.code {
				t.Errorf("error %q, want %q", p.Error, tc.code)
			}
			if status == 401 && !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer ") {
				t.Errorf("WWW-Authenticate %q", h.Get("WWW-Authenticate"))
			}
			a.mu.Lock()
			after := len(a.reqs)
			a.mu.Unlock()
			if after != before {
				t.Error("the request reached the service")
			}
		})
	}
	t.Run("rate limit", func(t *testing.T) {
		tok := p.token(t, now, "rl-user", "orders:read", nil)
		for i := 0; i < 10; i++ {
			if status, _, body := call(t, "/orders", map[string]string{"Authorization": "Bearer " + tok}); status != 200 {
				t.Fatalf("request %d: %d %s", i, status, body)
			}
		}
		status, h, body := call(t, "/orders", map[string]string{"Authorization": "Bearer " + tok})
		if status != 429 || h.Get("Retry-After") == "" {
			t.Fatalf("%d Retry-After %q, want 429 with Retry-After", status, h.Get("Retry-After"))
		}
		if p := problemOf(t, body); p.Error != codeRateLimited {
			t.Errorf("error %q", p.Error)
		}
	})
}
