package policy

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var toolOpts = CompileOptions{SelfIssuer: "https://sts.shop.local", TrustDomain: "shop.local"}

func TestLintClean(t *testing.T) {
	var out bytes.Buffer
	if err := Lint(&out, "testdata/shop", toolOpts); err != nil {
		t.Fatalf("Lint: %v\n%s", err, out.String())
	}
	if got, want := out.String(), "ok: 8 resources, 1 test files in testdata/shop\n"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}
}

func TestLintProblems(t *testing.T) {
	var out bytes.Buffer
	err := Lint(&out, "testdata/broken", toolOpts)
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("err = %v", err)
	}
	want := `testdata/broken/failing_test.yaml:6: cases: exactly one of request and exchange is required
testdata/broken/failing_test.yaml:7: expect.allow: required
testdata/broken/policies.yaml:7: unknown field "verbs" in spec.rules[0].to[0].operation
testdata/broken/policies.yaml:11: subjectIssuers: "https://nobody.example" is neither "self" nor the issuer of a TrustedIssuer
4 problem(s)
`
	if out.String() != want {
		t.Errorf("output:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestLintReportsEverySemanticProblem(t *testing.T) {
	dir := t.TempDir()
	src, err := os.ReadFile("testdata/broken/policies.yaml")
	if err != nil {
		t.Fatal(err)
	}
	src = bytes.Replace(src, []byte(", verbs: [GET]"), nil, 1)
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), src, 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := Lint(&out, dir, toolOpts); err == nil {
		t.Fatal("no error")
	}
	got := strings.ReplaceAll(out.String(), dir+string(filepath.Separator), "")
	want := `p.yaml:6: principals: "cluster.local/ns/default/sa/sleep": must be a SPIFFE ID (spiffe://trust-domain/path) or a glob of one
p.yaml:7: paths: "/a/**x": '**' must be a whole segment
p.yaml:9: condition: CEL must return a bool, not dyn
p.yaml:11: subjectIssuers: "https://nobody.example" is neither "self" nor the issuer of a TrustedIssuer
4 problem(s)
`
	if got != want {
		t.Errorf("output:\n%s\nwant:\n%s", got, want)
	}
}

// Without a SelfIssuer, "self" matches no token: lint and test say which
// policies use it instead of leaving the user with unexplained denials.
func TestSelfIssuerNote(t *testing.T) {
	opts := CompileOptions{TrustDomain: "shop.local"}
	var out bytes.Buffer
	if err := Lint(&out, "testdata/shop", opts); err != nil {
		t.Fatalf("Lint: %v\n%s", err, out.String())
	}
	want := `note: testdata/shop/exchange.yaml:`
	if !strings.HasPrefix(out.String(), want) || !strings.Contains(out.String(), `names "self" in subjectIssuers, which matches no token without --self-issuer`) {
		t.Errorf("lint output:\n%s\nwant a note about self", out.String())
	}
	out.Reset()
	if _, err := RunTests(&out, "testdata/shop", opts); err != nil {
		t.Fatalf("RunTests: %v", err)
	}
	if !strings.HasPrefix(out.String(), want) {
		t.Errorf("test output:\n%s\nwant a note about self first", out.String())
	}
	out.Reset()
	if err := Lint(&out, "testdata/shop", toolOpts); err != nil || strings.Contains(out.String(), "note:") {
		t.Errorf("with a SelfIssuer: err %v, output:\n%s", err, out.String())
	}
}

var durRE = regexp.MustCompile(`\([0-9.µnms]+\)`)

