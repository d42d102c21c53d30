package token

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

// FuzzVerify feeds arbitrary strings to a Verifier that trusts two test keys.
// It must never panic, every failure must carry a sentinel, and a success
// must be a token whose signature the standard library, independently of
// go-jose, verifies with one of those keys.
func FuzzVerify(f *testing.F) {
	ec := newTestKey(f, jose.ES256, "ec-1")
	ed := newTestKey(f, jose.EdDSA, "ed-1")
	other := newTestKey(f, jose.ES256, "ec-1")
	keys := staticKeys(f, ec, ed)
	v := newTestVerifier(f, keys, func(c *VerifierConfig) { c.Types = []string{TypeAccessToken} })

	full := fullClaims()
	full.Audience = []string{testAudience}
	for _, tok := range []string{
		ec.mint(f, validClaims()),
		ed.mint(f, validClaims()),
		ec.mint(f, full),
		other.mint(f, validClaims()),
		ec.craftClaims(f, ec.header(), map[string]any{"iss": testIssuer, "aud": []any{testAudience, 1}, "exp": 2e9}),
		ec.craftClaims(f, map[string]any{"alg": "ES256", "kid": "ec-1", "typ": "at+jwt", "jwk": map[string]any{"kty": "EC"}}, validClaimsMap()),
		ed.craft(f, ed.header(), []byte(`{"iss":"`+testIssuer+`","act":{"sub":"a","act":{"sub":"b"}},"exp":2e9}`)),
		b64JSON(f, map[string]any{"alg": "none"}) + "." + b64JSON(f, validClaimsMap()) + ".",
		hmacToken(f, map[string]any{"alg": "HS256", "kid": "ec-1"}, validClaimsMap(), []byte("secret")),
		"", ".", "..", "a.b.c", "eyJ.eyJ.", `{"payload":"e30","signatures":[]}`,
	} {
		f.Add(tok)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		c, err := v.Verify(context.Background(), raw)
		if err != nil {
			if c != nil {
				t.Fatalf("claims returned with error %v", err)
			}
			if !isSentinel(err) {
				t.Fatalf("error %v wraps no sentinel", err)
			}
			return
		}
		if c == nil {
			t.Fatal("nil claims and nil error")
		}
		if !rawVerify(raw, ec.priv.Public()) && !rawVerify(raw, ed.priv.Public()) {
			t.Fatalf("accepted a token not signed by a trusted key: %q", raw)
		}
		if c.Issuer != testIssuer || !c.HasAudience(testAudience) || c.Expiry.Before(testNow) {
			t.Fatalf("accepted claims that fail the checks: %+v", c)
		}
	})
}

// FuzzClaimsUnmarshal decodes arbitrary bytes as a claim set. It must never
// panic; what it accepts must encode, and encoding must be stable after one
// round (the first round drops sub-second times and empty values).
func FuzzClaimsUnmarshal(f *testing.F) {
	for _, c := range []*Claims{validClaims(), fullClaims(), {}} {
		b, err := json.Marshal(c)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	for _, s := range []string{
		`{}`, `null`, `[]`, `{"aud":["a",1]}`, `{"exp":1.5e9,"nbf":0.5}`, `{"act":{"sub":"a","act":{}}}`,
		`{"cnf":{"x5t#S256":"x","jkt":"y"}}`, `{"x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}`,
		`{"iss":"a","iss":"b","ISS":"c"}`, `{"x":"\ud800"}`, `{"a":"[{\"]"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var c Claims
		if err := json.Unmarshal(b, &c); err != nil {
			return
		}
		_ = c.Map()
		_ = c.Act.Chain()
		if c.Act.Depth() > maxJSONDepth || c.MayAct.Depth() > maxJSONDepth {
			t.Fatalf("act chain deeper than %d", maxJSONDepth)
		}
		m1, err := json.Marshal(&c)
		if err != nil {
			return // e.g. an Extra value encoding/json cannot re-encode
		}
		var c2 Claims
		if err := json.Unmarshal(m1, &c2); err != nil {
			t.Fatalf("re-decoding %s: %v", m1, err)
		}
		m2, err := json.Marshal(&c2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(m1, m2) {
			t.Fatalf("unstable encoding:\n%s\n%s", m1, m2)
		}
	})
}

// FuzzParseUnverified: no panics, claims exactly when no error, and
// PeekIssuer agrees with ParseUnverified on iss (the two must never let a
// verifier be chosen for one issuer while the claims name another).
func FuzzParseUnverified(f *testing.F) {
	k := newTestKey(f, jose.ES256, "k")
	f.Add(k.mint(f, validClaims()))
	f.Add(k.mint(f, fullClaims()))
	f.Add(b64JSON(f, map[string]any{"alg": "none"}) + "." + b64([]byte(`{"iss":"a","ISS":"b"}`)) + ".")
	f.Add(b64([]byte(`{"alg":1}`)) + "." + b64([]byte(`{"iss":5}`)) + ".sig")
	f.Add("a.b")
	f.Add("...")
	f.Add(" e30.e30.e30 ")
	f.Fuzz(func(t *testing.T, raw string) {
		h, c, err := ParseUnverified(raw)
		if (err == nil) != (c != nil) {
			t.Fatalf("claims %v with error %v", c, err)
		}
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error %v is neither ErrMalformed nor ErrTooLarge", err)
			}
			return
		}
		_ = h
		if raw != strings.TrimSpace(raw) {
			return // ParseUnverified trims, PeekIssuer does not
		}
		iss, perr := PeekIssuer(raw)
		switch {
		case c.Issuer == "" && perr == nil:
			t.Fatalf("PeekIssuer found %q where the claims have none", iss)
		case c.Issuer != "" && (perr != nil || iss != c.Issuer):
			t.Fatalf("PeekIssuer = %q, %v; claims say %q", iss, perr, c.Issuer)
		}
	})
}
