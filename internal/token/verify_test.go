package token

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// verifyKeys are the keys of the Verify table.
type verifyKeys struct {
	ec, ed, rs, evil *testKey
}

func newVerifyKeys(t testing.TB) verifyKeys {
	return verifyKeys{
		ec:   newTestKey(t, jose.ES256, "ec-1"),
		ed:   newTestKey(t, jose.EdDSA, "ed-1"),
		rs:   newTestKey(t, jose.RS256, "rs-1"),
		evil: newTestKey(t, jose.ES256, "evil"),
	}
}

func TestVerify(t *testing.T) {
	k := newVerifyKeys(t)
	defaultKeys := staticKeys(t, k.ec, k.ed, k.rs)
	oneKey := staticKeys(t, k.ec)

	with := func(mod func(c *Claims)) *Claims {
		c := validClaims()
		mod(c)
		return c
	}
	mapWith := func(mod func(m map[string]any)) map[string]any {
		m := validClaimsMap()
		mod(m)
		return m
	}
	valid := k.ec.mint(t, validClaims())
	parts := strings.Split(valid, ".")

	// alg "none": a header and payload with an empty signature.
	none := func(alg string) string {
		return b64JSON(t, map[string]any{"alg": alg, "typ": "at+jwt"}) + "." + b64JSON(t, validClaimsMap()) + "."
	}

	// The classic confusion attack: HS256 keyed with the ES256 public key.
	pubDER, err := x509.MarshalPKIXPublicKey(k.ec.priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	hsHeader := map[string]any{"alg": "HS256", "kid": "ec-1", "typ": "at+jwt"}

	// Embedded "jwk": the attacker's own key in the header, signed by it.
	evilJWK, err := json.Marshal(jose.JSONWebKey{Key: k.evil.priv.Public(), KeyID: "ec-1"})
	if err != nil {
		t.Fatal(err)
	}
	embed := func(kid string) map[string]any {
		h := map[string]any{"alg": "ES256", "typ": "at+jwt", "jwk": json.RawMessage(evilJWK)}
		if kid != "" {
			h["kid"] = kid
		}
		return h
	}

	// A JSON serialization of a correctly signed token.
	js, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: jose.JSONWebKey{Key: k.ec.priv, KeyID: "ec-1"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := json.Marshal(validClaims())
	obj, err := js.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	jsonSerialized := obj.FullSerialize()

	// An ES256 signature in ASN.1 DER instead of JWS's r||s.
	derSigned := func() string {
		input := parts[0] + "." + parts[1]
		d := sha256.Sum256([]byte(input))
		sig, err := ecdsa.SignASN1(rand.Reader, k.ec.priv.(*ecdsa.PrivateKey), d[:])
		if err != nil {
			t.Fatal(err)
		}
		return input + "." + b64(sig)
	}()

	// Keys whose JWK names another algorithm than the token's.
	algMismatchKeys, err := NewStaticKeySet(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{
		{Key: k.ec.priv.Public(), KeyID: "ec-1", Algorithm: string(jose.EdDSA)},
	}})
	if err != nil {
		t.Fatal(err)
	}

	nested := func(n int) map[string]any {
		return mapWith(func(m map[string]any) {
			m["x"] = json.RawMessage(strings.Repeat("[", n) + strings.Repeat("]", n))
		})
	}

	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}

	tests := []struct {
		name  string
		token string
		keys  KeySet
		mod   func(*VerifierConfig)
		want  error
		check func(t *testing.T, c *Claims)
	}{
		{name: "valid ES256", token: valid, check: func(t *testing.T, c *Claims) {
			if c.Subject != "alice" || !c.HasAudience(testAudience) || c.Scope != "orders.read" || c.ID != "jti-1" {
				t.Errorf("claims = %+v", c)
			}
			if !c.Expiry.Equal(testNow.Add(5 * time.Minute)) {
				t.Errorf("exp = %v", c.Expiry)
			}
		}},
		{name: "valid EdDSA", token: k.ed.mint(t, validClaims())},
		{name: "valid RS256 when allowed", token: k.rs.mint(t, validClaims()),
			mod: func(c *VerifierConfig) { c.Algorithms = []jose.SignatureAlgorithm{jose.RS256} }},
		{name: "valid hand-crafted ES256", token: k.ec.craftClaims(t, k.ec.header(), validClaimsMap())},
		{name: "valid with act chain and cnf", token: k.ec.mint(t, with(func(c *Claims) {
			c.Act = &Actor{Subject: "spiffe://postern.test/ns/shop/sa/web", Actor: &Actor{Subject: "spiffe://postern.test/ns/edge/sa/gw"}}
			c.Cnf = &Confirmation{X5tS256: "abc"}
			c.SessionID = "s-1"
		})), check: func(t *testing.T, c *Claims) {
			if c.Act.Depth() != 2 || c.Cnf == nil || c.Cnf.X5tS256 != "abc" || c.SessionID != "s-1" {
				t.Errorf("claims = %+v", c)
			}
		}},

		// Time.
		{name: "expired", token: k.ec.mint(t, with(func(c *Claims) { c.Expiry = testNow.Add(-time.Minute) })), want: ErrExpired},
		{name: "expired within leeway", token: k.ec.mint(t, with(func(c *Claims) { c.Expiry = testNow.Add(-10 * time.Second) }))},
		{name: "expired exactly at the leeway", token: k.ec.mint(t, with(func(c *Claims) { c.Expiry = testNow.Add(-30 * time.Second) })), want: ErrExpired},
		{name: "expired beyond a custom leeway", token: k.ec.mint(t, with(func(c *Claims) { c.Expiry = testNow.Add(-10 * time.Second) })),
			mod: func(c *VerifierConfig) { c.Leeway = time.Second }, want: ErrExpired},
		{name: "nbf in the future", token: k.ec.mint(t, with(func(c *Claims) { c.NotBefore = testNow.Add(5 * time.Minute) })), want: ErrNotYetValid},
		{name: "nbf within leeway", token: k.ec.mint(t, with(func(c *Claims) { c.NotBefore = testNow.Add(10 * time.Second) }))},
		{name: "iat in the future", token: k.ec.mint(t, with(func(c *Claims) { c.IssuedAt = testNow.Add(5 * time.Minute) })), want: ErrNotYetValid},
		{name: "missing exp", token: k.ec.mint(t, with(func(c *Claims) { c.Expiry = time.Time{} })), want: ErrMalformed},
		{name: "exp null", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) { m["exp"] = nil })), want: ErrMalformed},

		// Issuer and audience.
		{name: "wrong iss", token: k.ec.mint(t, with(func(c *Claims) { c.Issuer = "https://evil.test" })), want: ErrIssuer},
		{name: "missing iss", token: k.ec.mint(t, with(func(c *Claims) { c.Issuer = "" })), want: ErrIssuer},
		{name: "wrong aud", token: k.ec.mint(t, with(func(c *Claims) { c.Audience = []string{"spiffe://postern.test/ns/shop/sa/other"} })), want: ErrAudience},
		{name: "missing aud", token: k.ec.mint(t, with(func(c *Claims) { c.Audience = nil })), want: ErrAudience},
		{name: "aud array containing the audience", token: k.ec.mint(t, with(func(c *Claims) { c.Audience = []string{"other", testAudience} }))},
		{name: "aud not checked when the verifier has none", token: k.ec.mint(t, with(func(c *Claims) { c.Audience = []string{"other"} })),
			mod: func(c *VerifierConfig) { c.Audience = "" }},

		// Algorithms.
		{name: "alg none", token: none("none"), want: ErrAlgorithm},
		{name: "alg None", token: none("None"), want: ErrAlgorithm},
		{name: "alg empty", token: none(""), want: ErrAlgorithm},
		{name: "HS256 keyed with the public key PEM", token: hmacToken(t, hsHeader, validClaimsMap(), pubPEM), want: ErrAlgorithm},
		{name: "HS256 keyed with the public key DER", token: hmacToken(t, hsHeader, validClaimsMap(), pubDER), want: ErrAlgorithm},
		{name: "RS256 when only ES256 allowed", token: k.rs.mint(t, validClaims()),
			mod: func(c *VerifierConfig) { c.Algorithms = []jose.SignatureAlgorithm{jose.ES256} }, want: ErrAlgorithm},
		{name: "RS256 by default", token: k.rs.mint(t, validClaims()), want: ErrAlgorithm},
		{name: "EdDSA when only ES256 allowed", token: k.ed.mint(t, validClaims()),
			mod: func(c *VerifierConfig) { c.Algorithms = []jose.SignatureAlgorithm{jose.ES256} }, want: ErrAlgorithm},
		{name: "key with alg mismatch", token: valid, keys: algMismatchKeys, want: ErrAlgorithm},
		{name: "ES256 header on the kid of an Ed25519 key", token: k.ec.craftClaims(t,
			map[string]any{"alg": "ES256", "kid": "ed-1", "typ": "at+jwt"}, validClaimsMap()), want: ErrSignature},
		{name: "ES256 signature in DER", token: derSigned, want: ErrSignature},

		// Types.
		{name: "wrong typ", token: k.ec.signer(t, TypeJWT).mustSign(t, validClaims()),
			mod: func(c *VerifierConfig) { c.Types = []string{TypeAccessToken} }, want: ErrType},
		{name: "typ missing", token: k.ec.craftClaims(t, map[string]any{"alg": "ES256", "kid": "ec-1"}, validClaimsMap()),
			mod: func(c *VerifierConfig) { c.Types = []string{TypeAccessToken} }, want: ErrType},
		{name: "typ not a string", token: k.ec.craftClaims(t, map[string]any{"alg": "ES256", "kid": "ec-1", "typ": 7}, validClaimsMap()),
			mod: func(c *VerifierConfig) { c.Types = []string{TypeAccessToken} }, want: ErrType},
		{name: "typ application/at+jwt accepted for at+jwt", token: k.ec.signer(t, "application/at+jwt").mustSign(t, validClaims()),
			mod: func(c *VerifierConfig) { c.Types = []string{TypeAccessToken} }},
		{name: "typ AT+JWT accepted for at+jwt", token: k.ec.signer(t, "AT+JWT").mustSign(t, validClaims()),
			mod: func(c *VerifierConfig) { c.Types = []string{TypeAccessToken} }},
		{name: "any typ when Types is empty", token: k.ec.signer(t, "whatever").mustSign(t, validClaims())},

		// Keys.
		{name: "unknown kid", token: newTestKey(t, jose.ES256, "ec-2").mint(t, validClaims()), want: ErrUnknownKey},
		{name: "empty kid with one key", token: (&testKey{alg: jose.ES256, priv: k.ec.priv}).mint(t, validClaims()), keys: oneKey},
		{name: "empty kid with several keys", token: (&testKey{alg: jose.ES256, priv: k.ec.priv}).mint(t, validClaims()), want: ErrUnknownKey},
		{name: "key set error is passed on", token: valid, want: ErrKeysUnavailable,
			keys: KeySetFunc(func(context.Context, string) (jose.JSONWebKey, error) { return jose.JSONWebKey{}, ErrKeysUnavailable })},
		{name: "embedded jwk with the victim's kid", token: k.evil.craftClaims(t, embed("ec-1"), validClaimsMap()), want: ErrSignature},
		{name: "embedded jwk without kid", token: k.evil.craftClaims(t, embed(""), validClaimsMap()), keys: oneKey, want: ErrSignature},
		{name: "embedded jwk with its own kid", token: k.evil.craftClaims(t, embed("evil"), validClaimsMap()), want: ErrUnknownKey},
		{name: "signed by another key under a known kid", token: (&testKey{kid: "ec-1", alg: jose.ES256, priv: k.evil.priv}).mint(t, validClaims()), want: ErrSignature},

		// Integrity.
		{name: "tampered payload", token: parts[0] + "." + b64JSON(t, mapWith(func(m map[string]any) { m["sub"] = "mallory" })) + "." + parts[2], want: ErrSignature},
		{name: "tampered signature", token: parts[0] + "." + parts[1] + "." + flip(parts[2], 5), want: ErrSignature},
		{name: "signature removed", token: parts[0] + "." + parts[1] + ".", want: ErrSignature},
		{name: "tampered header", token: b64JSON(t, map[string]any{"alg": "ES256", "kid": "ec-1", "typ": "JWT"}) + "." + parts[1] + "." + parts[2], want: ErrSignature},

		// Size and structure.
		{name: "over MaxSize", token: valid, mod: func(c *VerifierConfig) { c.MaxSize = len(valid) - 1 }, want: ErrTooLarge},
		{name: "at MaxSize", token: valid, mod: func(c *VerifierConfig) { c.MaxSize = len(valid) }},
		{name: "over the default MaxSize", token: k.ec.mint(t, with(func(c *Claims) {
			c.Extra = map[string]any{"pad": strings.Repeat("a", DefaultMaxSize)}
		})), want: ErrTooLarge},
		{name: "empty", token: "", want: ErrMalformed},
		{name: "garbage", token: "not a token at all", want: ErrMalformed},
		{name: "garbage with dots", token: "!!!.###.$$$", want: ErrMalformed},
		{name: "two parts", token: parts[0] + "." + parts[1], want: ErrMalformed},
		{name: "four parts", token: valid + "." + parts[2], want: ErrMalformed},
		{name: "padded base64", token: parts[0] + "=." + parts[1] + "." + parts[2], want: ErrMalformed},
		{name: "standard base64 alphabet", token: strings.NewReplacer("-", "+", "_", "/").Replace(parts[0]) + "+." + parts[1] + "." + parts[2], want: ErrMalformed},
		{name: "header not JSON", token: b64([]byte("not json")) + "." + parts[1] + "." + parts[2], want: ErrMalformed},
		{name: "JSON serialization", token: jsonSerialized, want: ErrMalformed},
		{name: "payload an array", token: k.ec.craft(t, k.ec.header(), []byte(`[1,2]`)), want: ErrMalformed},
		{name: "payload null", token: k.ec.craft(t, k.ec.header(), []byte(`null`)), want: ErrMalformed},
		{name: "payload a string", token: k.ec.craft(t, k.ec.header(), []byte(`"iss"`)), want: ErrMalformed},
		{name: "payload not JSON", token: k.ec.craft(t, k.ec.header(), []byte(`{"iss":`)), want: ErrMalformed},

		// Claim types.
		{name: "aud a number", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) { m["aud"] = 5 })), want: ErrMalformed},
		{name: "aud array with a number", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) { m["aud"] = []any{testAudience, 5} })), want: ErrMalformed},
		{name: "aud null", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) { m["aud"] = nil })), want: ErrMalformed},
		{name: "exp a string", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) { m["exp"] = "1800000300" })), want: ErrMalformed},
		{name: "exp negative", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) { m["exp"] = -1 })), want: ErrMalformed},
		{name: "exp huge", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) { m["exp"] = 1e300 })), want: ErrMalformed},
		{name: "exp fractional", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) { m["exp"] = float64(testNow.Unix()) + 60.5 }))},
		{name: "iss a number", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) { m["iss"] = 1 })), want: ErrMalformed},
		{name: "sub an object", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) { m["sub"] = map[string]any{} })), want: ErrMalformed},
		{name: "act without sub", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) { m["act"] = map[string]any{"iss": "x"} })), want: ErrMalformed},
		{name: "nested act without sub", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) {
			m["act"] = map[string]any{"sub": "a", "act": map[string]any{"act": map[string]any{"sub": "c"}}}
		})), want: ErrMalformed},
		{name: "act a string", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) { m["act"] = "svc" })), want: ErrMalformed},
		{name: "may_act without sub", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) { m["may_act"] = map[string]any{} })), want: ErrMalformed},
		{name: "cnf a string", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) { m["cnf"] = "x" })), want: ErrMalformed},
		{name: "deeply nested JSON", token: k.ec.craftClaims(t, k.ec.header(), nested(40)), want: ErrMalformed},
		{name: "nesting at the limit", token: k.ec.craftClaims(t, k.ec.header(), nested(maxJSONDepth-1))},
		{name: "nesting one over the limit", token: k.ec.craftClaims(t, k.ec.header(), nested(maxJSONDepth)), want: ErrMalformed},
		{name: "brackets inside strings do not count", token: k.ec.craftClaims(t, k.ec.header(), mapWith(func(m map[string]any) {
			m["x"] = strings.Repeat("[{\\\"", 100)
		}))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keys := tc.keys
			if keys == nil {
				keys = defaultKeys
			}
			v := newTestVerifier(t, keys, tc.mod)
			c, err := v.Verify(context.Background(), tc.token)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if c == nil {
					t.Fatal("Verify returned nil claims and no error")
				}
				if tc.check != nil {
					tc.check(t, c)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Verify error = %v, want %v", err, tc.want)
			}
			if c != nil {
				t.Fatalf("Verify returned claims with error %v", err)
			}
			if strings.Contains(err.Error(), tc.token) && tc.token != "" {
				t.Errorf("error %q contains the token", err)
			}
		})
	}
}

