package keys

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"log/slog"
	"time"

	"github.com/go-jose/go-jose/v4"

	"postern.dev/postern/internal/store"
)

// Key is a signing key held in memory. Its String and LogValue show only the
// kid and algorithm.
type Key struct {
	ID        string                  // kid: base64url of the RFC 7638 JWK thumbprint (SHA-256) of the public key
	Algorithm jose.SignatureAlgorithm // ES256 or EdDSA
	Signer    crypto.Signer           // *ecdsa.PrivateKey or ed25519.PrivateKey
	Public    crypto.PublicKey        // *ecdsa.PublicKey or ed25519.PublicKey
}

// String returns the kid and algorithm, never the private key.
func (k Key) String() string { return "Key(" + k.ID + ", " + string(k.Algorithm) + ")" }

// LogValue logs the kid and algorithm, never the private key.
func (k Key) LogValue() slog.Value {
	return slog.GroupValue(slog.String("kid", k.ID), slog.String("alg", string(k.Algorithm)))
}

// sealAD is the additional data a signing key is sealed with: it binds the
// blob to its record, so it cannot be moved to another kid.
func sealAD(kid string) []byte { return []byte("postern signing key\x00" + kid) }

// generate creates a signing key for alg and its sealed store record.
func generate(kek *KEK, alg jose.SignatureAlgorithm, now, activateAt time.Time) (*Key, store.SigningKey, error) {
	var signer crypto.Signer
	switch alg {
	case jose.ES256:
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, store.SigningKey{}, fmt.Errorf("keys: generating key: %w", err)
		}
		signer = k
	case jose.EdDSA:
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, store.SigningKey{}, fmt.Errorf("keys: generating key: %w", err)
		}
		signer = k
	default:
		return nil, store.SigningKey{}, fmt.Errorf("keys: unsupported algorithm %q", alg)
	}
	pub := signer.Public()
	kid, err := thumbprint(pub)
	if err != nil {
		return nil, store.SigningKey{}, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, store.SigningKey{}, fmt.Errorf("keys: encoding public key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(signer)
	if err != nil {
		return nil, store.SigningKey{}, fmt.Errorf("keys: encoding private key: %w", err)
	}
	sealed, err := kek.Seal(der, sealAD(kid))
	clear(der)
	if err != nil {
		return nil, store.SigningKey{}, err
	}
	rec := store.SigningKey{
		ID:         kid,
		Algorithm:  string(alg),
		Public:     pubDER,
		Sealed:     sealed,
		KEKID:      kek.ID(),
		CreatedAt:  now,
		ActivateAt: activateAt,
	}
	return &Key{ID: kid, Algorithm: alg, Signer: signer, Public: pub}, rec, nil
}

// thumbprint returns the kid of a public key.
func thumbprint(pub crypto.PublicKey) (string, error) {
	jwk := jose.JSONWebKey{Key: pub}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("keys: thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}

// parsePublic checks a record's public half: its algorithm, key type and that
// its kid is the key's thumbprint.
func parsePublic(rec store.SigningKey) (jose.SignatureAlgorithm, crypto.PublicKey, error) {
	alg := jose.SignatureAlgorithm(rec.Algorithm)
	pub, err := x509.ParsePKIXPublicKey(rec.Public)
	if err != nil {
		return "", nil, fmt.Errorf("keys: signing key %s: public key does not parse", rec.ID)
	}
	switch p := pub.(type) {
	case *ecdsa.PublicKey:
		if alg != jose.ES256 || p.Curve != elliptic.P256() {
			return "", nil, fmt.Errorf("keys: signing key %s: algorithm %q does not match its key", rec.ID, rec.Algorithm)
		}
	case ed25519.PublicKey:
		if alg != jose.EdDSA {
			return "", nil, fmt.Errorf("keys: signing key %s: algorithm %q does not match its key", rec.ID, rec.Algorithm)
		}
	default:
		return "", nil, fmt.Errorf("keys: signing key %s: unsupported key type %T", rec.ID, pub)
	}
	kid, err := thumbprint(pub)
	if err != nil {
		return "", nil, err
	}
	if kid != rec.ID {
		return "", nil, fmt.Errorf("keys: signing key %s: kid is not the thumbprint of its public key", rec.ID)
	}
	return alg, pub, nil
}

// unseal opens a record's private key with kek and checks that it is the
// private half of the record's public key.
func unseal(kek *KEK, rec store.SigningKey) (*Key, error) {
	alg, pub, err := parsePublic(rec)
	if err != nil {
		return nil, err
	}
	if rec.KEKID != kek.ID() {
		return nil, fmt.Errorf("keys: signing key %s was sealed with key-encryption key %s, not %s", rec.ID, rec.KEKID, kek.ID())
	}
	der, err := kek.Open(rec.Sealed, sealAD(rec.ID))
	if err != nil {
		return nil, fmt.Errorf("keys: signing key %s: sealed private key does not open (wrong key-encryption key, moved from another record, or modified)", rec.ID)
	}
	defer clear(der)
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("keys: signing key %s: private key does not parse", rec.ID)
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("keys: signing key %s: unsupported private key type %T", rec.ID, priv)
	}
	got, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil || !bytes.Equal(got, rec.Public) {
		return nil, fmt.Errorf("keys: signing key %s: private key does not match its public key", rec.ID)
	}
	return &Key{ID: rec.ID, Algorithm: alg, Signer: signer, Public: pub}, nil
}

// publicJWK is the published form of a key.
func publicJWK(kid string, alg jose.SignatureAlgorithm, pub crypto.PublicKey) jose.JSONWebKey {
	return jose.JSONWebKey{Key: pub, KeyID: kid, Algorithm: string(alg), Use: "sig"}
}
