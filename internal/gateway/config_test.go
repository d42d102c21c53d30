package gateway

import (
	"strings"
	"testing"
)

func TestExampleConfig(t *testing.T) {
	c, err := LoadConfig("../../examples/quickstart/gateway.yaml")
	if err != nil {
		t.Fatalf("the example does not load: %v", err)
	}
	if len(c.Routes) != 2 || !c.TLS.FromSVID || c.RateLimit.By != "sub" {
		t.Errorf("unexpected example: %+v", c)
	}
	if !strings.HasSuffix(c.Issuers, "examples/quickstart/resources") || !strings.HasSuffix(c.SPIFFE.Files.Cert, "sidecars/certs/gateway/svid.pem") {
		t.Errorf("paths not resolved against the file: %q %q", c.Issuers, c.SPIFFE.Files.Cert)
	}
	if c.STS.TokenEndpoint != "https://127.0.0.1:8443/oauth2/token" || c.Routes[0].Upstream.Audience != c.Routes[0].Upstream.SPIFFEID || c.Routes[0].Host != "*" {
		t.Errorf("defaults not filled in: %+v", c)
	}
	if _, err := loadIssuers(c.Issuers, issuerOptions{}); err != nil {
		t.Errorf("the example's issuers: %v", err)
	}
}

const baseConfig = `trustDomain: quickstart.local
spiffe: {files: {cert: c, key: k, bundle: b}}
sts: {issuer: "https://127.0.0.1:8443"}
tls: {fromSVID: true}
issuers: resources
`

const ordersRoute = `routes:
- {name: orders, pathPrefix: /orders, upstream: {name: order-processing, addresses: ["127.0.0.1:1"], spiffeID: "spiffe://quickstart.local/o"}}
`

func TestParseConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"unknown field", baseConfig + ordersRoute + "bogus: 1\n", `unknown field "bogus"`},
		{"no routes", baseConfig, "routes: at least one route is required"},
		{"no tls", strings.Replace(baseConfig, "tls: {fromSVID: true}\n", "", 1) + ordersRoute, "tls: certFile and keyFile are required"},
		{"both tls", strings.Replace(baseConfig, "tls: {fromSVID: true}", "tls: {fromSVID: true, certFile: a, keyFile: b}", 1) + ordersRoute, "tls: exactly one of"},
		{"no issuers", strings.Replace(baseConfig, "issuers: resources\n", "", 1) + ordersRoute, "issuers: a directory"},
		{"bad trust domain", strings.Replace(baseConfig, "quickstart.local", "Bad Domain", 1) + ordersRoute, "trustDomain:"},
		{"http sts", strings.Replace(baseConfig, "https://127.0.0.1:8443", "http://127.0.0.1:8443", 1) + ordersRoute, "sts.issuer: want an https URL"},
		{"relative prefix", baseConfig + strings.Replace(ordersRoute, "/orders", "orders", 1), `pathPrefix: "orders" must start with /`},
		{"pattern prefix", baseConfig + strings.Replace(ordersRoute, "/orders", "/orders/*", 1), "no *"},
		{"dot segment", baseConfig + strings.Replace(ordersRoute, "/orders", "/a/../orders", 1), "dot segment"},
		{"bad host", baseConfig + strings.Replace(ordersRoute, "name: orders,", "name: orders, host: 'a*b.example',", 1), "'*' is allowed only"},
		{"duplicate ordersRoute", baseConfig + ordersRoute + "- {name: orders, pathPrefix: /x, upstream: {name: order-processing, addresses: [\"127.0.0.1:1\"], spiffeID: \"spiffe://quickstart.local/o\"}}\n", "used twice"},
		{"same host and prefix", baseConfig + ordersRoute + "- {name: o2, pathPrefix: /orders, upstream: {name: order-processing, addresses: [\"127.0.0.1:1\"], spiffeID: \"spiffe://quickstart.local/o\"}}\n", `are those of route "orders"`},
		{"upstream defined twice differently", baseConfig + ordersRoute + "- {name: o2, pathPrefix: /x, upstream: {name: order-processing, addresses: [\"127.0.0.1:2\"], spiffeID: \"spiffe://quickstart.local/o\"}}\n", "defined differently"},
		{"bad upstream", baseConfig + strings.Replace(ordersRoute, "127.0.0.1:1", "nowhere", 1), `address "nowhere" is not host:port`},
		{"bad scope", baseConfig + strings.Replace(ordersRoute, "}}\n", "}, requiredScopes: [\"a b\"]}\n", 1), "is not a scope token"},
		{"bad when key", baseConfig + strings.Replace(ordersRoute, "}}\n", "}, when: [{key: bogus, values: [x]}]}\n", 1), `unsupported key "bogus"`},
		{"bad CEL", baseConfig + strings.Replace(ordersRoute, "}}\n", "}, condition: 'subject.'}\n", 1), "condition:"},
		{"bad rate", baseConfig + ordersRoute + "rateLimit: {requestsPerSecond: 0}\n", "rateLimit.requestsPerSecond"},
		{"bad rate key", baseConfig + ordersRoute + "rateLimit: {requestsPerSecond: 1, by: ip}\n", `rateLimit.by: "ip" is not sub or client_id`},
		{"header bound", baseConfig + ordersRoute + "maxHeaderBytes: 10\n", "maxHeaderBytes: want 1 KiB to 1 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
	c, err := ParseConfig([]byte(baseConfig + ordersRoute + "rateLimit: {requestsPerSecond: 2.5}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != DefaultListen || c.Admin.Listen != DefaultAdminListen || c.RateLimit.Burst != 3 || c.RateLimit.By != "sub" || c.RateLimit.MaxClients != defaultMaxClients {
		t.Errorf("defaults: %+v %+v", c, c.RateLimit)
	}
}

func TestRouteMatch(t *testing.T) {
	routes := []Route{
		{Name: "root", Host: "*", PathPrefix: "/"},
		{Name: "orders", Host: "*", PathPrefix: "/orders"},
		{Name: "orders-dir", Host: "*", PathPrefix: "/orders/"},
		{Name: "orders-admin", Host: "*", PathPrefix: "/orders/admin"},
		{Name: "shop-orders", Host: "*.shop.example", PathPrefix: "/orders"},
		{Name: "api-orders", Host: "api.shop.example", PathPrefix: "/orders"},
	}
	tbl, err := compileRoutes(routes, "spiffe://quickstart.local/gw")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ host, path, want string }{
		{"gw.example", "/", "root"},
		{"gw.example", "/ordersx", "root"},
		{"gw.example", "/orders", "orders"},
		{"gw.example", "/orders/", "orders-dir"},
		{"gw.example", "/orders/42", "orders-dir"},
		{"gw.example", "/orders/admin", "orders-admin"},
		{"gw.example", "/orders/admin/x", "orders-admin"},
		{"gw.example", "/orders/administrator", "orders-dir"},
		{"x.shop.example", "/orders", "shop-orders"},
		{"X.Shop.Example:8443", "/orders", "shop-orders"},
		{"shop.example", "/orders", "orders"},
		{"api.shop.example", "/orders", "api-orders"},
		{"api.shop.example.", "/orders", "api-orders"},
		{"api.shop.example", "/orders/1", "orders-dir"},
		{"[::1]:443", "/orders", "orders"},
	} {
		t.Run(tc.host+tc.path, func(t *testing.T) {
			r := tbl.match(tc.host, tc.path)
			if r == nil || r.Name != tc.want {
				t.Errorf("matched %v, want %s", r, tc.want)
			}
		})
	}
	none, _ := compileRoutes([]Route{{Name: "a", Host: "a.example", PathPrefix: "/a"}}, "spiffe://quickstart.local/gw")
	if r := none.match("b.example", "/a"); r != nil {
		t.Errorf("matched %s", r.Name)
	}
}