func (s *Signer) mustSign(tb testing.TB, c *Claims) string {
	tb.Helper()
	raw, err := s.Sign(c)
	if err != nil {
		tb.Fatalf("Sign: %v", err)
	}
	return raw
}

func TestNewVerifier(t *testing.T) {
	keys := staticKeys(t, newTestKey(t, jose.ES256, "k"))
	tests := []struct {
		name string
		cfg  VerifierConfig
		ok   bool
	}{
		{name: "minimal", cfg: VerifierConfig{Issuer: testIssuer, Keys: keys}, ok: true},
		{name: "no issuer", cfg: VerifierConfig{Keys: keys}},
		{name: "no keys", cfg: VerifierConfig{Issuer: testIssuer}},
		{name: "HS256", cfg: VerifierConfig{Issuer: testIssuer, Keys: keys, Algorithms: []jose.SignatureAlgorithm{jose.HS256}}},
		{name: "none", cfg: VerifierConfig{Issuer: testIssuer, Keys: keys, Algorithms: []jose.SignatureAlgorithm{"none"}}},
		{name: "ES256 and HS512", cfg: VerifierConfig{Issuer: testIssuer, Keys: keys, Algorithms: []jose.SignatureAlgorithm{jose.ES256, jose.HS512}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := NewVerifier(tc.cfg)
			if tc.ok != (err == nil) {
				t.Fatalf("NewVerifier error = %v, want ok %v", err, tc.ok)
			}
			if tc.ok && v.Issuer() != testIssuer {
				t.Errorf("Issuer() = %q", v.Issuer())
			}
		})
	}
}

