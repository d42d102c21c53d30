//go:build linux

package loadgen

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/go-jose/go-jose/v4"

	"postern.dev/postern/internal/token"
)

// MintUserToken signs the quickstart user's token (alice, who may write
// orders, valid for an hour) with the quickstart IdP's published demo key
// in keyFile (PKCS#8 PEM, P-256). Errors never hold key material.
func MintUserToken(keyFile string) (string, error) {
	b, err := os.ReadFile(keyFile)
	if err != nil {
		return "", fmt.Errorf("idp key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return "", errors.New("idp key: no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return "", fmt.Errorf("idp key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return "", errors.New("idp key: not an ECDSA key")
	}
	jwk := jose.JSONWebKey{Key: key.Public()}
	tp, err := jwk.Thumbprint(crypto.SHA256) // RFC 7638
	if err != nil {
		return "", fmt.Errorf("idp key: %w", err)
	}
	sg, err := token.NewSigner(base64.RawURLEncoding.EncodeToString(tp), jose.ES256, key, token.TypeJWT)
	if err != nil {
		return "", err
	}
	now := time.Now()
	return sg.Sign(&token.Claims{
		Issuer: "https://idp.quickstart.local", Subject: "alice", Audience: []string{"quickstart-shop"},
		Scope: "orders:read orders:write", IssuedAt: now, Expiry: now.Add(time.Hour),
		Extra: map[string]any{"email": "alice@example.com"},
	})
}
