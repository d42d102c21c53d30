package token

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// Errors returned by Verify, wrapped with detail. Callers branch on them with
// errors.Is to choose an OAuth error code; the detail is safe to show (it
// never contains the token).
var (
	ErrTooLarge        = errors.New("token: too large")
	ErrMalformed       = errors.New("token: malformed")
	ErrAlgorithm       = errors.New("token: algorithm not allowed")
	ErrType            = errors.New("token: wrong type")
	ErrUnknownKey      = errors.New("token: unknown signing key")
	ErrKeysUnavailable = errors.New("token: verification keys unavailable")
	ErrSignature       = errors.New("token: invalid signature")
	ErrIssuer          = errors.New("token: wrong issuer")
	ErrAudience        = errors.New("token: wrong audience")
	ErrExpired         = errors.New("token: expired")
	ErrNotYetValid     = errors.New("token: not yet valid")
	ErrBinding         = errors.New("token: certificate binding mismatch")
)

// DefaultMaxSize is the default bound on a compact JWT's length in bytes.
const DefaultMaxSize = 16 << 10

// AsymmetricAlgorithms are the only algorithms Postern ever verifies. HMAC
// and "none" are not among them, so a public key can never be used as an
// HMAC secret.
var asymmetricAlgorithms = []jose.SignatureAlgorithm{
	jose.ES256, jose.ES384, jose.ES512, jose.EdDSA,
	jose.RS256, jose.RS384, jose.RS512, jose.PS256, jose.PS384, jose.PS512,
}

// KeySet yields verification keys by key id. An empty kid asks for the only
// key of the set; a set with several keys refuses it.
type KeySet interface {
	Key(ctx context.Context, kid string) (jose.JSONWebKey, error)
}

// VerifierConfig configures a Verifier. Issuer and Keys are required.
type VerifierConfig struct {
	// Issuer is the exact "iss" a token must carry.
	Issuer string
	// Audience, when set, must be one of the token's audiences. Leave it
	// empty only where the caller checks the audience itself.
	Audience string
	// Algorithms allowed; default ES256 and EdDSA. HMAC and none are
	// never allowed.
	Algorithms []jose.SignatureAlgorithm
	// Types are the accepted "typ" header values, compared case-
	// insensitively with an optional "application/" prefix. Empty accepts
	// any typ, including none.
	Types []string
	// Leeway is the clock skew tolerated on exp, nbf and iat; default 30s.
	Leeway time.Duration
	// MaxSize bounds the token length; default DefaultMaxSize.
	MaxSize int
	// Keys resolves verification keys.
	Keys KeySet
	// Now returns the current time; default time.Now.
	Now func() time.Time
}

// Verifier verifies JWTs of one issuer. It is safe for concurrent use.
type Verifier struct {
	cfg   VerifierConfig
	algs  map[jose.SignatureAlgorithm]bool
	types map[string]bool
}

// NewVerifier validates cfg and returns a Verifier.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("token: verifier needs an issuer")
	}
	if cfg.Keys == nil {
		return nil, errors.New("token: verifier needs a key set")
	}
	if len(cfg.Algorithms) == 0 {
		cfg.Algorithms = []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA}
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = 30 * time.Second
	}
	if cfg.MaxSize <= 0 {
		cfg.MaxSize = DefaultMaxSize
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	v := &Verifier{cfg: cfg, algs: map[jose.SignatureAlgorithm]bool{}}
	for _, a := range cfg.Algorithms {
		if !isAsymmetric(a) {
			return nil, fmt.Errorf("token: algorithm %q is not allowed for verification", a)
		}
		v.algs[a] = true
	}
	if len(cfg.Types) > 0 {
		v.types = map[string]bool{}
		for _, t := range cfg.Types {
			v.types[normType(t)] = true
		}
	}
	return v, nil
}

// ParseAlgorithms turns algorithm names into the allow-list form, refusing
// any that Postern does not verify.
func ParseAlgorithms(names []string) ([]jose.SignatureAlgorithm, error) {
	out := make([]jose.SignatureAlgorithm, 0, len(names))
	for _, n := range names {
		a := jose.SignatureAlgorithm(n)
		if !isAsymmetric(a) {
			return nil, fmt.Errorf("token: algorithm %q is not allowed", n)
		}
		out = append(out, a)
	}
	return out, nil
}

func isAsymmetric(a jose.SignatureAlgorithm) bool {
	for _, x := range asymmetricAlgorithms {
		if x == a {
			return true
		}
	}
	return false
}

func normType(t string) string {
	t = strings.ToLower(t)
	return strings.TrimPrefix(t, "application/")
}

// Issuer returns the issuer this verifier accepts.
func (v *Verifier) Issuer() string { return v.cfg.Issuer }

