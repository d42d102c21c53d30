package attest

import (
	"fmt"
	"testing"

	"postern.dev/postern/internal/policy"
)

func TestMatches(t *testing.T) {
	have := []Selector{
		{"unix", "uid:1000"}, {"unix", "gid:1000"}, {"unix", "path:/usr/bin/app"},
		{"k8s", "ns:prod"},
	}
	sel := func(typ, v string) policy.AttestationSelector { return policy.AttestationSelector{Type: typ, Value: v} }
	tests := []struct {
		name string
		have []Selector
		want []policy.AttestationSelector
		ok   bool
	}{
		{"empty want never matches", have, nil, false},
		{"empty want and have", nil, []policy.AttestationSelector{}, false},
		{"one of one", have, []policy.AttestationSelector{sel("unix", "uid:1000")}, true},
		{"all of several", have, []policy.AttestationSelector{sel("unix", "uid:1000"), sel("unix", "path:/usr/bin/app"), sel("k8s", "ns:prod")}, true},
		{"one missing", have, []policy.AttestationSelector{sel("unix", "uid:1000"), sel("unix", "uid:0")}, false},
		{"type differs", have, []policy.AttestationSelector{sel("k8s", "uid:1000")}, false},
		{"case differs", have, []policy.AttestationSelector{sel("unix", "UID:1000")}, false},
		{"prefix is not a match", have, []policy.AttestationSelector{sel("unix", "uid:100")}, false},
		{"no have", nil, []policy.AttestationSelector{sel("unix", "uid:1000")}, false},
		{"duplicate want", have, []policy.AttestationSelector{sel("k8s", "ns:prod"), sel("k8s", "ns:prod")}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Matches(tt.have, tt.want); got != tt.ok {
				t.Fatalf("Matches = %v, want %v", got, tt.ok)
			}
		})
	}
}

func ExampleMatches() {
	have := []Selector{{Type: "unix", Value: "uid:1000"}, {Type: "unix", Value: "path:/usr/bin/app"}}
	want := []policy.AttestationSelector{{Type: "unix", Value: "uid:1000"}}
	fmt.Println(Matches(have, want), Matches(have, nil))
	// Output: true false
}