func TestParseAlgorithms(t *testing.T) {
	got, err := ParseAlgorithms([]string{"ES256", "EdDSA", "RS256"})
	if err != nil || len(got) != 3 || got[1] != jose.EdDSA {
		t.Fatalf("ParseAlgorithms = %v, %v", got, err)
	}
	for _, bad := range []string{"HS256", "none", "es256", ""} {
		if _, err := ParseAlgorithms([]string{"ES256", bad}); err == nil {
			t.Errorf("ParseAlgorithms accepted %q", bad)
		}
	}
}

func TestVerifyConcurrent(t *testing.T) {
	k := newTestKey(t, jose.ES256, "ec-1")
	v := newTestVerifier(t, staticKeys(t, k), nil)
	raw := k.mint(t, validClaims())
	done := make(chan error)
	for range 8 {
		go func() {
			var err error
			for range 20 {
				if _, e := v.Verify(context.Background(), raw); e != nil {
					err = e
				}
			}
			done <- err
		}()
	}
	for range 8 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

func TestThumbprint(t *testing.T) {
	cert := selfSignedCert(t, "workload")
	// Independently: base64url (no padding) of SHA-256 over the DER.
	sum := sha256.Sum256(cert.Raw)
	want := strings.TrimRight(base64.URLEncoding.EncodeToString(sum[:]), "=")
	if got := Thumbprint(cert); got != want {
		t.Fatalf("Thumbprint = %q, want %q", got, want)
	}
	if len(want) != 43 {
		t.Fatalf("thumbprint length %d, want 43", len(want))
	}
	if Thumbprint(selfSignedCert(t, "workload")) == want {
		t.Fatal("two certificates share a thumbprint")
	}
}

func TestCheckBinding(t *testing.T) {
	cert := selfSignedCert(t, "caller")
	other := selfSignedCert(t, "caller")
	sum := sha256.Sum256(cert.Raw)
	bound := &Confirmation{X5tS256: base64.RawURLEncoding.EncodeToString(sum[:])}
	tests := []struct {
		name string
		cnf  *Confirmation
		cert *x509.Certificate
		want error
	}{
		{name: "bound, right certificate", cnf: bound, cert: cert},
		{name: "bound, other certificate", cnf: bound, cert: other, want: ErrBinding},
		{name: "bound, no certificate", cnf: bound, cert: nil, want: ErrBinding},
		{name: "bound, padded thumbprint", cnf: &Confirmation{X5tS256: base64.URLEncoding.EncodeToString(sum[:])}, cert: cert, want: ErrBinding},
		{name: "bound, standard base64 thumbprint", cnf: &Confirmation{X5tS256: base64.StdEncoding.EncodeToString(sum[:])}, cert: cert, want: ErrBinding},
		{name: "unbound, no certificate", cnf: nil, cert: nil},
		{name: "unbound, a certificate", cnf: nil, cert: cert},
		{name: "empty cnf", cnf: &Confirmation{}, cert: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := validClaims()
			c.Cnf = tc.cnf
			err := c.CheckBinding(tc.cert)
			if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
				t.Fatalf("CheckBinding = %v, want %v", err, tc.want)
			}
		})
	}
}

