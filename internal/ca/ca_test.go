package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestNewConfigErrors(t *testing.T) {
	st, se := newFakeStore(), newSealer(t)
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no trust domain", Config{Store: st, Sealer: se}, "ca: config: trust domain is required"},
		{"no store", Config{TrustDomain: testTD, Sealer: se}, "ca: config: store is required"},
		{"no sealer", Config{TrustDomain: testTD, Store: st}, "ca: config: sealer is required"},
		{"upstream cert only", Config{TrustDomain: testTD, Store: st, Sealer: se, UpstreamCert: "x.pem"}, "ca: config: upstream certificate and key go together"},
		{"negative ttl", Config{TrustDomain: testTD, Store: st, Sealer: se, SVIDTTL: -time.Second}, "ca: config: negative duration"},
		{"tiny ca ttl", Config{TrustDomain: testTD, Store: st, Sealer: se, CATTL: time.Minute}, "ca: config: CA TTL 1m0s is too short"},
		{"store down", Config{TrustDomain: testTD, Store: &fakeStore{fail: errors.New("down")}, Sealer: se}, "ca: read authorities: down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := New(context.Background(), tt.cfg)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestFirstRoot(t *testing.T) {
	e := newEnv(t)
	roots := e.ca.X509Authorities()
	if len(roots) != 1 {
		t.Fatalf("roots = %d, want 1", len(roots))
	}
	r := roots[0]
	if !r.IsCA || !r.BasicConstraintsValid || r.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("root constraints: IsCA=%v KU=%v", r.IsCA, r.KeyUsage)
	}
	if _, ok := r.PublicKey.(*ecdsa.PublicKey); !ok || r.PublicKey.(*ecdsa.PublicKey).Curve.Params().Name != "P-256" {
		t.Errorf("root key %T, want ECDSA P-256", r.PublicKey)
	}
	if got, want := r.NotAfter, t0.Add(DefaultCATTL); !got.Equal(want) {
		t.Errorf("NotAfter = %v, want %v", got, want)
	}
	if got, want := r.NotBefore, t0.Add(-time.Minute); !got.Equal(want) {
		t.Errorf("NotBefore = %v, want %v", got, want)
	}
	id := hex.EncodeToString(r.SubjectKeyId)
	if r.Subject.CommonName != "example.org root" || !slices.Equal(r.Subject.Organization, []string{"Postern"}) || r.Subject.SerialNumber != id {
		t.Errorf("subject = %v", r.Subject)
	}
	if len(r.URIs) != 1 || r.URIs[0].String() != "spiffe://example.org" {
		t.Errorf("root URIs = %v", r.URIs)
	}
	rec, ok := e.store.get(id)
	if !ok {
		t.Fatalf("authority %s not stored", id)
	}
	if rec.KEKID != "test-kek" || !bytes.Equal(rec.CertDER, r.Raw) || !rec.ActivateAt.Equal(t0) {
		t.Errorf("stored record = %+v", rec)
	}
	// The key is sealed: not plaintext PKCS #8, and bound to the id.
	if _, err := x509.ParsePKCS8PrivateKey(rec.Sealed); err == nil {
		t.Error("stored key is plaintext")
	}
	if _, err := e.sealer.Open(rec.Sealed, sealAD("other")); err == nil {
		t.Error("sealed key opens under another authority id")
	}
	p8, err := e.sealer.Open(rec.Sealed, sealAD(id))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if _, err := x509.ParsePKCS8PrivateKey(p8); err != nil {
		t.Fatalf("sealed key is not PKCS #8: %v", err)
	}
}

