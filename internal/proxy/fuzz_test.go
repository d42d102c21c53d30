package proxy

import (
	"net/http"
	"net/url"
	"path"
	"strings"
	"testing"
)

// FuzzExtractToken: whatever the headers and query, at most one token is
// returned, and never with a query that still carries access_token.
func FuzzExtractToken(f *testing.F) {
	f.Add("Bearer abc", "", "a=1&access_token=x")
	f.Add("Bearer a", "Bearer b", "")
	f.Add("bearer  a.b.c ", "", "ACCESS_TOKEN=1;x")
	f.Add("", "", "access_token=%zz")
	f.Add("", "", "x=1;%61ccess_token=abc")
	f.Add("Bearer a", "", "a=%zz&x=1;ACCESS%5Ftoken%zz=1")
	f.Add("", "", "a=1;b=2")
	f.Fuzz(func(t *testing.T, a1, a2, query string) {
		r := &http.Request{Header: http.Header{}, URL: &url.URL{Path: "/", RawQuery: query}}
		for _, a := range []string{a1, a2} {
			if a != "" {
				r.Header.Add("Authorization", a)
			}
		}
		raw, rest, fault := ExtractToken(r)
		if fault != "" {
			if raw != "" {
				t.Fatal("a token returned with a fault")
			}
			return
		}
		if vals, err := url.ParseQuery(rest); err == nil && vals.Has("access_token") {
			t.Fatalf("access_token left in the forwarded query %q", rest)
		}
		// Nor may a lenient parser (";" separators, partial escapes) of
		// the application find one there.
		if queryMayHoldToken(rest) {
			t.Fatalf("a lenient parser finds access_token in the forwarded query %q", rest)
		}
		if strings.ContainsAny(raw, " ,") {
			t.Fatalf("token %q has separators", raw)
		}
	})
}

// FuzzCleanPath: an accepted path is absolute, clean, and decodes to what
// the policy saw.
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"/a/b", "/a/../b/", "//x/./y", "/a%2Fb", "/%2e%2e/admin", "/a\\b", "/orders/%20", "/orders/x/..;/admin", "/a/.;v=1/b", "/a;v=1/b", "/%2e%2e%3bx/y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, target string) {
		u, err := url.ParseRequestURI(target)
		if err != nil {
			return
		}
		p, ok := CleanPath(&http.Request{URL: u})
		if !ok {
			return
		}
		if !strings.HasPrefix(p, "/") || strings.Contains(p, "//") || strings.Contains(p, "\\") {
			t.Fatalf("CleanPath(%q) = %q", target, p)
		}
		trimmed := strings.TrimSuffix(p, "/")
		if trimmed == "" {
			trimmed = "/"
		}
		if path.Clean(trimmed) != trimmed {
			t.Fatalf("CleanPath(%q) = %q is not clean", target, p)
		}
		// No segment that a server dropping ";params" would read as a dot
		// segment.
		for seg := range strings.SplitSeq(p, "/") {
			if s, _, ok := strings.Cut(seg, ";"); ok && (s == "." || s == "..") {
				t.Fatalf("CleanPath(%q) = %q keeps a dot segment with parameters", target, p)
			}
		}
	})
}