// Verify checks raw completely and returns its claims. It checks, in order:
// size, structure, algorithm, typ, signature with a key from the key set,
// then iss, aud, exp, nbf and iat.
func (v *Verifier) Verify(ctx context.Context, raw string) (*Claims, error) {
	p, err := Parse(raw, v.cfg.MaxSize)
	if err != nil {
		if errors.Is(err, ErrAlgorithm) {
			return nil, fmt.Errorf("%w: only %s are accepted", ErrAlgorithm, algList(v.cfg.Algorithms))
		}
		return nil, err
	}
	return v.VerifyParsed(ctx, p)
}

// Parsed is a compact JWT whose structure has been checked but whose
// signature and claims have not: nothing in it may be trusted until
// Verifier.VerifyParsed returns its claims. Parsing once lets a caller
// choose the verifier by the unverified issuer without decoding twice.
type Parsed struct {
	jws    *jose.JSONWebSignature
	size   int
	claims *Claims // decoded from the unverified payload
	decErr error   // why the payload did not decode, reported after the signature check
}

// Parse checks raw's size and structure (a compact JWS with one signature
// by an asymmetric algorithm) and decodes its payload without verifying
// anything.
func Parse(raw string, maxSize int) (*Parsed, error) {
	if maxSize <= 0 {
		maxSize = DefaultMaxSize
	}
	if len(raw) > maxSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, len(raw), maxSize)
	}
	jws, err := jose.ParseSignedCompact(raw, asymmetricAlgorithms)
	if err != nil {
		if _, ok := errors.AsType[*jose.ErrUnexpectedSignatureAlgorithm](err); ok {
			return nil, fmt.Errorf("%w: not an asymmetric signature algorithm", ErrAlgorithm)
		}
		return nil, fmt.Errorf("%w: not a signed compact JWT", ErrMalformed)
	}
	if len(jws.Signatures) != 1 {
		return nil, fmt.Errorf("%w: want exactly one signature", ErrMalformed)
	}
	p := &Parsed{jws: jws, size: len(raw)}
	p.claims, p.decErr = decodeClaims(jws.UnsafePayloadWithoutVerification())
	return p, nil
}

// KeyID returns the kid of the token's protected header as go-jose read
// it: the key VerifyParsed looks up.
func (p *Parsed) KeyID() string { return p.jws.Signatures[0].Header.KeyID }

// UnverifiedIssuer returns the token's iss claim, unverified, or "" when
// the payload does not decode. Use it only to choose a verifier.
func (p *Parsed) UnverifiedIssuer() string {
	if p.claims == nil {
		return ""
	}
	return p.claims.Issuer
}

// VerifyParsed finishes what Parse started: algorithm, typ, the signature
// with a key from the key set, then iss, aud, exp, nbf and iat. The claims
// it returns are the ones decoded from the very payload the signature
// covers.
func (v *Verifier) VerifyParsed(ctx context.Context, p *Parsed) (*Claims, error) {
	if p.size > v.cfg.MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", ErrTooLarge, p.size, v.cfg.MaxSize)
	}
	h := p.jws.Signatures[0].Protected
	alg := jose.SignatureAlgorithm(h.Algorithm)
	if !v.algs[alg] {
		return nil, fmt.Errorf("%w: %q (accepted: %s)", ErrAlgorithm, h.Algorithm, algList(v.cfg.Algorithms))
	}
	if v.types != nil {
		typ, _ := h.ExtraHeaders[jose.HeaderType].(string)
		if !v.types[normType(typ)] {
			return nil, fmt.Errorf("%w: typ %q", ErrType, typ)
		}
	}
	key, err := v.cfg.Keys.Key(ctx, h.KeyID)
	if err != nil {
		return nil, err
	}
	if key.Algorithm != "" && key.Algorithm != string(alg) {
		return nil, fmt.Errorf("%w: key %q is for %s, token says %s", ErrAlgorithm, h.KeyID, key.Algorithm, alg)
	}
	if !key.IsPublic() {
		key = key.Public()
	}
	// Verify checks the signature over the same payload bytes the claims
	// were decoded from; it returns them again, unchanged.
	if _, err := p.jws.Verify(key); err != nil {
		return nil, ErrSignature
	}
	if p.decErr != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, p.decErr)
	}
	if err := v.checkClaims(p.claims); err != nil {
		return nil, err
	}
	// Hand out a deep copy so a caller cannot alter what another Verify of
	// the same Parsed checks and returns.
	return p.claims.clone(), nil
}