func TestIssueX509SVIDSpec(t *testing.T) {
	e := newEnv(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		req    X509SVIDRequest
		wantKU x509.KeyUsage
		wantNA time.Time
	}{
		{"ecdsa default ttl", X509SVIDRequest{PublicKey: p256(t).Public()}, x509.KeyUsageDigitalSignature, t0.Add(time.Hour)},
		{"rsa adds keyEncipherment", X509SVIDRequest{PublicKey: rsaKey.Public(), TTL: 10 * time.Minute}, x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment, t0.Add(10 * time.Minute)},
		{"ed25519 negative ttl", X509SVIDRequest{PublicKey: edPub, TTL: -1}, x509.KeyUsageDigitalSignature, t0.Add(time.Hour)},
		{"dns names", X509SVIDRequest{PublicKey: p256(t).Public(), DNSNames: []string{"api.example.org", "*.api.example.org"}}, x509.KeyUsageDigitalSignature, t0.Add(time.Hour)},
	}
	root := e.ca.X509Authorities()[0]
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.req.ID = mustID(t, "/ns/shop/sa/cart")
			svid, err := e.ca.IssueX509SVID(context.Background(), tt.req)
			if err != nil {
				t.Fatalf("issue: %v", err)
			}
			if len(svid.Certificates) != 1 {
				t.Fatalf("chain length %d, want 1 (root not included)", len(svid.Certificates))
			}
			leaf := svid.Certificates[0]
			id, chains, err := x509svid.Verify(svid.Certificates, e.ca.X509Bundle(), x509svid.WithTime(t0))
			if err != nil {
				t.Fatalf("verify: %v", err)
			}
			if id != tt.req.ID || len(chains) != 1 || !chains[0][1].Equal(root) {
				t.Errorf("verified id %v chains %d", id, len(chains))
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://example.org/ns/shop/sa/cart" {
				t.Errorf("URIs = %v", leaf.URIs)
			}
			if !slices.Equal(leaf.DNSNames, tt.req.DNSNames) || len(leaf.IPAddresses) != 0 || len(leaf.EmailAddresses) != 0 {
				t.Errorf("other SANs: dns=%v ip=%v email=%v", leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses)
			}
			if leaf.IsCA || !leaf.BasicConstraintsValid {
				t.Errorf("IsCA=%v BasicConstraintsValid=%v", leaf.IsCA, leaf.BasicConstraintsValid)
			}
			if leaf.KeyUsage != tt.wantKU {
				t.Errorf("KeyUsage = %v, want %v", leaf.KeyUsage, tt.wantKU)
			}
			if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) || len(leaf.UnknownExtKeyUsage) != 0 {
				t.Errorf("ExtKeyUsage = %v", leaf.ExtKeyUsage)
			}
			if !leaf.NotBefore.Equal(t0.Add(-time.Minute)) || !leaf.NotAfter.Equal(tt.wantNA) || !svid.NotAfter.Equal(tt.wantNA) {
				t.Errorf("validity %v..%v, want %v..%v", leaf.NotBefore, leaf.NotAfter, t0.Add(-time.Minute), tt.wantNA)
			}
			if len(leaf.SubjectKeyId) != 20 || !bytes.Equal(leaf.AuthorityKeyId, root.SubjectKeyId) {
				t.Errorf("SKID %x AKID %x (root %x)", leaf.SubjectKeyId, leaf.AuthorityKeyId, root.SubjectKeyId)
			}
			if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 {
				t.Errorf("serial %v", leaf.SerialNumber)
			}
			if !slices.Equal(leaf.Subject.Organization, []string{"SPIFFE"}) || leaf.Subject.CommonName != "" {
				t.Errorf("subject %v", leaf.Subject)
			}
		})
	}
}

func TestSVIDLifetimeClampedToCA(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.CATTL = 2 * time.Hour })
	root := e.ca.X509Authorities()[0]
	e.clock.Add(time.Hour + 50*time.Minute) // Run not called: still the same root
	svid, err := e.ca.IssueX509SVID(context.Background(), X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t).Public(), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !svid.NotAfter.Equal(root.NotAfter) {
		t.Fatalf("NotAfter = %v, want the root's %v", svid.NotAfter, root.NotAfter)
	}
	e.clock.Add(11 * time.Minute) // past the root: nothing may sign
	_, err = e.ca.IssueX509SVID(context.Background(), X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t).Public()})
	if want := "ca: issue: no authority can sign"; err == nil || err.Error() != want || !errors.Is(err, ErrNoAuthority) {
		t.Fatalf("err = %v, want %q", err, want)
	}
}

