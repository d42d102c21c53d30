package policy

import (
	"testing"
)

func FuzzParse(f *testing.F) {
	f.Add([]byte(workloads))
	f.Add([]byte(exchangeSet))
	f.Add([]byte("apiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  selector: {spiffeIDs: ['spiffe://td/ns/**']}\n  rules:\n  - from: [{source: {principals: ['*'], namespaces: [x*]}}]\n    to: [{operation: {paths: ['/a/{id}/{**}', '*.json'], ports: [80, '443'], hosts: ['*.x']}}]\n    when: [{key: 'request.auth.claims[a][b]', values: [x]}, {key: 'actors[-1]', notValues: ['spiffe://td/*']}]\n    condition: 'size(actors) > 0'\n"))
	f.Add([]byte("a: &x [1]\nb: *x\n---\nkind: Workload\n"))
	f.Add([]byte("apiVersion: postern.dev/v1\nkind: TrustedIssuer\nmetadata: {name: i}\nspec: {issuer: 'https://i', jwks: {keys: [{kty: EC, crv: P-256, x: AA, y: AA}]}, audiences: [a]}\n"))
	f.Add([]byte("apiVersion: postern.dev/v1\nkind: Federation\nmetadata: {name: p}\nspec:\n  trustDomain: p.example\n  bundleEndpointURL: https://p.example/bundle\n  profile: https_spiffe\n  endpointSPIFFEID: spiffe://p.example/s\n  bootstrapBundle: '{\"keys\": [{\"use\": \"x509-svid\", \"kty\": \"EC\", \"x5c\": [\"AA==\"]}]}'\n"))
	f.Add([]byte("apiVersion: postern.dev/v1\nkind: Federation\nmetadata: {name: w}\nspec:\n  trustDomain: w.example\n  bundleEndpointURL: https://w.example/bundle\n  profile: https_web\n  caBundle: |\n    -----BEGIN CERTIFICATE-----\n    AAAA\n    -----END CERTIFICATE-----\n"))
	// Parse and Compile, with the CEL environments built once (building
	// them is the slow part of Parse and would starve the fuzzer).
	envs, err := newCELEnvs()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		l := &loader{envs: envs, names: map[string]map[string]Origin{}}
		l.parse("fuzz.yaml", data)
		if len(l.problems) > 0 {
			for _, p := range l.problems {
				if p.File != "fuzz.yaml" || p.Message == "" {
					t.Fatalf("bad problem %+v", p)
				}
			}
			return
		}
		e, probs := compile(&l.set, CompileOptions{SelfIssuer: "https://sts"}, envs)
		if len(probs) > 0 {
			return
		}
		r := req(httpbin, sleep, "GET", "/a/1/x", tok(user, gateway))
		d1 := e.Authorize(r)
		d2, _ := e.Explain(r)
		if d1.Allow != d2.Allow || d1.Policy != d2.Policy {
			t.Fatalf("Authorize %+v and Explain %+v disagree", d1, d2)
		}
		e.Exchange(&ExchangeRequest{GrantType: "token-exchange", Client: orders, SubjectIssuer: "https://sts", Subject: user})
	})
}

func FuzzCEL(f *testing.F) {
	for _, s := range []string{
		`subject.scope.split(" ").exists(s, s == "orders:write")`,
		`"staff" in subject.groups && method == "GET"`,
		`size(actors) > 1 && actors[size(actors)-1].startsWith("spiffe://td/ns/edge/")`,
		`headers["x-t"] == "a" || port == 8080`,
		`[1,2,3].all(x, [1,2,3].all(y, x + y > 0))`,
		`subject.email.matches("^.*@x$")`,
		`client + "x"`,
		`((((((((((true))))))))))`,
	} {
		f.Add(s)
	}
	envs, err := newCELEnvs()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, src string) {
		chk, err := checkCEL(envs.authz, src)
		if err != nil {
			return
		}
		prg, err := program(envs.authz, chk)
		if err != nil {
			t.Fatalf("checked expression %q has no program: %v", src, err)
		}
		r := req(httpbin, sleep, "GET", "/", tok(user, gateway))
		_, _ = evalBool(prg, authzActivation{r}) // must not panic; cost is bounded
	})
}
