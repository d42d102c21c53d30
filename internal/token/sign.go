package token

import (
	"crypto"
	"crypto/rand"
	"encoding/base64"
	"fmt"

	"github.com/go-jose/go-jose/v4"
)

// Token types written in the "typ" header.
const (
	TypeAccessToken = "at+jwt" // RFC 9068 JWT access tokens
	TypeJWT         = "JWT"
)

// Signer signs claim sets with one key. It is safe for concurrent use.
type Signer struct {
	s   jose.Signer
	kid string
	alg jose.SignatureAlgorithm
}

// NewSigner returns a Signer for key (an *ecdsa.PrivateKey, ed25519.PrivateKey
// or *rsa.PrivateKey) that writes kid and typ into every header (an empty
// typ writes none).
func NewSigner(kid string, alg jose.SignatureAlgorithm, key crypto.Signer, typ string) (*Signer, error) {
	opts := &jose.SignerOptions{}
	if typ != "" { // no typ header rather than an empty one
		opts = opts.WithType(jose.ContentType(typ))
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, opts)
	if err != nil {
		return nil, fmt.Errorf("token: signer for key %q: %w", kid, err)
	}
	return &Signer{s: s, kid: kid, alg: alg}, nil
}

// KeyID returns the kid this signer writes.
func (s *Signer) KeyID() string { return s.kid }

// Algorithm returns the JOSE algorithm this signer uses.
func (s *Signer) Algorithm() jose.SignatureAlgorithm { return s.alg }

// Sign returns the compact serialization of c signed by s.
func (s *Signer) Sign(c *Claims) (string, error) {
	// MarshalJSON directly: through json.Marshal the encoder would
	// validate and compact the bytes it returns, a second pass over them.
	payload, err := c.MarshalJSON()
	if err != nil {
		return "", fmt.Errorf("token: encode claims: %w", err)
	}
	obj, err := s.s.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("token: sign: %w", err)
	}
	return obj.CompactSerialize()
}

// NewID returns a random 128-bit identifier, base64url, for jti and sid.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	return base64.RawURLEncoding.EncodeToString(b[:])
}
