package token

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

func benchSign(b *testing.B, alg jose.SignatureAlgorithm) {
	k := newTestKey(b, alg, "k")
	s := k.signer(b, TypeAccessToken)
	c := fullClaims()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Sign(c); err != nil {
			b.Fatal(err)
		}
	}
}

func benchVerify(b *testing.B, alg jose.SignatureAlgorithm) {
	k := newTestKey(b, alg, "k")
	c := fullClaims()
	c.Audience = []string{testAudience}
	raw := k.mint(b, c)
	v := newTestVerifier(b, staticKeys(b, k), nil)
	ctx := context.Background()
	if _, err := v.Verify(ctx, raw); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, raw); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSignES256(b *testing.B)   { benchSign(b, jose.ES256) }
func BenchmarkVerifyES256(b *testing.B) { benchVerify(b, jose.ES256) }
func BenchmarkSignEdDSA(b *testing.B)   { benchSign(b, jose.EdDSA) }
func BenchmarkVerifyEdDSA(b *testing.B) { benchVerify(b, jose.EdDSA) }

// BenchmarkRawES256SignVerify is the floor: one ECDSA P-256 signature and
// one verification over a SHA-256 digest with crypto/ecdsa directly, no JOSE.
func BenchmarkRawES256SignVerify(b *testing.B) {
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	digest := sha256.Sum256([]byte("postern raw baseline"))
	b.Run("sign", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := ecdsa.SignASN1(rand.Reader, priv, digest[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
	sig, err := ecdsa.SignASN1(rand.Reader, priv, digest[:])
	if err != nil {
		b.Fatal(err)
	}
	b.Run("verify", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if !ecdsa.VerifyASN1(&priv.PublicKey, digest[:], sig) {
				b.Fatal("verify failed")
			}
		}
	})
	b.Run("sign+verify", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			s, err := ecdsa.SignASN1(rand.Reader, priv, digest[:])
			if err != nil {
				b.Fatal(err)
			}
			if !ecdsa.VerifyASN1(&priv.PublicKey, digest[:], s) {
				b.Fatal("verify failed")
			}
		}
	})
}
