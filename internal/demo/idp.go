package demo

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"

	"postern.dev/postern/internal/token"
)

// IdPAudience is the audience of the demo identity provider's user tokens,
// the one the quickstart's TrustedIssuer accepts.
const IdPAudience = "quickstart-shop"

// User is a demo user of the identity provider.
type User struct {
	// Name is the user's subject (sub).
	Name string
	// Scopes are the scopes of the user's tokens.
	Scopes []string
	// Email is carried as the email claim.
	Email string
}

// demoUser returns a user the identity provider knows: alice may write
// orders, bob may only read them.
func demoUser(name string) (User, bool) {
	switch name {
	case "alice":
		return User{Name: "alice", Scopes: []string{"orders:read", "orders:write"}, Email: "alice@example.com"}, true
	case "bob":
		return User{Name: "bob", Scopes: []string{"orders:read"}, Email: "bob@example.com"}, true
	}
	return User{}, false
}

// IdP is the demo's external OpenID Connect identity provider: a discovery
// document, a JWKS, and a token endpoint that signs in a demo user by name
// (no password: it is a demo). Its ES256 key is generated at start and
// never leaves the process.
type IdP struct {
	issuer string
	now    func() time.Time
	signer *token.Signer
	jwk    jose.JSONWebKey
	ln     net.Listener
	srv    *http.Server
}

// NewIdP generates the provider's key and listens on addr (host:port, e.g.
// 127.0.0.1:0); its issuer is http://<the address it got>. Serve starts it.
// now defaults to time.Now.
func NewIdP(addr string, now func() time.Time) (*IdP, error) {
	if now == nil {
		now = time.Now
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("demo: idp key: %w", err)
	}
	pub := jose.JSONWebKey{Key: key.Public(), Algorithm: string(jose.ES256), Use: "sig"}
	tp, err := pub.Thumbprint(crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("demo: idp key: %w", err)
	}
	pub.KeyID = base64.RawURLEncoding.EncodeToString(tp)
	signer, err := token.NewSigner(pub.KeyID, jose.ES256, key, token.TypeJWT)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("demo: idp listen: %w", err)
	}
	p := &IdP{issuer: "http://" + ln.Addr().String(), now: now, signer: signer, jwk: pub, ln: ln}
	p.srv = &http.Server{Handler: p.handler(), ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second}
	return p, nil
}

// Issuer returns the provider's issuer URL.
func (p *IdP) Issuer() string { return p.issuer }

// JWKS returns the provider's public key set as JSON.
func (p *IdP) JWKS() []byte {
	b, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{p.jwk}})
	return b
}

// Mint signs in the demo user name and returns the user's token: issued by
// the provider, for IdPAudience, valid for an hour.
func (p *IdP) Mint(name string) (string, error) {
	u, ok := demoUser(name)
	if !ok {
		return "", fmt.Errorf("demo: idp: no demo user %q (try alice or bob)", name)
	}
	now := p.now()
	return p.signer.Sign(&token.Claims{
		Issuer: p.issuer, Subject: u.Name, Audience: []string{IdPAudience},
		IssuedAt: now, Expiry: now.Add(time.Hour), ID: token.NewID(),
		Scope: strings.Join(u.Scopes, " "),
		Extra: map[string]any{"email": u.Email},
	})
}

func (p *IdP) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{
			"issuer":                                p.issuer,
			"jwks_uri":                              p.issuer + "/jwks",
			"token_endpoint":                        p.issuer + "/token",
			"id_token_signing_alg_values_supported": []string{string(jose.ES256)},
			"response_types_supported":              []string{"token"},
			"subject_types_supported":               []string{"public"},
		})
	})
	mux.HandleFunc("GET /jwks", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(p.JWKS())
	})
	mux.HandleFunc("POST /token", func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
		if err := r.ParseForm(); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_request"})
			return
		}
		raw, err := p.Mint(r.PostForm.Get("username"))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "invalid_grant", "error_description": "unknown demo user (alice or bob)"})
			return
		}
		w.Header().Set("Cache-Control", "no-store")
		writeJSON(w, http.StatusOK, map[string]any{"access_token": raw, "token_type": "Bearer", "expires_in": 3600})
	})
	return mux
}

// Serve serves until Close.
func (p *IdP) Serve() error {
	if err := p.srv.Serve(p.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("demo: idp: %w", err)
	}
	return nil
}

// Close stops the provider.
func (p *IdP) Close(ctx context.Context) error {
	err := p.srv.Shutdown(ctx)
	_ = p.ln.Close() // in case Serve never ran
	if err != nil {
		return fmt.Errorf("demo: idp: %w", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
