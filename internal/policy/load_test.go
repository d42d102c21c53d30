package policy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
)

func problemsOf(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("error %v is not Problems", err)
	}
	var out []string
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

func TestParseProblems(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{
			name: "unknown kind",
			yaml: "apiVersion: postern.dev/v1\nkind: Gizmo\nmetadata: {name: x}\nspec: {}\n",
			want: []string{`f.yaml:2: unknown kind "Gizmo" (want Workload, TrustedIssuer, ExchangePolicy, AuthorizationPolicy, Federation or PolicyTest)`},
		},
		{
			name: "unix selectors without an owner",
			yaml: "apiVersion: postern.dev/v1\nkind: Workload\nmetadata: {name: w}\nspec:\n  spiffeID: spiffe://td.test/w\n  selectors: [{type: unix, value: \"path:/usr/bin/app\"}, {type: unix, value: \"sha256:ab\"}]\n",
			want: []string{`f.yaml:6: selectors: unix selectors need a uid: or user: selector; path: and sha256: alone do not tell apart processes of different users`},
		},
		{
			name: "svidTTL too short",
			yaml: "apiVersion: postern.dev/v1\nkind: Workload\nmetadata: {name: w}\nspec:\n  spiffeID: spiffe://td.test/w\n  svidTTL: 30s\n",
			want: []string{`f.yaml:6: svidTTL: 30s is shorter than 5m0s (SVIDs are renewed at half-life)`},
		},
		{
			name: "svidTTL too long",
			yaml: "apiVersion: postern.dev/v1\nkind: Workload\nmetadata: {name: w}\nspec:\n  spiffeID: spiffe://td.test/w\n  svidTTL: 720h\n",
			want: []string{`f.yaml:6: svidTTL: 720h0m0s is longer than 24h0m0s; short-lived SVIDs are the point (renewal is automatic)`},
		},
		{
			name: "unknown field deep inside, with its line",
			yaml: `apiVersion: postern.dev/v1
kind: AuthorizationPolicy
metadata: {name: x}
spec:
  rules:
  - from:
    - source:
        principal: ["spiffe://shop.local/a"]
`,
			want: []string{`f.yaml:8: unknown field "principal" in spec.rules[0].from[0].source`},
		},
		{
			name: "wrong type",
			yaml: "apiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules: {}\n",
			want: []string{`f.yaml:5: spec.rules: want a list`},
		},
		{
			name: "duplicate key",
			yaml: "apiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  action: ALLOW\n  action: DENY\n",
			want: []string{`f.yaml:6: duplicate field "action" in spec`},
		},
		{
			name: "bad glob",
			yaml: `apiVersion: postern.dev/v1
kind: AuthorizationPolicy
metadata: {name: x}
spec:
  rules:
  - to:
    - operation:
        paths:
        - /ok
        - /a/**x
        - /a/{id
        - "*a*"
`,
			want: []string{
				`f.yaml:10: paths: "/a/**x": '**' must be a whole segment`,
				`f.yaml:11: paths: "/a/{id": a {param} must be a whole path segment`,
				`f.yaml:12: paths: "*a*": path must start with '/'`,
			},
		},
		{
			name: "principal that is not a SPIFFE ID",
			yaml: "apiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules:\n  - from: [{source: {principals: [cluster.local/ns/default/sa/sleep]}}]\n",
			want: []string{`f.yaml:6: principals: "cluster.local/ns/default/sa/sleep": must be a SPIFFE ID (spiffe://trust-domain/path) or a glob of one`},
		},
		{
			name: "CEL that does not compile",
			yaml: "apiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  rules:\n  - condition: 'subject.email =='\n",
			want: []string{`f.yaml:6: condition: CEL does not compile: Syntax error: mismatched input '<EOF>' expecting {'[', '{', '(', '.', '-', '!', 'true', 'false', 'null', NUM_FLOAT, NUM_INT, NUM_UINT, STRING, BYTES, IDENTIFIER} (at 1:17)`},
		},
		{
			name: "CEL that does not return a bool",
			yaml: "apiVersion: postern.dev/v1\nkind: ExchangePolicy\nmetadata: {name: x}\nspec:\n  clients: ['*']\n  subjectIssuers: [self]\n  audiences: [a]\n  when: 'client + \"x\"'\n",
			want: []string{`f.yaml:8: when: CEL must return a bool, not string`},
		},
		{
			name: "CEL unknown variable",
			yaml: "apiVersion: postern.dev/v1\nkind: ExchangePolicy\nmetadata: {name: x}\nspec:\n  clients: ['*']\n  subjectIssuers: [self]\n  audiences: [a]\n  when: 'path == \"/\"'\n",
			want: []string{`f.yaml:8: when: CEL does not compile: undeclared reference to 'path' (in container '') (at 1:1)`},
		},
		{
			name: "conflicting fields in a DENY exchange policy",
			yaml: "apiVersion: postern.dev/v1\nkind: ExchangePolicy\nmetadata: {name: x}\nspec:\n  action: DENY\n  clients: ['*']\n  subjectIssuers: [self]\n  audiences: [a]\n  scopes: [a]\n  maxLifetime: 1m\n",
			want: []string{
				`f.yaml:9: conflicting fields: scopes is not valid in a DENY policy`,
				`f.yaml:10: conflicting fields: maxLifetime is not valid in a DENY policy`,
			},
		},
		{
			name: "globs not allowed in subjectIssuers, bad duration",
			yaml: "apiVersion: postern.dev/v1\nkind: ExchangePolicy\nmetadata: {name: x}\nspec:\n  clients: ['*']\n  subjectIssuers: ['https://*.example']\n  audiences: [a]\n  maxLifetime: soon\n",
			want: []string{
				`f.yaml:8: spec.maxLifetime: invalid duration "soon"`,
			},
		},
		{
			name: "globs not allowed in subjectIssuers",
			yaml: "apiVersion: postern.dev/v1\nkind: ExchangePolicy\nmetadata: {name: x}\nspec:\n  clients: ['*']\n  subjectIssuers: ['https://*.example']\n  audiences: [a]\n  maxLifetime: 48h\n",
			want: []string{
				`f.yaml:6: subjectIssuers: "https://*.example": globs are not allowed here`,
				`f.yaml:8: maxLifetime: 48h0m0s is longer than 24h`,
			},
		},
		{
			name: "allowWithoutToken must be narrow",
			yaml: `apiVersion: postern.dev/v1
kind: AuthorizationPolicy
metadata: {name: x}
spec:
  rules:
  - allowWithoutToken: true
    to: [{operation: {paths: ["/health*"]}}]
    when: [{key: "request.auth.claims[sub]", values: [a]}]
`,
			want: []string{
				`f.yaml:7: allowWithoutToken: path "/health*" must be exact, not a pattern`,
				`f.yaml:8: conflicting fields: "request.auth.claims[sub]" needs a token, allowWithoutToken says there is none`,
			},
		},
		{
			name: "allowWithoutToken in a DENY policy",
			yaml: "apiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  action: DENY\n  rules:\n  - allowWithoutToken: true\n    to: [{operation: {paths: [/h]}}]\n",
			want: []string{`f.yaml:7: allowWithoutToken is only valid in ALLOW policies`},
		},
		{
			name: "unsupported when key and CUSTOM action",
			yaml: "apiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: x}\nspec:\n  action: CUSTOM\n  rules:\n  - when: [{key: source.ip, values: [10.0.0.1]}]\n",
			want: []string{
				`f.yaml:5: action: "CUSTOM" is not ALLOW, DENY or AUDIT`,
				`f.yaml:7: when: unsupported key "source.ip" (supported: request.auth.claims[...], request.auth.principal, request.auth.audiences, request.auth.presenter, request.headers[...], source.principal, source.namespace, actors, actors[N])`,
			},
		},
		{
			name: "envelope: apiVersion, name, duplicates across documents",
			yaml: "apiVersion: v1\nkind: Workload\nmetadata: {name: A}\nspec: {spiffeID: 'spiffe://shop.local/a'}\n---\napiVersion: postern.dev/v1\nkind: Workload\nmetadata: {name: a}\nspec: {spiffeID: 'spiffe://shop.local/a'}\n---\napiVersion: postern.dev/v1\nkind: Workload\nmetadata:\n  name: a\nspec: {spiffeID: 'spiffe://shop.local/b'}\n",
			want: []string{
				`f.yaml:1: apiVersion: "v1" is not postern.dev/v1`,
				`f.yaml:3: metadata.name: "A" must be lower case letters, digits, '-' and '.'`,
				`f.yaml:14: duplicate Workload name "a" (first defined at f.yaml:6)`,
			},
		},
		{
			name: "workload checks",
			yaml: "apiVersion: postern.dev/v1\nkind: Workload\nmetadata: {name: a}\nspec:\n  spiffeID: 'https://x'\n  clientAuthentication: [private_key_jwt, magic]\n  selectors: [{type: unix}]\n",
			want: []string{
				`f.yaml:5: spiffeID: "https://x": invalid SPIFFE ID: scheme is missing or invalid`,
				`f.yaml:6: clientAuthentication: "magic" is not tls_client_auth, jwt_spiffe, private_key_jwt or client_secret_basic`,
				`f.yaml:6: private_key_jwt needs jwks or jwksURI`,
				`f.yaml:7: selectors: type and value are required`,
			},
		},
		{
			name: "trusted issuer checks",
			yaml: "apiVersion: postern.dev/v1\nkind: TrustedIssuer\nmetadata: {name: a}\nspec:\n  issuer: http://idp.example\n  jwksURI: https://idp.example/jwks\n  discovery: true\n  algorithms: [HS256, none]\n",
			want: []string{
				`f.yaml:4: at most one of jwks, jwksURI and discovery: true`,
				`f.yaml:4: audiences: required`,
				`f.yaml:5: issuer: "http://idp.example": URL must use https (http only for localhost)`,
				`f.yaml:8: algorithms: "HS256" is not allowed (none and HS* never are)`,
				`f.yaml:8: algorithms: "none" is not allowed (none and HS* never are)`,
			},
		},
		{
			// In policies an absent list means "any": an explicit empty one
			// (or a key whose entries were all commented out) is refused
			// rather than read as either.
			name: "empty lists and values",
			yaml: "apiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  selector:\n  rules:\n  - from: []\n    to:\n    - operation: {methods: [], ports: [0443]}\n",
			want: []string{
				`f.yaml:5: spec.selector: empty value; give it a value or leave the key out`,
				`f.yaml:7: spec.rules[0].from: empty list; list values, or leave the key out`,
				`f.yaml:9: spec.rules[0].to[0].operation.methods: empty list; list values, or leave the key out`,
				`f.yaml:9: spec.rules[0].to[0].operation.ports[0]: invalid port "0443"`,
			},
		},
		{
			name: "YAML syntax error",
			yaml: "apiVersion: postern.dev/v1\nkind: Workload\nmetadata: {name: a\nspec: {}\n",
			want: []string{`f.yaml:3: invalid YAML: did not find expected ',' or '}'`},
		},
		{
			name: "aliases rejected",
			yaml: "apiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n  rules:\n  - &r {}\n  - *r\n",
			want: []string{`f.yaml:7: YAML aliases are not allowed`},
		},
		{
			name: "missing spec",
			yaml: "apiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\n",
			want: []string{`f.yaml:1: missing spec`},
		},
		{
			name: "PolicyTest documents are ignored by the resource loader",
			yaml: "apiVersion: postern.dev/v1\nkind: PolicyTest\nmetadata: {name: a}\nspec: {whatever: 1}\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(tt.yaml))
			got := problemsOf(t, err)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestCompileProblems(t *testing.T) {
	set, err := Parse("f.yaml", []byte(`apiVersion: postern.dev/v1
kind: Workload
metadata: {name: a}
spec: {spiffeID: "spiffe://other.local/a", audience: x}
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: b}
spec: {spiffeID: "spiffe://shop.local/b", audience: x}
---
apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: p}
spec: {clients: ["*"], subjectIssuers: ["https://unknown.example"], audiences: [x]}
`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Compile(set, CompileOptions{TrustDomain: "shop.local"})
	want := []string{
		`f.yaml:1: spiffeID "spiffe://other.local/a" is not in trust domain "shop.local"`,
		`f.yaml:6: Workload "b" has the same audience "x" as Workload "a"`,
		`f.yaml:11: subjectIssuers: "https://unknown.example" is neither "self" nor the issuer of a TrustedIssuer`,
	}
	if got := problemsOf(t, err); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func jwksJSON(t *testing.T, private bool) string {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	var key any = &k.PublicKey
	if private {
		key = k
	}
	b, err := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: key, KeyID: "k1", Algorithm: "ES256", Use: "sig"}}})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestJWKS(t *testing.T) {
	doc := func(jwks string) string {
		return "apiVersion: postern.dev/v1\nkind: Workload\nmetadata: {name: a}\nspec:\n  spiffeID: spiffe://shop.local/a\n  clientAuthentication: [private_key_jwt]\n  jwks: " + jwks + "\n"
	}
	set, err := Parse("f.yaml", []byte(doc(jwksJSON(t, false))))
	if err != nil {
		t.Fatal(err)
	}
	if w := set.Workloads[0]; w.JWKS == nil || len(w.JWKS.Keys) != 1 || w.Audience != "spiffe://shop.local/a" {
		t.Errorf("workload %+v", w)
	}
	tests := map[string]string{
		jwksJSON(t, true): "f.yaml:7: jwks must hold public keys only",
		`{"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0"}]}`: "f.yaml:7: jwks must not hold symmetric keys",
		`{"keys": []}`: "f.yaml:7: jwks: no keys",
	}
	for jwks, want := range tests {
		_, err := Parse("f.yaml", []byte(doc(jwks)))
		if got := strings.Join(problemsOf(t, err), "\n"); got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
}

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", workloads)
	write(".hidden.yaml", "garbage: [")
	write("notes.txt", "garbage: [")
	write("b.yml", "apiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: all}\nspec: {rules: [{}]}\n")
	set, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Workloads) != 3 || len(set.AuthorizationPolicies) != 1 {
		t.Fatalf("set %+v", set)
	}
	write("c.yaml", strings.Repeat("#", MaxFileSize+1))
	write("d.yaml", "apiVersion: postern.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: all}\nspec: {rules: [{}]}\n")
	_, err = LoadDir(dir)
	want := []string{
		filepath.Join(dir, "c.yaml") + ": file is larger than 1048576 bytes",
		filepath.Join(dir, "d.yaml") + `:3: duplicate AuthorizationPolicy name "all" (first defined at ` + filepath.Join(dir, "b.yml") + ":1)",
	}
	if got := problemsOf(t, err); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := LoadDir(filepath.Join(dir, "missing")); err == nil || !strings.HasPrefix(err.Error(), "policy: read ") {
		t.Errorf("err %v", err)
	}
}

func TestWorkloadAgents(t *testing.T) {
	set, err := Parse("w.yaml", []byte(`apiVersion: postern.dev/v1
kind: Workload
metadata: {name: w}
spec:
  spiffeID: spiffe://td.test/ns/a/sa/w
  agents: ["spiffe://td.test/postern/agent/node-*"]
---
apiVersion: postern.dev/v1
kind: Workload
metadata: {name: any}
spec: {spiffeID: spiffe://td.test/ns/a/sa/any}
`))
	if err != nil {
		t.Fatal(err)
	}
	w, anyAgent := set.Workloads[0], set.Workloads[1]
	if !w.AllowsAgent("spiffe://td.test/postern/agent/node-1") || w.AllowsAgent("spiffe://td.test/postern/agent/other") {
		t.Error("agents glob not applied")
	}
	if !anyAgent.AllowsAgent("spiffe://td.test/postern/agent/x") {
		t.Error("a workload without agents accepts any agent of the trust domain")
	}
	_, err = Parse("bad.yaml", []byte("apiVersion: postern.dev/v1\nkind: Workload\nmetadata: {name: w}\nspec:\n  spiffeID: spiffe://td.test/w\n  agents: [node-1]\n"))
	if err == nil || !strings.Contains(err.Error(), "bad.yaml:6") || !strings.Contains(err.Error(), "agents") {
		t.Errorf("err = %v", err)
	}
}

func TestTrustedIssuerOpaqueOnly(t *testing.T) {
	ok := "apiVersion: postern.dev/v1\nkind: TrustedIssuer\nmetadata: {name: i}\nspec:\n  issuer: https://idp.example\n  audiences: [a]\n  introspection: {endpoint: https://idp.example/introspect, clientID: c, clientSecretFile: /s}\n"
	if _, err := Parse("ok.yaml", []byte(ok)); err != nil {
		t.Errorf("an introspection-only issuer: %v", err)
	}
	none := "apiVersion: postern.dev/v1\nkind: TrustedIssuer\nmetadata: {name: i}\nspec:\n  issuer: https://idp.example\n  audiences: [a]\n"
	if _, err := Parse("none.yaml", []byte(none)); err == nil || !strings.Contains(err.Error(), "none.yaml:4: one of jwks, jwksURI and discovery: true is required") {
		t.Errorf("an issuer with no way to check its tokens: %v", err)
	}
}

func TestIntrospectionSecretFileIsRelativeToTheResource(t *testing.T) {
	dir := t.TempDir()
	doc := "apiVersion: postern.dev/v1\nkind: TrustedIssuer\nmetadata: {name: i}\nspec:\n  issuer: https://idp.example\n  audiences: [a]\n  introspection: {endpoint: https://idp.example/introspect, clientID: c, clientSecretFile: secrets/idp}\n"
	if err := os.WriteFile(filepath.Join(dir, "idp.yaml"), []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	set, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := set.TrustedIssuers[0].Introspection.ClientSecretFile, filepath.Join(dir, "secrets/idp"); got != want {
		t.Errorf("clientSecretFile = %q, want %q", got, want)
	}
}

// Unquoted on, off, yes, no, y and n are strings (YAML 1.2, as the loader's
// checks read them). Decoding the text again as YAML 1.1 turned them into
// "true" and "false": a DENY rule on a header value "off" matched nothing.
func TestYAML12Strings(t *testing.T) {
	set, err := Parse("p.yaml", []byte(`apiVersion: postern.dev/v1
kind: AuthorizationPolicy
metadata: {name: no-debug, labels: {legacy: yes}}
spec:
  action: DENY
  rules:
  - when:
    - {key: "request.headers[x-debug]", values: [on, y], notValues: [off, no]}
`))
	if err != nil {
		t.Fatal(err)
	}
	p := set.AuthorizationPolicies[0]
	w := p.Rules[0].When[0]
	if fmt.Sprintf("%v %v %s", w.Values, w.NotValues, p.Labels["legacy"]) != "[on y] [off no] yes" {
		t.Errorf("values %q, notValues %q, label %q", w.Values, w.NotValues, p.Labels["legacy"])
	}
}

// An opaque token names no issuer: with several introspecting issuers each
// needs its own token prefix, so no IdP is shown another's live tokens.
func TestIntrospectionTokenPrefixes(t *testing.T) {
	doc := func(name, prefix string) string {
		p := ""
		if prefix != "" {
			p = ", tokenPrefix: " + prefix
		}
		return fmt.Sprintf(`apiVersion: postern.dev/v1
kind: TrustedIssuer
metadata: {name: %s}
spec:
  issuer: https://%s.example
  audiences: [shop]
  introspection: {endpoint: "https://%s.example/introspect", clientID: gw, clientSecretFile: /s%s}
---
`, name, name, name, p)
	}
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{"one issuer needs no prefix", doc("corp", ""), nil},
		{"distinct prefixes", doc("corp", "corp_") + doc("partner", "ptn_"), nil},
		{"a prefix missing", doc("corp", "corp_") + doc("partner", ""), []string{
			`f.yaml:9: introspection.tokenPrefix: required when more than one TrustedIssuer introspects (2 do), so that each opaque token goes to its own issuer only`}},
		{"overlapping prefixes", doc("corp", "c") + doc("partner", "corp_"), []string{
			`f.yaml:9: introspection.tokenPrefix "corp_" overlaps TrustedIssuer "corp"'s "c"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			set, err := Parse("f.yaml", []byte(tc.src))
			if err != nil {
				t.Fatal(err)
			}
			_, err = Compile(set, CompileOptions{})
			var got []string
			if err != nil {
				got = problemsOf(t, err)
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"))
			}
			if err == nil {
				in := &Introspection{TokenPrefix: "corp_"}
				if !in.Accepts("corp_abc") || in.Accepts("ptn_abc") || !(&Introspection{}).Accepts("anything") {
					t.Error("Accepts")
				}
			}
		})
	}
}
