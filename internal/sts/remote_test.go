package sts

import (
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/token"
)

// TestTrustedIssuerRemoteJWKS checks subject tokens from an issuer whose
// keys are fetched by URI and by discovery: a rotated key is found through
// a refresh on its unknown kid, and an unreachable JWKS denies.
func TestTrustedIssuerRemoteJWKS(t *testing.T) {
	k1, k2 := testKeyPair(t), testKeyPair(t)
	var (
		mu    sync.Mutex
		keys  = []jose.JSONWebKey{{Key: k1.Public(), KeyID: "r1", Algorithm: "ES256", Use: "sig"}}
		down  atomic.Bool
		hits  atomic.Int32
		srvMu sync.Mutex
		srv   *httptest.Server
	)
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if down.Load() {
			http.Error(w, "down", 503)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/.well-known/openid-configuration":
			srvMu.Lock()
			u := srv.URL
			srvMu.Unlock()
			fmt.Fprintf(w, `{"issuer":%q,"jwks_uri":%q}`, u, u+"/keys")
		case "/keys":
			mu.Lock()
			defer mu.Unlock()
			_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: keys})
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()

	for _, mode := range []string{"jwksURI", "discovery"} {
		t.Run(mode, func(t *testing.T) {
			mu.Lock()
			keys = []jose.JSONWebKey{{Key: k1.Public(), KeyID: "r1", Algorithm: "ES256", Use: "sig"}}
			mu.Unlock()
			down.Store(false)
			h := newHarness(t)
			source := fmt.Sprintf("jwksURI: %s/keys", srv.URL)
			if mode == "discovery" {
				source = "discovery: true"
			}
			doc := fmt.Sprintf(`
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: gateway}
spec: {spiffeID: "%s"}
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: order-processing}
spec: {spiffeID: "%s"}
---
apiVersion: postern.dev/v1
kind: TrustedIssuer
metadata: {name: remote}
spec:
  issuer: %s
  audiences: [shop]
  algorithms: [ES256]
  %s
---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: p}
spec:
  clients: ["%s"]
  subjectIssuers: [%s]
  audiences: ["%s"]
`, gatewayID, ordersID, srv.URL, source, gatewayID, srv.URL, ordersID)
			set, err := policy.Parse("remote.yaml", []byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			eng, err := policy.Compile(set, policy.CompileOptions{SelfIssuer: testIssuer})
			if err != nil {
				t.Fatal(err)
			}
			if err := h.svc.SetEngine(eng); err != nil {
				t.Fatal(err)
			}
			sign := func(kid string, k *ecdsa.PrivateKey) string {
				sg, err := token.NewSigner(kid, jose.ES256, k, "JWT")
				if err != nil {
					t.Fatal(err)
				}
				raw, err := sg.Sign(&token.Claims{Issuer: srv.URL, Subject: "alice", Audience: []string{"shop"}, Expiry: time.Now().Add(time.Hour)})
				if err != nil {
					t.Fatal(err)
				}
				return raw
			}
			h.now = time.Now()
			ex := func(raw string) *response {
				return h.post(PathToken, exchangeForm(raw, TokenTypeJWT, ordersID, ""), h.asPeer(gatewayID))
			}
			if r := ex(sign("r1", k1)); r.status != 200 {
				t.Fatalf("first key: %d %s", r.status, r.raw)
			}
			// The issuer rotates to r2: an unknown kid triggers a refresh.
			mu.Lock()
			keys = append(keys, jose.JSONWebKey{Key: k2.Public(), KeyID: "r2", Algorithm: "ES256", Use: "sig"})
			mu.Unlock()
			if r := ex(sign("r2", k2)); r.status != 200 {
				t.Fatalf("rotated key: %d %s", r.status, r.raw)
			}
			// A kid nobody published: refused, and the refresh is rate-limited.
			before := hits.Load()
			for range 5 {
				if r := ex(sign("r3", k2)); r.status != 400 || r.str("error") != "invalid_grant" {
					t.Fatalf("unknown kid: %d %s", r.status, r.raw)
				}
			}
			if n := hits.Load() - before; n > 2 {
				t.Errorf("%d JWKS fetches for 5 unknown-kid tokens: refreshes are not rate-limited", n)
			}
			// The JWKS goes down: known keys keep working.
			down.Store(true)
			if r := ex(sign("r1", k1)); r.status != 200 {
				t.Fatalf("last good keys: %d %s", r.status, r.raw)
			}
		})
	}
}
