package sts

import (
	"strings"
	"testing"
)

func TestQuoteList(t *testing.T) {
	long := strings.Repeat("a", 150)
	for _, tc := range []struct {
		in   []string
		n    int
		want string
	}{
		{nil, 4, "[]"},
		{[]string{"shop"}, 4, `["shop"]`},
		{[]string{"a", "b\n", "c"}, 2, `["a" "b\n" and 1 more]`},
		{[]string{long}, 4, `["` + strings.Repeat("a", 100) + `..."]`},
	} {
		if got := quoteList(tc.in, tc.n); got != tc.want {
			t.Errorf("quoteList(%q, %d) = %s, want %s", tc.in, tc.n, got, tc.want)
		}
	}
}
