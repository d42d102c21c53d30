package gateway

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"postern.dev/postern/internal/testca"
)

func TestCertFilesReload(t *testing.T) {
	ca := testca.New(t, td)
	dir := t.TempDir()
	certPath, keyPath := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	write := func() *x509.Certificate {
		c := ca.ServerCert(t)
		der, _ := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
		writePEM(t, certPath, "CERTIFICATE", c.Certificate[0])
		writePEM(t, keyPath, "PRIVATE KEY", der)
		return c.Leaf
	}
	first := write()
	clk := newClock()
	cf, err := newCertFiles(certPath, keyPath, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	second := write()
	if got, _ := cf.GetCertificate(nil); !got.Leaf.Equal(first) {
		t.Error("reloaded before the check interval")
	}
	clk.Add(2 * certCheckInterval)
	if got, _ := cf.GetCertificate(nil); !got.Leaf.Equal(second) {
		t.Error("not reloaded after a change")
	}
	if err := os.WriteFile(keyPath, []byte("half-written"), 0o600); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * certCheckInterval)
	if got, _ := cf.GetCertificate(nil); !got.Leaf.Equal(second) {
		t.Error("a broken pair replaced the last good certificate")
	}
	if _, err := newCertFiles(certPath, keyPath, clk.Now); err == nil {
		t.Error("a broken pair loads at start")
	}
}

func TestLimiter(t *testing.T) {
	clk := newClock()
	l := newLimiter(&RateLimitConfig{RequestsPerSecond: 10, Burst: 2, MaxClients: 100}, clk.Now)
	for i, want := range []bool{true, true, false} {
		if ok, _ := l.allow("a"); ok != want {
			t.Fatalf("request %d: allowed %v", i, ok)
		}
	}
	if _, wait := l.allow("a"); wait != 100*time.Millisecond {
		t.Errorf("wait %v, want 100ms", wait)
	}
	clk.Add(100 * time.Millisecond)
	if ok, _ := l.allow("a"); !ok {
		t.Error("not refilled")
	}
	for i := range 1000 {
		l.allow(fmt.Sprintf("client-%d", i))
	}
	if n := l.len(); n > 100 {
		t.Errorf("%d buckets, bound 100", n)
	}
	if retryAfter(100*time.Millisecond) != 1 || retryAfter(1500*time.Millisecond) != 2 {
		t.Error("Retry-After rounding")
	}
}
