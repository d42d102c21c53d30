package attest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/token"
)

const testAudience = "postern"

// k8sIssuer is a local stand-in for a cluster's service-account issuer.
type k8sIssuer struct {
	url string
	key crypto.Signer
	kid string
	alg jose.SignatureAlgorithm
}

func newRSAKey(tb testing.TB) *rsa.PrivateKey {
	tb.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// startK8sIssuer serves discovery and the JWKS on 127.0.0.1, as
// kube-apiserver does at /.well-known/openid-configuration and
// /openid/v1/jwks.
func startK8sIssuer(tb testing.TB, key crypto.Signer, alg jose.SignatureAlgorithm) *k8sIssuer {
	tb.Helper()
	iss := &k8sIssuer{key: key, kid: "k8s-key-1", alg: alg}
	mux := http.NewServeMux()
	srv := httptest.NewServer(mux)
	tb.Cleanup(srv.Close)
	iss.url = srv.URL
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer": iss.url, "jwks_uri": iss.url + "/openid/v1/jwks",
			"response_types_supported": []string{"id_token"}, "subject_types_supported": []string{"public"},
			"id_token_signing_alg_values_supported": []string{string(alg)},
		})
	})
	mux.HandleFunc("/openid/v1/jwks", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(iss.jwks())
	})
	return iss
}

func (i *k8sIssuer) jwks() jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: i.key.Public(), KeyID: i.kid, Algorithm: string(i.alg), Use: "sig"}}}
}

// claims returns the claims kube-apiserver puts in a projected token for
// pod web-0 of service account web in namespace prod, issued at t0.
func (i *k8sIssuer) claims() map[string]any {
	return map[string]any{
		"iss": i.url,
		"aud": []string{testAudience},
		"sub": "system:serviceaccount:prod:web",
		"iat": t0.Unix(), "nbf": t0.Unix(), "exp": t0.Add(time.Hour).Unix(),
		"kubernetes.io": map[string]any{
			"namespace":      "prod",
			"node":           map[string]any{"name": "node-a.cluster.local", "uid": "2b1e7c3a-0d5f-4a39-9f6e-3c1d2b4a5e6f"},
			"pod":            map[string]any{"name": "web-0", "uid": "5d6e7f80-1a2b-4c3d-8e9f-0a1b2c3d4e5f"},
			"serviceaccount": map[string]any{"name": "web", "uid": "9a8b7c6d-5e4f-4321-8765-43210fedcba9"},
			"warnafter":      t0.Add(50 * time.Minute).Unix(),
		},
	}
}

func (i *k8sIssuer) mint(tb testing.TB, claims map[string]any) string {
	tb.Helper()
	return signJWT(tb, i.key, i.alg, i.kid, claims)
}

func signJWT(tb testing.TB, key crypto.Signer, alg jose.SignatureAlgorithm, kid string, claims map[string]any) string {
	tb.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, (&jose.SignerOptions{}).WithHeader(jose.HeaderKey("kid"), kid))
	if err != nil {
		tb.Fatal(err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		tb.Fatal(err)
	}
	jws, err := s.Sign(payload)
	if err != nil {
		tb.Fatal(err)
	}
	raw, err := jws.CompactSerialize()
	if err != nil {
		tb.Fatal(err)
	}
	return raw
}

