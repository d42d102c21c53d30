package demo

import (
	"fmt"
	"path/filepath"
	"strings"
)

// Address is where one component listens.
type Address struct {
	// Name is the component.
	Name string `json:"name"`
	// URL is its address.
	URL string `json:"url"`
	// Note says what else there is to know.
	Note string `json:"note,omitempty"`
}

// Addresses lists the running components.
func (d *Demo) Addresses() []Address {
	addrs := []Address{
		{Name: "identity provider", URL: d.idp.Issuer(), Note: "demo users alice (orders:read orders:write) and bob (orders:read)"},
		{Name: "token service", URL: d.srv.Issuer(), Note: "postern server, trust domain " + d.td.Name()},
		{Name: "gateway", URL: d.edge.URL(), Note: "route /orders → order-processing"},
	}
	for _, name := range []string{OrderProcessing, Inventory, Finance} {
		sc := d.sidecars[name]
		addrs = append(addrs, Address{Name: name, URL: "https://" + sc.InboundAddr().String(),
			Note: fmt.Sprintf("sidecar (mTLS) → app http://%s; admin http://%s", d.appAddr[name], sc.AdminAddr())})
	}
	dir := d.dir
	if d.ownDir {
		dir += " (removed at exit)"
	}
	return append(addrs, Address{Name: "files", URL: dir, Note: "certs/<workload>/svid.pem, svid.key, bundle.pem"})
}

// Command is a ready-to-paste shell command with what it shows.
type Command struct {
	Comment string `json:"comment"`
	Line    string `json:"line"`
}

// Commands returns curl commands to try against the running demo. The
// certificates carry the DNS name localhost, so curl checks them against
// the trust bundle like any other server.
func (d *Demo) Commands() []Command {
	bundle := shellQuote(filepath.Join(d.dir, "data", "bundle.pem"))
	cert := func(name string) string {
		w := d.ids[name]
		return fmt.Sprintf("--cert %s --key %s", shellQuote(w.certFile()), shellQuote(w.keyFile()))
	}
	local := func(u string) string { return strings.Replace(u, "127.0.0.1", "localhost", 1) }
	inv := local("https://" + d.sidecars[Inventory].InboundAddr().String())
	orders := local("https://" + d.sidecars[OrderProcessing].InboundAddr().String())
	return []Command{
		{"alice signs in at the identity provider (a demo: no password)",
			fmt.Sprintf(`TOKEN=$(curl -s -d username=alice %s/token | sed -E 's/.*"access_token":"([^"]+)".*/\1/')`, d.idp.Issuer())},
		{"her order, through the gateway: order-processing calls inventory, and is refused a token for finance",
			fmt.Sprintf(`curl -sS --cacert %s -H "Authorization: Bearer $TOKEN" -d '{"item":"42"}' %s/orders`, bundle, local(d.edge.URL()))},
		{"her IdP token sent straight to a sidecar: refused (401: not a token of the token service)",
			fmt.Sprintf(`curl -sS --cacert %s %s -H "Authorization: Bearer $TOKEN" -X POST %s/orders`, bundle, cert(Gateway), orders)},
		{"finance calls inventory without a token: refused (401)",
			fmt.Sprintf(`curl -sS --cacert %s %s -X POST %s/items/42/reserve`, bundle, cert(Finance), inv)},
		{"no client certificate: refused at the TLS handshake",
			fmt.Sprintf(`curl -sS --cacert %s %s/items`, bundle, inv)},
		{"the token service's discovery document",
			fmt.Sprintf(`curl -sS --cacert %s %s/.well-known/openid-configuration`, bundle, d.srv.Issuer())},
		{"order-processing's sidecar metrics",
			fmt.Sprintf(`curl -sS http://%s/metrics | grep '^postern_'`, d.sidecars[OrderProcessing].AdminAddr())},
	}
}

// shellQuote quotes s for a POSIX shell when it holds anything but
// letters, digits and -_./:@%+=,
func shellQuote(s string) string {
	safe := s != ""
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:@%+=,", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