func TestIssueX509SVIDRefused(t *testing.T) {
	e := newEnv(t)
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	other := spiffeid.RequireFromString("spiffe://other.org/a")
	tests := []struct {
		name string
		req  X509SVIDRequest
		want string
	}{
		{"zero id", X509SVIDRequest{PublicKey: p256(t).Public()}, "ca: issue: empty SPIFFE ID"},
		{"other trust domain", X509SVIDRequest{ID: other, PublicKey: p256(t).Public()}, `ca: issue: SPIFFE ID "spiffe://other.org/a" is not in trust domain "example.org"`},
		{"weak rsa", X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: weak.Public()}, "ca: issue: weak or unsupported key: RSA key of 1024 bits (want 2048 to 8192)"},
		{"no key", X509SVIDRequest{ID: mustID(t, "/a")}, "ca: issue: weak or unsupported key: no public key"},
		{"private key", X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t)}, "ca: issue: weak or unsupported key: key type *ecdsa.PrivateKey"},
		{"bad dns", X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t).Public(), DNSNames: []string{"a b"}}, `ca: issue: invalid DNS name "a b"`},
		{"empty dns", X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t).Public(), DNSNames: []string{""}}, `ca: issue: invalid DNS name ""`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.ca.IssueX509SVID(context.Background(), tt.req)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}

func TestSignCSRIgnoresRequestedIdentity(t *testing.T) {
	e := newEnv(t)
	key := p256(t)
	csr := csrFor(t, key, "admin", []string{"spiffe://example.org/admin", "spiffe://other.org/x"}, []string{"evil.example.com"})
	id := mustID(t, "/ns/shop/sa/cart")
	svid, err := e.ca.SignCSR(context.Background(), csr, id, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf := svid.Certificates[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() || len(leaf.DNSNames) != 0 || leaf.Subject.CommonName != "" {
		t.Fatalf("leaf carries requested identity: uris=%v dns=%v subject=%v", leaf.URIs, leaf.DNSNames, leaf.Subject)
	}
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Fatal("leaf key is not the CSR's key")
	}
	if _, err := e.ca.SignCSR(context.Background(), []byte("junk"), id, 0, nil); err == nil || !strings.HasPrefix(err.Error(), "ca: csr: malformed: ") {
		t.Fatalf("junk CSR: err = %v", err)
	}
}

func TestForcedRotationOverlap(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	oldRoot := e.ca.X509Authorities()[0]
	before, err := e.ca.IssueX509SVID(ctx, X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t).Public()})
	if err != nil {
		t.Fatal(err)
	}
	e.clock.Add(30 * time.Minute)
	if err := e.ca.Rotate(ctx); err != nil {
		t.Fatalf("Rotate: %v", err)
	}
	roots := e.ca.X509Authorities()
	if len(roots) != 2 || !roots[1].Equal(oldRoot) || roots[0].Equal(oldRoot) {
		t.Fatalf("after rotate: %d roots, want new first then old", len(roots))
	}
	after, err := e.ca.IssueX509SVID(ctx, X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t).Public()})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(after.Certificates[0].AuthorityKeyId, roots[0].SubjectKeyId) {
		t.Fatal("SVID after rotation not signed by the new root")
	}
	for name, s := range map[string]*X509SVID{"before": before, "after": after} {
		if _, _, err := x509svid.Verify(s.Certificates, e.ca.X509Bundle(), x509svid.WithTime(e.clock.Now())); err != nil {
			t.Errorf("SVID issued %s rotation does not verify: %v", name, err)
		}
	}
	rec, _ := e.store.get(hex.EncodeToString(oldRoot.SubjectKeyId))
	if !rec.RetireAt.Equal(e.clock.Now()) || !rec.ExpireAt.Equal(oldRoot.NotAfter) {
		t.Errorf("old record RetireAt=%v ExpireAt=%v", rec.RetireAt, rec.ExpireAt)
	}
	// The old root stays until its own expiry, then leaves the bundle.
	e.clock.Add(oldRoot.NotAfter.Add(-time.Minute).Sub(e.clock.Now()))
	if err := e.ca.maintain(ctx); err != nil {
		t.Fatal(err)
	}
	// (By now the new root passed half-life, so a next root is published too.)
	if got := e.ca.X509Authorities(); len(got) != 3 || !slices.ContainsFunc(got, oldRoot.Equal) {
		t.Fatalf("just before old root expiry: %d roots, want 3 with the old one", len(got))
	}
	e.clock.Add(2 * time.Minute)
	if err := e.ca.maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.ca.X509Authorities(); len(got) != 2 || slices.ContainsFunc(got, oldRoot.Equal) {
		t.Fatalf("after old root expiry: %d roots", len(got))
	}
}

