package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"postern.dev/postern/internal/policy"
)

// TestUnderscoreSpellingStripped: X-Postern_Claims (which CGI-style servers
// read as X-Postern-Claims) never reaches the application.
func TestUnderscoreSpellingStripped(t *testing.T) {
	h := newHarness(t, nil)
	other := h.ca.SVID(t, testOther)
	r := h.request("GET", "/healthz", other.Cert)
	r.Header["X-Postern_claims"] = []string{"eyJzdWIiOiJhZG1pbiJ9"}
	r.Header["x_postern_context"] = []string{"forged"}
	r.Header["X-POSTERN-Peer"] = []string{"spiffe://evil"}
	if w := h.serve(r); w.Code != http.StatusOK {
		t.Fatalf("status %d", w.Code)
	}
	for k := range h.lastSeen().Header {
		if hasPosternPrefix(k) && k != HeaderPeer {
			t.Errorf("%s reached the app", k)
		}
	}
	if got := h.lastSeen().Header.Get(HeaderPeer); got != testOther {
		t.Errorf("X-Postern-Peer = %q, want the real peer", got)
	}
	for _, k := range []string{"x-postern-a", "X_POSTERN_A", "X-Postern_", "x_postern-claims"} {
		if !hasPosternPrefix(k) {
			t.Errorf("hasPosternPrefix(%q) = false", k)
		}
	}
	for _, k := range []string{"X-Posterns", "X-Postern", "Y-Postern-A", "XPostern-A"} {
		if hasPosternPrefix(k) {
			t.Errorf("hasPosternPrefix(%q) = true", k)
		}
	}
}

// TestRepeatedHeaderPolicy: a header sent twice cannot satisfy or dodge a
// header condition: the DENY rule applies, and the request is refused.
func TestRepeatedHeaderPolicy(t *testing.T) {
	set, err := policy.Parse("p.yaml", []byte(testPolicies+`
---
apiVersion: postern.dev/v1
kind: AuthorizationPolicy
metadata: {name: no-admin-role}
spec:
  action: DENY
  rules: [{when: [{key: "request.headers[x-role]", values: ["admin"]}]}]
`))
	if err != nil {
		t.Fatal(err)
	}
	eng, err := policy.Compile(set, policy.CompileOptions{SelfIssuer: testIssuer})
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, func(c *InboundConfig) { c.Policy = func() *policy.Engine { return eng } })
	caller := h.ca.SVID(t, testCaller)
	good := h.token(t, testSelf, caller.Cert, nil)
	for _, tc := range []struct {
		name   string
		values []string
		want   int
	}{
		{"user", []string{"user"}, http.StatusOK},
		{"admin", []string{"admin"}, http.StatusForbidden},
		{"user then admin", []string{"user", "admin"}, http.StatusForbidden},
		{"user twice", []string{"user", "user"}, http.StatusForbidden},
	} {
		r := h.request("GET", "/orders/1", caller.Cert)
		r.Header.Set("Authorization", "Bearer "+good)
		r.Header["X-Role"] = tc.values
		if w := h.serve(r); w.Code != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, w.Code, tc.want)
		}
	}
	// The same name in two spellings is a repetition too.
	m, rep := headerMap(http.Header{"X-Role": {"user"}, "x-role": {"admin"}, "Accept": {"a"}})
	if _, ok := m["x-role"]; ok || !rep["x-role"] || m["accept"] != "a" {
		t.Errorf("headerMap = %v, repeated %v", m, rep)
	}
}

// TestResponseTrailersStripped: X-Postern-* trailers from the application,
// declared or not, never reach the caller.
func TestResponseTrailersStripped(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "X-Postern-Claims, X-Other")
		w.WriteHeader(http.StatusOK)
		io.WriteString(w, "hi")
		w.Header().Set("X-Postern-Claims", "from-app")
		w.Header().Set("X-Other", "kept")
		w.Header().Set(http.TrailerPrefix+"X-Postern-Peer", "undeclared")
	}))
	defer app.Close()
	h := newHarness(t, func(c *InboundConfig) { c.App = app.Listener.Addr().String() })
	other := h.ca.SVID(t, testOther)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{other.Cert}}
		h.inbound.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), http.LocalAddrContextKey, &net.TCPAddr{Port: 1})))
	}))
	defer front.Close()
	c, err := net.Dial("tcp", front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || resp.Trailer.Get("X-Other") != "kept" {
		t.Fatalf("status %d, trailers %v", resp.StatusCode, resp.Trailer)
	}
	for k := range resp.Trailer {
		if hasPosternPrefix(k) {
			t.Errorf("trailer %s reached the caller", k)
		}
	}
}
