package gateway

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/token"
)

const (
	td        = "quickstart.local"
	gatewayID = "spiffe://quickstart.local/ns/shop/sa/gateway"
	ordersID  = "spiffe://quickstart.local/ns/shop/sa/order-processing"
	stsID     = "spiffe://quickstart.local/postern/server"
	shopAud   = "test-shop"
	introID   = "gateway-client"
	introPass = "s3cret-introspection"
)

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// clock is an injectable clock that tests move forward.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.ns.Store(time.Now().UnixNano())
	return c
}

func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Add(d time.Duration)     { c.ns.Add(int64(d)) }
func (c *clock) Since(t time.Time) int64 { return c.ns.Load() - t.UnixNano() }

// identity is a fixed SVID and bundle.
type identity struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

func (i identity) GetX509SVID() (*x509svid.SVID, error) { return i.svid, nil }
func (i identity) GetX509BundleForTrustDomain(spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return i.bundle, nil
}

func newIdentity(ca *testca.CA, s *testca.SVID) identity {
	return identity{
		svid:   &x509svid.SVID{ID: s.ID, Certificates: []*x509.Certificate{s.Cert}, PrivateKey: s.Key},
		bundle: x509bundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.Cert}),
	}
}

// idp is a small OIDC identity provider: discovery, JWKS and RFC 7662
// introspection, over plain HTTP on loopback.
type idp struct {
	srv    *httptest.Server
	key    *ecdsa.PrivateKey
	signer *token.Signer
	mu     sync.Mutex
	opaque map[string]map[string]any
	intros atomic.Int64
}

func newIdP(t testing.TB) *idp {
	t.Helper()
	p := &idp{key: testca.NewKey(t), opaque: map[string]map[string]any{}}
	var err error
	if p.signer, err = token.NewSigner("idp-1", jose.ES256, p.key, "JWT"); err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"issuer":                 p.issuer(),
			"jwks_uri":               p.issuer() + "/jwks",
			"introspection_endpoint": p.issuer() + "/introspect",
		})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(p.jwks())
	})
	mux.HandleFunc("POST /introspect", func(w http.ResponseWriter, r *http.Request) {
		p.intros.Add(1)
		id, pass, ok := r.BasicAuth()
		if !ok || id != introID || pass != introPass {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		_ = r.ParseForm()
		p.mu.Lock()
		claims, ok := p.opaque[r.PostForm.Get("token")]
		p.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			_, _ = w.Write([]byte(`{"active":false}`))
			return
		}
		out := map[string]any{"active": true}
		for k, v := range claims {
			out[k] = v
		}
		_ = json.NewEncoder(w).Encode(out)
	})
	p.srv = httptest.NewServer(mux)
	t.Cleanup(p.srv.Close)
	return p
}

func (p *idp) issuer() string { return p.srv.URL }

func (p *idp) jwks() []byte {
	b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: p.key.Public(), KeyID: "idp-1", Algorithm: "ES256", Use: "sig"}}})
	return b
}

// token signs a user token for sub; mutate changes the claims.
func (p *idp) token(t testing.TB, now time.Time, sub, scope string, mutate func(*token.Claims)) string {
	t.Helper()
	c := &token.Claims{
		Issuer: p.issuer(), Subject: sub, Audience: []string{shopAud}, Scope: scope,
		IssuedAt: now, Expiry: now.Add(time.Hour),
		Extra: map[string]any{"email": sub + "@example.com", "groups": []any{"shoppers"}},
	}
	if mutate != nil {
		mutate(c)
	}
	raw, err := p.signer.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// addOpaque registers an opaque token as active with claims.
func (p *idp) addOpaque(tok string, claims map[string]any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.opaque[tok] = claims
}

func (p *idp) revoke(tok string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.opaque, tok)
}

