package ca

import (
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net/url"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/store"
)

var (
	testTD = spiffeid.RequireTrustDomainFromString("example.org")
	t0     = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
)

// fakeStore is an in-memory Store; fail makes every call return it.
type fakeStore struct {
	mu   sync.Mutex
	recs map[string]store.Authority
	ids  []string // insertion order
	fail error
}

func newFakeStore() *fakeStore { return &fakeStore{recs: make(map[string]store.Authority)} }

func (s *fakeStore) Authorities(context.Context) ([]store.Authority, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return nil, s.fail
	}
	out := make([]store.Authority, 0, len(s.ids))
	for _, id := range s.ids {
		out = append(out, s.recs[id])
	}
	return out, nil
}

func (s *fakeStore) PutAuthority(_ context.Context, a store.Authority) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	if _, ok := s.recs[a.ID]; !ok {
		s.ids = append(s.ids, a.ID)
	}
	s.recs[a.ID] = a
	return nil
}

func (s *fakeStore) DeleteAuthority(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	delete(s.recs, id)
	s.ids = slices.DeleteFunc(s.ids, func(x string) bool { return x == id })
	return nil
}

func (s *fakeStore) setFail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail = err
}

func (s *fakeStore) get(id string) (store.Authority, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	a, ok := s.recs[id]
	return a, ok
}

func (s *fakeStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ids)
}

// gcmSealer seals with AES-256-GCM, nonce prefixed.
type gcmSealer struct {
	id   string
	aead cipher.AEAD
}

func newSealer(t testing.TB) *gcmSealer {
	t.Helper()
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		t.Fatal(err)
	}
	return &gcmSealer{id: "test-kek", aead: aead}
}

func (s *gcmSealer) ID() string { return s.id }

func (s *gcmSealer) Seal(plaintext, ad []byte) ([]byte, error) {
	nonce := make([]byte, s.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	return s.aead.Seal(nonce, nonce, plaintext, ad), nil
}

func (s *gcmSealer) Open(sealed, ad []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("sealed too short")
	}
	return s.aead.Open(nil, sealed[:n], sealed[n:], ad)
}

// clock is an injectable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: t0} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// env is a CA under test with its fakes.
type env struct {
	ca     *CA
	store  *fakeStore
	sealer *gcmSealer
	clock  *clock
	cfg    Config
}

func newEnv(t testing.TB, mutate ...func(*Config)) *env {
	t.Helper()
	e := &env{store: newFakeStore(), sealer: newSealer(t), clock: newClock()}
	e.cfg = Config{TrustDomain: testTD, Store: e.store, Sealer: e.sealer, Now: e.clock.Now}
	for _, m := range mutate {
		m(&e.cfg)
	}
	ca, err := New(context.Background(), e.cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	e.ca = ca
	return e
}

// replica opens another CA on the same store, sealer and clock.
func (e *env) replica(t testing.TB) *CA {
	t.Helper()
	ca, err := New(context.Background(), e.cfg)
	if err != nil {
		t.Fatalf("New replica: %v", err)
	}
	return ca
}

func p256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustID(t testing.TB, path string) spiffeid.ID {
	t.Helper()
	id, err := spiffeid.FromPath(testTD, path)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// csrFor makes a CSR signed by key with the given subject and SANs.
func csrFor(t testing.TB, key crypto.Signer, cn string, uris []string, dns []string) []byte {
	t.Helper()
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: cn}, DNSNames: dns}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// testPKI makes an organisation root and an intermediate for upstream tests.
type testPKI struct {
	root, inter       *x509.Certificate
	rootKey, interKey *ecdsa.PrivateKey
}

func newTestPKI(t testing.TB, now time.Time, interLife time.Duration) *testPKI {
	t.Helper()
	p := &testPKI{rootKey: p256(t), interKey: p256(t)}
	rootTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Org Root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, p.rootKey.Public(), p.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	if p.root, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	interTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "Org Postern Intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(interLife),
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err = x509.CreateCertificate(rand.Reader, interTmpl, p.root, p.interKey.Public(), p.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	if p.inter, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	return p
}
