package token

import (
	"bytes"
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

func fullClaims() *Claims {
	return &Claims{
		Issuer:    testIssuer,
		Subject:   "alice",
		Audience:  []string{"spiffe://postern.test/ns/shop/sa/cart", "spiffe://postern.test/ns/shop/sa/pay"},
		Expiry:    testNow.Add(5 * time.Minute),
		NotBefore: testNow,
		IssuedAt:  testNow,
		ID:        "jti-1",
		ClientID:  "web",
		Scope:     "orders.read orders.write",
		Act: &Actor{Subject: "spiffe://postern.test/ns/shop/sa/web", Actor: &Actor{
			Subject: "spiffe://postern.test/ns/edge/sa/gw", Issuer: "https://idp.test", Actor: &Actor{
				Subject: "spiffe://postern.test/ns/edge/sa/lb"}}},
		MayAct:    &Actor{Subject: "spiffe://postern.test/ns/shop/sa/cart"},
		Cnf:       &Confirmation{X5tS256: "bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2"},
		SessionID: "sid-1",
		Extra:     map[string]any{"tenant": "acme", "roles": []any{"admin", "dev"}, "level": 3.0, "nested": map[string]any{"a": true}},
	}
}

func TestClaimsRoundTrip(t *testing.T) {
	in := fullClaims()
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out Claims
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("Unmarshal(%s): %v", b, err)
	}
	if !reflect.DeepEqual(in, &out) {
		t.Fatalf("round trip:\n in %+v\nout %+v", in, &out)
	}
	if got := out.Act.Chain(); !reflect.DeepEqual(got, []string{
		"spiffe://postern.test/ns/shop/sa/web", "spiffe://postern.test/ns/edge/sa/gw", "spiffe://postern.test/ns/edge/sa/lb",
	}) {
		t.Errorf("Chain() = %v", got)
	}
	if d := out.Act.Depth(); d != 3 {
		t.Errorf("Depth() = %d, want 3", d)
	}
	if out.MayAct.Depth() != 1 || out.MayAct.Subject != "spiffe://postern.test/ns/shop/sa/cart" {
		t.Errorf("may_act = %+v", out.MayAct)
	}
	// The wire form uses the registered names.
	var wire map[string]any
	if err := json.Unmarshal(b, &wire); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "client_id", "scope", "act", "may_act", "cnf", "sid", "tenant", "roles", "level", "nested"} {
		if _, ok := wire[name]; !ok {
			t.Errorf("claim %q missing from %s", name, b)
		}
	}
	if len(wire) != 17 {
		t.Errorf("%d claims in %s, want 17", len(wire), b)
	}
	if wire["exp"] != float64(testNow.Add(5*time.Minute).Unix()) {
		t.Errorf("exp = %v", wire["exp"])
	}
	if cnf := wire["cnf"].(map[string]any); cnf["x5t#S256"] != in.Cnf.X5tS256 {
		t.Errorf("cnf = %v", cnf)
	}
	act := wire["act"].(map[string]any)
	if act["act"].(map[string]any)["iss"] != "https://idp.test" {
		t.Errorf("act = %v", act)
	}
}

func TestActorNil(t *testing.T) {
	var a *Actor
	if a.Chain() != nil || a.Depth() != 0 {
		t.Fatalf("nil actor: Chain %v Depth %d", a.Chain(), a.Depth())
	}
}

