package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/attest"
	"postern.dev/postern/internal/nodeapi"
	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/token"
)

// newCSR returns a CSR for a fresh key, and the key as a TLS certificate
// builder.
func newCSR(t *testing.T) ([]byte, func([]*x509.Certificate) *tls.Certificate) {
	t.Helper()
	key := testca.NewKey(t)
	der, err := x509.CreateCertificateRequest(nil, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der, func(certs []*x509.Certificate) *tls.Certificate {
		tc := &tls.Certificate{PrivateKey: key, Leaf: certs[0]}
		for _, c := range certs {
			tc.Certificate = append(tc.Certificate, c.Raw)
		}
		return tc
	}
}

// TestNodeAPI attests an agent with a join token over real HTTPS, then
// fetches a workload's X.509-SVID and a JWT-SVID that the STS accepts as a
// jwt_spiffe client assertion.
func TestNodeAPI(t *testing.T) {
	srv, res := startQuickstart(t)
	// Agents obtain SVIDs only for Workloads a local process can be
	// attested as: give the gateway a selector.
	wl, err := os.ReadFile(filepath.Join(res, "workloads.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	wl = []byte(strings.Replace(string(wl), "  spiffeID: spiffe://quickstart.local/ns/shop/sa/gateway\n",
		"  spiffeID: spiffe://quickstart.local/ns/shop/sa/gateway\n  selectors: [{type: unix, value: \"uid:1000\"}]\n", 1))
	if err := os.WriteFile(filepath.Join(res, "workloads.yaml"), wl, 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		w, ok := srv.watcher.Engine().WorkloadBySPIFFEID(gatewayID)
		return ok && len(w.Selectors) == 1
	})
	ctx := context.Background()
	td := spiffeid.RequireTrustDomainFromString("quickstart.local")
	agentID := spiffeid.RequireFromPath(td, "/postern/agent/node-1")
	tok, err := attest.CreateJoinToken(ctx, srv.Store(), agentID, 10*time.Minute, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	pemBytes, err := os.ReadFile(srv.BundlePath())
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	var cur atomic.Pointer[tls.Certificate]
	c, err := nodeapi.NewClient(nodeapi.ClientConfig{
		ServerURL: srv.Issuer(), Roots: roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cur.Load(), nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()

	csr, cert := newCSR(t)
	s, err := c.Attest(ctx, nodeapi.MethodJoinToken, tok, nodeapi.RoleAgent, csr)
	if err != nil {
		t.Fatalf("attest: %v", err)
	}
	if s.SPIFFEID != agentID.String() {
		t.Fatalf("attested as %s", s.SPIFFEID)
	}
	cur.Store(cert(s.Certificates))
	if _, err := c.Attest(ctx, nodeapi.MethodJoinToken, tok, nodeapi.RoleAgent, csr); err == nil {
		t.Fatal("the join token was accepted twice")
	}

	ws, err := c.Workloads(ctx)
	if err != nil {
		t.Fatalf("workloads: %v", err)
	}
	if !slices.ContainsFunc(ws, func(w nodeapi.WorkloadEntry) bool { return w.SPIFFEID == gatewayID && w.TTL == time.Hour }) {
		t.Errorf("workloads %+v lack the gateway", ws)
	}

	wcsr, _ := newCSR(t)
	svids, err := c.X509SVIDs(ctx, []nodeapi.X509SVIDRequest{{SPIFFEID: gatewayID, CSR: wcsr}})
	if err != nil {
		t.Fatalf("x509svids: %v", err)
	}
	if id, _, err := x509svid.Verify(svids[0].Certificates, srv.CA().X509Bundle()); err != nil || id.String() != gatewayID {
		t.Fatalf("workload SVID: %v %v", id, err)
	}

	b, err := c.Bundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := spiffebundle.Parse(td, b)
	if err != nil || len(bundle.X509Authorities()) == 0 || len(bundle.JWTAuthorities()) == 0 {
		t.Fatalf("bundle: %v", err)
	}

	// The JWT-SVID authenticates the gateway at the token endpoint.
	anon, _ := client(t, srv, "")
	assertion := func(aud string) tokenResult {
		t.Helper()
		jwt, _, err := c.JWTSVID(ctx, gatewayID, []string{aud})
		if err != nil {
			t.Fatalf("jwtsvid: %v", err)
		}
		resp, err := anon.PostForm(srv.Issuer()+"/oauth2/token", url.Values{
			"grant_type":            {"urn:ietf:params:oauth:grant-type:token-exchange"},
			"subject_token":         {userToken(t, "alice", "orders:read")},
			"subject_token_type":    {jwtType},
			"audience":              {ordersID},
			"client_assertion_type": {"urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"},
			"client_assertion":      {jwt},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		out := tokenResult{status: resp.StatusCode}
		_ = json.NewDecoder(resp.Body).Decode(&out.body)
		return out
	}
	if r := assertion(srv.Issuer() + "/oauth2/token"); r.status != http.StatusOK {
		t.Fatalf("exchange with a JWT-SVID assertion: %d %v", r.status, r.body)
	}
	if r := assertion("https://elsewhere.example"); r.status != http.StatusUnauthorized || r.body["error"] != "invalid_client" {
		t.Errorf("assertion for another audience: %d %v", r.status, r.body)
	}

	// A workload's own SVID is not an agent's.
	gw, _ := client(t, srv, gatewayID)
	resp, err := gw.Get(srv.Issuer() + nodeapi.PathWorkloads)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("workload listing as a workload: %d", resp.StatusCode)
	}
}

func TestAttestationConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		k8s  K8sAttestationConfig
		ok   bool
	}{
		{"off", K8sAttestationConfig{}, true},
		{"on", K8sAttestationConfig{Issuer: "https://k8s.example", Audience: "postern"}, true},
		{"no audience", K8sAttestationConfig{Issuer: "https://k8s.example"}, false},
		{"no issuer", K8sAttestationConfig{Audience: "postern", JWKSFile: "jwks.json"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := &Config{TrustDomain: "example.test", Attestation: AttestationConfig{K8s: tc.k8s}}
			if err := c.setDefaults(); (err == nil) != tc.ok {
				t.Errorf("setDefaults = %v", err)
			}
		})
	}
}

// TestNodeAPIKubernetes configures PSAT attestation with a JWKS file and
// attests an agent and a workload with pod tokens signed by a test cluster
// key.
func TestNodeAPIKubernetes(t *testing.T) {
	dir := t.TempDir()
	key := testca.NewKey(t)
	jwks, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key.Public(), KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	if err := os.WriteFile(filepath.Join(dir, "jwks.json"), jwks, 0o644); err != nil {
		t.Fatal(err)
	}
	const issuer = "https://kubernetes.default.svc"
	srv := startQuickstartWith(t, func(c *Config) {
		c.Attestation.K8s = K8sAttestationConfig{Issuer: issuer, Audience: "postern", JWKSFile: filepath.Join(dir, "jwks.json"),
			AgentServiceAccounts: []string{"postern:agent"}}
	})
	signer, err := token.NewSigner("k1", jose.ES256, key, "")
	if err != nil {
		t.Fatal(err)
	}
	psat := func(ns, sa, aud string) string {
		now := time.Now()
		raw, err := signer.Sign(&token.Claims{
			Issuer: issuer, Subject: "system:serviceaccount:" + ns + ":" + sa, Audience: []string{aud},
			IssuedAt: now, Expiry: now.Add(time.Hour), NotBefore: now,
			Extra: map[string]any{"kubernetes.io": map[string]any{
				"namespace":      ns,
				"serviceaccount": map[string]any{"name": sa, "uid": "5a0b8e1c-0000-4000-8000-000000000001"},
				"pod":            map[string]any{"name": sa + "-pod", "uid": "5a0b8e1c-0000-4000-8000-000000000002"},
				"node":           map[string]any{"name": "node-7", "uid": "5a0b8e1c-0000-4000-8000-000000000003"},
			}},
		})
		if err != nil {
			t.Fatal(err)
		}
		return raw
	}
	roots := x509.NewCertPool()
	pemBytes, _ := os.ReadFile(srv.BundlePath())
	roots.AppendCertsFromPEM(pemBytes)
	c, err := nodeapi.NewClient(nodeapi.ClientConfig{ServerURL: srv.Issuer(), Roots: roots})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseIdleConnections()
	ctx := context.Background()
	csr, _ := newCSR(t)
	s, err := c.Attest(ctx, nodeapi.MethodK8sPSAT, psat("postern", "agent", "postern"), nodeapi.RoleAgent, csr)
	if err != nil || s.SPIFFEID != "spiffe://quickstart.local/postern/agent/k8s/postern/agent/node-7" {
		t.Fatalf("agent: %v %v", s, err)
	}
	// Any pod can get a token for the audience: only a listed service
	// account's pods become agents.
	_, err = c.Attest(ctx, nodeapi.MethodK8sPSAT, psat("shop", "gateway", "postern"), nodeapi.RoleAgent, csr)
	var fe *nodeapi.Error
	if !errors.As(err, &fe) || fe.Status != http.StatusForbidden {
		t.Errorf("an unlisted service account attested as an agent: %v", err)
	}
	s, err = c.Attest(ctx, nodeapi.MethodK8sPSAT, psat("shop", "gateway", "postern"), nodeapi.RoleWorkload, csr)
	if err != nil || s.SPIFFEID != gatewayID {
		t.Fatalf("workload: %v %v", s, err)
	}
	_, err = c.Attest(ctx, nodeapi.MethodK8sPSAT, psat("shop", "gateway", "kubernetes"), nodeapi.RoleWorkload, csr)
	var ne *nodeapi.Error
	if !errors.As(err, &ne) || ne.Status != http.StatusUnauthorized {
		t.Errorf("token for another audience: %v", err)
	}
}

// startQuickstartWith is startQuickstart with a changed configuration.
func startQuickstartWith(t *testing.T, mut func(*Config)) *Server {
	t.Helper()
	cfg, err := LoadConfig("../../examples/quickstart/server.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Resources, _ = filepath.Abs("../../examples/quickstart/resources")
	mut(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		cancel()
		t.Fatalf("server: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return srv
}
