package nodeapi

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/attest"
	"postern.dev/postern/internal/ca"
	"postern.dev/postern/internal/keys"
	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/store"
)

var testTD = spiffeid.RequireTrustDomainFromString("example.org")

const (
	agentA   = "spiffe://example.org/postern/agent/node-a"
	agentB   = "spiffe://example.org/postern/agent/node-b"
	webID    = "spiffe://example.org/ns/shop/sa/web"
	directID = "spiffe://example.org/ns/shop/sa/direct"
	dbID     = "spiffe://example.org/ns/shop/sa/db"
	mappedID = "spiffe://example.org/apps/mapped"
	testIss  = "https://sts.example.org"
)

// resources: web only for agent node-a, with a TTL and DNS names; db for any
// agent; mapped by k8s selectors; bare and direct have no selectors, so no
// agent may obtain their SVIDs (direct has a TTL and DNS names for the
// join-token tests).
const resources = `apiVersion: postern.dev/v1
kind: Workload
metadata: {name: web}
spec:
  spiffeID: spiffe://example.org/ns/shop/sa/web
  svidTTL: 10m
  dnsNames: [web.shop.svc]
  selectors: [{type: unix, value: "uid:1000"}]
  agents: ["spiffe://example.org/postern/agent/node-a"]
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: db}
spec:
  spiffeID: spiffe://example.org/ns/shop/sa/db
  selectors: [{type: unix, value: "uid:2000"}]
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: bare}
spec:
  spiffeID: spiffe://example.org/ns/shop/sa/bare
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: direct}
spec:
  spiffeID: spiffe://example.org/ns/shop/sa/direct
  svidTTL: 10m
  dnsNames: [direct.shop.svc]
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: mapped}
spec:
  spiffeID: spiffe://example.org/apps/mapped
  selectors: [{type: k8s, value: "ns:prod"}, {type: k8s, value: "sa:api"}]
`

func compilePolicy(t testing.TB, src string) *policy.Engine {
	t.Helper()
	set, err := policy.Parse("resources.yaml", []byte(src))
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	e, err := policy.Compile(set, policy.CompileOptions{TrustDomain: testTD.Name()})
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	return e
}

// caStore is an in-memory ca.Store.
type caStore struct {
	mu   sync.Mutex
	recs []store.Authority
}

func (s *caStore) Authorities(context.Context) ([]store.Authority, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.recs), nil
}

func (s *caStore) PutAuthority(_ context.Context, a store.Authority) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs = slices.DeleteFunc(s.recs, func(x store.Authority) bool { return x.ID == a.ID })
	s.recs = append(s.recs, a)
	return nil
}

func (s *caStore) DeleteAuthority(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs = slices.DeleteFunc(s.recs, func(x store.Authority) bool { return x.ID == id })
	return nil
}

// sealer seals with AES-256-GCM.
type sealer struct{ aead cipher.AEAD }

func newSealer(t testing.TB) *sealer {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	b, err := aes.NewCipher(key)
	if err != nil {
		t.Fatal(err)
	}
	a, err := cipher.NewGCM(b)
	if err != nil {
		t.Fatal(err)
	}
	return &sealer{a}
}

func (s *sealer) ID() string { return "test" }
func (s *sealer) Seal(p, ad []byte) ([]byte, error) {
	n := make([]byte, s.aead.NonceSize())
	_, _ = rand.Read(n)
	return s.aead.Seal(n, n, p, ad), nil
}
func (s *sealer) Open(b, ad []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(b) < n {
		return nil, errors.New("short")
	}
	return s.aead.Open(nil, b[:n], b[n:], ad)
}

