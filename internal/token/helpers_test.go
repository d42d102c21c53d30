package token

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Test fixtures shared by the tests in this package. Keys and certificates
// are generated on the fly; nothing secret lives in testdata.

const (
	testIssuer   = "https://sts.postern.test"
	testAudience = "spiffe://postern.test/ns/shop/sa/cart"
)

// testNow is the fixed instant the tests' clocks start at.
var testNow = time.Unix(1_800_000_000, 0).UTC()

// testKey is a signing key with its kid and algorithm.
type testKey struct {
	kid  string
	alg  jose.SignatureAlgorithm
	priv crypto.Signer
}

// newTestKey generates a fresh key for alg (ES256, EdDSA or RS256).
func newTestKey(tb testing.TB, alg jose.SignatureAlgorithm, kid string) *testKey {
	tb.Helper()
	var priv crypto.Signer
	var err error
	switch alg {
	case jose.ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case jose.EdDSA:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	case jose.RS256:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		tb.Fatalf("newTestKey: unsupported algorithm %s", alg)
	}
	if err != nil {
		tb.Fatalf("generate %s key: %v", alg, err)
	}
	return &testKey{kid: kid, alg: alg, priv: priv}
}

// public returns the public JWK of k, with kid and use "sig" (and no alg).
func (k *testKey) public() jose.JSONWebKey {
	return jose.JSONWebKey{Key: k.priv.Public(), KeyID: k.kid, Use: "sig"}
}

// signer returns a Signer for k writing typ.
func (k *testKey) signer(tb testing.TB, typ string) *Signer {
	tb.Helper()
	s, err := NewSigner(k.kid, k.alg, k.priv, typ)
	if err != nil {
		tb.Fatalf("NewSigner: %v", err)
	}
	return s
}

// mint signs c with k through NewSigner, typ at+jwt.
func (k *testKey) mint(tb testing.TB, c *Claims) string {
	tb.Helper()
	raw, err := k.signer(tb, TypeAccessToken).Sign(c)
	if err != nil {
		tb.Fatalf("Sign: %v", err)
	}
	return raw
}

// header returns the header NewSigner would write for k.
func (k *testKey) header() map[string]any {
	return map[string]any{"alg": string(k.alg), "kid": k.kid, "typ": TypeAccessToken}
}

// craft hand-builds a compact JWS over header and payload, signed by k with
// the standard library (not go-jose), so that tests control every byte.
func (k *testKey) craft(tb testing.TB, header map[string]any, payload []byte) string {
	tb.Helper()
	input := b64JSON(tb, header) + "." + b64(payload)
	return input + "." + b64(rawSign(tb, k.alg, k.priv, []byte(input)))
}

// craftClaims is craft over the JSON of a claims map.
func (k *testKey) craftClaims(tb testing.TB, header map[string]any, claims map[string]any) string {
	tb.Helper()
	p, err := json.Marshal(claims)
	if err != nil {
		tb.Fatal(err)
	}
	return k.craft(tb, header, p)
}

// rawSign signs input as JWS alg prescribes (RFC 7518 §3), with the standard
// library only.
func rawSign(tb testing.TB, alg jose.SignatureAlgorithm, priv crypto.Signer, input []byte) []byte {
	tb.Helper()
	switch alg {
	case jose.ES256:
		d := sha256.Sum256(input)
		r, s, err := ecdsa.Sign(rand.Reader, priv.(*ecdsa.PrivateKey), d[:])
		if err != nil {
			tb.Fatal(err)
		}
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		return sig
	case jose.EdDSA:
		return ed25519.Sign(priv.(ed25519.PrivateKey), input)
	case jose.RS256:
		d := sha256.Sum256(input)
		sig, err := rsa.SignPKCS1v15(rand.Reader, priv.(*rsa.PrivateKey), crypto.SHA256, d[:])
		if err != nil {
			tb.Fatal(err)
		}
		return sig
	}
	tb.Fatalf("rawSign: unsupported algorithm %s", alg)
	return nil
}

