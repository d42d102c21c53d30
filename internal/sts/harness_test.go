package sts

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/keys"
	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/store"
	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/token"
)

const (
	testIssuer = "https://sts.test:8443"
	idpIssuer  = "https://idp.test"
	tdName     = "shop.test"
	gatewayID  = "spiffe://shop.test/ns/shop/sa/gateway"
	ordersID   = "spiffe://shop.test/ns/shop/sa/order-processing"
	invID      = "spiffe://shop.test/ns/shop/sa/inventory"
	shipID     = "spiffe://shop.test/ns/shop/sa/shipping"
	financeID  = "spiffe://shop.test/ns/shop/sa/finance"
	batchID    = "spiffe://shop.test/ns/ops/sa/batch"
	pkID       = "spiffe://shop.test/ns/ops/sa/pkjwt"
)

// fakeStore is the in-memory Store the service needs.
type fakeStore struct {
	mu      sync.Mutex
	jtis    map[string]bool
	secrets []store.ClientSecret
	revs    []store.Revocation
	fail    error
}

func (f *fakeStore) UseJTI(_ context.Context, iss, jti string, _ time.Time) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	if f.jtis == nil {
		f.jtis = map[string]bool{}
	}
	if f.jtis[iss+" "+jti] {
		return store.ErrReplay
	}
	f.jtis[iss+" "+jti] = true
	return nil
}

func (f *fakeStore) ClientSecrets(context.Context) ([]store.ClientSecret, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]store.ClientSecret(nil), f.secrets...), f.fail
}

func (f *fakeStore) Revocations(context.Context, time.Time) ([]store.Revocation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]store.Revocation(nil), f.revs...), f.fail
}

func (f *fakeStore) PutRevocation(_ context.Context, r store.Revocation) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.revs = append(f.revs, r)
	return nil
}

// fakeKeys is a KeySource with one ES256 key.
type fakeKeys struct {
	key *keys.Key
	jwk jose.JSONWebKey
}

func newFakeKeys(t testing.TB) *fakeKeys {
	k := testca.NewKey(t)
	jwk := jose.JSONWebKey{Key: k.Public(), KeyID: "sts-key-1", Algorithm: "ES256", Use: "sig"}
	return &fakeKeys{key: &keys.Key{ID: "sts-key-1", Algorithm: jose.ES256, Signer: k, Public: k.Public()}, jwk: jwk}
}

func (f *fakeKeys) Current() *keys.Key { return f.key }
func (f *fakeKeys) PublicKey(kid string) (jose.JSONWebKey, bool) {
	return f.jwk, kid == f.jwk.KeyID
}
func (f *fakeKeys) JWKS() []byte {
	b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{f.jwk}})
	return b
}
func (f *fakeKeys) MaxAge() time.Duration { return time.Hour }

type harness struct {
	t      testing.TB
	svc    *Service
	ca     *testca.CA
	keys   *fakeKeys
	store  *fakeStore
	idp    *token.Signer
	idpKey *ecdsa.PrivateKey
	pkKey  *ecdsa.PrivateKey
	now    time.Time
	audit  *bytes.Buffer
	svids  map[string]*testca.SVID
	secret []byte
}