func newCA(t testing.TB) *ca.CA {
	t.Helper()
	c, err := ca.New(context.Background(), ca.Config{TrustDomain: testTD, Store: &caStore{}, Sealer: newSealer(t)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// memAgents is an in-memory agent registry with the store's semantics.
type memAgents struct {
	mu   sync.Mutex
	m    map[string]store.Agent
	fail error
}

func (s *memAgents) Agent(_ context.Context, id string) (store.Agent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return store.Agent{}, s.fail
	}
	a, ok := s.m[id]
	if !ok {
		return store.Agent{}, store.ErrNotFound
	}
	return a, nil
}

func (s *memAgents) PutAgent(_ context.Context, a store.Agent) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	if s.m == nil {
		s.m = map[string]store.Agent{}
	}
	s.m[a.SPIFFEID] = a
	return nil
}

func (s *memAgents) RenewAgent(_ context.Context, id, old, new string, exp time.Time) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return false, s.fail
	}
	a, ok := s.m[id]
	if !ok || old == "" || (old != a.Serial && old != a.PrevSerial) {
		return false, nil
	}
	a.PrevSerial, a.Serial, a.ExpiresAt = old, new, exp
	s.m[id] = a
	return true, nil
}

func (s *memAgents) ConfirmAgent(_ context.Context, id, serial string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	if a, ok := s.m[id]; ok && a.Serial == serial {
		a.PrevSerial = ""
		s.m[id] = a
	}
	return nil
}

func (s *memAgents) delete(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, id)
}

// joinStore is an in-memory attest.JoinTokenStore.
type joinStore struct {
	mu   sync.Mutex
	m    map[string]store.JoinToken
	fail error
}

func (s *joinStore) PutJoinToken(_ context.Context, t store.JoinToken) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = map[string]store.JoinToken{}
	}
	s.m[t.Hash] = t
	return nil
}

func (s *joinStore) ConsumeJoinToken(_ context.Context, hash string, now time.Time) (store.JoinToken, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return store.JoinToken{}, s.fail
	}
	t, ok := s.m[hash]
	if !ok || !t.UsedAt.IsZero() || !now.Before(t.ExpiresAt) {
		return store.JoinToken{}, store.ErrNotFound
	}
	t.UsedAt = now
	s.m[hash] = t
	return t, nil
}

// fakeK8s maps tokens to identities; "down" is an unavailable issuer.
type fakeK8s map[string]*attest.K8sIdentity

func (f fakeK8s) Attest(_ context.Context, tok string) (*attest.K8sIdentity, error) {
	if tok == "down" {
		return nil, errors.New("attest: kubernetes issuer keys unavailable")
	}
	k, ok := f[tok]
	if !ok {
		return nil, fmt.Errorf("%w: bad signature", attest.ErrAttestation)
	}
	return k, nil
}

// staticKeys is a SigningKeys with one key.
type staticKeys struct{ k *keys.Key }

func (s staticKeys) Current() *keys.Key { return s.k }