func (v *Verifier) checkClaims(c *Claims) error {
	if c.Issuer != v.cfg.Issuer {
		return fmt.Errorf("%w: %q", ErrIssuer, c.Issuer)
	}
	if v.cfg.Audience != "" && !c.HasAudience(v.cfg.Audience) {
		return fmt.Errorf("%w: token is not addressed to %q", ErrAudience, v.cfg.Audience)
	}
	now := v.cfg.Now()
	if c.Expiry.IsZero() {
		return fmt.Errorf("%w: no exp claim", ErrMalformed)
	}
	if !now.Before(c.Expiry.Add(v.cfg.Leeway)) {
		return fmt.Errorf("%w at %s", ErrExpired, c.Expiry.UTC().Format(time.RFC3339))
	}
	if !c.NotBefore.IsZero() && now.Add(v.cfg.Leeway).Before(c.NotBefore) {
		return fmt.Errorf("%w until %s", ErrNotYetValid, c.NotBefore.UTC().Format(time.RFC3339))
	}
	if !c.IssuedAt.IsZero() && now.Add(v.cfg.Leeway).Before(c.IssuedAt) {
		return fmt.Errorf("%w: issued in the future (%s)", ErrNotYetValid, c.IssuedAt.UTC().Format(time.RFC3339))
	}
	return nil
}

func algList(algs []jose.SignatureAlgorithm) string {
	s := make([]string, len(algs))
	for i, a := range algs {
		s[i] = string(a)
	}
	return strings.Join(s, ", ")
}

// Thumbprint returns the RFC 8705 §3.1 x5t#S256 value of cert: the base64url
// SHA-256 of its DER encoding.
func Thumbprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// CheckBinding verifies the token's certificate binding against the
// certificate the caller presented. A token without cnf is unbound and
// passes; a bound token needs the very certificate it was issued to.
func (c *Claims) CheckBinding(cert *x509.Certificate) error {
	if c.cnfOther {
		return fmt.Errorf("%w: token is bound by a confirmation method other than x5t#S256", ErrBinding)
	}
	if c.Cnf == nil || c.Cnf.X5tS256 == "" {
		return nil
	}
	if cert == nil {
		return fmt.Errorf("%w: token is bound to a certificate and none was presented", ErrBinding)
	}
	if Thumbprint(cert) != c.Cnf.X5tS256 {
		return fmt.Errorf("%w: token is bound to another certificate", ErrBinding)
	}
	return nil
}

// Header is the unverified header of a JWT.
type Header struct {
	Algorithm string `json:"alg"`
	KeyID     string `json:"kid,omitempty"`
	Type      string `json:"typ,omitempty"`
}

// ParseUnverified decodes raw without checking anything but its structure.
// Its result must never be trusted: it is for display (postern token
// inspect) and for choosing which verifier to use.
func ParseUnverified(raw string) (Header, *Claims, error) {
	if len(raw) > DefaultMaxSize*4 {
		return Header{}, nil, fmt.Errorf("%w: %d bytes", ErrTooLarge, len(raw))
	}
	parts := strings.Split(strings.TrimSpace(raw), ".")
	if len(parts) != 3 {
		return Header{}, nil, fmt.Errorf("%w: want three dot-separated parts, got %d", ErrMalformed, len(parts))
	}
	hb, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		return Header{}, nil, fmt.Errorf("%w: header is not base64url", ErrMalformed)
	}
	var h Header
	if err := json.Unmarshal(hb, &h); err != nil {
		return Header{}, nil, fmt.Errorf("%w: header is not a JSON object", ErrMalformed)
	}
	pb, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return Header{}, nil, fmt.Errorf("%w: payload is not base64url", ErrMalformed)
	}
	c, err := decodeClaims(pb)
	if err != nil {
		return Header{}, nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return h, c, nil
}

// PeekIssuer returns the unverified "iss" of raw, to choose a verifier.
func PeekIssuer(raw string) (string, error) {
	if len(raw) > DefaultMaxSize*4 {
		return "", fmt.Errorf("%w: %d bytes", ErrTooLarge, len(raw))
	}
	first := strings.IndexByte(raw, '.')
	if first < 0 {
		return "", fmt.Errorf("%w: not a compact JWT", ErrMalformed)
	}
	rest := raw[first+1:]
	second := strings.IndexByte(rest, '.')
	if second < 0 {
		return "", fmt.Errorf("%w: not a compact JWT", ErrMalformed)
	}
	pb, err := base64.RawURLEncoding.DecodeString(rest[:second])
	if err != nil {
		return "", fmt.Errorf("%w: payload is not base64url", ErrMalformed)
	}
	// A map, not a struct: encoding/json matches struct fields case-
	// insensitively, and "ISS" must not be read as the "iss" that
	// Claims.UnmarshalJSON (and so the verifier) sees.
	var p map[string]json.RawMessage
	if err := json.Unmarshal(pb, &p); err != nil {
		return "", fmt.Errorf("%w: payload is not a JSON object", ErrMalformed)
	}
	var iss string
	if v, ok := p["iss"]; !ok || json.Unmarshal(v, &iss) != nil || iss == "" {
		return "", fmt.Errorf("%w: no string iss claim", ErrMalformed)
	}
	return iss, nil
}
