package sts

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"postern.dev/postern/internal/policy"
)

// TestOpaqueSubjectTokens exchanges an opaque token that the STS
// introspects at its TrustedIssuer (RFC 7662).
func TestOpaqueSubjectTokens(t *testing.T) {
	var down atomic.Bool
	var hits atomic.Int32
	idp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		if down.Load() {
			http.Error(w, "down", 503)
			return
		}
		if id, secret, ok := r.BasicAuth(); !ok || id != "postern-sts" || secret != "introspect-secret" {
			http.Error(w, "unauthorized", 401)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		exp := time.Now().Add(time.Hour).Unix()
		switch r.PostFormValue("token") {
		case "opaque-alice":
			fmt.Fprintf(w, `{"active":true,"sub":"alice","aud":"shop","scope":"orders:read","exp":%d,"email":"alice@example.com"}`, exp)
		case "opaque-wrong-aud":
			fmt.Fprintf(w, `{"active":true,"sub":"alice","aud":"elsewhere","exp":%d}`, exp)
		case "opaque-dpop": // sender-constrained to a DPoP key nobody here holds
			fmt.Fprintf(w, `{"active":true,"sub":"alice","aud":"shop","exp":%d,"cnf":{"jkt":"0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}`, exp)
		default:
			fmt.Fprint(w, `{"active":false}`)
		}
	}))
	defer idp.Close()
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte("introspect-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHarness(t)
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
metadata: {name: opaque-idp}
spec:
  issuer: https://opaque.test
  audiences: [shop]
  algorithms: [ES256]
  claims: [email]
  introspection: {endpoint: "%s", clientID: postern-sts, clientSecretFile: "%s"}
---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: p}
spec:
  clients: ["%s"]
  subjectIssuers: [https://opaque.test]
  audiences: ["%s"]
  claims: [email]
`, gatewayID, ordersID, idp.URL, secretFile, gatewayID, ordersID)
	set, err := policy.Parse("opaque.yaml", []byte(doc))
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
	h.now = time.Now()
	ex := func(tok string) *response {
		return h.post(PathToken, exchangeForm(tok, TokenTypeAccessToken, ordersID, ""), h.asPeer(gatewayID))
	}
	r := ex("opaque-alice")
	if r.status != 200 {
		t.Fatalf("opaque exchange: %d %s", r.status, r.raw)
	}
	c := h.verify(r.str("access_token"), ordersID)
	if c.Subject != "alice" || c.Scope != "orders:read" || c.Extra["email"] != "alice@example.com" || !slices.Equal(c.Act.Chain(), []string{gatewayID}) {
		t.Errorf("claims = %+v", c)
	}
	for tok, want := range map[string]int{"opaque-inactive": 400, "opaque-wrong-aud": 400, "opaque-dpop": 400} {
		if r := ex(tok); r.status != want || r.str("error") != "invalid_grant" {
			t.Errorf("%s: %d %s", tok, r.status, r.raw)
		}
	}
	// The issuer down: a cached answer still serves, an unknown token is 503.
	down.Store(true)
	if r := ex("opaque-alice"); r.status != 200 {
		t.Errorf("cached introspection with the issuer down: %d %s", r.status, r.raw)
	}
	if r := ex("opaque-unknown"); r.status != 503 {
		t.Errorf("issuer down: %d %s, want 503 (never a guess)", r.status, r.raw)
	}
	// The secret is never in an error or the audit log.
	if r := ex("opaque-unknown"); contains(r.raw, "introspect-secret") || contains(h.audit.String(), "introspect-secret") || contains(h.audit.String(), "opaque-alice") {
		t.Error("secret or token leaked")
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