func TestScheduledRotation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	first := e.ca.X509Authorities()[0]
	issuer := func() []byte {
		t.Helper()
		s, err := e.ca.IssueX509SVID(ctx, X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t).Public()})
		if err != nil {
			t.Fatal(err)
		}
		return s.Certificates[0].AuthorityKeyId
	}
	step := func(d time.Duration) {
		t.Helper()
		e.clock.Add(d)
		if err := e.ca.maintain(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var seqs []uint64
	seq := func() {
		b, err := e.ca.SPIFFEBundle(nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, parseBundle(t, b).seq)
	}
	seq()
	step(14 * 24 * time.Hour) // before half-life: nothing
	if n := len(e.ca.X509Authorities()); n != 1 || e.store.len() != 1 {
		t.Fatalf("day 14: %d roots", n)
	}
	step(24 * time.Hour) // day 15: next root prepared and published, not signing
	roots := e.ca.X509Authorities()
	if len(roots) != 2 || !roots[0].Equal(first) {
		t.Fatalf("day 15: %d roots, current first", len(roots))
	}
	next := roots[1]
	if !bytes.Equal(issuer(), first.SubjectKeyId) {
		t.Fatal("day 15: next root signs already")
	}
	nextRec, _ := e.store.get(hex.EncodeToString(next.SubjectKeyId))
	if want := first.NotBefore.Add(first.NotAfter.Sub(first.NotBefore) * 2 / 3).Truncate(time.Second); !nextRec.ActivateAt.Equal(want) {
		t.Fatalf("next activates %v, want %v", nextRec.ActivateAt, want)
	}
	seq()
	step(5 * 24 * time.Hour) // day 20: next signs, old retired and still published
	if !bytes.Equal(issuer(), next.SubjectKeyId) {
		t.Fatal("day 20: next root does not sign")
	}
	if roots := e.ca.X509Authorities(); len(roots) != 2 || !roots[0].Equal(next) {
		t.Fatalf("day 20: roots %d", len(roots))
	}
	oldRec, _ := e.store.get(hex.EncodeToString(first.SubjectKeyId))
	if oldRec.RetireAt.IsZero() || !oldRec.ExpireAt.Equal(first.NotAfter) {
		t.Fatalf("old record not retired: %+v", oldRec)
	}
	seq()
	step(10*24*time.Hour + time.Minute) // day 30: first root expired
	if roots := e.ca.X509Authorities(); len(roots) != 2 || roots[0].Equal(first) || roots[1].Equal(first) {
		t.Fatalf("day 30: %d roots, first must be gone", len(roots))
	}
	seq()
	for i := 1; i < len(seqs); i++ {
		if seqs[i] <= seqs[i-1] {
			t.Fatalf("spiffe_sequence not increasing: %v", seqs)
		}
	}
	// Over a long run the store stays small and signing never stops.
	for range 200 {
		step(24 * time.Hour)
		issuer()
		seq()
	}
	if n := e.store.len(); n > 5 {
		t.Fatalf("store holds %d authorities after 200 days", n)
	}
	for i := 1; i < len(seqs); i++ {
		if seqs[i] < seqs[i-1] {
			t.Fatalf("spiffe_sequence went back at %d: %v", i, seqs[i-1:i+1])
		}
	}
}

func TestPersistenceAcrossNew(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	svid, err := e.ca.IssueX509SVID(ctx, X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t).Public()})
	if err != nil {
		t.Fatal(err)
	}
	second := e.replica(t)
	if !slices.EqualFunc(second.X509Authorities(), e.ca.X509Authorities(), (*x509.Certificate).Equal) {
		t.Fatal("second instance has other roots")
	}
	if e.store.len() != 1 {
		t.Fatalf("store has %d authorities, want 1", e.store.len())
	}
	if _, _, err := x509svid.Verify(svid.Certificates, second.X509Bundle(), x509svid.WithTime(t0)); err != nil {
		t.Fatal(err)
	}
	s2, err := second.IssueX509SVID(ctx, X509SVIDRequest{ID: mustID(t, "/b"), PublicKey: p256(t).Public()})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s2.Certificates[0].AuthorityKeyId, svid.Certificates[0].AuthorityKeyId) {
		t.Fatal("second instance signs with another root")
	}

	// Another KEK cannot open the keys: New fails closed.
	cfg := e.cfg
	cfg.Sealer = newSealer(t)
	_, err = New(ctx, cfg)
	if err == nil || !strings.HasPrefix(err.Error(), "ca: authority ") || !strings.Contains(err.Error(), `open key (kek "test-kek")`) {
		t.Fatalf("wrong KEK: err = %v", err)
	}
}