// TestCheckBindingUnknownConfirmation: a token bound by a confirmation
// method Postern cannot check (a DPoP "jkt", a JWK) must not pass as unbound.
func TestCheckBindingUnknownConfirmation(t *testing.T) {
	cert := selfSignedCert(t, "caller")
	for _, cnf := range []string{
		`{"jkt":"0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}`,
		`{"jwk":{"kty":"EC","crv":"P-256","x":"a","y":"b"}}`,
		`{"x5t#S256":"","jkt":"x"}`,
	} {
		t.Run(cnf, func(t *testing.T) {
			var c Claims
			if err := json.Unmarshal([]byte(`{"iss":"i","cnf":`+cnf+`}`), &c); err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			if err := c.CheckBinding(cert); !errors.Is(err, ErrBinding) {
				t.Fatalf("CheckBinding = %v, want ErrBinding", err)
			}
			if err := c.CheckBinding(nil); !errors.Is(err, ErrBinding) {
				t.Fatalf("CheckBinding(nil) = %v, want ErrBinding", err)
			}
		})
	}
}

// TestVerifyThenBind is the whole inbound check: a token bound to the
// caller's certificate verifies and binds; presented by another, it fails.
func TestVerifyThenBind(t *testing.T) {
	k := newTestKey(t, jose.ES256, "ec-1")
	cert, other := selfSignedCert(t, "a"), selfSignedCert(t, "b")
	c := validClaims()
	c.Cnf = &Confirmation{X5tS256: Thumbprint(cert)}
	got, err := newTestVerifier(t, staticKeys(t, k), nil).Verify(context.Background(), k.mint(t, c))
	if err != nil {
		t.Fatal(err)
	}
	if err := got.CheckBinding(cert); err != nil {
		t.Fatalf("CheckBinding(right cert) = %v", err)
	}
	if err := got.CheckBinding(other); !errors.Is(err, ErrBinding) {
		t.Fatalf("CheckBinding(other cert) = %v, want ErrBinding", err)
	}
}

