package policy

import (
	"fmt"
	"testing"
)

// benchEngine builds n policies: 5 select the target workload (a DENY with
// two rules, an AUDIT and three ALLOWs with realistic rules, the matching
// one last), the rest select other workloads by SPIFFE ID or labels.
func benchEngine(b *testing.B, n int) (*Engine, *Request) {
	b.Helper()
	target := td + "/ns/shop/sa/inventory"
	ws := []Workload{{Name: "inventory", SPIFFEID: target, Labels: map[string]string{"app": "inventory"}}}
	for i := range n / 2 {
		ws = append(ws, Workload{Name: fmt.Sprintf("svc-%d", i), SPIFFEID: fmt.Sprintf("%s/ns/ns%d/sa/svc-%d", td, i%20, i), Labels: map[string]string{"app": fmt.Sprintf("svc-%d", i)}})
	}
	rule := func(caller, method, path, scope string) Rule {
		return Rule{
			From: []From{{Source: Source{Principals: []string{caller}, RequestPrincipals: []string{idp + "/*"}}}},
			To:   []To{{Operation: Operation{Methods: []string{method}, Paths: []string{path}}}},
			When: []Condition{{Key: "request.auth.claims[scope]", Values: []string{scope}}, {Key: "actors[-1]", Values: []string{td + "/ns/edge/sa/gateway"}}},
		}
	}
	var ps []AuthorizationPolicy
	sel := &WorkloadSelector{SPIFFEIDs: []string{target}}
	ps = append(ps,
		AuthorizationPolicy{Name: "t-deny", Selector: sel, Action: ActionDeny, Rules: []Rule{
			{From: []From{{Source: Source{NotPrincipals: []string{td + "/ns/shop/*", td + "/ns/edge/*"}}}}},
			{To: []To{{Operation: Operation{Paths: []string{"/admin*"}}}}},
		}},
		AuthorizationPolicy{Name: "t-audit", Selector: sel, Action: ActionAudit, Rules: []Rule{{To: []To{{Operation: Operation{Methods: []string{"DELETE"}}}}}}},
		AuthorizationPolicy{Name: "t-allow-1", Selector: &WorkloadSelector{MatchLabels: map[string]string{"app": "inventory"}}, Rules: []Rule{
			rule(td+"/ns/shop/sa/billing", "GET", "/invoices/{id}", "billing:read"),
			rule(td+"/ns/shop/sa/billing", "POST", "/invoices", "billing:write"),
		}},
		AuthorizationPolicy{Name: "t-allow-2", Selector: sel, Rules: []Rule{
			rule(td+"/ns/shop/sa/shipping", "GET", "/items/*", "items:read"),
		}},
		AuthorizationPolicy{Name: "t-allow-3", Selector: sel, Rules: []Rule{
			rule(td+"/ns/shop/sa/reports", "GET", "/items", "items:read"),
			rule(td+"/ns/shop/sa/orders", "POST", "/items/{id}/reserve", "orders:write"),
		}},
	)
	for i := len(ps); i < n; i++ {
		w := ws[1+i%(len(ws)-1)]
		s := &WorkloadSelector{SPIFFEIDs: []string{w.SPIFFEID}}
		if i%2 == 0 {
			s = &WorkloadSelector{MatchLabels: w.Labels}
		}
		action := ActionAllow
		if i%5 == 0 {
			action = ActionDeny
		}
		ps = append(ps, AuthorizationPolicy{Name: fmt.Sprintf("p-%04d", i), Selector: s, Action: action, Rules: []Rule{
			rule(td+"/ns/shop/sa/orders", "GET", "/things/{id}", "things:read"),
		}})
	}
	e, err := Compile(&Set{Workloads: ws, AuthorizationPolicies: ps}, CompileOptions{})
	if err != nil {
		b.Fatal(err)
	}
	r := &Request{
		Workload: target, Peer: orders, HasToken: true, Issuer: idp, Subject: "alice",
		Claims: map[string]any{"iss": idp, "sub": "alice", "scope": "orders:read orders:write"},
		Actors: []string{orders, gateway},
		Method: "POST", Path: "/items/42/reserve", Host: "inventory.shop.svc", Port: 8443,
	}
	if d := e.Authorize(r); !d.Allow || d.Policy != "t-allow-3" || d.Rule != 1 {
		b.Fatalf("benchmark request not allowed as expected: %+v", d)
	}
	return e, r
}

func benchAuthorize(b *testing.B, n int) {
	e, r := benchEngine(b, n)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if !e.Authorize(r).Allow {
			b.Fatal("denied")
		}
	}
}

func BenchmarkAuthorize10(b *testing.B)   { benchAuthorize(b, 10) }
func BenchmarkAuthorize100(b *testing.B)  { benchAuthorize(b, 100) }
func BenchmarkAuthorize1000(b *testing.B) { benchAuthorize(b, 1000) }

// BenchmarkAuthorizeUnindexed1000 is the slow path: a workload the Engine
// does not know, so every selector is checked.
func BenchmarkAuthorizeUnindexed1000(b *testing.B) {
	e, r := benchEngine(b, 1000)
	r2 := *r
	r2.Labels = map[string]string{"app": "inventory", "version": "v2"}
	b.ReportAllocs()
	for b.Loop() {
		if !e.Authorize(&r2).Allow {
			b.Fatal("denied")
		}
	}
}

func BenchmarkAuthorizeParallel100(b *testing.B) {
	e, r := benchEngine(b, 100)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			e.Authorize(r)
		}
	})
}

func BenchmarkAuthorizeCEL(b *testing.B) {
	e := mustEngine(b, workloads+`---
apiVersion: postern.dev/v1
kind: AuthorizationPolicy
metadata: {name: cel}
spec:
  rules: [{condition: 'subject.scope.split(" ").exists(s, s == "orders:write") && method == "POST"'}]
`)
	r := req(httpbin, sleep, "POST", "/", tok(user))
	b.ReportAllocs()
	for b.Loop() {
		if !e.Authorize(r).Allow {
			b.Fatal("denied")
		}
	}
}

func BenchmarkExchange(b *testing.B) {
	docs := exchangeSet
	for i := range 100 {
		docs += fmt.Sprintf(`---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: filler-%03d}
spec:
  clients: ["spiffe://shop.local/ns/ns%d/sa/svc-%d"]
  subjectIssuers: [self]
  audiences: ["spiffe://shop.local/ns/shop/sa/svc-%d"]
`, i, i%10, i, i)
	}
	e := mustEngine(b, docs)
	r := &ExchangeRequest{GrantType: "token-exchange", Client: orders, SubjectIssuer: "https://sts.shop.local",
		Subject: map[string]any{"sub": "alice", "scope": "orders:write"}, Actors: []string{gateway}, Audience: inventory}
	if d := e.Exchange(r); !d.Allow {
		b.Fatalf("denied: %s", d.Reason)
	}
	b.ReportAllocs()
	for b.Loop() {
		e.Exchange(r)
	}
}
