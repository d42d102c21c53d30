package cli

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spf13/cobra"

	"postern.dev/postern/internal/store"
	"postern.dev/postern/internal/token"
)

func newTokenCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Mint, inspect and verify JWTs",
	}
	cmd.AddCommand(newTokenMintCmd(e), newTokenInspectCmd(e), newTokenVerifyCmd(e), newTokenRevokeCmd(e))
	return cmd
}

func newTokenMintCmd(e *env) *cobra.Command {
	var (
		keyFile, kid, iss, sub, typ, alg string
		aud, scopes, claims              []string
		ttl                              time.Duration
	)
	cmd := &cobra.Command{
		Use:   "mint",
		Short: "Sign a test token with a private key (development and tests)",
		Long: `Sign a JWT with a private key in PEM (PKCS#8, SEC 1 or PKCS#1). The key id
defaults to the RFC 7638 thumbprint of the public key, which is what the
example identity provider's inline JWKS uses.`,
		Example: `  postern token mint --key examples/quickstart/idp/idp-key.pem \
    --iss https://idp.quickstart.local --sub alice --aud quickstart-shop \
    --scope "orders:read orders:write" --claim email=alice@example.com`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if keyFile == "" || iss == "" || sub == "" || len(aud) == 0 {
				return errors.New("--key, --iss, --sub and --aud are required")
			}
			if ttl <= 0 || ttl > 24*time.Hour {
				return errors.New("--ttl must be positive and at most 24h")
			}
			key, err := readPrivateKey(keyFile)
			if err != nil {
				return err
			}
			algorithm, err := keyAlgorithm(key, alg)
			if err != nil {
				return err
			}
			if kid == "" {
				jwk := jose.JSONWebKey{Key: key.Public()}
				tp, err := jwk.Thumbprint(crypto.SHA256)
				if err != nil {
					return fmt.Errorf("key thumbprint: %w", err)
				}
				kid = b64(tp)
			}
			now := time.Now()
			c := &token.Claims{
				Issuer: iss, Subject: sub, Audience: aud,
				IssuedAt: now, NotBefore: now, Expiry: now.Add(ttl), ID: token.NewID(),
				Scope: strings.Join(strings.Fields(strings.Join(scopes, " ")), " "),
			}
			for _, kv := range claims {
				k, v, ok := strings.Cut(kv, "=")
				if !ok || k == "" {
					return fmt.Errorf("--claim %q: want name=value", kv)
				}
				if token.IsRegistered(k) {
					return fmt.Errorf("--claim %q: %s has its own flag or is set by mint", kv, k)
				}
				if c.Extra == nil {
					c.Extra = map[string]any{}
				}
				var js any
				if json.Unmarshal([]byte(v), &js) == nil && (strings.HasPrefix(v, "[") || strings.HasPrefix(v, "{")) {
					c.Extra[k] = js
				} else {
					c.Extra[k] = v
				}
			}
			sg, err := token.NewSigner(kid, algorithm, key, typ)
			if err != nil {
				return err
			}
			raw, err := sg.Sign(c)
			if err != nil {
				return err
			}
			fmt.Fprintln(e.stdout, raw)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&keyFile, "key", "", "private key PEM file")
	f.StringVar(&kid, "kid", "", "key id (default: the key's RFC 7638 thumbprint)")
	f.StringVar(&alg, "alg", "", "algorithm (default: ES256 for P-256, EdDSA for Ed25519, RS256 for RSA)")
	f.StringVar(&iss, "iss", "", "issuer")
	f.StringVar(&sub, "sub", "", "subject")
	f.StringSliceVar(&aud, "aud", nil, "audience (repeatable)")
	f.StringSliceVar(&scopes, "scope", nil, "scopes (space- or comma-separated, repeatable)")
	f.StringArrayVar(&claims, "claim", nil, "extra claim name=value (JSON arrays and objects are parsed; repeatable)")
	f.DurationVar(&ttl, "ttl", 5*time.Minute, "lifetime")
	f.StringVar(&typ, "typ", "JWT", "typ header (at+jwt for access tokens)")
	return cmd
}

func newTokenInspectCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect [TOKEN]",
		Short: "Decode a token's header and claims WITHOUT verifying it",
		Long: `Decode and pretty-print a JWT's header and claims. Nothing is verified: use
"postern token verify" to check a token. The token is read from the argument,
or from standard input when there is none or it is "-".`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := readTokenArg(e, args)
			if err != nil {
				return err
			}
			h, c, err := token.ParseUnverified(raw)
			if err != nil {
				return err
			}
			out := map[string]any{"header": h, "claims": c, "verified": false}
			now := time.Now()
			var notes []string
			if !c.Expiry.IsZero() {
				if now.After(c.Expiry) {
					notes = append(notes, fmt.Sprintf("expired %s ago (%s)", now.Sub(c.Expiry).Round(time.Second), c.Expiry.Format(time.RFC3339)))
				} else {
					notes = append(notes, fmt.Sprintf("expires in %s (%s)", c.Expiry.Sub(now).Round(time.Second), c.Expiry.Format(time.RFC3339)))
				}
			}
			if chain := c.Act.Chain(); len(chain) > 0 {
				notes = append(notes, "act chain (newest first): "+strings.Join(chain, " <- "))
			}
			if c.Cnf != nil && c.Cnf.X5tS256 != "" {
				notes = append(notes, "bound to a certificate with x5t#S256 "+c.Cnf.X5tS256)
			}
			out["notes"] = notes
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		},
	}
}

func newTokenVerifyCmd(e *env) *cobra.Command {
	var (
		jwks, iss, aud, cacert string
		algs, types            []string
		leeway                 time.Duration
	)
	cmd := &cobra.Command{
		Use:   "verify [TOKEN]",
		Short: "Verify a token; exit status 0 only if it is valid",
		Long: `Verify a JWT's signature against a JWKS (an https URL or a file), its issuer,
audience, lifetime, algorithm and type. Prints the claims and exits 0 for a
valid token; prints the reason and exits 1 otherwise.`,
		Example: `  postern token verify --jwks https://127.0.0.1:8443/oauth2/jwks --cacert .postern-quickstart/bundle.pem \
    --iss https://127.0.0.1:8443 --aud spiffe://quickstart.local/ns/shop/sa/order-processing "$TOKEN"`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if jwks == "" || iss == "" || aud == "" {
				return errors.New("--jwks, --iss and --aud are required")
			}
			raw, err := readTokenArg(e, args)
			if err != nil {
				return err
			}
			ks, err := loadKeySet(e.ctx, jwks, cacert)
			if err != nil {
				return err
			}
			allowed, err := token.ParseAlgorithms(algs)
			if err != nil {
				return err
			}
			if leeway > 5*time.Minute {
				return fmt.Errorf("--leeway %s: at most 5m (the sidecars' own limit)", leeway)
			}
			if leeway <= 0 {
				leeway = time.Nanosecond // the verifier reads zero as "default"
			}
			v, err := token.NewVerifier(token.VerifierConfig{Issuer: iss, Audience: aud, Keys: ks, Algorithms: allowed, Types: types, Leeway: leeway})
			if err != nil {
				return err
			}
			c, err := v.Verify(e.ctx, raw)
			if err != nil {
				fmt.Fprintf(e.stdout, "invalid: %v\n", err)
				return &exitError{code: 1}
			}
			enc := json.NewEncoder(e.stdout)
			enc.SetIndent("", "  ")
			fmt.Fprintln(e.stdout, "valid")
			// What a sidecar checks besides: say so, rather than let "valid"
			// read as "a sidecar would accept it".
			if c.Cnf != nil && c.Cnf.X5tS256 != "" {
				fmt.Fprintln(e.stderr, "note: the token is bound to a client certificate (cnf); that binding, and the revocation list, were not checked")
			} else {
				fmt.Fprintln(e.stderr, "note: the revocation list was not checked")
			}
			return enc.Encode(c)
		},
	}
	f := cmd.Flags()
	f.StringVar(&jwks, "jwks", "", "JWKS: an https URL or a file")
	f.StringVar(&cacert, "cacert", "", "CA bundle PEM to trust for an https JWKS URL (default: the system roots)")
	f.StringVar(&iss, "iss", "", "required issuer")
	f.StringVar(&aud, "aud", "", "required audience")
	f.StringSliceVar(&algs, "alg", []string{"ES256", "EdDSA"}, "allowed algorithms")
	f.StringSliceVar(&types, "type", nil, "allowed typ header values (default: any)")
	f.DurationVar(&leeway, "leeway", 30*time.Second, "tolerated clock skew")
	return cmd
}