func newSigningKey(t testing.TB) *keys.Key {
	k := newKey(t)
	return &keys.Key{ID: "kid-1", Algorithm: jose.ES256, Signer: k, Public: k.Public()}
}

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// env is a handler served over TLS on 127.0.0.1 with its fakes.
type env struct {
	ca     *ca.CA
	h      *Handler
	srv    *httptest.Server
	joins  *joinStore
	agents *memAgents
	key    *keys.Key
	engine atomic.Pointer[policy.Engine]
	fed    atomic.Pointer[map[spiffeid.TrustDomain]*spiffebundle.Bundle]
	audit  *syncBuffer
	pool   *x509.CertPool
}

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{ca: newCA(t), joins: &joinStore{}, agents: &memAgents{}, key: newSigningKey(t), audit: &syncBuffer{}}
	e.engine.Store(compilePolicy(t, resources))
	h, err := NewHandler(Config{
		TrustDomain: testTD, CA: e.ca, Keys: staticKeys{e.key}, Issuer: testIss,
		Policy:     e.engine.Load,
		JoinTokens: StoreJoinTokens{Store: e.joins},
		Agents:     e.agents,
		FederatedBundles: func() map[spiffeid.TrustDomain]*spiffebundle.Bundle {
			if m := e.fed.Load(); m != nil {
				return *m
			}
			return nil
		},
		K8s: fakeK8s{
			"pod-prod-api":   {Namespace: "prod", ServiceAccount: "api", PodName: "api-1", PodUID: "u1", NodeName: "n1"},
			"pod-shop-db":    {Namespace: "shop", ServiceAccount: "db", PodName: "db-1", PodUID: "u2", NodeName: "n1"},
			"pod-shop-other": {Namespace: "shop", ServiceAccount: "other", PodName: "o-1", PodUID: "u3", NodeName: "n1"},
			"pod-shop-bare":  {Namespace: "shop", ServiceAccount: "bare", PodName: "b-1", PodUID: "u6", NodeName: "n1"},
			"pod-agent":      {Namespace: "postern", ServiceAccount: "agent", PodName: "agent-x", PodUID: "u4", NodeName: "node-7"},
			"pod-no-node":    {Namespace: "postern", ServiceAccount: "agent", PodName: "agent-y", PodUID: "u5"},
		},
		K8sAgents: []string{"postern:agent"},
		Audit:     slog.New(slog.NewJSONHandler(e.audit, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.h = h
	serving, err := e.ca.ServingCertificate([]string{"localhost"}, []net.IP{net.IPv4(127, 0, 0, 1)}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	e.pool = x509.NewCertPool()
	for _, c := range e.ca.X509Authorities() {
		e.pool.AddCert(c)
	}
	e.srv = httptest.NewUnstartedServer(h)
	e.srv.EnableHTTP2 = true
	e.srv.TLS = &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{*serving},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    e.pool,
	}
	e.srv.StartTLS()
	t.Cleanup(e.srv.Close)
	return e
}

// client returns a Client presenting cert (nil: none).
func (e *env) client(t testing.TB, cert *tls.Certificate) *Client {
	t.Helper()
	c, err := NewClient(ClientConfig{
		ServerURL: e.srv.URL, Roots: e.pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// svid issues an SVID for id straight from the CA.
func (e *env) svid(t testing.TB, id string) *tls.Certificate {
	t.Helper()
	key := newKey(t)
	s, err := e.ca.IssueX509SVID(context.Background(), ca.X509SVIDRequest{ID: spiffeid.RequireFromString(id), PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(spiffeid.RequireFromString(id).Path(), AgentPathPrefix) {
		// As if it had attested: registered with this certificate.
		_ = e.agents.PutAgent(context.Background(), store.Agent{SPIFFEID: id, Method: MethodJoinToken, Serial: serialOf(s.Certificates[0]), ExpiresAt: s.NotAfter})
	}
	return tlsCert(s.Certificates, key)
}

// svidUnregistered is an SVID for id that no attestation registered.
func (e *env) svidUnregistered(t testing.TB, id string) *tls.Certificate {
	t.Helper()
	key := newKey(t)
	s, err := e.ca.IssueX509SVID(context.Background(), ca.X509SVIDRequest{ID: spiffeid.RequireFromString(id), PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return tlsCert(s.Certificates, key)
}

func tlsCert(certs []*x509.Certificate, key crypto.Signer) *tls.Certificate {
	tc := &tls.Certificate{PrivateKey: key, Leaf: certs[0]}
	for _, c := range certs {
		tc.Certificate = append(tc.Certificate, c.Raw)
	}
	return tc
}

func (e *env) joinToken(t testing.TB, id string) string {
	t.Helper()
	tok, err := attest.CreateJoinToken(context.Background(), e.joins, spiffeid.RequireFromString(id), 10*time.Minute, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// csrFor makes a CSR signed by key that asks for other names (ignored).
func csrFor(t testing.TB, key crypto.Signer) []byte {
	t.Helper()
	u, _ := url.Parse("spiffe://example.org/ns/kube-system/sa/admin")
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "admin"}, URIs: []*url.URL{u}, DNSNames: []string{"evil.example"},
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// badSigCSR is a CSR whose signature does not verify.
func badSigCSR(t testing.TB) []byte {
	t.Helper()
	der := slices.Clone(csrFor(t, newKey(t)))
	der[len(der)-5] ^= 0xff
	return der
}