const resourcesYAML = `
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: gateway}
spec: {spiffeID: "spiffe://shop.test/ns/shop/sa/gateway"}
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: order-processing}
spec: {spiffeID: "spiffe://shop.test/ns/shop/sa/order-processing"}
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: inventory}
spec: {spiffeID: "spiffe://shop.test/ns/shop/sa/inventory", audience: inventory-api}
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: shipping}
spec: {spiffeID: "spiffe://shop.test/ns/shop/sa/shipping"}
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: finance}
spec: {spiffeID: "spiffe://shop.test/ns/shop/sa/finance"}
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: batch}
spec:
  spiffeID: "spiffe://shop.test/ns/ops/sa/batch"
  clientAuthentication: [client_secret_basic]
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: pkjwt}
spec:
  spiffeID: "spiffe://shop.test/ns/ops/sa/pkjwt"
  clientAuthentication: [private_key_jwt]
  jwks: {keys: [%s]}
---
apiVersion: postern.dev/v1
kind: TrustedIssuer
metadata: {name: idp}
spec:
  issuer: https://idp.test
  audiences: [shop]
  algorithms: [ES256]
  claims: [email]
  jwks: {keys: [%s]}
---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: gateway-to-orders}
spec:
  clients: ["spiffe://shop.test/ns/shop/sa/gateway"]
  subjectIssuers: [https://idp.test]
  audiences: ["spiffe://shop.test/ns/shop/sa/order-processing"]
  scopes: [orders:read, orders:write, profile]
  claims: [email, name]
---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: orders-to-inventory}
spec:
  clients: ["spiffe://shop.test/ns/shop/sa/order-processing"]
  subjectIssuers: [self]
  audiences: [inventory-api]
  scopes: [orders:write, orders:read]
  claims: [email]
  maxLifetime: 2m
  when: '"orders:write" in subject.scope.split(" ")'
---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: inventory-to-shipping}
spec:
  clients: ["spiffe://shop.test/ns/shop/sa/inventory"]
  subjectIssuers: [self]
  audiences: ["spiffe://shop.test/ns/shop/sa/shipping"]
---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: any-to-finance-allowed-by-mistake}
spec:
  clients: ["spiffe://shop.test/**"]
  subjectIssuers: [self]
  audiences: ["spiffe://shop.test/ns/shop/sa/finance"]
---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: nobody-to-finance}
spec:
  action: DENY
  grantTypes: [token-exchange, jwt-bearer]
  clients: ["*"]
  subjectIssuers: [self, https://idp.test]
  audiences: ["spiffe://shop.test/ns/shop/sa/finance"]
---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: batch-cc}
spec:
  grantTypes: [client-credentials]
  clients: ["spiffe://shop.test/ns/ops/sa/*"]
  audiences: [inventory-api]
  scopes: [stock:read]
---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: gateway-jwt-bearer}
spec:
  grantTypes: [jwt-bearer]
  clients: ["spiffe://shop.test/ns/shop/sa/gateway"]
  subjectIssuers: [https://idp.test]
  audiences: ["spiffe://shop.test/ns/shop/sa/order-processing"]
`

type harnessOpt func(*Config)

func newHarness(t testing.TB, opts ...harnessOpt) *harness {
	t.Helper()
	h := &harness{
		t: t, ca: testca.New(t, tdName), keys: newFakeKeys(t), store: &fakeStore{},
		idpKey: testca.NewKey(t), pkKey: testca.NewKey(t),
		now: time.Now().Truncate(time.Second), audit: &bytes.Buffer{}, svids: map[string]*testca.SVID{},
		secret: bytes.Repeat([]byte{7}, 32),
	}
	var err error
	h.idp, err = token.NewSigner("idp-1", jose.ES256, h.idpKey, "JWT")
	if err != nil {
		t.Fatal(err)
	}
	jwk := func(k *ecdsa.PrivateKey, kid string) string {
		b, _ := json.Marshal(jose.JSONWebKey{Key: k.Public(), KeyID: kid, Algorithm: "ES256", Use: "sig"})
		return string(b)
	}
	doc := fmt.Sprintf(resourcesYAML, jwk(h.pkKey, "pk-1"), jwk(h.idpKey, "idp-1"))
	set, err := policy.Parse("resources.yaml", []byte(doc))
	if err != nil {
		t.Fatalf("parse resources: %v", err)
	}
	eng, err := policy.Compile(set, policy.CompileOptions{SelfIssuer: testIssuer, TrustDomain: tdName})
	if err != nil {
		t.Fatalf("compile resources: %v", err)
	}
	cfg := Config{
		Issuer: testIssuer, TrustDomain: spiffeid.RequireTrustDomainFromString(tdName),
		Keys: h.keys, Store: h.store, ClientSecretKey: h.secret,
		Now:   func() time.Time { return h.now },
		Audit: slog.New(slog.NewJSONHandler(h.audit, nil)),
	}
	for _, o := range opts {
		o(&cfg)
	}
	h.svc, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.svc.SetEngine(eng); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *harness) svid(id string) *testca.SVID {
	if s, ok := h.svids[id]; ok {
		return s
	}
	s := h.ca.SVID(h.t, id)
	h.svids[id] = s
	return s
}

