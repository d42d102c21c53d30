package demo

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func sampleSteps() []Step {
	return []Step{{
		Number: 1, Of: 5, Title: "alice's request reaches order-processing", OK: true,
		Narration: "alice signs in at the identity provider and sends POST /orders to the gateway with her token, which is exchanged for order-processing.",
		Evidence: []Fact{
			{"status", "HTTP status", 200},
			{"act", "act chain", []string{ordersID, gatewayID}},
			{"finance_reached", "finance app reached", false},
			{"policy", "policy", ""},
		},
	}, {
		Number: 2, Of: 5, Title: "order-processing calls finance", Narration: "It should not.",
		Evidence: []Fact{{"status", "HTTP status", 200}},
		Problems: []string{"finance call answered 200, want 403"},
	}}
}

// TestNarrationFormat pins the text layout (a golden string).
func TestNarrationFormat(t *testing.T) {
	var out bytes.Buffer
	n := &Narrator{W: &out}
	steps := sampleSteps()
	for _, s := range steps {
		n.Step(s)
	}
	n.Summary(steps, 1234*time.Millisecond)
	want := `[1/5] alice's request reaches order-processing
      alice signs in at the identity provider and sends POST /orders to the gateway with her
      token, which is exchanged for order-processing.
        HTTP status                          200
        act chain                            order-processing ← gateway
        finance app reached                  no
        policy                               (none)
      ✓ as expected

[2/5] order-processing calls finance
      It should not.
        HTTP status                          200
      ✗ finance call answered 200, want 403

1 of 2 steps behaved as expected (1.23s).
`
	if out.String() != want {
		t.Errorf("narration:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestNarrationColor(t *testing.T) {
	var out bytes.Buffer
	n := &Narrator{W: &out, Color: true}
	n.Step(sampleSteps()[0])
	s := out.String()
	for _, want := range []string{"\x1b[1m\x1b[36m[1/5]\x1b[0m", "\x1b[32m✓ as expected\x1b[0m"} {
		if !strings.Contains(s, want) {
			t.Errorf("coloured output lacks %q:\n%q", want, s)
		}
	}
}

func TestStepJSON(t *testing.T) {
	var out bytes.Buffer
	for _, s := range sampleSteps() {
		if err := WriteJSON(&out, s); err != nil {
			t.Fatal(err)
		}
	}
	want := `{"step":1,"of":5,"title":"alice's request reaches order-processing","ok":true,"narration":"alice signs in at the identity provider and sends POST /orders to the gateway with her token, which is exchanged for order-processing.","evidence":{"status":200,"act":["spiffe://quickstart.local/ns/shop/sa/order-processing","spiffe://quickstart.local/ns/shop/sa/gateway"],"finance_reached":false,"policy":""}}
{"step":2,"of":5,"title":"order-processing calls finance","ok":false,"narration":"It should not.","evidence":{"status":200},"problems":["finance call answered 200, want 403"]}
`
	if out.String() != want {
		t.Errorf("JSON:\n%s\nwant:\n%s", out.String(), want)
	}
}

func TestWrap(t *testing.T) {
	for _, tc := range []struct {
		in    string
		width int
		want  []string
	}{
		{"", 10, nil},
		{"one two three", 7, []string{"one two", "three"}},
		{"averyveryverylongword x", 5, []string{"averyveryverylongword", "x"}},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got := wrap(tc.in, tc.width)
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Errorf("wrap = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/tmp/postern-demo-1/data/bundle.pem": "/tmp/postern-demo-1/data/bundle.pem",
		"/tmp/my dir/it's.pem":                `'/tmp/my dir/it'\''s.pem'`,
		"":                                    "''",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
	}
}