func TestParseUnverified(t *testing.T) {
	k := newTestKey(t, jose.ES256, "ec-1")
	c := validClaims()
	c.Act = &Actor{Subject: "svc-a"}
	raw := k.mint(t, c)
	parts := strings.Split(raw, ".")

	t.Run("signed token", func(t *testing.T) {
		h, got, err := ParseUnverified(raw)
		if err != nil {
			t.Fatal(err)
		}
		if h != (Header{Algorithm: "ES256", KeyID: "ec-1", Type: TypeAccessToken}) {
			t.Errorf("header = %+v", h)
		}
		if got.Issuer != testIssuer || got.Subject != "alice" || got.Act.Chain()[0] != "svc-a" {
			t.Errorf("claims = %+v", got)
		}
	})
	t.Run("surrounding whitespace", func(t *testing.T) {
		if _, _, err := ParseUnverified(" \n" + raw + "\n"); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unsigned and expired are fine", func(t *testing.T) {
		// ParseUnverified checks structure only.
		m := validClaimsMap()
		m["exp"] = 1
		tok := b64JSON(t, map[string]any{"alg": "none"}) + "." + b64JSON(t, m) + "."
		h, got, err := ParseUnverified(tok)
		if err != nil {
			t.Fatal(err)
		}
		if h.Algorithm != "none" || got.Expiry.Unix() != 1 {
			t.Errorf("header %+v, claims %+v", h, got)
		}
	})

	bad := []struct {
		name string
		raw  string
		want error
	}{
		{"empty", "", ErrMalformed},
		{"one part", "abc", ErrMalformed},
		{"two parts", parts[0] + "." + parts[1], ErrMalformed},
		{"four parts", raw + ".x", ErrMalformed},
		{"header not base64url", "***." + parts[1] + "." + parts[2], ErrMalformed},
		{"header not JSON", b64([]byte("x")) + "." + parts[1] + "." + parts[2], ErrMalformed},
		{"header alg a number", b64([]byte(`{"alg":1}`)) + "." + parts[1] + "." + parts[2], ErrMalformed},
		{"payload not base64url", parts[0] + ".***." + parts[2], ErrMalformed},
		{"payload not JSON", parts[0] + "." + b64([]byte("{")) + "." + parts[2], ErrMalformed},
		{"payload null", parts[0] + "." + b64([]byte("null")) + "." + parts[2], ErrMalformed},
		{"aud a number", parts[0] + "." + b64([]byte(`{"aud":1}`)) + "." + parts[2], ErrMalformed},
		{"too large", parts[0] + "." + strings.Repeat("A", 4*DefaultMaxSize) + "." + parts[2], ErrTooLarge},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, c, err := ParseUnverified(tc.raw)
			if !errors.Is(err, tc.want) {
				t.Fatalf("ParseUnverified error = %v, want %v", err, tc.want)
			}
			if c != nil {
				t.Fatal("claims returned with an error")
			}
		})
	}
}

