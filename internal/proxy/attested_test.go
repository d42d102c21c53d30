package proxy

import (
	"context"
	"crypto/x509"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/attest"
	"postern.dev/postern/internal/server"
	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/testserver"
)

// TestAttestedSource attests a sidecar directly to a real server with a
// join token for its Workload, renews its SVID, refreshes the bundle, and
// refuses a replayed token.
func TestAttestedSource(t *testing.T) {
	srv := startAttestServer(t)
	td, id := attestTD, attestID
	cfg := joinTokenSource(t, srv, t.TempDir())
	src, err := NewAttestedSource(context.Background(), cfg, td, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatalf("attest: %v", err)
	}
	defer src.Close()
	sv, err := src.GetX509SVID()
	if err != nil || sv.ID != id {
		t.Fatalf("SVID = %v, %v", sv, err)
	}
	if err := src.renew(context.Background()); err != nil {
		t.Fatalf("renew: %v", err)
	}
	sv2, _ := src.GetX509SVID()
	if sv2.ID != id || sv2.Certificates[0].SerialNumber.Cmp(sv.Certificates[0].SerialNumber) == 0 {
		t.Error("renewal did not replace the SVID")
	}
	if err := src.refreshBundle(context.Background()); err != nil {
		t.Fatalf("bundle: %v", err)
	}
	if b, err := src.GetX509BundleForTrustDomain(td); err != nil || len(b.X509Authorities()) == 0 {
		t.Fatalf("bundle = %v, %v", b, err)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.test")); err == nil {
		t.Error("bundle for another trust domain")
	}
	// A join token works once.
	if _, err := NewAttestedSource(context.Background(), cfg, td, nil, nil); err == nil {
		t.Fatal("a replayed join token attested")
	}
	// Config validation.
	c := &Config{}
	c.SPIFFE.Attest = &AttestSource{Server: "http://x", Bundle: ""}
	if err := c.Validate(); err == nil {
		t.Error("bad attest config accepted")
	}
}

// The identity the attested-source tests attest as.
var (
	attestTD = spiffeid.RequireTrustDomainFromString("quickstart.local")
	attestID = spiffeid.RequireFromString("spiffe://quickstart.local/ns/shop/sa/inventory")
)

// joinTokenSource writes a fresh join token for attestID into dir and
// returns the attest configuration that uses it.
func joinTokenSource(t *testing.T, srv *server.Server, dir string) AttestSource {
	t.Helper()
	tok, err := attest.CreateJoinToken(context.Background(), srv.Store(), attestID, 10*time.Minute, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return AttestSource{Server: srv.Issuer(), Bundle: srv.BundlePath(), JoinTokenFile: tokFile}
}

func startAttestServer(t *testing.T) *server.Server {
	t.Helper()
	srv, _ := testserver.Quickstart(t, nil)
	return srv
}

// TestAttestedSourceExpiredAndClose: past its SVID's expiry the source
// presents no certificate (the server answers 401 rather than failing the
// handshake) and a Kubernetes-attested source attests again instead of
// renewing; a Close before Run starts stops it for good.
func TestAttestedSourceExpiredAndClose(t *testing.T) {
	srv := startAttestServer(t)
	dir := t.TempDir()
	now := time.Now()
	clock := func() time.Time { return now }
	src, err := NewAttestedSource(context.Background(), joinTokenSource(t, srv, dir), attestTD, nil, clock)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := src.clientCertificate(nil); len(c.Certificate) == 0 {
		t.Fatal("no certificate presented while the SVID is valid")
	}
	now = src.svid.Load().Certificates[0].NotAfter.Add(time.Second)
	if c, _ := src.clientCertificate(nil); len(c.Certificate) != 0 {
		t.Error("an expired SVID is still presented")
	}
	src.cfg.K8sTokenFile = filepath.Join(dir, "k8s-token") // does not exist
	if err := src.renew(context.Background()); err == nil || !strings.Contains(err.Error(), "k8s-token") {
		t.Errorf("renewal of an expired SVID did not attest again with the Kubernetes token: %v", err)
	}

	// Close before Run: Run returns at once and does nothing.
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { src.Run(context.Background()); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run kept going after Close")
	}
}

// A join token held in memory (what `postern sidecar` moves out of
// POSTERN_JOIN_TOKEN) attests like one in a file.
func TestAttestedSourceJoinTokenInMemory(t *testing.T) {
	srv := startAttestServer(t)
	cfg := joinTokenSource(t, srv, t.TempDir())
	b, err := os.ReadFile(cfg.JoinTokenFile)
	if err != nil {
		t.Fatal(err)
	}
	cfg.JoinTokenFile, cfg.JoinToken = "", string(b)
	src, err := NewAttestedSource(context.Background(), cfg, attestTD, nil, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if got := src.svid.Load().ID; got != attestID {
		t.Errorf("SVID for %s, want %s", got, attestID)
	}
}

// A bundle update without the authority of the SVID the sidecar holds is
// refused (the sidecar would lock itself out); one that still holds it, or
// any update before an SVID, passes.
func TestBundleMustHoldTheSVIDsAuthority(t *testing.T) {
	ca1, ca2 := testca.New(t, "quickstart.local"), testca.New(t, "quickstart.local")
	s := ca1.SVID(t, attestID.String())
	sv := &x509svid.SVID{ID: s.ID, Certificates: []*x509.Certificate{s.Cert}, PrivateKey: s.Key}
	only2 := x509bundle.FromX509Authorities(attestTD, []*x509.Certificate{ca2.Cert})
	both := x509bundle.FromX509Authorities(attestTD, []*x509.Certificate{ca1.Cert, ca2.Cert})
	if err := holdsAuthorityOf(only2, sv); err == nil || !strings.Contains(err.Error(), "keeping the last one") {
		t.Errorf("a bundle without the SVID's root: %v", err)
	}
	if err := holdsAuthorityOf(both, sv); err != nil {
		t.Errorf("a bundle with it: %v", err)
	}
	if err := holdsAuthorityOf(only2, nil); err != nil {
		t.Errorf("before any SVID: %v", err)
	}
}
