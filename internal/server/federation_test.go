package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/nodeapi"
	"postern.dev/postern/internal/store"
	"postern.dev/postern/internal/testca"
)

// TestFederation adds a Federation resource naming a partner's https_spiffe
// bundle endpoint (on 127.0.0.1) and checks that agents get the partner's
// bundle from the node API, and lose it when the resource goes.
func TestFederation(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("partner.example")
	root := testca.New(t, td.Name())
	served := spiffebundle.FromX509Authorities(td, []*x509.Certificate{root.Cert})
	served.SetSequenceNumber(42)
	if err := served.AddJWTAuthority("partner-k1", testca.NewKey(t).Public()); err != nil {
		t.Fatal(err)
	}
	h, err := federation.NewHandler(td, served)
	if err != nil {
		t.Fatal(err)
	}
	ep := httptest.NewUnstartedServer(h)
	ep.TLS = &tls.Config{Certificates: []tls.Certificate{root.SVID(t, "spiffe://partner.example/bundle-server").TLSCertificate()}}
	ep.Config.ErrorLog = log.New(io.Discard, "", 0)
	ep.StartTLS()
	t.Cleanup(ep.Close)

	srv, res := startQuickstart(t)
	agent, leaf := client(t, srv, "spiffe://quickstart.local/postern/agent/node-1")
	// As if it had attested: registered with this certificate.
	if err := srv.Store().PutAgent(context.Background(), store.Agent{SPIFFEID: "spiffe://quickstart.local/postern/agent/node-1", Method: "join_token",
		Serial: leaf.SerialNumber.Text(16), ExpiresAt: leaf.NotAfter}); err != nil {
		t.Fatal(err)
	}
	bundles := func() map[string]json.RawMessage {
		t.Helper()
		resp, err := agent.Get(srv.Issuer() + nodeapi.PathFederatedBundles)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Bundles map[string]json.RawMessage `json:"bundles"`
		}
		if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&out) != nil {
			t.Fatalf("federated-bundles: %d", resp.StatusCode)
		}
		return out.Bundles
	}
	if got := bundles(); len(got) != 0 {
		t.Fatalf("before: %v", got)
	}

	doc := `apiVersion: postern.dev/v1
kind: Federation
metadata: {name: partner}
spec:
  trustDomain: partner.example
  bundleEndpointURL: ` + ep.URL + `/bundle
  profile: https_spiffe
  endpointSPIFFEID: spiffe://partner.example/bundle-server
  bootstrapBundle: |
    ` + strings.ReplaceAll(strings.TrimSpace(string(root.RootPEM())), "\n", "\n    ") + "\n"
	file := filepath.Join(res, "federation.yaml")
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		raw, ok := bundles()["partner.example"]
		if !ok {
			return false
		}
		b, err := spiffebundle.Parse(td, raw)
		return err == nil && b.Equal(served)
	})
	if err := os.Remove(file); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(bundles()) == 0 })
}