// unsignedJWT builds an alg "none" token.
func unsignedJWT(tb testing.TB, claims map[string]any) string {
	tb.Helper()
	p, err := json.Marshal(claims)
	if err != nil {
		tb.Fatal(err)
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"none","kid":"k8s-key-1"}`)) + "." + enc(p) + "."
}

func withClaims(base map[string]any, edit func(c, k8s map[string]any)) map[string]any {
	c := maps.Clone(base)
	k := maps.Clone(c["kubernetes.io"].(map[string]any))
	c["kubernetes.io"] = k
	edit(c, k)
	return c
}

// errNoNode marks a valid case whose token has no node binding.
var errNoNode = errors.New("valid, without node")

var wantWeb = &K8sIdentity{
	Namespace: "prod", ServiceAccount: "web", PodName: "web-0",
	PodUID: "5d6e7f80-1a2b-4c3d-8e9f-0a1b2c3d4e5f", NodeName: "node-a.cluster.local",
}

// psatCases are the cases both key sources must pass.
func psatCases(tb testing.TB, iss *k8sIssuer) []struct {
	name    string
	raw     string
	wantErr error
} {
	base := iss.claims()
	mint := func(edit func(c, k map[string]any)) string { return iss.mint(tb, withClaims(base, edit)) }
	var other crypto.Signer = newRSAKey(tb)
	if iss.alg == jose.ES256 {
		other = mustECKey(tb)
	}
	return []struct {
		name    string
		raw     string
		wantErr error
	}{
		{"valid", iss.mint(tb, base), nil},
		{"valid without node binding", mint(func(_, k map[string]any) { delete(k, "node") }), errNoNode},
		{"wrong audience", mint(func(c, _ map[string]any) { c["aud"] = []string{"https://kubernetes.default.svc"} }), token.ErrAudience},
		{"expired", mint(func(c, _ map[string]any) {
			c["iat"], c["nbf"], c["exp"] = t0.Add(-2*time.Hour).Unix(), t0.Add(-2*time.Hour).Unix(), t0.Add(-time.Hour).Unix()
		}), token.ErrExpired},
		{"not yet valid", mint(func(c, _ map[string]any) { c["nbf"] = t0.Add(10 * time.Minute).Unix() }), token.ErrNotYetValid},
		{"wrong issuer", mint(func(c, _ map[string]any) { c["iss"] = "https://other.example" }), token.ErrIssuer},
		{"missing pod binding (legacy token)", mint(func(_, k map[string]any) { delete(k, "pod") }), errK8sPodBinding},
		{"no kubernetes.io claims", mint(func(c, _ map[string]any) { delete(c, "kubernetes.io") }), errK8sClaims},
		{"sub names another service account", mint(func(c, _ map[string]any) { c["sub"] = "system:serviceaccount:prod:admin" }), errK8sSubject},
		{"sub names another namespace", mint(func(c, _ map[string]any) { c["sub"] = "system:serviceaccount:kube-system:web" }), errK8sSubject},
		{"claims name another namespace", mint(func(_, k map[string]any) { k["namespace"] = "kube-system" }), errK8sSubject},
		{"namespace with a slash", mint(func(c, k map[string]any) {
			k["namespace"] = "prod/sa/admin"
			c["sub"] = "system:serviceaccount:prod/sa/admin:web"
		}), errK8sClaims},
		{"service account without uid", mint(func(_, k map[string]any) { k["serviceaccount"] = map[string]any{"name": "web"} }), errK8sClaims},
		{"alg none", unsignedJWT(tb, base), token.ErrAlgorithm},
		{"signed by another key", signJWT(tb, other, iss.alg, iss.kid, base), token.ErrSignature},
		{"too long lifetime", mint(func(c, _ map[string]any) { c["exp"] = t0.Add(24*time.Hour + time.Second).Unix() }), errK8sLifetime},
		{"no iat", mint(func(c, _ map[string]any) { delete(c, "iat") }), errK8sNoIssuedAt},
		{"garbage", "not.a.jwt", token.ErrMalformed},
	}
}

func checkAttest(t *testing.T, a *K8sAttestor, raw string, wantErr error) {
	t.Helper()
	id, err := a.Attest(context.Background(), raw)
	if wantErr == nil || wantErr == errNoNode {
		if err != nil {
			t.Fatalf("Attest: %v", err)
		}
		want := *wantWeb
		if wantErr == errNoNode {
			want.NodeName = ""
		}
		if *id != want {
			t.Fatalf("identity %+v, want %+v", *id, want)
		}
		return
	}
	if !errors.Is(err, ErrAttestation) || !errors.Is(err, wantErr) {
		t.Fatalf("err = %v, want ErrAttestation wrapping %v", err, wantErr)
	}
	if id != nil {
		t.Fatalf("identity %+v returned with an error", id)
	}
	if strings.Contains(err.Error(), raw) {
		t.Fatal("error contains the token")
	}
}

func TestK8sAttestDiscovery(t *testing.T) {
	iss := startK8sIssuer(t, newRSAKey(t), jose.RS256)
	a, err := NewK8sAttestor(K8sConfig{Issuer: iss.url, Audience: testAudience, Now: func() time.Time { return t0.Add(time.Minute) }})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range psatCases(t, iss) {
		t.Run(tt.name, func(t *testing.T) { checkAttest(t, a, tt.raw, tt.wantErr) })
	}
}

func TestK8sAttestJWKSFile(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  crypto.Signer
		alg  jose.SignatureAlgorithm
	}{
		{"RS256", newRSAKey(t), jose.RS256},
		{"ES256", mustECKey(t), jose.ES256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// An issuer that is never contacted: the keys come from the file.
			iss := &k8sIssuer{url: "https://kubernetes.default.svc.cluster.local", key: tc.key, kid: "k8s-key-1", alg: tc.alg}
			file := filepath.Join(t.TempDir(), "jwks.json")
			b, err := json.Marshal(iss.jwks())
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(file, b, 0o600); err != nil {
				t.Fatal(err)
			}
			a, err := NewK8sAttestor(K8sConfig{Issuer: iss.url, Audience: testAudience, JWKSFile: file, Now: func() time.Time { return t0.Add(time.Minute) }})
			if err != nil {
				t.Fatal(err)
			}
			for _, tt := range psatCases(t, iss) {
				t.Run(tt.name, func(t *testing.T) { checkAttest(t, a, tt.raw, tt.wantErr) })
			}
		})
	}
}

func mustECKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

func TestK8sAttestAlgorithms(t *testing.T) {
	// ES384 is a fine algorithm, but not one a cluster signs with here.
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	iss := &k8sIssuer{url: "https://k8s.example", key: key, kid: "k", alg: jose.ES384}
	file := filepath.Join(t.TempDir(), "jwks.json")
	b, _ := json.Marshal(iss.jwks())
	if err := os.WriteFile(file, b, 0o600); err != nil {
		t.Fatal(err)
	}
	a, err := NewK8sAttestor(K8sConfig{Issuer: iss.url, Audience: testAudience, JWKSFile: file, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	checkAttest(t, a, iss.mint(t, iss.claims()), token.ErrAlgorithm)
}

func TestK8sAttestKeysUnavailable(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	a, err := NewK8sAttestor(K8sConfig{Issuer: srv.URL, Audience: testAudience, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	key := newRSAKey(t)
	iss := &k8sIssuer{url: srv.URL, key: key, kid: "k", alg: jose.RS256}
	_, err = a.Attest(context.Background(), iss.mint(t, iss.claims()))
	if !errors.Is(err, token.ErrKeysUnavailable) || errors.Is(err, ErrAttestation) {
		t.Fatalf("err = %v: want keys unavailable, not a refusal", err)
	}
}

func TestNewK8sAttestorErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	priv, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: mustECKey(t), KeyID: "k"}}})
	if err != nil {
		t.Fatal(err)
	}
	privFile := write("priv.json", string(priv))
	big := write("big.json", `{"keys":[]}`+strings.Repeat(" ", maxJWKSFileBytes))
	tests := []struct {
		name    string
		cfg     K8sConfig
		wantErr string
	}{
		{"no issuer", K8sConfig{Audience: "a"}, "attest: kubernetes attestor needs an issuer"},
		{"no audience", K8sConfig{Issuer: "https://k8s.example"}, "attest: kubernetes attestor needs an audience"},
		{"bad cluster", K8sConfig{Issuer: "https://k8s.example", Audience: "a", Cluster: "a/b"}, `attest: kubernetes cluster name "a/b" is not a DNS label`},
		{"negative ttl", K8sConfig{Issuer: "https://k8s.example", Audience: "a", MaxTokenTTL: -1}, "attest: kubernetes max token ttl is negative"},
		{"issuer not a URL for discovery", K8sConfig{Issuer: "kubernetes/serviceaccount", Audience: "a"}, `attest: kubernetes issuer: token: "kubernetes/serviceaccount" is not an https URL (http only for a loopback host)`},
		{"missing jwks file", K8sConfig{Issuer: "https://k8s.example", Audience: "a", JWKSFile: filepath.Join(dir, "none.json")}, "attest: jwks file: open " + filepath.Join(dir, "none.json") + ": no such file or directory"},
		{"empty jwks file", K8sConfig{Issuer: "https://k8s.example", Audience: "a", JWKSFile: write("empty.json", `{"keys":[]}`)}, "attest: jwks file " + filepath.Join(dir, "empty.json") + ": token: key set is empty"},
		{"private key in jwks file", K8sConfig{Issuer: "https://k8s.example", Audience: "a", JWKSFile: privFile}, "attest: jwks file " + privFile + `: key "k" carries private or symmetric key material`},
		{"jwks file too large", K8sConfig{Issuer: "https://k8s.example", Audience: "a", JWKSFile: big}, "attest: jwks file " + big + " is over 1048576 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewK8sAttestor(tt.cfg)
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestK8sIdentity(t *testing.T) {
	id := *wantWeb
	wantSel := []Selector{
		{"k8s", "ns:prod"}, {"k8s", "sa:web"}, {"k8s", "pod-name:web-0"},
		{"k8s", "pod-uid:5d6e7f80-1a2b-4c3d-8e9f-0a1b2c3d4e5f"}, {"k8s", "node-name:node-a.cluster.local"},
	}
	if got := id.Selectors(); !reflect.DeepEqual(got, wantSel) {
		t.Errorf("Selectors = %v, want %v", got, wantSel)
	}
	if got, want := id.SPIFFEID(testTD).String(), "spiffe://example.org/ns/prod/sa/web"; got != want {
		t.Errorf("SPIFFEID = %s, want %s", got, want)
	}
	agent, err := id.AgentSPIFFEID(testTD)
	if err != nil || agent.String() != "spiffe://example.org/postern/agent/k8s/prod/web/node-a.cluster.local" {
		t.Errorf("AgentSPIFFEID = %v, %v", agent, err)
	}
	id.NodeName = ""
	if got := id.Selectors(); !reflect.DeepEqual(got, wantSel[:4]) {
		t.Errorf("Selectors without node = %v", got)
	}
	if _, err := id.AgentSPIFFEID(testTD); err == nil || err.Error() != "attest: kubernetes token has no node binding for an agent identity" {
		t.Errorf("AgentSPIFFEID without node: %v", err)
	}
	if !id.SPIFFEID(spiffeid.TrustDomain{}).IsZero() {
		t.Error("SPIFFEID with a zero trust domain is not zero")
	}
}

func TestDNSNames(t *testing.T) {
	for s, want := range map[string]bool{
		"prod": true, "a": true, "a-b": true, "0a": true, "-a": false, "a-": false, "A": false,
		"a.b": false, "": false, strings.Repeat("a", 63): true, strings.Repeat("a", 64): false, "a_b": false,
	} {
		if got := isDNSLabel(s); got != want {
			t.Errorf("isDNSLabel(%q) = %v", s, got)
		}
	}
	for s, want := range map[string]bool{
		"node-a.cluster.local": true, "a": true, "a..b": false, ".a": false, "a.": false, "..": false,
		"a/b": false, strings.Repeat("a.", 126) + "a": true, strings.Repeat("a.", 127) + "a": false,
	} {
		if got := isDNSSubdomain(s); got != want {
			t.Errorf("isDNSSubdomain(%q) = %v", s, got)
		}
	}
}
