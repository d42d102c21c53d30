package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"postern.dev/postern/internal/attest"
	"postern.dev/postern/internal/server"
	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/testserver"
)

// TestIntegrationFederation runs a partner's bundle endpoint (https_spiffe,
// go-spiffe's handler), the real control plane with a Federation naming it,
// and a real agent, and checks that a go-spiffe client of the agent gets
// the partner's bundle.
func TestIntegrationFederation(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the control plane")
	}
	root := testca.New(t, partnerTD.Name())
	jwtKey := testca.NewKey(t)
	served := spiffebundle.FromX509Authorities(partnerTD, []*x509.Certificate{root.Cert})
	if err := served.AddJWTAuthority("pk1", jwtKey.Public()); err != nil {
		t.Fatal(err)
	}
	h, err := federation.NewHandler(partnerTD, served)
	if err != nil {
		t.Fatal(err)
	}
	ep := httptest.NewUnstartedServer(h)
	ep.TLS = &tls.Config{Certificates: []tls.Certificate{root.SVID(t, "spiffe://partner.example/bundle-server").TLSCertificate()}}
	ep.Config.ErrorLog = log.New(io.Discard, "", 0)
	ep.StartTLS()
	t.Cleanup(ep.Close)

	dir := t.TempDir()
	res := filepath.Join(dir, "resources")
	os.MkdirAll(res, 0o755)
	fed := `---
apiVersion: postern.dev/v1
kind: Federation
metadata: {name: partner}
spec:
  trustDomain: partner.example
  bundleEndpointURL: ` + ep.URL + `/bundle
  profile: https_spiffe
  endpointSPIFFEID: spiffe://partner.example/bundle-server
  bootstrapBundle: |
    ` + strings.ReplaceAll(strings.TrimSpace(string(root.RootPEM())), "\n", "\n    ") + "\n"
	if err := os.WriteFile(filepath.Join(res, "resources.yaml"), []byte(integrationWorkloads+fed), 0o644); err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "server.yaml")
	os.WriteFile(cfgFile, []byte("trustDomain: it.local\nlisten: 127.0.0.1:0\ndataDir: data\nresources: resources\n"), 0o644)
	cfg, err := server.LoadConfig(cfgFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	logger := slog.New(slog.DiscardHandler)
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	srv := testserver.Start(t, cfg, logger)

	tok, err := attest.CreateJoinToken(ctx, srv.Store(), spiffeid.RequireFromString("spiffe://it.local/postern/agent/node1"), 10*time.Minute, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	sockDir := socketDir(t)
	att := &fakeAttestor{}
	att.set(unix("uid:1000"))
	a, err := New(Config{
		ServerURL:      "https://" + srv.Addr().String(),
		BundleFile:     srv.BundlePath(),
		JoinToken:      tok,
		SocketPath:     filepath.Join(sockDir, "agent.sock"),
		PeerAttestor:   att,
		Logger:         logger,
		BundleInterval: 50 * time.Millisecond,
		PollInterval:   10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	agentCtx, stopAgent := context.WithCancel(ctx)
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(agentCtx) }()
	t.Cleanup(func() {
		stopAgent()
		if err := <-agentDone; err != nil {
			t.Errorf("agent: %v", err)
		}
	})
	select {
	case <-a.Ready():
	case err := <-agentDone:
		t.Fatalf("agent: %v", err)
	}
	addr := workloadapi.WithAddr("unix://" + filepath.Join(sockDir, "agent.sock"))
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(addr))
	if err != nil {
		t.Fatalf("X509Source: %v", err)
	}
	defer src.Close()
	if b, err := src.GetX509BundleForTrustDomain(partnerTD); err != nil || !b.HasX509Authority(root.Cert) {
		t.Fatalf("the partner's X.509 bundle did not reach the workload: %v", err)
	}
	jwtSrc, err := workloadapi.NewJWTSource(ctx, workloadapi.WithClientOptions(addr))
	if err != nil {
		t.Fatalf("JWTSource: %v", err)
	}
	defer jwtSrc.Close()
	// The bootstrap bundle has no JWT authority: the fetched one does.
	eventually(t, "the partner's JWT bundle", func() bool {
		b, err := jwtSrc.GetJWTBundleForTrustDomain(partnerTD)
		return err == nil && b.HasJWTAuthority("pk1")
	})
}