func TestReplicaRefresh(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	b := e.replica(t)
	e.clock.Add(time.Second)
	if err := e.ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	if len(b.X509Authorities()) != 1 {
		t.Fatal("replica changed before refresh")
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if !slices.EqualFunc(b.X509Authorities(), e.ca.X509Authorities(), (*x509.Certificate).Equal) {
		t.Fatal("replica bundle differs after refresh")
	}
	s, err := b.IssueX509SVID(ctx, X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t).Public()})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(s.Certificates[0].AuthorityKeyId, e.ca.X509Authorities()[0].SubjectKeyId) {
		t.Fatal("replica does not sign with the rotated root")
	}
	// Store down: Refresh fails and the last good state stays.
	e.store.setFail(errors.New("db down"))
	if err := b.Refresh(ctx); err == nil || err.Error() != "ca: read authorities: db down" {
		t.Fatalf("Refresh err = %v", err)
	}
	if len(b.X509Authorities()) != 2 {
		t.Fatal("last good bundle lost")
	}
	if _, err := b.IssueX509SVID(ctx, X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t).Public()}); err != nil {
		t.Fatalf("issuance stopped while the store is down: %v", err)
	}
	if err := b.Rotate(ctx); err == nil || err.Error() != "ca: rotate: ca: read authorities: db down" {
		t.Fatalf("Rotate err = %v", err)
	}
}