func TestPeekIssuer(t *testing.T) {
	k := newTestKey(t, jose.ES256, "ec-1")
	raw := k.mint(t, validClaims())
	parts := strings.Split(raw, ".")
	payload := func(s string) string { return parts[0] + "." + b64([]byte(s)) + "." + parts[2] }
	tests := []struct {
		name string
		raw  string
		want string
		err  error
	}{
		{name: "signed token", raw: raw, want: testIssuer},
		{name: "unsigned", raw: payload(`{"iss":"https://other"}`), want: "https://other"},
		{name: "no signature part", raw: parts[0] + "." + b64([]byte(`{"iss":"x"}`)) + ".", want: "x"},
		{name: "duplicate iss, last wins", raw: payload(`{"iss":"a","iss":"b"}`), want: "b"},
		{name: "ISS is another claim", raw: payload(`{"iss":"good","ISS":"evil"}`), want: "good"},
		{name: "only ISS", raw: payload(`{"ISS":"evil"}`), err: ErrMalformed},
		{name: "empty", raw: "", err: ErrMalformed},
		{name: "one part", raw: "abc", err: ErrMalformed},
		{name: "two parts", raw: parts[0] + "." + parts[1], err: ErrMalformed},
		{name: "payload not base64url", raw: parts[0] + ".@@." + parts[2], err: ErrMalformed},
		{name: "payload not JSON", raw: payload(`{`), err: ErrMalformed},
		{name: "payload an array", raw: payload(`["iss"]`), err: ErrMalformed},
		{name: "no iss", raw: payload(`{"sub":"a"}`), err: ErrMalformed},
		{name: "iss empty", raw: payload(`{"iss":""}`), err: ErrMalformed},
		{name: "iss a number", raw: payload(`{"iss":5}`), err: ErrMalformed},
		{name: "iss null", raw: payload(`{"iss":null}`), err: ErrMalformed},
		{name: "too large", raw: parts[0] + "." + strings.Repeat("A", 4*DefaultMaxSize) + "." + parts[2], err: ErrTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PeekIssuer(tc.raw)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("PeekIssuer error = %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("PeekIssuer = %q, %v; want %q", got, err, tc.want)
			}
			// PeekIssuer and ParseUnverified must agree on iss.
			if _, c, err := ParseUnverified(tc.raw); err == nil && c.Issuer != got {
				t.Fatalf("ParseUnverified iss %q, PeekIssuer %q", c.Issuer, got)
			}
		})
	}
}
