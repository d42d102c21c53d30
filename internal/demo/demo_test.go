package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

const examples = "../../examples/quickstart"

const (
	gatewayID = "spiffe://quickstart.local/ns/shop/sa/gateway"
	ordersID  = "spiffe://quickstart.local/ns/shop/sa/order-processing"
	invID     = "spiffe://quickstart.local/ns/shop/sa/inventory"
)

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// start runs a demo on the quickstart example (or examplesDir) and stops
// it at the end of the test, checking that it stops cleanly and removes
// its directory.
func start(t *testing.T, examplesDir string) *Demo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	t.Cleanup(cancel)
	d, err := Start(ctx, Config{Examples: examplesDir, Logger: testLogger()})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if _, err := os.Stat(d.Dir()); !os.IsNotExist(err) {
			t.Errorf("the demo's directory %s is still there: %v", d.Dir(), err)
		}
	})
	return d
}

// TestDemo runs the whole story in process and checks every step and the
// narration around it.
func TestDemo(t *testing.T) {
	d := start(t, examples)
	var out bytes.Buffer
	n := &Narrator{W: &out}
	n.Intro(d.Addresses())
	var steps []Step
	ok := d.Story(context.Background(), func(s Step) {
		steps = append(steps, s)
		n.Step(s)
	})
	n.Summary(steps, time.Second)
	if !ok || len(steps) != Steps {
		t.Fatalf("the story did not behave as expected:\n%s", out.String())
	}
	for i, s := range steps {
		if s.Number != i+1 || s.Of != Steps || !s.OK || s.Title == "" || s.Narration == "" || len(s.Evidence) == 0 {
			t.Errorf("step %d: %+v", i+1, s)
		}
	}
	text := out.String()
	for _, want := range []string{
		"[1/6] alice's request through the gateway reaches order-processing\n",
		"[2/6] order-processing calls inventory",
		"[3/6] order-processing tries to call finance for alice: the confused deputy is stopped\n",
		"[4/6] a token captured at inventory is replayed",
		"[5/6] a plaintext request and a forged token are refused\n",
		"[6/6] alice's session is revoked: its tokens are refused within seconds, not at expiry\n",
		"6 of 6 steps behaved as expected (1s).\n",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the narration lacks %q:\n%s", want, text)
		}
	}
	if !regexp.MustCompile(`\n {8}act chain +order-processing ← gateway\n`).MatchString(text) {
		t.Errorf("the narration lacks inventory's act chain:\n%s", text)
	}
	if strings.Contains(text, "\x1b[") {
		t.Error("colours without Color")
	}
	// The curl commands name files that exist.
	for _, c := range d.Commands() {
		for _, f := range regexp.MustCompile(`(/\S+\.(?:pem|key))`).FindAllString(c.Line, -1) {
			if _, err := os.Stat(f); err != nil {
				t.Errorf("command %q: %v", c.Line, err)
			}
		}
	}
}

