package gateway

import (
	"os"
	"strings"
	"testing"
)

// FuzzParseConfig feeds arbitrary bytes to the configuration parser: it
// must not panic, and what it accepts must validate again unchanged.
func FuzzParseConfig(f *testing.F) {
	if b, err := os.ReadFile("../../examples/quickstart/gateway.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte(baseConfig + ordersRoute))
	f.Add([]byte(baseConfig + ordersRoute + "rateLimit: {requestsPerSecond: 2.5, by: client_id}\n"))
	f.Add([]byte(baseConfig + strings.Replace(ordersRoute, "}}\n", "}, host: '*.shop.example', when: [{key: 'request.auth.claims[groups]', values: [vip]}], condition: 'subject.sub != \"\"'}\n", 1)))
	f.Add([]byte("routes: [{pathPrefix: '/a/../b'}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("an accepted configuration does not validate again: %v", err)
		}
		if len(c.Routes) == 0 || c.Listen == "" || c.Admin.Listen == "" {
			t.Fatalf("accepted without routes or defaults: %+v", c)
		}
		for _, r := range c.Routes {
			if checkPrefix(r.PathPrefix) != nil || checkHostPattern(r.Host) != nil {
				t.Fatalf("accepted route %+v", r)
			}
		}
	})
}

// FuzzRouteMatch matches arbitrary hosts and paths against a fixed table:
// the route returned must match, and no route that also matches may be more
// specific (longer prefix, then more specific host).
func FuzzRouteMatch(f *testing.F) {
	routes := []Route{
		{Name: "root", Host: "*", PathPrefix: "/"},
		{Name: "orders", Host: "*", PathPrefix: "/orders"},
		{Name: "orders-dir", Host: "*", PathPrefix: "/orders/"},
		{Name: "orders-admin", Host: "*", PathPrefix: "/orders/admin"},
		{Name: "shop-orders", Host: "*.shop.example", PathPrefix: "/orders"},
		{Name: "api-orders", Host: "api.shop.example", PathPrefix: "/orders"},
		{Name: "api-only", Host: "api.shop.example", PathPrefix: "/api"},
	}
	tbl, err := compileRoutes(routes, "spiffe://quickstart.local/gw")
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range [][2]string{
		{"api.shop.example", "/orders/1"}, {"X.SHOP.example:443", "/orders"}, {"[::1]:8443", "/ordersx"},
		{"shop.example.", "/orders/admin/"}, {"", ""}, {"api.shop.example", "/api"}, {"a.b", "/api/x"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, host, path string) {
		r := tbl.match(host, path)
		h := normHost(host)
		if r == nil {
			for _, c := range tbl.routes {
				if c.matchHost(h) && prefixMatch(c.PathPrefix, path) {
					t.Fatalf("no match but route %s matches %q %q", c.Name, host, path)
				}
			}
			return
		}
		if !r.matchHost(h) || !prefixMatch(r.PathPrefix, path) {
			t.Fatalf("route %s returned for %q %q does not match", r.Name, host, path)
		}
		if !strings.HasPrefix(path, r.PathPrefix) {
			t.Fatalf("route %s: %q is not below %q", r.Name, path, r.PathPrefix)
		}
		for _, c := range tbl.routes {
			if c == r || !c.matchHost(h) || !prefixMatch(c.PathPrefix, path) {
				continue
			}
			if len(c.PathPrefix) > len(r.PathPrefix) || len(c.PathPrefix) == len(r.PathPrefix) && c.hostRank > r.hostRank {
				t.Fatalf("route %s returned for %q %q, but %s is more specific", r.Name, host, path, c.Name)
			}
		}
	})
}