func TestConcurrentIssueAndRotate(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 4 {
		wg.Go(func() {
			for range 20 {
				s, err := e.ca.IssueX509SVID(ctx, X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t).Public()})
				if err != nil {
					errs <- err
					return
				}
				if _, _, err := x509svid.Verify(s.Certificates, e.ca, x509svid.WithTime(e.clock.Now())); err != nil {
					errs <- err
					return
				}
				_ = e.ca.BundlePEM()
			}
		})
	}
	wg.Go(func() {
		for range 5 {
			e.clock.Add(time.Second)
			if err := e.ca.Rotate(ctx); err != nil {
				errs <- err
			}
			if err := e.ca.Refresh(ctx); err != nil {
				errs <- err
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func writePEM(t *testing.T, path string, blocks ...*pem.Block) string {
	t.Helper()
	var b []byte
	for _, blk := range blocks {
		b = append(b, pem.EncodeToMemory(blk)...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func keyBlock(t *testing.T, k any) *pem.Block {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return &pem.Block{Type: "PRIVATE KEY", Bytes: der}
}

func TestUpstreamImport(t *testing.T) {
	pki := newTestPKI(t, t0, 90*24*time.Hour)
	dir := t.TempDir()
	certFile := writePEM(t, filepath.Join(dir, "ca.pem"),
		&pem.Block{Type: "CERTIFICATE", Bytes: pki.inter.Raw}, &pem.Block{Type: "CERTIFICATE", Bytes: pki.root.Raw})
	keyFile := writePEM(t, filepath.Join(dir, "ca.key"), keyBlock(t, pki.interKey))
	e := newEnv(t, func(c *Config) { c.UpstreamCert, c.UpstreamKey = certFile, keyFile })
	ctx := context.Background()

	if roots := e.ca.X509Authorities(); len(roots) != 1 || !roots[0].Equal(pki.root) {
		t.Fatalf("bundle = %d certs, want the organisation root", len(roots))
	}
	svid, err := e.ca.IssueX509SVID(ctx, X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t).Public(), TTL: 10000 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if len(svid.Certificates) != 2 || !svid.Certificates[1].Equal(pki.inter) {
		t.Fatalf("chain = %d certs, want leaf and intermediate", len(svid.Certificates))
	}
	if !svid.NotAfter.Equal(pki.inter.NotAfter) {
		t.Errorf("NotAfter %v not clamped to the intermediate's %v", svid.NotAfter, pki.inter.NotAfter)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, e.ca.X509Bundle(), x509svid.WithTime(t0)); err != nil {
		t.Fatal(err)
	}
	rec, ok := e.store.get(hex.EncodeToString(pki.inter.SubjectKeyId))
	if !ok || len(rec.ChainDER) != 1 || !bytes.Equal(rec.ChainDER[0], pki.root.Raw) {
		t.Fatalf("stored upstream record = %+v", rec)
	}
	if err := e.ca.Rotate(ctx); err == nil || err.Error() != "ca: rotate: the upstream authority is managed outside postern; replace its files and restart" {
		t.Fatalf("Rotate err = %v", err)
	}
	// Run never creates roots in upstream mode, even past half-life.
	e.clock.Add(60 * 24 * time.Hour)
	if err := e.ca.maintain(ctx); err != nil {
		t.Fatal(err)
	}
	if e.store.len() != 1 {
		t.Fatalf("store has %d authorities in upstream mode", e.store.len())
	}
	// A restart with the same files keeps the same record.
	if again := e.replica(t); !slices.EqualFunc(again.X509Authorities(), e.ca.X509Authorities(), (*x509.Certificate).Equal) {
		t.Fatal("restart changed the bundle")
	}
}

func TestSwitchToUpstreamKeepsOldRoot(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	old, err := e.ca.IssueX509SVID(ctx, X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t).Public()})
	if err != nil {
		t.Fatal(err)
	}
	pki := newTestPKI(t, t0, 90*24*time.Hour)
	dir := t.TempDir()
	cfg := e.cfg
	cfg.UpstreamCert = writePEM(t, filepath.Join(dir, "ca.pem"), &pem.Block{Type: "CERTIFICATE", Bytes: pki.inter.Raw}, &pem.Block{Type: "CERTIFICATE", Bytes: pki.root.Raw})
	cfg.UpstreamKey = writePEM(t, filepath.Join(dir, "ca.key"), &pem.Block{Type: "EC PRIVATE KEY", Bytes: mustSEC1(t, pki.interKey)})
	e.clock.Add(time.Minute)
	up, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(up.X509Authorities()); n != 2 {
		t.Fatalf("bundle has %d roots, want the old root and the organisation root", n)
	}
	if _, _, err := x509svid.Verify(old.Certificates, up.X509Bundle(), x509svid.WithTime(e.clock.Now())); err != nil {
		t.Fatalf("SVID from the old root: %v", err)
	}
	s, err := up.IssueX509SVID(ctx, X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t).Public()})
	if err != nil {
		t.Fatal(err)
	}
	if !s.Certificates[1].Equal(pki.inter) {
		t.Fatal("not signed by the upstream intermediate")
	}
}

func mustSEC1(t *testing.T, k *ecdsa.PrivateKey) []byte {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestUpstreamImportErrors(t *testing.T) {
	pki := newTestPKI(t, t0, 90*24*time.Hour)
	expired := newTestPKI(t, t0.Add(-48*time.Hour), time.Hour)
	other := newTestPKI(t, t0, 90*24*time.Hour)
	leafTmpl := &x509.Certificate{SerialNumber: pki.inter.SerialNumber, NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(time.Hour)}
	leafDER, err := x509.CreateCertificate(rand.Reader, leafTmpl, pki.root, pki.interKey.Public(), pki.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	constrainedTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(3), Subject: pkix.Name{CommonName: "Constrained"},
		NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
		PermittedURIDomains: []string{"other.org"},
	}
	constrainedDER, err := x509.CreateCertificate(rand.Reader, constrainedTmpl, pki.root, pki.interKey.Public(), pki.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	cert := func(xs ...[]byte) []*pem.Block {
		var out []*pem.Block
		for _, x := range xs {
			out = append(out, &pem.Block{Type: "CERTIFICATE", Bytes: x})
		}
		return out
	}
	tests := []struct {
		name  string
		certs []*pem.Block
		key   *pem.Block
		want  string
	}{
		{"key mismatch", cert(pki.inter.Raw), keyBlock(t, other.interKey), "ca: upstream key: private key does not match the certificate"},
		{"not a CA", cert(leafDER), keyBlock(t, pki.interKey), "ca: upstream certificate: not a CA"},
		{"expired", cert(expired.inter.Raw), keyBlock(t, expired.interKey), "ca: upstream certificate: not valid now (valid 2026-02-27T11:00:00Z to 2026-02-27T13:00:00Z)"},
		{"wrong chain", cert(pki.inter.Raw, other.root.Raw), keyBlock(t, pki.interKey), "ca: upstream chain does not verify: x509: certificate signed by unknown authority (possibly because of \"x509: ECDSA verification failure\" while trying to verify candidate authority certificate \"Org Root\")"},
		{"name constraints exclude the trust domain", cert(constrainedDER, pki.root.Raw), keyBlock(t, pki.interKey), "ca: upstream authority cannot issue SVIDs for example.org: x509svid: could not verify leaf certificate: x509: a root or intermediate certificate is not authorized to sign for this name: URI \"spiffe://example.org/postern/server\" is not permitted by any constraint"},
		{"no certificate", nil, keyBlock(t, pki.interKey), "ca: upstream certificate: no CERTIFICATE block"},
		{"no key", cert(pki.inter.Raw), &pem.Block{Type: "CERTIFICATE", Bytes: pki.inter.Raw}, "ca: upstream key: no private key block"},
		{"encrypted key", cert(pki.inter.Raw), &pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: []byte{1}}, "ca: upstream key: encrypted private keys are not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := Config{
				TrustDomain: testTD, Store: newFakeStore(), Sealer: newSealer(t), Now: newClock().Now,
				UpstreamCert: writePEM(t, filepath.Join(dir, "c.pem"), tt.certs...),
				UpstreamKey:  writePEM(t, filepath.Join(dir, "k.pem"), tt.key),
			}
			_, err := New(context.Background(), cfg)
			if err == nil || err.Error() != tt.want {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
	t.Run("missing file", func(t *testing.T) {
		cfg := Config{TrustDomain: testTD, Store: newFakeStore(), Sealer: newSealer(t), UpstreamCert: filepath.Join(t.TempDir(), "none.pem"), UpstreamKey: "k"}
		_, err := New(context.Background(), cfg)
		if err == nil || !strings.HasPrefix(err.Error(), "ca: upstream certificate: open ") {
			t.Fatalf("err = %v", err)
		}
	})
}

func TestRunStopsWithContext(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RefreshInterval = time.Millisecond })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		e.ca.Run(ctx)
		close(done)
	}()
	cancel()
	<-done
}

func TestMaintainWithStoreDown(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	e.clock.Add(time.Second)
	if err := e.ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	e.store.setFail(errors.New("db down"))
	e.clock.Add(DefaultCATTL - time.Second) // first root expired meanwhile
	if err := e.ca.maintain(ctx); err == nil || err.Error() != "ca: read authorities: db down" {
		t.Fatalf("maintain err = %v", err)
	}
	if n := len(e.ca.X509Authorities()); n != 1 {
		t.Fatalf("expired root still published while the store is down: %d roots", n)
	}
	if _, err := e.ca.IssueX509SVID(ctx, X509SVIDRequest{ID: mustID(t, "/a"), PublicKey: p256(t).Public()}); err != nil {
		t.Fatalf("issuance with the last good state: %v", err)
	}
}

func TestCorruptRecordFailsClosed(t *testing.T) {
	e := newEnv(t)
	id := hex.EncodeToString(e.ca.X509Authorities()[0].SubjectKeyId)
	rec, _ := e.store.get(id)
	// The right key, sealed by the right KEK, but for another authority id.
	p8, err := e.sealer.Open(rec.Sealed, sealAD(id))
	if err != nil {
		t.Fatal(err)
	}
	if rec.Sealed, err = e.sealer.Seal(p8, sealAD("0000")); err != nil {
		t.Fatal(err)
	}
	if err := e.store.PutAuthority(context.Background(), rec); err != nil {
		t.Fatal(err)
	}
	if err := e.ca.Refresh(context.Background()); err == nil || !strings.HasPrefix(err.Error(), "ca: authority "+id+": open key") {
		t.Fatalf("Refresh err = %v", err)
	}
	if _, err := New(context.Background(), e.cfg); err == nil {
		t.Fatal("New accepted a corrupt authority")
	}
}
