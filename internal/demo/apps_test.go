package demo

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"

	"postern.dev/postern/internal/token"
)

func TestDecodeClaims(t *testing.T) {
	good := base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"alice","aud":"x","act":{"sub":"gw"}}`))
	tests := []struct {
		name, in, err string
	}{
		{"missing", "", "demo: no X-Postern-Claims header"},
		{"too large", strings.Repeat("a", maxClaimsHeader+1), "demo: X-Postern-Claims is larger than 16384 bytes"},
		{"not base64", "!!", "demo: X-Postern-Claims: illegal base64 data at input byte 0"},
		{"not JSON", base64.RawURLEncoding.EncodeToString([]byte("nope")), "demo: X-Postern-Claims: invalid character 'o' in literal null (expecting 'u')"},
		{"good", good, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, raw, err := decodeClaims(tc.in)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || c.Subject != "alice" || c.Act.Chain()[0] != "gw" || !json.Valid(raw) {
				t.Fatalf("decodeClaims = %+v, %s, %v", c, raw, err)
			}
		})
	}
}

func FuzzDecodeClaims(f *testing.F) {
	f.Add(base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"https://127.0.0.1:8443","sub":"alice","aud":"spiffe://quickstart.local/ns/shop/sa/inventory","exp":1900000000,"act":{"sub":"spiffe://quickstart.local/ns/shop/sa/order-processing","act":{"sub":"spiffe://quickstart.local/ns/shop/sa/gateway"}},"cnf":{"x5t#S256":"abc"},"scope":"orders:write"}`)))
	f.Add("e30")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		c, raw, err := decodeClaims(s)
		if err == nil && (c == nil || !json.Valid(raw)) {
			t.Fatalf("accepted %q without claims", s)
		}
	})
}

func TestIdP(t *testing.T) {
	p, err := NewIdP("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close(t.Context())
	srv := httptest.NewServer(p.handler())
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	var disc map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&disc)
	resp.Body.Close()
	if disc["issuer"] != p.Issuer() || disc["jwks_uri"] != p.Issuer()+"/jwks" {
		t.Errorf("discovery = %v", disc)
	}

	resp, err = http.PostForm(srv.URL+"/token", url.Values{"username": {"alice"}})
	if err != nil {
		t.Fatal(err)
	}
	var tr struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tr)
	resp.Body.Close()
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(p.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	ks, err := token.NewStaticKeySet(set)
	if err != nil {
		t.Fatal(err)
	}
	v, err := token.NewVerifier(token.VerifierConfig{Issuer: p.Issuer(), Audience: IdPAudience, Keys: ks})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(t.Context(), tr.AccessToken)
	if err != nil {
		t.Fatalf("alice's token does not verify against the JWKS: %v", err)
	}
	if c.Subject != "alice" || c.Scope != "orders:read orders:write" || c.Extra["email"] != "alice@example.com" {
		t.Errorf("claims = %+v", c)
	}

	resp, err = http.PostForm(srv.URL+"/token", url.Values{"username": {"mallory"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("unknown user: %d", resp.StatusCode)
	}
}