// TestDemoJSON checks the JSON lines: one object per step, with the
// evidence under stable keys.
func TestDemoJSON(t *testing.T) {
	d := start(t, examples)
	var out bytes.Buffer
	if !d.Story(context.Background(), func(s Step) {
		if err := WriteJSON(&out, s); err != nil {
			t.Fatal(err)
		}
	}) {
		t.Errorf("the story did not behave as expected:\n%s", out.String())
	}
	type line struct {
		Step      int            `json:"step"`
		Of        int            `json:"of"`
		Title     string         `json:"title"`
		OK        bool           `json:"ok"`
		Narration string         `json:"narration"`
		Evidence  map[string]any `json:"evidence"`
		Problems  []string       `json:"problems"`
	}
	var lines []line
	sc := bufio.NewScanner(&out)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l line
		dec := json.NewDecoder(strings.NewReader(sc.Text()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	if len(lines) != Steps {
		t.Fatalf("%d lines, want %d", len(lines), Steps)
	}
	hexID := regexp.MustCompile(`^[0-9a-f]{32}$`)
	checks := []map[string]any{
		{"status": 200.0, "sub": "alice", "aud": ordersID, "act": []any{gatewayID}, "peer": gatewayID, "cnf": "gateway's certificate",
			"sts_policy": "gateway-to-order-processing", "sts_decision_id": hexID, "sidecar_decision_id": hexID,
			"gateway_decision_id": hexID, "gateway_route": "orders"},
		{"status": 200.0, "sub": "alice", "aud": invID, "act": []any{ordersID, gatewayID}, "peer": ordersID, "cnf": "order-processing's certificate",
			"sts_policy": "order-processing-to-inventory", "sts_decision_id": hexID, "sidecar_decision_id": hexID},
		{"status": 403.0, "error": "token_exchange_refused", "policy": "nobody-to-finance-for-users", "decision_id": hexID, "finance_reached": false},
		{"audience_status": 401.0, "audience_decision_id": hexID, "binding_status": 401.0, "binding_decision_id": hexID, "apps_reached": false,
			"binding_reason": "token: certificate binding mismatch: token is bound to another certificate"},
		{"forged_status": 401.0, "forged_reason": "token: invalid signature", "forged_decision_id": hexID},
		{"before_status": 200.0, "after_status": 401.0, "after_reason": "the token has been revoked", "introspection_active": false},
	}
	for i, l := range lines {
		if l.Step != i+1 || l.Of != Steps || !l.OK || l.Title == "" || l.Narration == "" || len(l.Problems) != 0 {
			t.Errorf("line %d: %+v", i+1, l)
		}
		for k, want := range checks[i] {
			got, ok := l.Evidence[k]
			switch w := want.(type) {
			case *regexp.Regexp:
				if s, _ := got.(string); !w.MatchString(s) {
					t.Errorf("step %d: %s = %v, want %s", i+1, k, got, w)
				}
			case []any:
				g, _ := got.([]any)
				if !slices.Equal(g, w) {
					t.Errorf("step %d: %s = %v, want %v", i+1, k, got, w)
				}
			default:
				if !ok || got != want {
					t.Errorf("step %d: %s = %v, want %v", i+1, k, got, want)
				}
			}
		}
	}
}

// TestDemoFailsWhenPolicyDoes checks that the story is a real test: with
// the DENY ExchangePolicy for finance turned into an ALLOW, the confused
// deputy gets its token (finance's own policy still refuses the call), and
// step 3 fails.
func TestDemoFailsWhenPolicyDoes(t *testing.T) {
	dir := t.TempDir()
	if err := copyDir(examples, dir, nil); err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"resources", "sidecars", "sidecars/policies"} {
		if err := copyDir(filepath.Join(examples, sub), filepath.Join(dir, sub), nil); err != nil {
			t.Fatal(err)
		}
	}
	// Without a gateway.yaml the demo writes the gateway's configuration
	// itself: that path is covered here too.
	if err := os.Remove(filepath.Join(dir, "gateway.yaml")); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "resources", "exchange.yaml")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte("action: DENY")) {
		t.Fatal("the quickstart's exchange.yaml has no DENY policy any more: update this test")
	}
	if err := os.WriteFile(p, bytes.Replace(b, []byte("action: DENY"), []byte("action: ALLOW"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	d := start(t, dir)
	var failed []Step
	if d.Story(context.Background(), func(s Step) {
		if !s.OK {
			failed = append(failed, s)
		}
	}) {
		t.Fatal("the story passed with a policy that lets order-processing act for users towards finance")
	}
	if len(failed) != 1 || failed[0].Number != 3 {
		t.Fatalf("failed steps: %+v", failed)
	}
	if want := `error is "access_denied", want token_exchange_refused`; !slices.Contains(failed[0].Problems, want) {
		t.Errorf("problems %q, want %q among them", failed[0].Problems, want)
	}
}

func TestStartErrors(t *testing.T) {
	_, err := Start(context.Background(), Config{Examples: t.TempDir()})
	if err == nil || !strings.HasPrefix(err.Error(), "demo: ") || !strings.Contains(err.Error(), "is not the quickstart example") {
		t.Errorf("err = %v", err)
	}
}

func TestFindExamples(t *testing.T) {
	wd, _ := os.Getwd()
	got, err := findExamples("")
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(filepath.Dir(filepath.Dir(wd)), DefaultExamples); got != want {
		t.Errorf("findExamples = %q, want %q", got, want)
	}
}