// readTokenArg reads a token from args[0], or stdin when absent or "-".
func readTokenArg(e *env, args []string) (string, error) {
	if len(args) == 1 && args[0] != "-" {
		return strings.TrimSpace(args[0]), nil
	}
	b, err := io.ReadAll(io.LimitReader(bufio.NewReader(e.stdin), 1<<20))
	if err != nil {
		return "", fmt.Errorf("read token from stdin: %w", err)
	}
	raw := strings.TrimSpace(string(b))
	if raw == "" {
		return "", errors.New("no token given (pass it as an argument or on stdin)")
	}
	return raw, nil
}

func loadKeySet(ctx context.Context, src, cacert string) (token.KeySet, error) {
	if strings.HasPrefix(src, "https://") || strings.HasPrefix(src, "http://") {
		client := &http.Client{Timeout: 10 * time.Second}
		if cacert != "" {
			pem, err := readInputFile(cacert)
			if err != nil {
				return nil, err
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("%s holds no PEM certificates", cacert)
			}
			client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
		}
		ks, err := token.NewRemoteKeySet(token.RemoteConfig{JWKSURI: src, HTTPClient: client})
		if err != nil {
			return nil, err
		}
		if err := ks.Refresh(ctx); err != nil {
			return nil, fmt.Errorf("fetch JWKS: %w", err)
		}
		return ks, nil
	}
	b, err := readInputFile(src)
	if err != nil {
		return nil, err
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("%s is not a JWK set: %w", src, err)
	}
	return token.NewStaticKeySet(set)
}

func readPrivateKey(path string) (crypto.Signer, error) {
	b, err := readInputFile(path)
	if err != nil {
		return nil, err
	}
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, fmt.Errorf("%s holds no PEM private key", path)
		}
		var key any
		switch blk.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(blk.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		s, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("%s: unsupported key type %T", path, key)
		}
		return s, nil
	}
}

func keyAlgorithm(key crypto.Signer, want string) (jose.SignatureAlgorithm, error) {
	if want != "" {
		a, err := token.ParseAlgorithms([]string{want})
		if err != nil {
			return "", err
		}
		return a[0], nil
	}
	switch pub := key.Public().(type) {
	case *ecdsa.PublicKey:
		switch pub.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		}
	case ed25519.PublicKey:
		return jose.EdDSA, nil
	case *rsa.PublicKey:
		return jose.RS256, nil
	}
	return "", fmt.Errorf("unsupported key type %T", key.Public())
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func newTokenRevokeCmd(e *env) *cobra.Command {
	var (
		flags  serverFlags
		family bool
	)
	cmd := &cobra.Command{
		Use:   "revoke [TOKEN]",
		Short: "Revoke a token (or its whole family) issued by this trust domain's STS",
		Long: `Record a revocation in the control plane's store, for an operator responding to
a leaked token. The token is identified by its jti; with --family, by its sid,
which revokes every token exchanged from the same first issuance (the whole
user session across every hop). Running servers sharing the store apply it
within 10 seconds: introspection reports the token inactive and the STS refuses
to exchange it. Sidecars poll the token service's revocation list
(sts.revocationPollInterval, 5 seconds by default) and refuse the token, even
one they already verified, from their next poll on.

The token is read from the argument, or from standard input. Its signature is
not checked: revoking an identifier can only deny more.`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			raw, err := readTokenArg(e, args)
			if err != nil {
				return err
			}
			_, c, err := token.ParseUnverified(raw)
			if err != nil {
				return err
			}
			st, _, err := flags.open(e)
			if err != nil {
				return err
			}
			defer st.Close()
			now := time.Now()
			rec := store.Revocation{Kind: "jti", ID: c.ID, ExpiresAt: c.Expiry.Add(time.Minute), CreatedAt: now}
			if family {
				// A family lives at most as long as the longest lifetime a
				// policy may grant (24h) after its first token.
				rec = store.Revocation{Kind: "sid", ID: c.SessionID, ExpiresAt: now.Add(24 * time.Hour), CreatedAt: now}
			}
			if rec.ID == "" {
				return fmt.Errorf("the token has no %s to revoke it by", map[bool]string{false: "jti", true: "sid"}[family])
			}
			if c.Expiry.IsZero() && !family {
				rec.ExpiresAt = now.Add(24 * time.Hour)
			}
			if err := st.Store.PutRevocation(e.ctx, rec); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "revoked %s %s (sub %q); servers apply it within 10s\n", rec.Kind, rec.ID, c.Subject)
			return nil
		},
	}
	flags.register(cmd, false)
	cmd.Flags().BoolVar(&family, "family", false, "revoke every token descending from the same first issuance")
	return cmd
}
