package policy

import (
	"math/rand/v2"
	"testing"
)

// gen builds random policies and requests from a small vocabulary so that
// matches are frequent.
type gen struct{ r *rand.Rand }

func (g gen) pick(vals ...string) string { return vals[g.r.IntN(len(vals))] }

func (g gen) some(vals ...string) []string {
	var out []string
	for _, v := range vals {
		if g.r.IntN(3) == 0 {
			out = append(out, v)
		}
	}
	return out
}

func (g gen) rule(action string) Rule {
	var r Rule
	if g.r.IntN(2) == 0 {
		s := Source{
			Principals:    g.some(orders, sleep, gateway, td+"/ns/shop/*", "*"),
			NotPrincipals: g.some(sleep, td+"/ns/edge/**"),
			Namespaces:    g.some("shop", "foo", "def*"),
		}
		if g.r.IntN(4) == 0 {
			s.RequestPrincipals = []string{g.pick(idp+"/alice", idp+"/*", "*")}
		}
		if len(s.Principals)+len(s.NotPrincipals)+len(s.Namespaces)+len(s.RequestPrincipals) == 0 {
			s.Principals = []string{"*"}
		}
		r.From = []From{{Source: s}}
	}
	if g.r.IntN(2) == 0 {
		o := Operation{Methods: g.some("GET", "POST"), Paths: g.some("/a", "/a/*", "/b/{id}", "/healthz"), NotPaths: g.some("/a/x")}
		if len(o.Methods)+len(o.Paths)+len(o.NotPaths) == 0 {
			o.Methods = []string{"GET"}
		}
		r.To = []To{{Operation: o}}
	}
	for range g.r.IntN(3) {
		c := Condition{Key: g.pick("request.auth.claims[scope]", "actors[-1]", "request.headers[x-t]", "actors", "request.auth.claims[email]")}
		vals := []string{g.pick("orders:write", "orders:read", "acme", "*")}
		if c.Key == "actors" || c.Key == "actors[-1]" {
			vals = []string{g.pick(gateway, td+"/ns/*/sa/gateway", orders, "*")}
		}
		if g.r.IntN(2) == 0 {
			c.Values = vals
		} else {
			c.NotValues = vals
		}
		r.When = append(r.When, c)
	}
	if g.r.IntN(5) == 0 {
		r.Condition = g.pick(`subject.email.endsWith("@shop.example")`, `method == "GET"`, `headers["x-t"] == "acme"`, `size(actors) > 1`)
	}
	if action == ActionAllow && g.r.IntN(6) == 0 {
		r = Rule{AllowWithoutToken: true, To: []To{{Operation: Operation{Paths: []string{"/healthz"}}}}}
	}
	return r
}

func (g gen) policy(name, action string) AuthorizationPolicy {
	p := AuthorizationPolicy{Name: name, Action: action}
	switch g.r.IntN(4) {
	case 0:
		p.Selector = &WorkloadSelector{MatchLabels: map[string]string{"app": g.pick("inventory", "orders", "httpbin")}}
	case 1:
		p.Selector = &WorkloadSelector{SPIFFEIDs: []string{g.pick(td+"/ns/shop/*", httpbin, "*")}}
	}
	if g.r.IntN(8) == 0 {
		p.Mode = ModeDryRun
	}
	for range g.r.IntN(3) + 1 {
		p.Rules = append(p.Rules, g.rule(action))
	}
	return p
}

func (g gen) request() *Request {
	r := &Request{
		Workload: g.pick(inventory, orders, httpbin, td+"/ns/x/sa/unknown"),
		Peer:     g.pick(orders, sleep, gateway, ""),
		Method:   g.pick("GET", "POST"),
		Path:     g.pick("/a", "/a/x", "/b/1", "/healthz", "/"),
	}
	if g.r.IntN(4) == 0 {
		r.Labels = map[string]string{"app": g.pick("inventory", "orders")}
	}
	if g.r.IntN(4) != 0 {
		r.HasToken = true
		r.Issuer, r.Subject = idp, g.pick("alice", "bob")
		r.Claims = map[string]any{"iss": idp, "sub": r.Subject}
		if g.r.IntN(2) == 0 {
			r.Claims["scope"] = g.pick("orders:read", "orders:read orders:write")
		}
		if g.r.IntN(3) == 0 {
			r.Claims["email"] = g.pick("a@shop.example", "b@evil.example")
		}
		r.Actors = g.some(orders, gateway)
	}
	if g.r.IntN(2) == 0 {
		r.Headers = map[string]string{"x-t": g.pick("acme", "other")}
	}
	return r
}

func compileSet(t *testing.T, ws []Workload, ps []AuthorizationPolicy) *Engine {
	t.Helper()
	e, err := Compile(&Set{Workloads: ws, AuthorizationPolicies: ps}, CompileOptions{})
	if err != nil {
		t.Fatalf("Compile: %v", err)
	}
	return e
}

func testWorkloads(t *testing.T) []Workload {
	set, err := Parse("w.yaml", []byte(workloads))
	if err != nil {
		t.Fatal(err)
	}
	return set.Workloads
}

// TestPropertyMonotonic: adding an ALLOW policy never turns an allow into a
// deny, and adding a DENY policy never turns a deny into an allow.
func TestPropertyMonotonic(t *testing.T) {
	ws := testWorkloads(t)
	g := gen{rand.New(rand.NewPCG(1, 2))}
	allows, total := 0, 0
	defer func() {
		if allows == 0 || allows == total {
			t.Errorf("generator is degenerate: %d allows of %d", allows, total)
		}
	}()
	for i := range 300 {
		var base []AuthorizationPolicy
		for j := range g.r.IntN(5) {
			base = append(base, g.policy("p"+string(rune('a'+j)), g.pick(ActionAllow, ActionAllow, ActionDeny, ActionAudit)))
		}
		e := compileSet(t, ws, base)
		withAllow := compileSet(t, ws, append(append([]AuthorizationPolicy{}, base...), g.policy("zz-allow", ActionAllow)))
		withDeny := compileSet(t, ws, append(append([]AuthorizationPolicy{}, base...), g.policy("zz-deny", ActionDeny)))
		for range 30 {
			r := g.request()
			d := e.Authorize(r)
			total++
			if d.Allow {
				allows++
			}
			if d.Allow && !withAllow.Authorize(r).Allow {
				t.Fatalf("case %d: adding ALLOW turned allow into deny for %+v", i, r)
			}
			if !d.Allow && withDeny.Authorize(r).Allow {
				t.Fatalf("case %d: adding DENY turned deny into allow for %+v", i, r)
			}
			if d2, _ := e.Explain(r); d2.Allow != d.Allow {
				t.Fatalf("case %d: Explain and Authorize disagree for %+v", i, r)
			}
		}
	}
}