// rawVerify checks a compact JWS against pub with the standard library only;
// the fuzz target uses it as an oracle independent of go-jose.
func rawVerify(raw string, pub crypto.PublicKey) bool {
	i := strings.LastIndexByte(raw, '.')
	if i < 0 {
		return false
	}
	sig, err := base64.RawURLEncoding.DecodeString(raw[i+1:])
	if err != nil {
		return false
	}
	input := []byte(raw[:i])
	switch pub := pub.(type) {
	case *ecdsa.PublicKey:
		if len(sig) != 64 {
			return false
		}
		d := sha256.Sum256(input)
		return ecdsa.Verify(pub, d[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
	case ed25519.PublicKey:
		return ed25519.Verify(pub, input, sig)
	}
	return false
}

// hmacToken builds an HS256 token keyed with secret: the algorithm-confusion
// attack when secret is the verifier's public key.
func hmacToken(tb testing.TB, header map[string]any, claims map[string]any, secret []byte) string {
	tb.Helper()
	p, err := json.Marshal(claims)
	if err != nil {
		tb.Fatal(err)
	}
	input := b64JSON(tb, header) + "." + b64(p)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(input))
	return input + "." + b64(m.Sum(nil))
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func b64JSON(tb testing.TB, v any) string {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return b64(b)
}

// validClaims returns a claim set that a verifier configured with testIssuer
// and testAudience accepts at testNow.
func validClaims() *Claims {
	return &Claims{
		Issuer:    testIssuer,
		Subject:   "alice",
		Audience:  []string{testAudience},
		Expiry:    testNow.Add(5 * time.Minute),
		NotBefore: testNow.Add(-time.Minute),
		IssuedAt:  testNow.Add(-time.Minute),
		ID:        "jti-1",
		Scope:     "orders.read",
	}
}

// validClaimsMap is validClaims as a raw JSON claims map, for hand-crafting.
func validClaimsMap() map[string]any {
	return map[string]any{
		"iss": testIssuer,
		"sub": "alice",
		"aud": testAudience,
		"exp": testNow.Add(5 * time.Minute).Unix(),
		"iat": testNow.Add(-time.Minute).Unix(),
	}
}

// staticKeys returns a StaticKeySet of the public halves of keys.
func staticKeys(tb testing.TB, keys ...*testKey) *StaticKeySet {
	tb.Helper()
	var set jose.JSONWebKeySet
	for _, k := range keys {
		set.Keys = append(set.Keys, k.public())
	}
	ks, err := NewStaticKeySet(set)
	if err != nil {
		tb.Fatalf("NewStaticKeySet: %v", err)
	}
	return ks
}

// newTestVerifier returns a verifier for testIssuer and testAudience at the
// fixed testNow, with cfg's non-zero fields overriding.
func newTestVerifier(tb testing.TB, keys KeySet, mod func(*VerifierConfig)) *Verifier {
	tb.Helper()
	cfg := VerifierConfig{
		Issuer:   testIssuer,
		Audience: testAudience,
		Keys:     keys,
		Now:      func() time.Time { return testNow },
	}
	if mod != nil {
		mod(&cfg)
	}
	v, err := NewVerifier(cfg)
	if err != nil {
		tb.Fatalf("NewVerifier: %v", err)
	}
	return v
}

// selfSignedCert returns a fresh self-signed ECDSA certificate.
func selfSignedCert(tb testing.TB, cn string) *x509.Certificate {
	tb.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    testNow.Add(-time.Hour),
		NotAfter:     testNow.Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

// fakeClock is an injectable clock that only moves when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: testNow} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// allSentinels are the errors Verify may wrap; every failure matches one.
var allSentinels = []error{
	ErrTooLarge, ErrMalformed, ErrAlgorithm, ErrType, ErrUnknownKey,
	ErrKeysUnavailable, ErrSignature, ErrIssuer, ErrAudience, ErrExpired,
	ErrNotYetValid, ErrBinding,
}

func isSentinel(err error) bool {
	for _, s := range allSentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}
