package policy

import "testing"

func TestMatchers(t *testing.T) {
	tests := []struct {
		parse   func(string) (matcher, error)
		pattern string
		value   string
		want    bool
	}{
		{parseSPIFFEGlob, "*", "spiffe://td/a", true},
		{parseSPIFFEGlob, "*", "", false},
		{parseSPIFFEGlob, "spiffe://td/ns/shop/sa/orders", "spiffe://td/ns/shop/sa/orders", true},
		{parseSPIFFEGlob, "spiffe://td/ns/shop/sa/orders", "spiffe://td/ns/shop/sa/orders2", false},
		{parseSPIFFEGlob, "spiffe://td/ns/shop/*", "spiffe://td/ns/shop/sa/orders", true},
		{parseSPIFFEGlob, "spiffe://td/ns/shop/*", "spiffe://td/ns/shopping/sa/x", false},
		{parseSPIFFEGlob, "spiffe://td/ns/*/sa/gateway", "spiffe://td/ns/edge/sa/gateway", true},
		{parseSPIFFEGlob, "spiffe://td/ns/*/sa/gateway", "spiffe://td/ns/a/b/sa/gateway", false},
		{parseSPIFFEGlob, "spiffe://td/**/gateway", "spiffe://td/ns/a/b/sa/gateway", true},
		{parseSPIFFEGlob, "spiffe://td/**/gateway", "spiffe://td/gateway", true},
		{parseSPIFFEGlob, "spiffe://td/**/gateway", "spiffe://td/ns/gateway2", false},
		{parseSPIFFEGlob, "spiffe://*.td/ns/x*/sa/*y", "spiffe://a.td/ns/x1/sa/zy", true},
		{parsePath, "/healthz", "/healthz", true},
		{parsePath, "/healthz", "/healthz/", false},
		{parsePath, "/api/*", "/api/v1/x", true},
		{parsePath, "/api/*", "/apix", false},
		{parsePath, "*.json", "/a/b.json", true},
		{parsePath, "*", "/", true},
		{parsePath, "/orders/{id}", "/orders/1", true},
		{parsePath, "/orders/{id}", "/orders/1/x", false},
		{parsePath, "/orders/{*}/items", "/orders/1/items", true},
		{parsePath, "/orders/{**}", "/orders", true},
		{parsePath, "/orders/{**}", "/orders/a/b/c", true},
		{parsePath, "/a/{**}/z", "/a/b/c/z", true},
		{parsePath, "/a/{**}/z", "/a/b/c/y", false},
		{parsePath, "/files/*.pdf", "/files/x.pdf", true},
		{parsePath, "/files/*.pdf", "/files/a/x.pdf", false},
		{parseHost, "*.Shop.local", "api.shop.LOCAL", true},
		{parseHost, "api.shop.local", "API.shop.local", true},
		{parseIstio, "orders:*", "orders:write", true},
		{parseIstio, "*:write", "orders:write", true},
		{parseIstio, "*:write", "orders:read", false},
		{parseAudience, "orders-api", "orders-api", true},
		{parseAudience, "spiffe://td/ns/shop/**", "spiffe://td/ns/shop/sa/x", true},
	}
	for _, tt := range tests {
		t.Run(tt.pattern+"~"+tt.value, func(t *testing.T) {
			m, err := tt.parse(tt.pattern)
			if err != nil {
				t.Fatal(err)
			}
			if got := m.match(tt.value); got != tt.want {
				t.Errorf("match = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMatchJoined(t *testing.T) {
	tests := []struct {
		pattern, a, b string
		want          bool
	}{
		{"https://idp/alice", "https://idp", "alice", true},
		{"https://idp/alice", "https://idp", "alic", false},
		{"https://idp/*", "https://idp", "bob", true},
		{"https://idp/*", "https://idpx", "bob", false},
		{"https://id*", "https://idp", "bob", true},
		{"*/bob", "https://idp", "bob", true},
		{"*p/bob", "https://idp", "bob", true},
		{"*x/bob", "https://idp", "bob", false},
		{"*ob", "https://idp", "bob", true},
		{"*", "", "", true},
	}
	for _, tt := range tests {
		m, err := parseIstio(tt.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if got := m.matchJoined(tt.a, tt.b); got != tt.want {
			t.Errorf("%q vs %q/%q = %v, want %v", tt.pattern, tt.a, tt.b, got, tt.want)
		}
		if got := m.match(tt.a + "/" + tt.b); got != tt.want && tt.pattern != "*" {
			t.Errorf("match disagrees for %q", tt.pattern)
		}
	}
}

func TestNamespaceOf(t *testing.T) {
	for in, want := range map[string]string{
		"spiffe://td/ns/shop/sa/orders": "shop",
		"spiffe://td/ns/shop":           "shop",
		"spiffe://td/workload":          "",
		"":                              "",
	} {
		if got := namespaceOf(in); got != want {
			t.Errorf("namespaceOf(%q) = %q, want %q", in, got, want)
		}
	}
}