// trustedIssuer is the TrustedIssuer resource of the IdP: keys inline or by
// discovery, with introspection.
func (p *idp) trustedIssuer(t testing.TB, dir string, discovery bool) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, "introspection-secret"), []byte(introPass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	keys := "  jwks: " + string(p.jwks()) + "\n"
	if discovery {
		keys = "  discovery: true\n"
	}
	doc := fmt.Sprintf(`apiVersion: postern.dev/v1
kind: TrustedIssuer
metadata: {name: test-idp}
spec:
  issuer: %s
  audiences: [%s]
  algorithms: [ES256, RS256]
  claims: [email, groups]
%s  introspection:
    endpoint: %s/introspect
    clientID: %s
    clientSecretFile: %s
`, p.issuer(), shopAud, keys, p.issuer(), introID, filepath.Join(dir, "introspection-secret"))
	if err := os.WriteFile(filepath.Join(dir, "test-idp.yaml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
}

// fakeSTS answers token exchanges with opaque internal tokens.
type fakeSTS struct {
	url   string
	calls atomic.Int64
	mode  atomic.Value // "ok", "refuse", "down", "badclient"
	mu    sync.Mutex
	last  url.Values
}

func newFakeSTS(t testing.TB, ca *testca.CA) *fakeSTS {
	t.Helper()
	s := &fakeSTS{}
	s.mode.Store("ok")
	id := newIdentity(ca, ca.SVID(t, stsID))
	s.url = "https://" + serveTLS(t, tlsconfig.MTLSServerConfig(id, id, tlsconfig.AuthorizeAny()), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.calls.Add(1)
		_ = r.ParseForm()
		s.mu.Lock()
		s.last = r.PostForm
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		switch s.mode.Load().(string) {
		case "refuse":
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"invalid_grant","error_description":"no ExchangePolicy allows it"}`))
		case "badclient":
			w.WriteHeader(http.StatusUnauthorized)
			_, _ = w.Write([]byte(`{"error":"invalid_client"}`))
		case "down":
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(`{"error":"server_error"}`))
		default:
			_ = json.NewEncoder(w).Encode(map[string]any{
				"access_token": fmt.Sprintf("internal-%d", s.calls.Load()), "token_type": "Bearer",
				"expires_in": 300, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
			})
		}
	}))
	return s
}

func (s *fakeSTS) lastForm() url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last
}

// upstream is an mTLS server with the order-processing SVID that records
// what reaches it.
type upstream struct {
	addr string
	mu   sync.Mutex
	seen *http.Request // the last request
	n    int
}

func newUpstream(t testing.TB, ca *testca.CA, id string) *upstream {
	t.Helper()
	u := &upstream{}
	ident := newIdentity(ca, ca.SVID(t, id))
	cfg := tlsconfig.MTLSServerConfig(ident, ident, tlsconfig.AuthorizeID(spiffeid.RequireFromString(gatewayID)))
	u.addr = serveTLS(t, cfg, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		c := r.Clone(context.Background())
		u.mu.Lock()
		u.seen, u.n = c, u.n+1
		u.mu.Unlock()
		if strings.HasSuffix(r.URL.Path, "/early-hints") {
			w.Header().Set("Link", "</a.css>; rel=preload")
			w.Header().Set("X-Postern-Peer", "leak")
			w.WriteHeader(http.StatusEarlyHints)
			w.Header().Del("Link")
		}
		w.Header().Set("X-Postern-Claims", "leak")
		_, _ = io.WriteString(w, "ok")
	}))
	return u
}

func (u *upstream) last() *http.Request {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.n
}

// harness is a gateway in front of a recording upstream, with a fake STS
// and a test IdP.
type harness struct {
	ca     *testca.CA
	clock  *clock
	idp    *idp
	sts    *fakeSTS
	up     *upstream
	gw     *Gateway
	client *http.Client
	base   string
	dir    string
}

type harnessOptions struct {
	extraRoutes string // YAML appended to routes
	rateLimit   string // YAML of rateLimit
	upstreamAt  string // address of the orders upstream (default the recorder)
}

func newHarness(t testing.TB, o harnessOptions) *harness {
	t.Helper()
	h := &harness{ca: testca.New(t, td), clock: newClock(), dir: t.TempDir()}
	h.idp = newIdP(t)
	h.sts = newFakeSTS(t, h.ca)
	h.up = newUpstream(t, h.ca, ordersID)
	issuers := filepath.Join(h.dir, "issuers")
	if err := os.MkdirAll(issuers, 0o755); err != nil {
		t.Fatal(err)
	}
	h.idp.trustedIssuer(t, issuers, false)

	serving := h.ca.ServerCert(t)
	writePEM(t, filepath.Join(h.dir, "tls.crt"), "CERTIFICATE", serving.Certificate[0])
	der, _ := x509.MarshalPKCS8PrivateKey(serving.PrivateKey)
	writePEM(t, filepath.Join(h.dir, "tls.key"), "PRIVATE KEY", der)

	addr := h.up.addr
	if o.upstreamAt != "" {
		addr = o.upstreamAt
	}
	if o.rateLimit == "" {
		o.rateLimit = "{requestsPerSecond: 1000, burst: 100000}"
	}
	yml := fmt.Sprintf(`trustDomain: quickstart.local
spiffeID: %s
spiffe: {workloadAPI: {socket: "unix:///nonexistent"}}
sts: {issuer: %s}
listen: 127.0.0.1:0
tls: {certFile: tls.crt, keyFile: tls.key}
issuers: issuers
rateLimit: %s
admin: {listen: 127.0.0.1:0}
drainTimeout: 1s
routes:
- name: orders
  pathPrefix: /orders
  upstream: {name: order-processing, addresses: [%q], spiffeID: %s}
  requiredScopes: [orders:read]
- name: shoppers
  host: "*.shop.example"
  pathPrefix: /orders/vip
  upstream: {name: order-processing, addresses: [%q], spiffeID: %s}
  when:
  - {key: "request.auth.claims[groups]", values: [vip]}
- name: staff
  host: staff.example
  pathPrefix: /
  upstream: {name: order-processing, addresses: [%q], spiffeID: %s}
  condition: 'subject.email.endsWith("@staff.example")'
%s`, gatewayID, h.sts.url, o.rateLimit, addr, ordersID, addr, ordersID, addr, ordersID, o.extraRoutes)
	path := filepath.Join(h.dir, "gateway.yaml")
	if err := os.WriteFile(path, []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	h.gw, err = New(context.Background(), cfg, Options{
		Logger: testLogger(), Identity: newIdentity(h.ca, h.ca.SVID(t, gatewayID)), Now: h.clock.Now,
	})
	if err != nil {
		t.Fatalf("gateway: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.gw.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
		h.gw.Close()
	})
	h.client = userClient(h.ca.Pool(), true)
	h.base = "https://" + h.gw.Addr().String()
	return h
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// userClient is a browser-like client trusting roots.
func userClient(roots *x509.CertPool, h2 bool) *http.Client {
	cfg := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if !h2 {
		cfg.NextProtos = []string{"http/1.1"}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: h2, MaxIdleConnsPerHost: 64}}
}

type response struct {
	status int
	header http.Header
	body   []byte
	proto  int
}

// do sends method target with host and headers (name: value, repeated
// names allowed as "Name#2").
func (h *harness) do(t testing.TB, method, target, host string, hdr map[string]string) response {
	t.Helper()
	req, err := http.NewRequest(method, h.base+target, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host != "" {
		req.Host = host
	}
	for k, v := range hdr {
		k, _, _ = strings.Cut(k, "#")
		req.Header.Add(k, v)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b, proto: resp.ProtoMajor}
}

func bearer(tok string) map[string]string { return map[string]string{"Authorization": "Bearer " + tok} }

// problemOf decodes a gateway error body, checking its shape.
func problemOf(t testing.TB, b []byte) problem {
	t.Helper()
	var p problem
	if err := json.Unmarshal(b, &p); err != nil {
		t.Fatalf("error body %q is not JSON: %v", b, err)
	}
	if len(p.DecisionID) != 32 {
		t.Errorf("decision_id %q is not 32 hex digits", p.DecisionID)
	}
	return p
}

// unsigned builds a compact JWT with the given header and no valid
// signature.
func unsigned(header map[string]any, claims map[string]any, sig string) string {
	hb, _ := json.Marshal(header)
	cb, _ := json.Marshal(claims)
	return base64.RawURLEncoding.EncodeToString(hb) + "." + base64.RawURLEncoding.EncodeToString(cb) + "." + sig
}

// serveTLS serves h with cfg (HTTP/2 and HTTP/1.1) on a loopback port.
func serveTLS(t testing.TB, cfg *tls.Config, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.NextProtos = []string{"h2", "http/1.1"}
	srv := &http.Server{Handler: h, TLSConfig: cfg, ReadHeaderTimeout: 5 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}
