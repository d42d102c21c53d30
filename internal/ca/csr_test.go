package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"strings"
	"testing"
)

// rawCSR builds a CSR by hand, for keys the standard library cannot make.
func rawCSR(t testing.TB, alg pkix.AlgorithmIdentifier, key []byte) []byte {
	t.Helper()
	type spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	type info struct {
		Version    int
		Subject    asn1.RawValue
		SPKI       spki
		Attributes []asn1.RawValue `asn1:"tag:0"`
	}
	der, err := asn1.Marshal(struct {
		Info   info
		SigAlg pkix.AlgorithmIdentifier
		Sig    asn1.BitString
	}{
		Info:   info{Subject: asn1.RawValue{FullBytes: []byte{0x30, 0}}, SPKI: spki{alg, asn1.BitString{Bytes: key, BitLength: 8 * len(key)}}},
		SigAlg: pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}},
		Sig:    asn1.BitString{Bytes: []byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01}, BitLength: 64},
	})
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func mustMarshal(t testing.TB, v any) []byte {
	t.Helper()
	b, err := asn1.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseCSR(t *testing.T) {
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}

	good := csrFor(t, p256(t), "x", nil, nil)
	badSig := bytes.Clone(good)
	badSig[len(badSig)-3] ^= 0xff // inside the signature's s integer

	// P-256 OID with the last arc changed to prime192v1 (P-192), unsupported.
	p192 := bytes.Replace(good, []byte{0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}, []byte{0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x01}, 1)
	dsaParams := mustMarshal(t, struct{ P, Q, G *big.Int }{big.NewInt(23), big.NewInt(11), big.NewInt(4)})
	dsa := rawCSR(t, pkix.AlgorithmIdentifier{Algorithm: oidPublicKeyDSA, Parameters: asn1.RawValue{FullBytes: dsaParams}}, mustMarshal(t, big.NewInt(8)))
	unknown := rawCSR(t, pkix.AlgorithmIdentifier{Algorithm: asn1.ObjectIdentifier{1, 2, 3, 4}}, []byte{1, 2, 3})

	tests := []struct {
		name    string
		der     []byte
		want    string // exact error, "" for success
		prefix  bool   // want is a prefix (the rest comes from crypto/x509)
		weakKey bool
	}{
		{name: "p256", der: good},
		{name: "p384", der: csrFor(t, p384, "x", nil, nil)},
		{name: "p521", der: csrFor(t, p521, "x", nil, nil)},
		{name: "rsa2048", der: csrFor(t, rsa2048, "x", nil, nil)},
		{name: "ed25519", der: csrFor(t, edKey, "x", nil, nil)},
		{name: "bad signature", der: badSig, want: "ca: csr: signature does not verify: x509: ECDSA verification failure"},
		{name: "rsa1024", der: csrFor(t, rsa1024, "x", nil, nil), want: "ca: csr: weak or unsupported key: RSA key of 1024 bits (want 2048 to 8192)", weakKey: true},
		{name: "p224", der: csrFor(t, p224, "x", nil, nil), want: "ca: csr: weak or unsupported key: ECDSA curve P-224 (want P-256, P-384 or P-521)", weakKey: true},
		{name: "p192", der: p192, want: "ca: csr: weak or unsupported key: ECDSA curve 1.2.840.10045.3.1.1", weakKey: true},
		{name: "dsa", der: dsa, want: "ca: csr: weak or unsupported key: ", prefix: true, weakKey: true},
		{name: "unknown algorithm", der: unknown, want: "ca: csr: weak or unsupported key: ", prefix: true, weakKey: true},
		{name: "empty", der: nil, want: "ca: csr: empty"},
		{name: "too large", der: make([]byte, MaxCSRSize+1), want: "ca: csr: larger than 16384 bytes"},
		{name: "garbage", der: []byte{0x30, 0x03, 0x01, 0x01, 0xff}, want: "ca: csr: malformed: ", prefix: true},
		{name: "trailing data", der: append(bytes.Clone(good), 0), want: "ca: csr: malformed: ", prefix: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			csr, err := ParseCSR(tt.der)
			if tt.want == "" {
				if err != nil || csr == nil {
					t.Fatalf("err = %v", err)
				}
				return
			}
			switch {
			case err == nil:
				t.Fatalf("accepted, want %q", tt.want)
			case tt.prefix && !strings.HasPrefix(err.Error(), tt.want):
				t.Fatalf("err = %q, want prefix %q", err, tt.want)
			case !tt.prefix && err.Error() != tt.want:
				t.Fatalf("err = %q, want %q", err, tt.want)
			case errors.Is(err, ErrWeakKey) != tt.weakKey:
				t.Fatalf("errors.Is(ErrWeakKey) = %v", !tt.weakKey)
			}
		})
	}
}

func FuzzParseCSR(f *testing.F) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(csrFor(f, p256(f), "svc", []string{"spiffe://example.org/a"}, []string{"a.example.org"}))
	f.Add(csrFor(f, rsaKey, "", nil, nil))
	f.Add(csrFor(f, p224, "weak", nil, nil))
	f.Add(csrFor(f, edKey, "ed", nil, nil))
	f.Add(rawCSR(f, pkix.AlgorithmIdentifier{Algorithm: oidPublicKeyDSA}, []byte{2, 1, 8}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, der []byte) {
		csr, err := ParseCSR(der)
		if err != nil {
			if csr != nil {
				t.Fatal("CSR returned with an error")
			}
			if !strings.HasPrefix(err.Error(), "ca: csr: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		if err := checkPublicKey(csr.PublicKey); err != nil {
			t.Fatalf("accepted a weak key: %v", err)
		}
		if err := csr.CheckSignature(); err != nil {
			t.Fatalf("accepted a bad signature: %v", err)
		}
	})
}

// BenchmarkSignCSR measures issuance from a CSR: parse, key check, CSR
// signature verify, certificate signing (crypto/x509 also verifies its own
// signature) and parsing the result.
func BenchmarkSignCSR(b *testing.B) {
	e := newEnv(b)
	csr := csrFor(b, p256(b), "svc", nil, nil)
	id := mustID(b, "/ns/shop/sa/cart")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.ca.SignCSR(ctx, csr, id, 0, nil); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
}

// BenchmarkIssueX509SVID is issuance from a public key, without the CSR.
func BenchmarkIssueX509SVID(b *testing.B) {
	e := newEnv(b)
	req := X509SVIDRequest{ID: mustID(b, "/ns/shop/sa/cart"), PublicKey: p256(b).Public()}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.ca.IssueX509SVID(ctx, req); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "svids/s")
}

// BenchmarkECDSAP256Sign is the raw baseline: one P-256 signature over a
// SHA-256 digest.
func BenchmarkECDSAP256Sign(b *testing.B) {
	key := p256(b)
	digest := sha256.Sum256([]byte("tbsCertificate"))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ecdsa.SignASN1(rand.Reader, key, digest[:]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
}

// BenchmarkECDSAP256Verify is the other half of the cost: SignCSR verifies
// twice (the CSR, and crypto/x509's check of its own signature).
func BenchmarkECDSAP256Verify(b *testing.B) {
	key := p256(b)
	digest := sha256.Sum256([]byte("tbsCertificate"))
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
			b.Fatal("verify failed")
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifies/s")
}
