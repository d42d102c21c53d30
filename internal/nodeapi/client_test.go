package nodeapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/testca"
)

// The agent's flow: attest without a certificate, then call with the new
// SVID on the same Client.
func TestClientAgentFlow(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var cur atomic.Pointer[tls.Certificate]
	c, err := NewClient(ClientConfig{
		ServerURL: e.srv.URL + "/", Roots: e.pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cur.Load(), nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	key := newKey(t)
	s, err := c.Attest(ctx, MethodJoinToken, e.joinToken(t, agentA), RoleAgent, csrFor(t, key))
	if err != nil {
		t.Fatal(err)
	}
	cur.Store(tlsCert(s.Certificates, key))
	ws, err := c.Workloads(ctx)
	if err != nil {
		t.Fatalf("workloads after attestation: %v", err)
	}
	if len(ws) != 2 { // db and web; mapped has only k8s selectors, which agents do not attest
		t.Errorf("%d workloads", len(ws))
	}
	svids, err := c.X509SVIDs(ctx, []X509SVIDRequest{{SPIFFEID: webID, CSR: csrFor(t, newKey(t))}})
	if err != nil || len(svids) != 1 || svids[0].SPIFFEID != webID {
		t.Fatalf("x509svids: %v %v", svids, err)
	}
	key2 := newKey(t)
	s2, err := c.Renew(ctx, csrFor(t, key2))
	if err != nil || s2.SPIFFEID != agentA {
		t.Fatalf("renew: %v %v", s2, err)
	}
	cur.Store(tlsCert(s2.Certificates, key2))
	if _, _, err := c.JWTSVID(ctx, dbID, []string{"aud"}); err != nil {
		t.Fatalf("jwtsvid with the renewed SVID: %v", err)
	}
}

func TestNewClientConfig(t *testing.T) {
	pool := x509.NewCertPool()
	for _, tc := range []struct {
		name string
		cfg  ClientConfig
	}{
		{"http", ClientConfig{ServerURL: "http://127.0.0.1:8443", Roots: pool}},
		{"no host", ClientConfig{ServerURL: "https://", Roots: pool}},
		{"user info", ClientConfig{ServerURL: "https://u:p@127.0.0.1", Roots: pool}},
		{"query", ClientConfig{ServerURL: "https://127.0.0.1/?x=1", Roots: pool}},
		{"no roots", ClientConfig{ServerURL: "https://127.0.0.1:8443"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := NewClient(tc.cfg); err == nil {
				t.Error("no error")
			}
		})
	}
	c, err := NewClient(ClientConfig{ServerURL: "https://127.0.0.1:8443", HTTPClient: http.DefaultClient})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.SetRoots(pool); err == nil {
		t.Error("SetRoots on a custom HTTP client")
	}
}

func TestClientSetRoots(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c, err := NewClient(ClientConfig{ServerURL: e.srv.URL, Roots: testca.New(t, "example.org").Pool()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	_, err = c.Attest(ctx, MethodJoinToken, e.joinToken(t, agentA), RoleAgent, csrFor(t, newKey(t)))
	var ue *Error
	if err == nil || errors.As(err, &ue) {
		t.Fatalf("untrusted server accepted: %v", err)
	}
	if err := c.SetRoots(e.pool); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Attest(ctx, MethodJoinToken, e.joinToken(t, agentA), RoleAgent, csrFor(t, newKey(t))); err != nil {
		t.Fatal(err)
	}
}

// fakeServer answers every request with fn, over TLS from a test CA.
func fakeServer(t *testing.T, fn http.HandlerFunc) *Client {
	t.Helper()
	return fakeServerWith(t, fn, func(tca *testca.CA) tls.Certificate {
		return tca.ServerSVID(t, "spiffe://example.org/postern/server")
	})
}

// fakeServerWith serves fn with the certificate cert makes.
func fakeServerWith(t *testing.T, fn http.HandlerFunc, cert func(*testca.CA) tls.Certificate) *Client {
	t.Helper()
	tca := testca.New(t, "example.org")
	srv := httptest.NewUnstartedServer(fn)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert(tca)}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c, err := NewClient(ClientConfig{ServerURL: srv.URL, Roots: tca.Pool()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// TestClientPinsServer: a server whose certificate chains to the bundle and
// names the right host is still refused unless it is the postern server's
// SVID: a workload's SVID may carry any DNS name, and join or Kubernetes
// tokens must go to nobody else.
func TestClientPinsServer(t *testing.T) {
	hit := false
	fn := func(w http.ResponseWriter, r *http.Request) { hit = true }
	for name, cert := range map[string]func(*testca.CA) tls.Certificate{
		"plain serving certificate": func(tca *testca.CA) tls.Certificate { return tca.ServerCert(t) },
		"a workload's SVID":         func(tca *testca.CA) tls.Certificate { return tca.ServerSVID(t, "spiffe://example.org/ns/shop/sa/web") },
	} {
		c := fakeServerWith(t, fn, cert)
		_, err := c.Attest(context.Background(), MethodJoinToken, "the-token", RoleAgent, csrFor(t, newKey(t)))
		if err == nil || !strings.Contains(err.Error(), "not the postern server's") {
			t.Errorf("%s: %v", name, err)
		}
	}
	if hit {
		t.Error("a request reached a server that is not the postern server")
	}
}

func TestClientResponses(t *testing.T) {
	ctx := context.Background()
	tca := testca.New(t, "example.org")
	leaf := tca.SVID(t, webID).Cert
	svid := func(id string) string {
		b, _ := json.Marshal(svidBody{SPIFFEID: id, X509SVID: [][]byte{leaf.Raw}, ExpiresAt: leaf.NotAfter.Format(time.RFC3339)})
		return string(b)
	}
	tests := []struct {
		name   string
		status int
		body   string
		call   func(*Client) error
		check  func(*testing.T, error)
	}{
		{"error body", 403, `{"error":"forbidden","error_description":"no"}`, attestCall, func(t *testing.T, err error) {
			if e := wantErr(t, err, 403, CodeForbidden); e.Description != "no" || e.Temporary() {
				t.Errorf("%+v", e)
			}
		}},
		{"non-JSON error", 502, `<html>bad gateway</html>`, attestCall, func(t *testing.T, err error) {
			if e := wantErr(t, err, 502, ""); e.Description != "Bad Gateway" || !e.Temporary() {
				t.Errorf("%+v", e)
			}
		}},
		{"redirect not followed", 307, ``, attestCall, func(t *testing.T, err error) { wantErr(t, err, 307, "") }},
		{"svid names another id", 200, svid(dbID), attestCall, func(t *testing.T, err error) {
			if err == nil || !strings.Contains(err.Error(), "names") {
				t.Errorf("err = %v", err)
			}
		}},
		{"svid ok", 200, svid(webID), attestCall, func(t *testing.T, err error) {
			if err != nil {
				t.Error(err)
			}
		}},
		{"no certificate", 200, `{"spiffe_id":"` + webID + `","x509_svid":[],"expires_at":"2030-01-01T00:00:00Z"}`, attestCall, func(t *testing.T, err error) {
			if err == nil {
				t.Error("accepted")
			}
		}},
		{"malformed JSON", 200, `{`, attestCall, func(t *testing.T, err error) {
			if err == nil || !strings.Contains(err.Error(), "malformed") {
				t.Errorf("err = %v", err)
			}
		}},
		{"x509svids count mismatch", 200, `{"svids":[]}`, func(c *Client) error {
			_, err := c.X509SVIDs(ctx, []X509SVIDRequest{{SPIFFEID: webID, CSR: []byte{1}}})
			return err
		}, func(t *testing.T, err error) {
			if err == nil {
				t.Error("accepted")
			}
		}},
		{"x509svids wrong id", 200, `{"svids":[` + svid(webID) + `]}`, func(c *Client) error {
			_, err := c.X509SVIDs(ctx, []X509SVIDRequest{{SPIFFEID: dbID, CSR: []byte{1}}})
			return err
		}, func(t *testing.T, err error) {
			if err == nil {
				t.Error("accepted")
			}
		}},
		{"jwtsvid malformed", 200, `{"token":"","expires_at":"x"}`, func(c *Client) error {
			_, _, err := c.JWTSVID(ctx, dbID, []string{"a"})
			return err
		}, func(t *testing.T, err error) {
			if err == nil {
				t.Error("accepted")
			}
		}},
		{"bundle", 200, `{"keys":[]}`, func(c *Client) error {
			b, err := c.Bundle(ctx)
			if err == nil && string(b) != `{"keys":[]}` {
				err = errors.New("bundle " + string(b))
			}
			return err
		}, func(t *testing.T, err error) {
			if err != nil {
				t.Error(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := fakeServer(t, func(w http.ResponseWriter, r *http.Request) {
				if tc.status == 307 {
					http.Redirect(w, r, "https://example.com/", 307)
					return
				}
				w.WriteHeader(tc.status)
				_, _ = w.Write([]byte(tc.body))
			})
			tc.check(t, tc.call(c))
		})
	}
}

func attestCall(c *Client) error {
	_, err := c.Attest(context.Background(), MethodJoinToken, "t", RoleAgent, []byte{1})
	return err
}

// With a TrustDomain, the server's SPIFFE ID must be in it too.
func TestClientPinsServerTrustDomain(t *testing.T) {
	tca := testca.New(t, "example.org")
	hit := false
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hit = true }))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{tca.ServerSVID(t, "spiffe://example.org/postern/server")}}
	srv.StartTLS()
	defer srv.Close()
	c, err := NewClient(ClientConfig{ServerURL: srv.URL, Roots: tca.Pool(), TrustDomain: spiffeid.RequireTrustDomainFromString("other.org")})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	_, err = c.Attest(context.Background(), MethodJoinToken, "the-token", RoleAgent, csrFor(t, newKey(t)))
	if err == nil || !strings.Contains(err.Error(), "is for trust domain example.org, not other.org") || hit {
		t.Errorf("err = %v, reached the server: %v", err, hit)
	}
}
