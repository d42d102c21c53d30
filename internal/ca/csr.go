package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
)

// MaxCSRSize bounds the DER size of a certificate signing request that
// ParseCSR accepts. A CSR with a 4096-bit RSA key is under 2 KiB.
const MaxCSRSize = 16 << 10

// Key size bounds for RSA keys in CSRs and requests. Larger keys are refused
// because verifying them is slow enough to be a denial of service lever.
const (
	minRSABits = 2048
	maxRSABits = 8192
)

// ErrWeakKey is wrapped by every error about a public key that is too weak or
// of an unsupported type ("ca: csr: weak or unsupported key: ..."); callers
// map it to a client error.
var ErrWeakKey = errors.New("weak or unsupported key")

var (
	oidPublicKeyRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidPublicKeyDSA   = asn1.ObjectIdentifier{1, 2, 840, 10040, 4, 1}
	oidPublicKeyECDSA = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
)

// ParseCSR parses a DER PKCS #10 certificate signing request, refuses it when
// its public key is weak or of an unsupported type (RSA under 2048 or over
// 8192 bits, ECDSA on a curve other than P-256, P-384 or P-521, DSA, anything
// unknown), and checks its self-signature. Callers must ignore the CSR's
// subject and SANs: an SVID carries only the attested identity.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) == 0 {
		return nil, errors.New("ca: csr: empty")
	}
	if len(der) > MaxCSRSize {
		return nil, fmt.Errorf("ca: csr: larger than %d bytes", MaxCSRSize)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		// The standard parser fails on keys it does not know (for example
		// ECDSA on secp256k1); say so rather than "malformed".
		if kerr := classifyUnparsedKey(der); kerr != nil {
			return nil, fmt.Errorf("ca: csr: %w", kerr)
		}
		return nil, fmt.Errorf("ca: csr: malformed: %w", err)
	}
	// The key is checked before the signature so that a huge or odd key
	// costs nothing to refuse.
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("ca: csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("ca: csr: signature does not verify: %w", err)
	}
	return csr, nil
}

// checkPublicKey refuses keys that are weak or of an unsupported type. The
// error wraps ErrWeakKey.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k.N == nil {
			return fmt.Errorf("%w: RSA key without modulus", ErrWeakKey)
		}
		if bits := k.N.BitLen(); bits < minRSABits || bits > maxRSABits {
			return fmt.Errorf("%w: RSA key of %d bits (want %d to %d)", ErrWeakKey, bits, minRSABits, maxRSABits)
		}
		return nil
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256(), elliptic.P384(), elliptic.P521():
			return nil
		}
		name := "unknown"
		if k.Curve != nil && k.Curve.Params() != nil {
			name = k.Curve.Params().Name
		}
		return fmt.Errorf("%w: ECDSA curve %s (want P-256, P-384 or P-521)", ErrWeakKey, name)
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return fmt.Errorf("%w: Ed25519 key of %d bytes", ErrWeakKey, len(k))
		}
		return nil
	case nil:
		return fmt.Errorf("%w: no public key", ErrWeakKey)
	default:
		return fmt.Errorf("%w: key type %T", ErrWeakKey, pub)
	}
}

// classifyUnparsedKey looks at the subjectPublicKeyInfo of a CSR that the
// standard parser refused. It returns an ErrWeakKey error when the key's
// algorithm or curve is what made parsing fail, and nil when the CSR is
// malformed in some other way (or its key would have been accepted).
func classifyUnparsedKey(der []byte) error {
	var outer struct {
		Info   asn1.RawValue
		SigAlg asn1.RawValue
		Sig    asn1.RawValue
	}
	if rest, err := asn1.Unmarshal(der, &outer); err != nil || len(rest) != 0 {
		return nil
	}
	var info struct {
		Version asn1.RawValue
		Subject asn1.RawValue
		SPKI    struct {
			Algorithm pkix.AlgorithmIdentifier
			PublicKey asn1.BitString
		}
		Attributes asn1.RawValue `asn1:"optional,tag:0"`
	}
	if _, err := asn1.Unmarshal(outer.Info.FullBytes, &info); err != nil {
		return nil
	}
	alg := info.SPKI.Algorithm.Algorithm
	switch {
	case alg.Equal(oidPublicKeyDSA):
		return fmt.Errorf("%w: DSA", ErrWeakKey)
	case alg.Equal(oidPublicKeyECDSA):
		var curve asn1.ObjectIdentifier
		if _, err := asn1.Unmarshal(info.SPKI.Algorithm.Parameters.FullBytes, &curve); err != nil {
			return fmt.Errorf("%w: ECDSA key without a named curve", ErrWeakKey)
		}
		if _, err := x509.ParsePKIXPublicKey(spkiDER(info.SPKI.Algorithm, info.SPKI.PublicKey)); err != nil {
			return fmt.Errorf("%w: ECDSA curve %s", ErrWeakKey, curve)
		}
		return nil
	case alg.Equal(oidPublicKeyRSA):
		return nil
	default:
		if _, err := x509.ParsePKIXPublicKey(spkiDER(info.SPKI.Algorithm, info.SPKI.PublicKey)); err != nil {
			return fmt.Errorf("%w: algorithm %s", ErrWeakKey, alg)
		}
		return nil
	}
}

func spkiDER(alg pkix.AlgorithmIdentifier, key asn1.BitString) []byte {
	der, err := asn1.Marshal(struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}{alg, key})
	if err != nil {
		return nil
	}
	return der
}
