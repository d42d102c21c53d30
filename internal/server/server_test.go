package server

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/ca"
	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/token"
)

const (
	gatewayID = "spiffe://quickstart.local/ns/shop/sa/gateway"
	ordersID  = "spiffe://quickstart.local/ns/shop/sa/order-processing"
	invID     = "spiffe://quickstart.local/ns/shop/sa/inventory"
	financeID = "spiffe://quickstart.local/ns/shop/sa/finance"
)

// startQuickstart runs a server on the quickstart example's resources (a
// copy, so tests may change it) with a temporary data dir.
func startQuickstart(t *testing.T) (*Server, string) {
	t.Helper()
	dir := t.TempDir()
	res := filepath.Join(dir, "resources")
	if err := os.MkdirAll(res, 0o755); err != nil {
		t.Fatal(err)
	}
	src := "../../examples/quickstart/resources"
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(res, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := LoadConfig("../../examples/quickstart/server.yaml")
	if err != nil {
		t.Fatalf("the quickstart config does not load: %v", err)
	}
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.Resources = res
	cfg.ReloadInterval = Duration(100 * time.Millisecond)
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := New(ctx, cfg, logger, nil)
	if err != nil {
		cancel()
		t.Fatalf("server: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return srv, res
}

// client returns an HTTPS client that trusts bundle.pem and, if id is set,
// presents an SVID for id issued by the server's CA.
func client(t *testing.T, srv *Server, id string) (*http.Client, *x509.Certificate) {
	t.Helper()
	pemBytes, err := os.ReadFile(srv.BundlePath())
	if err != nil {
		t.Fatalf("bundle.pem: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemBytes) {
		t.Fatal("bundle.pem holds no certificates")
	}
	cfg := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	var leaf *x509.Certificate
	if id != "" {
		key := testca.NewKey(t)
		svid, err := srv.CA().IssueX509SVID(context.Background(), ca.X509SVIDRequest{ID: spiffeid.RequireFromString(id), PublicKey: key.Public()})
		if err != nil {
			t.Fatal(err)
		}
		leaf = svid.Certificates[0]
		var chain [][]byte
		for _, c := range svid.Certificates {
			chain = append(chain, c.Raw)
		}
		cfg.Certificates = []tls.Certificate{{Certificate: chain, PrivateKey: key, Leaf: leaf}}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}, leaf
}

func userToken(t *testing.T, sub, scope string) string {
	t.Helper()
	b, err := os.ReadFile("../../examples/quickstart/idp/idp-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key := k.(*ecdsa.PrivateKey)
	jwk := jose.JSONWebKey{Key: key.Public()}
	tp, _ := jwk.Thumbprint(cryptoSHA256)
	sg, err := token.NewSigner(b64(tp), jose.ES256, key, "JWT")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	raw, err := sg.Sign(&token.Claims{Issuer: "https://idp.quickstart.local", Subject: sub, Audience: []string{"quickstart-shop"},
		Scope: scope, IssuedAt: now, Expiry: now.Add(time.Hour), Extra: map[string]any{"email": sub + "@example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

type tokenResult struct {
	status int
	body   map[string]any
}

func exchange(t *testing.T, srv *Server, c *http.Client, subject, subjectType, audience string) tokenResult {
	t.Helper()
	resp, err := c.PostForm(srv.Issuer()+"/oauth2/token", url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {subject},
		"subject_token_type": {subjectType},
		"audience":           {audience},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out tokenResult
	out.status = resp.StatusCode
	if err := json.NewDecoder(resp.Body).Decode(&out.body); err != nil {
		t.Fatal(err)
	}
	return out
}

const (
	jwtType = "urn:ietf:params:oauth:token-type:jwt"
	atType  = "urn:ietf:params:oauth:token-type:access_token"
)

// TestQuickstart runs the README's quick start against a real server over
// real mutual TLS.
func TestQuickstart(t *testing.T) {
	srv, _ := startQuickstart(t)
	gw, gwCert := client(t, srv, gatewayID)
	orders, ordersCert := client(t, srv, ordersID)

	r := exchange(t, srv, gw, userToken(t, "alice", "orders:read orders:write"), jwtType, ordersID)
	if r.status != 200 {
		t.Fatalf("gateway exchange: %d %v", r.status, r.body)
	}
	t1 := r.body["access_token"].(string)
	_, c1, _ := token.ParseUnverified(t1)
	if c1.Subject != "alice" || !c1.HasAudience(ordersID) || !slices.Equal(c1.Act.Chain(), []string{gatewayID}) {
		t.Errorf("hop 1 claims = %+v", c1)
	}
	if c1.Cnf == nil || c1.Cnf.X5tS256 != token.Thumbprint(gwCert) {
		t.Error("hop 1 token is not bound to the gateway's certificate")
	}
	if c1.Extra["email"] != "alice@example.com" {
		t.Errorf("email not carried: %v", c1.Extra)
	}

	r = exchange(t, srv, orders, t1, atType, invID)
	if r.status != 200 {
		t.Fatalf("order-processing exchange: %d %v", r.status, r.body)
	}
	_, c2, _ := token.ParseUnverified(r.body["access_token"].(string))
	if !slices.Equal(c2.Act.Chain(), []string{ordersID, gatewayID}) || c2.Cnf.X5tS256 != token.Thumbprint(ordersCert) {
		t.Errorf("hop 2 claims = %+v", c2)
	}

	r = exchange(t, srv, orders, t1, atType, financeID)
	if r.status != 403 || r.body["error"] != "access_denied" {
		t.Errorf("finance: %d %v", r.status, r.body)
	}
	// A user without orders:write: order-processing may not call inventory.
	r = exchange(t, srv, gw, userToken(t, "bob", "orders:read"), jwtType, ordersID)
	tBob := r.body["access_token"].(string)
	if r = exchange(t, srv, orders, tBob, atType, invID); r.status != 403 {
		t.Errorf("bob to inventory: %d %v", r.status, r.body)
	}
	// No client certificate: no client.
	anon, _ := client(t, srv, "")
	if r = exchange(t, srv, anon, t1, atType, invID); r.status != 401 || r.body["error"] != "invalid_client" {
		t.Errorf("anonymous: %d %v", r.status, r.body)
	}

	// The issued token verifies against the published JWKS, as any
	// resource server would check it.
	ks, err := token.NewRemoteKeySet(token.RemoteConfig{JWKSURI: srv.Issuer() + "/oauth2/jwks", HTTPClient: anon})
	if err != nil {
		t.Fatal(err)
	}
	v, _ := token.NewVerifier(token.VerifierConfig{Issuer: srv.Issuer(), Audience: ordersID, Keys: ks, Types: []string{"at+jwt"}})
	if _, err := v.Verify(context.Background(), t1); err != nil {
		t.Errorf("token does not verify against the JWKS: %v", err)
	}
	resp, err := anon.Get(srv.Issuer() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`postern_sts_token_requests_total{grant="token-exchange",outcome="issue"} 3`,
		`postern_sts_token_requests_total{grant="token-exchange",outcome="deny"} 3`,
		`postern_sts_token_errors_total{error="access_denied"} 2`,
		`postern_sts_token_request_duration_seconds_count 6`,
	} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, p := range []string{"/.well-known/oauth-authorization-server", "/.well-known/openid-configuration", "/healthz", "/readyz", "/bundle"} {
		resp, err := anon.Get(srv.Issuer() + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("%s: %d", p, resp.StatusCode)
		}
	}
}

// TestResourceReload checks that a change to the resources directory is
// picked up without a restart, and that a broken file keeps the last good
// set in force.
func TestResourceReload(t *testing.T) {
	srv, res := startQuickstart(t)
	gw, _ := client(t, srv, gatewayID)
	user := userToken(t, "alice", "orders:read orders:write")
	if r := exchange(t, srv, gw, user, jwtType, invID); r.status != 403 {
		t.Fatalf("before: %d %v", r.status, r.body)
	}
	extra := `apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: gateway-to-inventory}
spec:
  clients: [spiffe://quickstart.local/ns/shop/sa/gateway]
  subjectIssuers: [https://idp.quickstart.local]
  audiences: [spiffe://quickstart.local/ns/shop/sa/inventory]
`
	if err := os.WriteFile(filepath.Join(res, "extra.yaml"), []byte(extra), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return exchange(t, srv, gw, user, jwtType, invID).status == 200 })

	// A broken file: the last good set (with extra.yaml) stays in force.
	if err := os.WriteFile(filepath.Join(res, "broken.yaml"), []byte("apiVersion: postern.dev/v1\nkind: ExchangePolicy\nmetadata: {name: x}\nspec: {clients: [\"*\"], audiences: [\"*\"], subjectIssuers: [self], bogus: 1}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(res, "extra.yaml")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // several reload intervals
	if r := exchange(t, srv, gw, user, jwtType, invID); r.status != 200 {
		t.Fatalf("a broken update replaced the last good set: %d %v", r.status, r.body)
	}
	// Fixing the directory applies it (extra.yaml is gone: denied again).
	if err := os.Remove(filepath.Join(res, "broken.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return exchange(t, srv, gw, user, jwtType, invID).status == 403 })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDataDirBelongsToOneTrustDomain(t *testing.T) {
	dir := t.TempDir()
	cfg := &Config{TrustDomain: "a.test", DataDir: dir}
	st, err := Open(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	_, err = Open(context.Background(), &Config{TrustDomain: "b.test", DataDir: dir}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), `belongs to trust domain "a.test"`) {
		t.Fatalf("err = %v", err)
	}
	got, err := LoadDataDirConfig(dir)
	if err != nil || got.TrustDomain != "a.test" {
		t.Fatalf("LoadDataDirConfig = %+v, %v", got, err)
	}
	// A used data dir whose instance.json was lost is not adopted by
	// whichever trust domain starts on it next.
	if err := os.Remove(filepath.Join(dir, instanceFile)); err != nil {
		t.Fatal(err)
	}
	_, err = Open(context.Background(), &Config{TrustDomain: "b.test", DataDir: dir}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "but no instance.json") {
		t.Fatalf("adopted a used data dir: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, instanceFile)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("instance.json written for the refused trust domain: %v", err)
	}
}

func TestLoadConfigErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "c.yaml")
		os.WriteFile(p, []byte(s), 0o644)
		return p
	}
	for name, tc := range map[string]struct{ yaml, want string }{
		"unknown field":  {"trustDomain: a.test\nresources: r\nbogus: 1\n", `c.yaml:3: unknown field "bogus" in the document`},
		"unknown nested": {"trustDomain: a.test\ntokens:\n  defaultLifetme: 10m\n", `c.yaml:3: unknown field "defaultLifetme" in tokens`},
		"bad duration":   {"trustDomain: a.test\nkeys: {leadTime: soon}\n", `c.yaml:2: keys.leadTime: invalid duration "soon"`},
		// JSON decoding alone matched "datadir" to dataDir and let it win.
		"case-insensitive duplicate": {"trustDomain: a.test\ndataDir: data\ndatadir: typo\n", `c.yaml:3: unknown field "datadir" in the document`},
		"duplicate":                  {"trustDomain: a.test\ndataDir: data\ndataDir: other\n", `c.yaml:3: duplicate field "dataDir" in the document`},
		"syntax":                     {"trustDomain: a.test\n dataDir: d\n", `c.yaml:2: invalid YAML`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := LoadConfig(write(tc.yaml))
			if err == nil || !strings.HasPrefix(err.Error(), "server: config "+dir+string(filepath.Separator)+tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	c, err := LoadConfig(write("trustDomain: a.test\nresources: r\ndataDir: d\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Resources != filepath.Join(dir, "r") || c.DataDir != filepath.Join(dir, "d") {
		t.Errorf("relative paths not resolved against the config file: %+v", c)
	}
	if c, err := LoadConfig(write("trustDomain: a.test\n")); err != nil || c.DataDir != filepath.Join(dir, "data") {
		t.Errorf("the default data dir is not next to the config file: %v, %v", c.DataDir, err)
	}
	if err := (&Config{TrustDomain: "not a domain!"}).setDefaults(); err == nil {
		t.Error("bad trust domain accepted")
	}
	if err := (&Config{TrustDomain: "a.test", Keys: KeysConfig{LeadTime: Duration(10 * time.Second)}}).setDefaults(); err == nil || !strings.Contains(err.Error(), "keys.leadTime 10s is shorter than 1m") {
		t.Errorf("a 10s lead time: %v", err)
	}
	for _, sas := range [][]string{{"agent"}, {":agent"}, {"postern:"}, {"a:b:c"}} {
		c := &Config{TrustDomain: "a.test", Attestation: AttestationConfig{K8s: K8sAttestationConfig{Issuer: "https://k8s", Audience: "postern", AgentServiceAccounts: sas}}}
		if err := c.setDefaults(); err == nil || !strings.Contains(err.Error(), "want namespace:name") {
			t.Errorf("agentServiceAccounts %q: err = %v", sas, err)
		}
	}
}

const cryptoSHA256 = crypto.SHA256

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// TestOpenRefusesToInventAKEK: an existing data dir whose keys are sealed
// with a KEK from a file is never given a fresh development KEK by an
// offline command that forgot --config.
func TestOpenRefusesToInventAKEK(t *testing.T) {
	dir := t.TempDir()
	kekFile := filepath.Join(dir, "kek.b64")
	if err := os.WriteFile(kekFile, []byte("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	st, err := Open(context.Background(), &Config{TrustDomain: "a.test", DataDir: data, Keys: KeysConfig{KEKFile: kekFile}}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	_, err = Open(context.Background(), &Config{TrustDomain: "a.test", DataDir: data}, slog.New(slog.DiscardHandler))
	if err == nil || !strings.Contains(err.Error(), "pass --config") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(data, "kek")); !errors.Is(err, os.ErrNotExist) {
		t.Error("a development KEK was created beside sealed records")
	}
}
