package proxy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/testca"
)

func writeFiles(t *testing.T, dir string, svid *testca.SVID, bundle []byte) {
	t.Helper()
	for name, b := range map[string][]byte{"svid.pem": svid.CertPEM(), "svid.key": svid.KeyPEM(), "bundle.pem": bundle} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFileSource(t *testing.T) {
	ca := testca.New(t, testTD)
	td := spiffeid.RequireTrustDomainFromString(testTD)
	dir := t.TempDir()
	first := ca.SVID(t, testSelf)
	writeFiles(t, dir, first, ca.RootPEM())
	cert, key, bundle := filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.key"), filepath.Join(dir, "bundle.pem")
	src, err := NewFileSource(cert, key, bundle, td)
	if err != nil {
		t.Fatal(err)
	}
	src.SetCheckInterval(time.Millisecond)
	svid, err := src.GetX509SVID()
	if err != nil || svid.ID.String() != testSelf || !svid.Certificates[0].Equal(first.Cert) {
		t.Fatalf("GetX509SVID = %v, %v", svid, err)
	}
	b, err := src.GetX509BundleForTrustDomain(td)
	if err != nil || !b.HasX509Authority(ca.Cert) {
		t.Fatalf("bundle: %v", err)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.org")); err == nil {
		t.Error("bundle for another trust domain")
	}

	// A half-written rotation (new certificate, old key) is ignored.
	second := ca.SVID(t, testSelf)
	if err := os.WriteFile(cert, second.CertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	if changed, err := src.Reload(); changed || err == nil {
		t.Errorf("mismatched key accepted: %v %v", changed, err)
	}
	if svid, _ := src.GetX509SVID(); !svid.Certificates[0].Equal(first.Cert) {
		t.Error("the last good SVID was replaced by a broken one")
	}
	// Completed, it is picked up without an explicit reload.
	if err := os.WriteFile(key, second.KeyPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	if svid, _ := src.GetX509SVID(); !svid.Certificates[0].Equal(second.Cert) {
		t.Error("the rotated SVID was not picked up")
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := src.GetX509SVID(); err == nil {
		t.Error("closed source still serves")
	}
}

func TestNewFileSourceErrors(t *testing.T) {
	ca := testca.New(t, testTD)
	td := spiffeid.RequireTrustDomainFromString(testTD)
	dir := t.TempDir()
	writeFiles(t, dir, ca.SVID(t, testSelf), ca.RootPEM())
	cert, key, bundle := filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid.key"), filepath.Join(dir, "bundle.pem")
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A second root being appended, caught halfway: the first root alone
	// would parse, so the file must be refused as a whole.
	other := testca.New(t, testTD)
	two := append(append([]byte{}, ca.RootPEM()...), other.RootPEM()...)
	truncated := filepath.Join(dir, "truncated.pem")
	if err := os.WriteFile(truncated, two[:len(two)-200], 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name              string
		cert, key, bundle string
		td                spiffeid.TrustDomain
		want              string
	}{
		{"missing file names", "", key, bundle, td, "proxy: file source needs a certificate, a key and a bundle file"},
		{"no trust domain", cert, key, bundle, spiffeid.TrustDomain{}, "proxy: file source needs a trust domain"},
		{"other trust domain", cert, key, bundle, spiffeid.RequireTrustDomainFromString("other.org"), `is for trust domain "test.local", want "other.org"`},
		{"key is not a key", cert, cert, bundle, td, "proxy: file source: SVID"},
		{"empty bundle", cert, key, empty, td, "proxy: file source: bundle"},
		{"missing bundle", cert, key, filepath.Join(dir, "nope"), td, "no such file or directory"},
		{"bundle being written", cert, key, truncated, td, "is not complete PEM"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewFileSource(tc.cert, tc.key, tc.bundle, tc.td)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}
		})
	}
}