// userToken mints an IdP token for sub with scope.
func (h *harness) userToken(sub, scope string, mutate ...func(*token.Claims)) string {
	c := &token.Claims{
		Issuer: idpIssuer, Subject: sub, Audience: []string{"shop"}, Scope: scope,
		IssuedAt: h.now, Expiry: h.now.Add(time.Hour), ID: token.NewID(),
		Extra: map[string]any{"email": sub + "@example.com", "name": "Alice A.", "groups": []any{"admins"}},
	}
	for _, m := range mutate {
		m(c)
	}
	raw, err := h.idp.Sign(c)
	if err != nil {
		h.t.Fatal(err)
	}
	return raw
}

type reqOpt func(*http.Request)

// asPeer authenticates the request with the SVID of id by mutual TLS.
func (h *harness) asPeer(id string) reqOpt {
	s := h.svid(id)
	return func(r *http.Request) {
		r.TLS = &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{s.Cert, h.ca.Cert}}, PeerCertificates: []*x509.Certificate{s.Cert}}
	}
}

func basic(id, secret string) reqOpt {
	return func(r *http.Request) {
		r.SetBasicAuth(url.QueryEscape(id), url.QueryEscape(secret))
	}
}

type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (r *response) str(k string) string { s, _ := r.body[k].(string); return s }

func (h *harness) post(path string, form url.Values, opts ...reqOpt) *response {
	h.t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for _, o := range opts {
		o(req)
	}
	return h.serve(req)
}

func (h *harness) serve(req *http.Request) *response {
	h.t.Helper()
	rec := httptest.NewRecorder()
	h.svc.Handler().ServeHTTP(rec, req)
	out := &response{status: rec.Code, header: rec.Header(), raw: rec.Body.String()}
	if strings.HasPrefix(rec.Header().Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(rec.Body.Bytes(), &out.body); err != nil {
			h.t.Fatalf("response is not JSON: %v: %q", err, rec.Body.String())
		}
	}
	return out
}

func exchangeForm(subject, subjectType, audience, scope string) url.Values {
	f := url.Values{
		"grant_type":         {GrantTokenExchange},
		"subject_token":      {subject},
		"subject_token_type": {subjectType},
	}
	if audience != "" {
		f.Set("audience", audience)
	}
	if scope != "" {
		f.Set("scope", scope)
	}
	return f
}

// exchange performs a token exchange as client (mTLS) and fails the test
// unless it succeeds.
func (h *harness) exchange(client, subject, audience, scope string) (string, *token.Claims) {
	h.t.Helper()
	typ := TokenTypeAccessToken
	if iss, _ := token.PeekIssuer(subject); iss != testIssuer {
		typ = TokenTypeJWT
	}
	r := h.post(PathToken, exchangeForm(subject, typ, audience, scope), h.asPeer(client))
	if r.status != http.StatusOK {
		h.t.Fatalf("exchange by %s for %s: status %d: %s", client, audience, r.status, r.raw)
	}
	raw := r.str("access_token")
	return raw, h.verify(raw, "")
}

// verify checks a token issued by the service.
func (h *harness) verify(raw, aud string) *token.Claims {
	h.t.Helper()
	v, err := token.NewVerifier(token.VerifierConfig{
		Issuer: testIssuer, Audience: aud, Types: []string{token.TypeAccessToken},
		Keys: token.KeySetFunc(func(_ context.Context, kid string) (jose.JSONWebKey, error) {
			k, ok := h.keys.PublicKey(kid)
			if !ok {
				return jose.JSONWebKey{}, token.ErrUnknownKey
			}
			return k, nil
		}),
		Now: func() time.Time { return h.now },
	})
	if err != nil {
		h.t.Fatal(err)
	}
	c, err := v.Verify(context.Background(), raw)
	if err != nil {
		h.t.Fatalf("issued token does not verify: %v", err)
	}
	return c
}

// jwtSVID signs a JWT-SVID for id with the STS key, as the agent would get.
func (h *harness) jwtSVID(id string, aud string, ttl time.Duration) string {
	sg, err := token.NewSigner(h.keys.key.ID, jose.ES256, h.keys.key.Signer, token.TypeJWT)
	if err != nil {
		h.t.Fatal(err)
	}
	raw, err := sg.Sign(&token.Claims{Issuer: testIssuer, Subject: id, Audience: []string{aud}, IssuedAt: h.now, Expiry: h.now.Add(ttl)})
	if err != nil {
		h.t.Fatal(err)
	}
	return raw
}

func b64json(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

type storeSecret = store.ClientSecret

func testKeyPair(t testing.TB) *ecdsa.PrivateKey { return testca.NewKey(t) }