func TestClaimsAudienceEncoding(t *testing.T) {
	tests := []struct {
		name string
		aud  []string
		want string // JSON of "aud", "" when absent
	}{
		{name: "none", aud: nil, want: ""},
		{name: "empty slice", aud: []string{}, want: ""},
		{name: "one", aud: []string{"a"}, want: `"a"`},
		{name: "two", aud: []string{"a", "b"}, want: `["a","b"]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := json.Marshal(&Claims{Issuer: "i", Audience: tc.aud})
			if err != nil {
				t.Fatal(err)
			}
			var raw map[string]json.RawMessage
			if err := json.Unmarshal(b, &raw); err != nil {
				t.Fatal(err)
			}
			if got := string(raw["aud"]); got != tc.want {
				t.Fatalf("aud = %s, want %s (%s)", got, tc.want, b)
			}
			var back Claims
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatal(err)
			}
			if len(back.Audience) != len(tc.aud) || (len(tc.aud) > 0 && !reflect.DeepEqual(back.Audience, tc.aud)) {
				t.Fatalf("decoded aud = %v, want %v", back.Audience, tc.aud)
			}
		})
	}
}

// TestClaimsExtraNeverOverrides: an Extra entry named like a registered claim
// is dropped, whatever the registered field holds (even when it is empty).
func TestClaimsExtraNeverOverrides(t *testing.T) {
	c := validClaims()
	c.Extra = map[string]any{}
	for name := range knownClaims {
		c.Extra[name] = "evil"
	}
	c.Extra["tenant"] = "acme"
	c.Scope = "" // an empty registered claim must not be filled from Extra either
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("evil")) {
		t.Fatalf("Extra overrode a registered claim: %s", b)
	}
	if n := bytes.Count(b, []byte(`"iss"`)); n != 1 {
		t.Fatalf("iss appears %d times in %s", n, b)
	}
	var back Claims
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Issuer != testIssuer || back.Subject != "alice" || back.Scope != "" || back.Extra["tenant"] != "acme" || len(back.Extra) != 1 {
		t.Fatalf("decoded %+v", back)
	}

	// Only registered names in Extra, nothing else: they all vanish.
	b, err = json.Marshal(&Claims{Extra: map[string]any{"iss": "evil", "act": map[string]any{"sub": "x"}}})
	if err != nil || string(b) != "{}" {
		t.Fatalf("Marshal = %s, %v; want {}", b, err)
	}
	// Extra only.
	b, err = json.Marshal(&Claims{Extra: map[string]any{"x": 1}})
	if err != nil || string(b) != `{"x":1}` {
		t.Fatalf("Marshal = %s, %v", b, err)
	}
	// An Extra value that cannot be encoded is an error, not a silent drop.
	if _, err := json.Marshal(&Claims{Issuer: "i", Extra: map[string]any{"f": func() {}}}); err == nil {
		t.Fatal("Marshal of an unencodable Extra value succeeded")
	}
}

func TestClaimsUnmarshal(t *testing.T) {
	t.Run("registered claims stay out of Extra", func(t *testing.T) {
		var c Claims
		if err := json.Unmarshal([]byte(`{"iss":"i","aud":["a","b"],"exp":1800000000.25,"foo":{"bar":[1,"x",null]},"ISS":"other"}`), &c); err != nil {
			t.Fatal(err)
		}
		if c.Issuer != "i" || !reflect.DeepEqual(c.Audience, []string{"a", "b"}) {
			t.Errorf("claims %+v", c)
		}
		if want := time.Unix(1_800_000_000, 250_000_000).UTC(); !c.Expiry.Equal(want) {
			t.Errorf("exp = %v, want %v", c.Expiry, want)
		}
		want := map[string]any{"foo": map[string]any{"bar": []any{1.0, "x", nil}}, "ISS": "other"}
		if !reflect.DeepEqual(c.Extra, want) {
			t.Errorf("Extra = %#v", c.Extra)
		}
	})
	t.Run("decoding resets the claims", func(t *testing.T) {
		c := fullClaims()
		if err := json.Unmarshal([]byte(`{"sub":"bob"}`), c); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(c, &Claims{Subject: "bob"}) {
			t.Errorf("claims %+v", c)
		}
	})
	t.Run("empty object", func(t *testing.T) {
		var c Claims
		if err := json.Unmarshal([]byte(`{}`), &c); err != nil || !reflect.DeepEqual(c, Claims{}) {
			t.Errorf("claims %+v, %v", c, err)
		}
	})
	// RFC 7519 §4: names are unique. Parsers differ on which of two wins,
	// so a token with a repeated claim is refused rather than read one way.
	t.Run("duplicate claim refused", func(t *testing.T) {
		for _, in := range []string{`{"sub":"a","sub":"b"}`, `{"exp":1,"x":{"y":1},"exp":2000000000}`, `{"custom":1,"custom":2}`} {
			var c Claims
			if err := json.Unmarshal([]byte(in), &c); err == nil || !strings.Contains(err.Error(), "appears more than once") {
				t.Errorf("%s: %v", in, err)
			}
		}
		var c Claims
		if err := json.Unmarshal([]byte(`{"act":{"sub":"a"},"x":{"sub":"b","y":{"sub":"c"}}}`), &c); err != nil {
			t.Errorf("the same name in nested objects: %v", err)
		}
	})

	bad := map[string]string{
		"not an object":        `[]`,
		"null":                 `null`,
		"a string":             `"x"`,
		"iss a number":         `{"iss":1}`,
		"sub null":             `{"sub":null}`,
		"aud a number":         `{"aud":1}`,
		"aud an object":        `{"aud":{}}`,
		"aud with a number":    `{"aud":["a",1]}`,
		"aud null":             `{"aud":null}`,
		"exp a string":         `{"exp":"1"}`,
		"exp negative":         `{"exp":-1}`,
		"exp too far":          `{"exp":1e12}`,
		"exp null":             `{"exp":null}`,
		"nbf a bool":           `{"nbf":true}`,
		"iat an array":         `{"iat":[1]}`,
		"act without sub":      `{"act":{}}`,
		"act sub a number":     `{"act":{"sub":1}}`,
		"act null":             `{"act":null}`,
		"nested act no sub":    `{"act":{"sub":"a","act":{"sub":"b","act":{"iss":"c"}}}}`,
		"may_act without sub":  `{"may_act":{"iss":"x"}}`,
		"cnf an array":         `{"cnf":[]}`,
		"cnf x5t#S256 numeric": `{"cnf":{"x5t#S256":1}}`,
		"sid a number":         `{"sid":1}`,
		"scope an array":       `{"scope":["a"]}`,
		"too deep":             `{"x":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}`,
		"deep act chain":       `{"act":` + strings.Repeat(`{"sub":"s","act":`, 40) + `{"sub":"s"}` + strings.Repeat("}", 41),
		"truncated":            `{"iss":"i"`,
	}
	for name, in := range bad {
		t.Run(name, func(t *testing.T) {
			var c Claims
			if err := json.Unmarshal([]byte(in), &c); err == nil {
				t.Fatalf("Unmarshal(%s) succeeded: %+v", in, c)
			}
		})
	}
}

func TestClaimsMap(t *testing.T) {
	m := fullClaims().Map()
	if m["iss"] != testIssuer || m["sid"] != "sid-1" || m["tenant"] != "acme" || m["level"] != 3.0 {
		t.Fatalf("Map = %v", m)
	}
	if m["exp"] != float64(testNow.Add(5*time.Minute).Unix()) {
		t.Errorf("exp = %#v", m["exp"])
	}
	if aud := m["aud"].([]any); len(aud) != 2 {
		t.Errorf("aud = %#v", m["aud"])
	}
	act := m["act"].(map[string]any)
	if act["sub"] != "spiffe://postern.test/ns/shop/sa/web" || act["act"].(map[string]any)["act"].(map[string]any)["sub"] != "spiffe://postern.test/ns/edge/sa/lb" {
		t.Errorf("act = %#v", act)
	}
	if m["cnf"].(map[string]any)["x5t#S256"] == nil {
		t.Errorf("cnf = %#v", m["cnf"])
	}

	single := (&Claims{Audience: []string{"a"}}).Map()
	if single["aud"] != "a" || len(single) != 1 {
		t.Errorf("Map = %#v", single)
	}
	if got := (&Claims{}).Map(); got == nil || len(got) != 0 {
		t.Errorf("empty Map = %#v", got)
	}
	// Extra claims never shadow registered ones.
	if got := (&Claims{Subject: "alice", Extra: map[string]any{"sub": "mallory", "x": 1.0}}).Map(); got["sub"] != "alice" || got["x"] != 1.0 {
		t.Errorf("Map = %#v", got)
	}
}

func TestClaimsHelpers(t *testing.T) {
	c := &Claims{Scope: " orders.read  orders.write ", Audience: []string{"a", "b"}}
	if got := c.Scopes(); !reflect.DeepEqual(got, []string{"orders.read", "orders.write"}) {
		t.Errorf("Scopes = %v", got)
	}
	if len((&Claims{}).Scopes()) != 0 {
		t.Error("empty scope has scopes")
	}
	if !c.HasAudience("b") || c.HasAudience("c") || c.HasAudience("") {
		t.Error("HasAudience")
	}
	for _, name := range []string{"iss", "sub", "aud", "exp", "nbf", "iat", "jti", "client_id", "scope", "act", "may_act", "cnf", "sid"} {
		if !IsRegistered(name) {
			t.Errorf("IsRegistered(%q) = false", name)
		}
	}
	for _, name := range []string{"tenant", "ISS", "", "groups"} {
		if IsRegistered(name) {
			t.Errorf("IsRegistered(%q) = true", name)
		}
	}
}

func TestSigner(t *testing.T) {
	for _, alg := range []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA, jose.RS256} {
		t.Run(string(alg), func(t *testing.T) {
			k := newTestKey(t, alg, "k-"+string(alg))
			s := k.signer(t, TypeAccessToken)
			if s.KeyID() != k.kid || s.Algorithm() != alg {
				t.Fatalf("KeyID %q Algorithm %q", s.KeyID(), s.Algorithm())
			}
			raw := s.mustSign(t, fullClaims())
			h, c, err := ParseUnverified(raw)
			if err != nil {
				t.Fatal(err)
			}
			if h != (Header{Algorithm: string(alg), KeyID: k.kid, Type: TypeAccessToken}) {
				t.Errorf("header %+v", h)
			}
			if !reflect.DeepEqual(c, fullClaims()) {
				t.Errorf("claims %+v", c)
			}
			// The header carries no key material.
			hb, _ := base64.RawURLEncoding.DecodeString(strings.Split(raw, ".")[0])
			var hdr map[string]any
			if err := json.Unmarshal(hb, &hdr); err != nil {
				t.Fatal(err)
			}
			if len(hdr) != 3 {
				t.Errorf("header has extra members: %s", hb)
			}
			if !rawVerifyAny(raw, k) {
				t.Error("signature does not verify with the standard library")
			}
		})
	}
	t.Run("no typ", func(t *testing.T) {
		k := newTestKey(t, jose.ES256, "k")
		raw := k.signer(t, "").mustSign(t, validClaims())
		hb, _ := base64.RawURLEncoding.DecodeString(strings.Split(raw, ".")[0])
		if strings.Contains(string(hb), "typ") {
			t.Errorf("header %s has a typ", hb)
		}
	})
	t.Run("algorithm does not fit the key", func(t *testing.T) {
		k := newTestKey(t, jose.ES256, "k")
		for _, alg := range []jose.SignatureAlgorithm{jose.EdDSA, jose.RS256, jose.HS256, "none"} {
			if _, err := NewSigner("k", alg, k.priv, TypeJWT); err == nil {
				t.Errorf("NewSigner(%s, ECDSA key) succeeded", alg)
			}
		}
	})
	t.Run("NewID", func(t *testing.T) {
		a, b := NewID(), NewID()
		if a == b || len(a) != 22 {
			t.Fatalf("NewID = %q, %q", a, b)
		}
		if _, err := base64.RawURLEncoding.DecodeString(a); err != nil {
			t.Fatal(err)
		}
	})
}

func rawVerifyAny(raw string, k *testKey) bool {
	if _, ok := k.priv.(*ecdsa.PrivateKey); ok || k.alg == jose.EdDSA {
		return rawVerify(raw, k.priv.Public())
	}
	// RS256: go-jose's verifier on a key nobody else touched.
	jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return false
	}
	_, err = jws.Verify(k.priv.Public())
	return err == nil
}
