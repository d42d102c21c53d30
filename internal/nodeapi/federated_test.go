package nodeapi

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/testca"
)

func TestFederatedBundles(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	agent := e.client(t, e.svid(t, agentA))
	got, err := agent.FederatedBundles(ctx)
	if err != nil || len(got) != 0 || got == nil {
		t.Fatalf("none federated: %v %v", got, err)
	}

	partner := spiffeid.RequireTrustDomainFromString("partner.example")
	pb := spiffebundle.FromX509Authorities(partner, []*x509.Certificate{testca.New(t, partner.Name()).Cert})
	pb.SetSequenceNumber(9)
	if err := pb.AddJWTAuthority("k1", newKey(t).Public()); err != nil {
		t.Fatal(err)
	}
	other := spiffeid.RequireTrustDomainFromString("other.example")
	ob := spiffebundle.FromX509Authorities(other, []*x509.Certificate{testca.New(t, other.Name()).Cert})
	own := spiffebundle.FromX509Authorities(testTD, []*x509.Certificate{testca.New(t, testTD.Name()).Cert})
	e.fed.Store(&map[spiffeid.TrustDomain]*spiffebundle.Bundle{partner: pb, other: ob, testTD: own})
	got, err = agent.FederatedBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("got %d bundles, want 2 (never our own trust domain)", len(got))
	}
	for td, want := range map[spiffeid.TrustDomain]*spiffebundle.Bundle{partner: pb, other: ob} {
		b, err := spiffebundle.Parse(td, got[td.Name()])
		if err != nil || !b.Equal(want) {
			t.Errorf("%s: %v (%v)", td, b, err)
		}
	}

	_, err = e.client(t, e.svid(t, webID)).FederatedBundles(ctx)
	wantErr(t, err, 403, CodeForbidden)
	_, err = e.client(t, nil).FederatedBundles(ctx)
	wantErr(t, err, 401, CodeUnauthenticated)
	if status, body := e.rawPost(t, http.MethodPost, PathFederatedBundles, "application/json", strings.NewReader("{}")); status != 405 || body.Error != CodeMethodNotAllowed {
		t.Errorf("POST: %d %+v", status, body)
	}
	if strings.Contains(e.audit.String(), `"msg":"nodeapi: issued","op":"federated-bundles"`) {
		t.Error("reading bundles is audited as an issuance")
	}

	// No FederatedBundles at all: an empty map.
	h := e.handlerWith(t, func(c *Config) { c.FederatedBundles = nil })
	r := httptest.NewRequest(http.MethodGet, "https://127.0.0.1"+PathFederatedBundles, nil)
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{e.svid(t, agentA).Leaf}}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code != 200 || strings.TrimSpace(w.Body.String()) != `{"bundles":{}}` {
		t.Errorf("nil FederatedBundles: %d %s", w.Code, w.Body)
	}
}

func TestClientFederatedBundlesChecks(t *testing.T) {
	tests := []struct{ name, body, want string }{
		{"ok", `{"bundles":{"p.example":{"keys":[]}}}`, ""},
		{"not a trust domain name", `{"bundles":{"spiffe://p.example":{"keys":[]}}}`, `"spiffe://p.example" is not a trust domain name`},
		{"not an object", `{"bundles":{"p.example":"x"}}`, "the bundle of p.example is not a JSON object"},
		{"null", `{"bundles":{"p.example":null}}`, "the bundle of p.example is not a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := fakeServer(t, func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(tt.body)) })
			got, err := c.FederatedBundles(context.Background())
			switch {
			case tt.want == "" && (err != nil || string(got["p.example"]) != `{"keys":[]}`):
				t.Errorf("got %q, %v", got, err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("err = %v, want %q", err, tt.want)
			}
		})
	}
}
