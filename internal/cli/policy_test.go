package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runPolicyCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Run(context.Background(), append([]string{"policy"}, args...), strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

const policyTestdata = "../policy/testdata"

func TestPolicyCommands(t *testing.T) {
	shop := filepath.Join(policyTestdata, "shop")
	failing := t.TempDir()
	if err := os.WriteFile(filepath.Join(failing, "p.yaml"), []byte(`apiVersion: postern.dev/v1
kind: PolicyTest
metadata: {name: deny-all}
spec:
  cases:
  - name: nothing is allowed
    request: {workload: "spiffe://shop.local/a", method: GET, path: /}
    expect: {allow: true}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"lint clean", []string{"lint", "--self-issuer", "https://sts.shop.local", shop}, 0, "ok: 8 resources"},
		{"lint problems", []string{"lint", filepath.Join(policyTestdata, "broken")}, 1, `policies.yaml:7: unknown field "verbs" in spec.rules[0].to[0].operation`},
		{"lint missing dir", []string{"lint", filepath.Join(policyTestdata, "nope")}, 1, ""},
		{"test passes", []string{"test", "--self-issuer", "https://sts.shop.local", shop}, 0, "PASS: 6 passed"},
		{"test fails", []string{"test", failing}, 1, "--- FAIL: deny-all/nothing is allowed"},
		{"explain by flags", []string{"explain", "--policies", shop, "--workload", "spiffe://shop.local/ns/shop/sa/inventory",
			"--peer", "spiffe://shop.local/ns/shop/sa/orders", "--issuer", "https://sts.shop.local", "--subject", "alice",
			"--scope", "orders:write", "--actor", "spiffe://shop.local/ns/shop/sa/orders", "--actor", "spiffe://shop.local/ns/edge/sa/gateway",
			"--method", "POST", "--path", "/items/1/reserve"}, 0, `decision allow: ALLOW policy "inventory-reserve" rule 0 matched`},
		{"explain health probe", []string{"explain", "--policies", shop, "--workload", "spiffe://shop.local/ns/shop/sa/inventory",
			"--no-token", "--path", "/healthz"}, 0, `ALLOW policy "inventory-reserve" rule 1 matched`},
		{"explain needs a request", []string{"explain", "--policies", shop}, 1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runPolicyCmd(t, tt.args...)
			if code != tt.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, out, errs)
			}
			if !strings.Contains(out, tt.contains) {
				t.Errorf("stdout lacks %q:\n%s", tt.contains, out)
			}
		})
	}
}

func TestPolicyExplainRequestFile(t *testing.T) {
	f := filepath.Join(t.TempDir(), "req.yaml")
	if err := os.WriteFile(f, []byte("workload: spiffe://shop.local/ns/shop/sa/inventory\npeer: spiffe://shop.local/ns/shop/sa/orders\ntoken: {claims: {sub: alice}}\nmethod: GET\npath: /admin/x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs := runPolicyCmd(t, "explain", "--policies", filepath.Join(policyTestdata, "shop"), "--request", f)
	if code != 0 || !strings.Contains(out, `decision deny: DENY policy "no-admin" rule 0 matched`) {
		t.Errorf("exit %d\n%s\n%s", code, out, errs)
	}
}
