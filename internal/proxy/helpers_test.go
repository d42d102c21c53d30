package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/token"
)

const (
	testTD      = "test.local"
	testIssuer  = "https://sts.test.local"
	testSelf    = "spiffe://test.local/ns/shop/sa/orders"
	testCaller  = "spiffe://test.local/ns/shop/sa/gateway"
	testOther   = "spiffe://test.local/ns/shop/sa/finance"
	testPolicy  = "orders-from-gateway"
	testAllowed = "/orders/"
)

// testPolicies: orders accepts the gateway on /orders/*, denies /admin*,
// and admits token-less health probes.
const testPolicies = `
apiVersion: postern.dev/v1
kind: AuthorizationPolicy
metadata: {name: orders-from-gateway}
spec:
  selector: {spiffeIDs: ["spiffe://test.local/ns/shop/sa/orders"]}
  rules:
  - from: [{source: {principals: ["spiffe://test.local/ns/shop/sa/gateway"]}}]
    to: [{operation: {paths: ["/orders/*"]}}]
  - allowWithoutToken: true
    to: [{operation: {methods: [GET], paths: [/healthz]}}]
---
apiVersion: postern.dev/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/orders/admin*"]}}]
`

// clock is an injectable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// countingVerifier counts full verifications.
type countingVerifier struct {
	v *token.Verifier
	n int
	m sync.Mutex
}

func (c *countingVerifier) Verify(ctx context.Context, raw string) (*token.Claims, error) {
	c.m.Lock()
	c.n++
	c.m.Unlock()
	return c.v.Verify(ctx, raw)
}

func (c *countingVerifier) count() int {
	c.m.Lock()
	defer c.m.Unlock()
	return c.n
}

// harness is an inbound chain on a test CA and signing key, in front of a
// recording app.
type harness struct {
	ca       *testca.CA
	signer   *token.Signer
	clock    *clock
	verifier *countingVerifier
	verdicts *VerdictCache
	inbound  *Inbound
	app      *httptest.Server
	contexts *ContextStore

	mu   sync.Mutex
	seen []*http.Request
}

func newHarness(tb testing.TB, mutate func(*InboundConfig)) *harness {
	tb.Helper()
	h := &harness{ca: testca.New(tb, testTD), clock: &clock{t: time.Now()}}
	key := testca.NewKey(tb)
	var err error
	if h.signer, err = token.NewSigner("k1", jose.ES256, key, token.TypeAccessToken); err != nil {
		tb.Fatal(err)
	}
	ks, err := token.NewStaticKeySet(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		tb.Fatal(err)
	}
	v, err := token.NewVerifier(token.VerifierConfig{Issuer: testIssuer, Audience: testSelf, Types: []string{"at+jwt"},
		Keys: ks, Now: h.clock.Now, Leeway: 5 * time.Second})
	if err != nil {
		tb.Fatal(err)
	}
	h.verifier = &countingVerifier{v: v}
	if h.verdicts, err = NewVerdictCache(VerdictCacheConfig{Verifier: h.verifier, Leeway: 5 * time.Second, Now: h.clock.Now}); err != nil {
		tb.Fatal(err)
	}
	set, err := policy.Parse("test.yaml", []byte(testPolicies))
	if err != nil {
		tb.Fatal(err)
	}
	eng, err := policy.Compile(set, policy.CompileOptions{SelfIssuer: testIssuer})
	if err != nil {
		tb.Fatal(err)
	}
	h.app = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.seen = append(h.seen, r.Clone(context.Background()))
		h.mu.Unlock()
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("X-Postern-Peer", "spoofed by the app")
		_, _ = io.WriteString(w, "app:"+r.URL.Path)
	}))
	tb.Cleanup(h.app.Close)
	h.contexts = NewContextStore(0, h.clock.Now)
	cfg := InboundConfig{
		Workload: testSelf,
		Verdicts: h.verdicts,
		Policy:   func() *policy.Engine { return eng },
		App:      h.app.Listener.Addr().String(),
		Contexts: h.contexts,
		Now:      h.clock.Now,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	if h.inbound, err = NewInbound(cfg); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(h.inbound.Close)
	return h
}

// token signs a token for aud bound to cert (nil: unbound).
func (h *harness) token(tb testing.TB, aud string, cert *x509.Certificate, mutate func(*token.Claims)) string {
	tb.Helper()
	now := h.clock.Now()
	c := &token.Claims{Issuer: testIssuer, Subject: "alice", Audience: []string{aud}, IssuedAt: now,
		Expiry: now.Add(5 * time.Minute), Scope: "orders:read", Act: &token.Actor{Subject: testCaller}}
	if cert != nil {
		c.Cnf = &token.Confirmation{X5tS256: token.Thumbprint(cert)}
	}
	if mutate != nil {
		mutate(c)
	}
	raw, err := h.signer.Sign(c)
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

// request builds an inbound request as the mTLS server would hand it over.
func (h *harness) request(method, target string, peer *x509.Certificate) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	if peer != nil {
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{peer}}
	}
	ctx := context.WithValue(r.Context(), http.LocalAddrContextKey, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 15006})
	return r.WithContext(ctx)
}

func (h *harness) serve(r *http.Request) *httptest.ResponseRecorder {
	w := httptest.NewRecorder()
	h.inbound.ServeHTTP(w, r)
	return w
}

func (h *harness) lastSeen() *http.Request {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.seen) == 0 {
		return nil
	}
	return h.seen[len(h.seen)-1]
}

func (h *harness) seenCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.seen)
}

// decodeClaimsHeader decodes X-Postern-Claims.
func decodeClaimsHeader(tb testing.TB, v string) map[string]any {
	tb.Helper()
	b, err := base64.RawURLEncoding.DecodeString(v)
	if err != nil {
		tb.Fatalf("X-Postern-Claims is not base64url: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		tb.Fatalf("X-Postern-Claims is not JSON: %v", err)
	}
	return m
}

func decodeProblem(tb testing.TB, body []byte) problem {
	tb.Helper()
	var p problem
	if err := json.Unmarshal(body, &p); err != nil {
		tb.Fatalf("body %q is not a problem: %v", body, err)
	}
	return p
}

// certOf returns the SVID's certificate, nil for no SVID.
func certOf(s *testca.SVID) *x509.Certificate {
	if s == nil {
		return nil
	}
	return s.Cert
}