func TestRunTests(t *testing.T) {
	var out bytes.Buffer
	sum, err := RunTests(&out, "testdata/shop", toolOpts)
	if err != nil {
		t.Fatalf("RunTests: %v\n%s", err, out.String())
	}
	if sum.Passed != 6 || sum.Failed != 0 {
		t.Errorf("summary %+v\n%s", sum, out.String())
	}
	want := `--- PASS: shop/orders reserves for alice via the gateway (D)
--- PASS: shop/orders without the gateway in the chain is refused (D)
--- PASS: shop/health probe without a token (D)
--- PASS: shop/admin is denied (D)
--- PASS: shop/gateway exchanges for orders, audience picked by the policy (D)
--- PASS: shop/gateway may not reach inventory (D)
PASS: 6 passed
`
	if got := durRE.ReplaceAllString(out.String(), "(D)"); got != want {
		t.Errorf("output:\n%s\nwant:\n%s", got, want)
	}
}

func TestRunTestsFailure(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"resources.yaml", "authz.yaml", "exchange.yaml", "shop_test.yaml"} {
		b, err := os.ReadFile(filepath.Join("testdata/shop", name))
		if err != nil {
			t.Fatal(err)
		}
		if name == "shop_test.yaml" {
			b = bytes.Replace(b, []byte("expect: {allow: false, policy: no-admin}"), []byte("expect: {allow: true}"), 1)
		}
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	sum, err := RunTests(&out, dir, toolOpts)
	if err != nil || sum.Failed != 1 || sum.Passed != 5 {
		t.Fatalf("sum %+v err %v\n%s", sum, err, out.String())
	}
	got := strings.ReplaceAll(durRE.ReplaceAllString(out.String(), "(D)"), dir+string(filepath.Separator), "")
	for _, want := range []string{
		"--- FAIL: shop/admin is denied (D)\n    shop_test.yaml:32: got deny, want allow (DENY policy \"no-admin\" rule 0 matched)\n",
		"FAIL: 5 passed, 1 failed\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
}

func TestRunTestsNoTests(t *testing.T) {
	var out bytes.Buffer
	if _, err := RunTests(&out, t.TempDir(), toolOpts); !errors.Is(err, ErrNoTests) {
		t.Errorf("err = %v", err)
	}
}

func TestExplainTool(t *testing.T) {
	r, err := ParseRequest("req.yaml", []byte(`
workload: spiffe://shop.local/ns/shop/sa/inventory
peer: spiffe://shop.local/ns/shop/sa/orders
token:
  claims: {iss: https://sts.shop.local, sub: alice, scope: orders:read}
  actors: ["spiffe://shop.local/ns/shop/sa/orders", "spiffe://shop.local/ns/edge/sa/gateway"]
method: POST
path: /items/42/reserve
`))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	d, err := Explain(&out, "testdata/shop", r, toolOpts)
	if err != nil {
		t.Fatal(err)
	}
	if d.Allow {
		t.Fatal("allowed without orders:write")
	}
	for _, want := range []string{
		`policies selecting the workload: DENY "no-admin", ALLOW "inventory-reserve" (0 others do not)`,
		`DENY policy "no-admin" rule 0: no match: path "/items/42/reserve" matches none of paths [/admin*]`,
		`ALLOW policy "inventory-reserve" rule 0: no match: when "request.auth.claims[scope]": value "orders:read" does not satisfy values [orders:write] notValues []`,
		`ALLOW policy "inventory-reserve" rule 1: no match: method "POST" is not in methods ["GET"]`,
		`decision deny: no ALLOW rule matched`,
		"DENY (decision ",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

func TestParseRequestProblems(t *testing.T) {
	_, err := ParseRequest("req.yaml", []byte("workload: x\nmethd: GET\n"))
	if got := strings.Join(problemsOf(t, err), "\n"); got != `req.yaml:2: unknown field "methd" in the document` {
		t.Errorf("got %q", got)
	}
}

// An empty (or mistaken) directory is not "ok".
func TestLintEmptyDirectory(t *testing.T) {
	var out bytes.Buffer
	dir := t.TempDir()
	if err := Lint(&out, dir, toolOpts); !errors.Is(err, ErrNoResources) || !strings.Contains(out.String(), "no resources in") {
		t.Errorf("err %v, output %q", err, out.String())
	}
}
