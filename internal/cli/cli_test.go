package cli

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/server"
	"postern.dev/postern/internal/store"
	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/token"
)

// run executes the command line in process.
func run(t *testing.T, stdin string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

const idpKey = "../../examples/quickstart/idp/idp-key.pem"

func mint(t *testing.T, extra ...string) string {
	t.Helper()
	args := append([]string{"token", "mint", "--key", idpKey, "--iss", "https://idp.quickstart.local", "--sub", "alice",
		"--aud", "quickstart-shop", "--scope", "orders:read orders:write", "--claim", "email=alice@example.com",
		"--claim", `groups=["a","b"]`}, extra...)
	code, out, errs := run(t, "", args...)
	if code != 0 {
		t.Fatalf("mint: %d %s", code, errs)
	}
	return strings.TrimSpace(out)
}

func TestTokenMintInspect(t *testing.T) {
	raw := mint(t)
	for _, in := range []struct{ stdin, arg string }{{"", raw}, {raw + "\n", ""}, {raw, "-"}} {
		args := []string{"token", "inspect"}
		if in.arg != "" {
			args = append(args, in.arg)
		}
		code, out, errs := run(t, in.stdin, args...)
		if code != 0 {
			t.Fatalf("inspect: %d %s", code, errs)
		}
		var got struct {
			Header   map[string]any `json:"header"`
			Claims   map[string]any `json:"claims"`
			Verified bool           `json:"verified"`
			Notes    []string       `json:"notes"`
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatalf("inspect output is not JSON: %v\n%s", err, out)
		}
		if got.Verified || got.Claims["sub"] != "alice" || got.Claims["email"] != "alice@example.com" || got.Header["alg"] != "ES256" ||
			got.Header["kid"] != "ugswFpprsg-aAL8qb2ziTscgJloQaLfzb-z683IShO4" || len(got.Claims["groups"].([]any)) != 2 {
			t.Errorf("inspect = %s", out)
		}
		if len(got.Notes) == 0 || !strings.HasPrefix(got.Notes[0], "expires in") {
			t.Errorf("notes = %v", got.Notes)
		}
	}
	if code, _, errs := run(t, "", "token", "inspect", "garbage"); code != 1 || !strings.Contains(errs, "malformed") {
		t.Errorf("inspect garbage: %d %s", code, errs)
	}
	if code, _, errs := run(t, "", "token", "mint", "--key", idpKey); code != 1 || !strings.Contains(errs, "required") {
		t.Errorf("mint without claims: %d %s", code, errs)
	}
	if code, _, errs := run(t, "", "token", "mint", "--key", idpKey, "--iss", "i", "--sub", "s", "--aud", "a", "--claim", "exp=1"); code != 1 || !strings.Contains(errs, "exp") {
		t.Errorf("mint overriding exp: %d %s", code, errs)
	}
}

func TestTokenVerify(t *testing.T) {
	dir := t.TempDir()
	jwks := filepath.Join(dir, "jwks.json")
	// The quickstart TrustedIssuer's inline key, as a JWKS file.
	if err := os.WriteFile(jwks, []byte(`{"keys":[{"use":"sig","kty":"EC","kid":"ugswFpprsg-aAL8qb2ziTscgJloQaLfzb-z683IShO4","crv":"P-256","alg":"ES256","x":"vB5V1o5BGAmjY2TVWwoAXrGxiVPNZ7G-T-SdNxLL3JQ","y":"_JxD9VO-kBK-igRBEQeF3t7A-7f-L67lQCAfWw5_fps"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	raw := mint(t)
	base := []string{"token", "verify", "--jwks", jwks, "--iss", "https://idp.quickstart.local"}
	if code, out, errs := run(t, "", append(base, "--aud", "quickstart-shop", raw)...); code != 0 || !strings.HasPrefix(out, "valid") {
		t.Fatalf("verify: %d %s %s", code, out, errs)
	}
	if code, out, _ := run(t, raw, append(base, "--aud", "elsewhere")...); code != 1 || !strings.Contains(out, "wrong audience") {
		t.Errorf("wrong audience: %d %s", code, out)
	}
	if code, out, _ := run(t, "", append(base, "--aud", "quickstart-shop", "--alg", "EdDSA", raw)...); code != 1 || !strings.Contains(out, "algorithm not allowed") {
		t.Errorf("alg: %d %s", code, out)
	}
	expired := mint(t, "--ttl", "1ns")
	if code, out, _ := run(t, "", append(base, "--aud", "quickstart-shop", "--leeway", "0s", expired)...); code != 1 || !strings.Contains(out, "expired") {
		t.Errorf("expired: %d %s", code, out)
	}
	tampered := raw[:len(raw)-4] + "AAAA"
	if code, out, _ := run(t, "", append(base, "--aud", "quickstart-shop", tampered)...); code != 1 || !strings.Contains(out, "invalid") {
		t.Errorf("tampered: %d %s", code, out)
	}
}

// initDataDir does what a server's first start does to its data dir.
func initDataDir(t *testing.T, cfgPath string) {
	t.Helper()
	cfg, err := server.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	st, err := server.Open(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
}

func TestCAIssueAndOperatorCommands(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "server.yaml")
	if err := os.WriteFile(cfgPath, []byte("trustDomain: example.test\ndataDir: data\nresources: res\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "gw")
	id := "spiffe://example.test/ns/shop/sa/gateway"
	// Offline commands never create a control plane: a config whose data
	// dir no server has started on (a typo) is refused, not initialised.
	if code, _, errs := run(t, "", "ca", "issue", "--config", cfgPath, "--spiffe-id", id, "--out", out); code != 1 || !strings.Contains(errs, "is not an initialised postern data dir") {
		t.Fatalf("ca issue on an uninitialised data dir: %d %s", code, errs)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "kek")); err == nil {
		t.Fatal("an offline command created a KEK")
	}
	initDataDir(t, cfgPath)
	for _, reserved := range []string{"spiffe://example.test/postern/server", "spiffe://example.test/postern/agent/x"} {
		if code, _, errs := run(t, "", "ca", "issue", "--config", cfgPath, "--spiffe-id", reserved, "--out", out); code != 1 || !strings.Contains(errs, "is reserved for postern's own components") {
			t.Errorf("ca issue for %s: %d %s", reserved, code, errs)
		}
	}
	if code, stdout, errs := run(t, "", "ca", "issue", "--config", cfgPath, "--spiffe-id", id, "--out", out); code != 0 {
		t.Fatalf("ca issue: %d %s %s", code, stdout, errs)
	}
	certPEM, _ := os.ReadFile(filepath.Join(out, "svid.pem"))
	keyPEM, _ := os.ReadFile(filepath.Join(out, "svid.key"))
	svid, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("svid files: %v", err)
	}
	bundlePEM, _ := os.ReadFile(filepath.Join(out, "bundle.pem"))
	roots := parseCerts(t, bundlePEM)
	got, _, err := x509svid.Verify(svid.Certificates, x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("example.test"), roots))
	if err != nil || got.String() != id {
		t.Fatalf("issued SVID does not verify: %v %v", got, err)
	}
	if fi, _ := os.Stat(filepath.Join(out, "svid.key")); fi.Mode().Perm() != 0o600 {
		t.Errorf("svid.key mode %v", fi.Mode().Perm())
	}
	// Issuing again over a key file left world-readable, or a symlink
	// planted in its place, still yields a private 0600 key file.
	if err := os.Chmod(filepath.Join(out, "svid.key"), 0o644); err != nil {
		t.Fatal(err)
	}
	elsewhere := filepath.Join(dir, "elsewhere")
	if err := os.WriteFile(elsewhere, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(out, "bundle.pem")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(elsewhere, filepath.Join(out, "bundle.pem")); err != nil {
		t.Fatal(err)
	}
	if code, stdout, errs := run(t, "", "ca", "issue", "--config", cfgPath, "--spiffe-id", id, "--out", out); code != 0 {
		t.Fatalf("ca issue again: %d %s %s", code, stdout, errs)
	}
	if fi, _ := os.Stat(filepath.Join(out, "svid.key")); fi.Mode().Perm() != 0o600 {
		t.Errorf("svid.key mode %v after issuing over a 0644 file", fi.Mode().Perm())
	}
	if b, _ := os.ReadFile(elsewhere); len(b) != 0 {
		t.Error("issuing wrote through a symlink planted at bundle.pem")
	}
	// Offline commands need only the data dir once it exists.
	data := filepath.Join(dir, "data")
	if code, _, errs := run(t, "", "ca", "issue", "--data-dir", data, "--spiffe-id", "spiffe://other.test/x", "--out", out); code != 1 || !strings.Contains(errs, "not in trust domain") {
		t.Errorf("foreign id: %d %s", code, errs)
	}
	code, stdout, errs := run(t, "", "server", "rotate-keys", "--data-dir", data, "--revoke-old")
	if code != 0 || !strings.Contains(stdout, "current key id") {
		t.Errorf("rotate-keys: %d %s %s", code, stdout, errs)
	}
	for _, bad := range []string{"not a spiffe id", "spiffe://other.test/ns/ops/sa/batch"} {
		if code, _, errs := run(t, "", "server", "client-secret", "--data-dir", data, "--client-id", bad); code != 1 || !strings.Contains(errs, "--client-id") {
			t.Errorf("client-secret for %q: %d %s", bad, code, errs)
		}
	}
	code, stdout, errs = run(t, "", "server", "client-secret", "--data-dir", data, "--client-id", "spiffe://example.test/ns/ops/sa/batch")
	if code != 0 || len(strings.TrimSpace(stdout)) != 43 {
		t.Errorf("client-secret: %d %q %s", code, stdout, errs)
	}
	// Agents: listed, evicted, and an unknown one named.
	st, err := store.OpenSQLite(context.Background(), filepath.Join(data, "postern.db"))
	if err != nil {
		t.Fatal(err)
	}
	const agentID = "spiffe://example.test/postern/agent/node-1"
	if err := st.PutAgent(context.Background(), store.Agent{SPIFFEID: agentID, Method: "join_token", Serial: "1", ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if code, stdout, errs := run(t, "", "server", "agents", "--data-dir", data); code != 0 || !strings.Contains(stdout, agentID+"  join_token") {
		t.Errorf("agents: %d %q %s", code, stdout, errs)
	}
	if code, stdout, errs := run(t, "", "server", "evict-agent", "--data-dir", data, "--spiffe-id", agentID); code != 0 || stdout != "agent "+agentID+" evicted\n" {
		t.Errorf("evict-agent: %d %q %s", code, stdout, errs)
	}
	if code, _, errs := run(t, "", "server", "evict-agent", "--data-dir", data, "--spiffe-id", agentID); code != 1 || !strings.Contains(errs, "no agent "+agentID+" is registered") {
		t.Errorf("evict-agent again: %d %s", code, errs)
	}
	if code, stdout, _ := run(t, "", "server", "agents", "--data-dir", data); code != 0 || stdout != "no agents are registered\n" {
		t.Errorf("agents, none: %d %q", code, stdout)
	}
	if code, stdout, _ := run(t, "", "ca", "bundle", "--data-dir", data); code != 0 || !strings.Contains(stdout, "BEGIN CERTIFICATE") {
		t.Errorf("ca bundle: %d", code)
	}
	if code, _, errs := run(t, "", "ca", "issue", "--data-dir", filepath.Join(dir, "nowhere"), "--spiffe-id", id, "--out", out); code != 1 || !strings.Contains(errs, "not a postern data dir") {
		t.Errorf("missing data dir: %d %s", code, errs)
	}
}

func parseCerts(t *testing.T, b []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return out
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

func TestHelpAndErrors(t *testing.T) {
	code, out, _ := run(t, "", "--help")
	if code != 0 || !strings.Contains(out, "server") || !strings.Contains(out, "token") || !strings.Contains(out, "completion") {
		t.Errorf("help: %d %s", code, out)
	}
	if code, _, errs := run(t, "", "server"); code != 1 || !strings.Contains(errs, "--config is required") {
		t.Errorf("server without config: %d %s", code, errs)
	}
	if code, _, errs := run(t, "", "bogus"); code != 1 || !strings.Contains(errs, "unknown command") {
		t.Errorf("unknown command: %d %s", code, errs)
	}
	if code, _, errs := run(t, "", "server", "--config", "/nonexistent.yaml"); code != 1 || !strings.Contains(errs, "no such file") {
		t.Errorf("missing config: %d %s", code, errs)
	}
}

// TestQuickstartPolicies keeps the quickstart's resources and its policy
// tests honest: they lint clean and every case passes.
func TestQuickstartPolicies(t *testing.T) {
	dir := "../../examples/quickstart/resources"
	if code, out, errs := run(t, "", "policy", "lint", dir); code != 0 {
		t.Fatalf("lint: %d %s %s", code, out, errs)
	}
	code, out, errs := run(t, "", "policy", "test", dir, "--self-issuer", "https://127.0.0.1:8443")
	if code != 0 || !strings.Contains(out, "5 passed") {
		t.Fatalf("policy test: %d %s %s", code, out, errs)
	}
}

func TestTokenRevoke(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "server.yaml")
	if err := os.WriteFile(cfgPath, []byte("trustDomain: example.test\ndataDir: data\nresources: res\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	k := testca.NewKey(t)
	sg, err := token.NewSigner("k1", jose.ES256, k, token.TypeAccessToken)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := sg.Sign(&token.Claims{Issuer: "https://sts.example", Subject: "alice", ID: "jti-1", SessionID: "session-1", Expiry: time.Now().Add(time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	initDataDir(t, cfgPath)
	if code, out, errs := run(t, "", "token", "revoke", "--config", cfgPath, raw); code != 0 || !strings.Contains(out, "revoked jti") {
		t.Fatalf("revoke: %d %s %s", code, out, errs)
	}
	code, out, errs := run(t, raw, "token", "revoke", "--config", cfgPath, "--family")
	if code != 0 || !strings.Contains(out, "revoked sid session-1") {
		t.Fatalf("revoke family: %d %s %s", code, out, errs)
	}
	cfg, err := server.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	st, err := server.Open(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	revs, err := st.Store.Revocations(context.Background(), time.Now())
	if err != nil || len(revs) != 2 || revs[0].Kind == revs[1].Kind {
		t.Fatalf("stored revocations = %+v, %v", revs, err)
	}
	if code, _, errs := run(t, "", "token", "revoke", "--config", cfgPath, "garbage"); code != 1 || !strings.Contains(errs, "malformed") {
		t.Errorf("garbage: %d %s", code, errs)
	}
}

// TestTuneGC: long-running components collect at gcPercent unless the
// operator set GOGC.
func TestTuneGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	t.Setenv("GOGC", "")
	tuneGC()
	if got := debug.SetGCPercent(100); got != gcPercent {
		t.Errorf("GC percent %d, want %d", got, gcPercent)
	}
	t.Setenv("GOGC", "150")
	debug.SetGCPercent(150)
	tuneGC()
	if got := debug.SetGCPercent(100); got != 150 {
		t.Errorf("GC percent %d with GOGC=150 set, want it left alone", got)
	}
}

// TestSetMaxProcs: the sidecar's maxProcs applies unless the operator set
// GOMAXPROCS.
func TestSetMaxProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	t.Setenv("GOMAXPROCS", "")
	if got := setMaxProcs(1); got != 1 {
		t.Errorf("setMaxProcs(1) = %d", got)
	}
	runtime.GOMAXPROCS(2)
	t.Setenv("GOMAXPROCS", "2")
	if got := setMaxProcs(1); got != 2 {
		t.Errorf("setMaxProcs(1) with GOMAXPROCS=2 set = %d, want it left alone", got)
	}
}

// Files named on the command line are read bounded: a special or huge file
// fails instead of exhausting memory.
func TestInputFilesBounded(t *testing.T) {
	if _, err := readInputFile("/dev/zero"); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("/dev/zero: %v", err)
	}
	big := filepath.Join(t.TempDir(), "big")
	if err := os.WriteFile(big, make([]byte, maxInputFile+1), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readInputFile(big); err == nil || !strings.Contains(err.Error(), "is larger than") {
		t.Errorf("big file: %v", err)
	}
	if code, _, errs := run(t, "", "token", "mint", "--key", "/dev/zero", "--iss", "i", "--sub", "s", "--aud", "a"); code != 1 || !strings.Contains(errs, "not a regular file") {
		t.Errorf("mint --key /dev/zero: %d %s", code, errs)
	}
}
