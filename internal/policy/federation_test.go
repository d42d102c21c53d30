package policy

import (
	"crypto/x509"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"

	"postern.dev/postern/internal/testca"
)

// indent prefixes every line of s for a YAML block scalar.
func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return prefix + strings.Join(lines, "\n"+prefix)
}

func TestFederationLoad(t *testing.T) {
	partner := testca.New(t, "partner.example")
	b := spiffebundle.FromX509Authorities(partner.TrustDomain, []*x509.Certificate{partner.Cert})
	b.SetSequenceNumber(3)
	bundleJSON, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	src := `apiVersion: postern.dev/v1
kind: Federation
metadata: {name: partner}
spec:
  trustDomain: partner.example
  bundleEndpointURL: https://partner.example:8443/bundle
  profile: https_spiffe
  endpointSPIFFEID: spiffe://partner.example/postern/server
  bootstrapBundle: |
` + indent(string(bundleJSON), "    ") + `
---
apiVersion: postern.dev/v1
kind: Federation
metadata: {name: pem}
spec:
  trustDomain: pem.example
  bundleEndpointURL: https://pem.example/bundle
  profile: https_spiffe
  endpointSPIFFEID: spiffe://pem.example/server
  bootstrapBundle: |
` + indent(string(partner.RootPEM()), "    ") + `
---
apiVersion: postern.dev/v1
kind: Federation
metadata: {name: web}
spec:
  trustDomain: web.example
  bundleEndpointURL: https://web.example/bundle?td=web
  profile: https_web
  caBundle: |
` + indent(string(partner.RootPEM()), "    ") + `
`
	set, err := Parse("f.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	e, err := Compile(set, CompileOptions{TrustDomain: "shop.local"})
	if err != nil {
		t.Fatal(err)
	}
	feds := e.Federations()
	if len(feds) != 3 || set.Len() != 3 || e.Stats().Federations != 3 {
		t.Fatalf("federations %d, set %d", len(feds), set.Len())
	}
	p, pem, web := feds[0], feds[1], feds[2]
	if p.Name != "partner" || p.TrustDomain.Name() != "partner.example" || p.Profile != ProfileHTTPSSPIFFE ||
		p.EndpointSPIFFEID.String() != "spiffe://partner.example/postern/server" || !p.BootstrapBundle.Equal(b) ||
		p.Origin != (Origin{"f.yaml", 1}) {
		t.Errorf("partner = %+v", p)
	}
	if pem.BootstrapBundle == nil || !pem.BootstrapBundle.HasX509Authority(partner.Cert) || pem.BootstrapBundle.TrustDomain().Name() != "pem.example" {
		t.Errorf("pem bootstrap = %+v", pem.BootstrapBundle)
	}
	if web.Profile != ProfileHTTPSWeb || len(web.CABundle) != 1 || !web.CABundle[0].Equal(partner.Cert) ||
		web.BootstrapBundle != nil || !web.EndpointSPIFFEID.IsZero() {
		t.Errorf("web = %+v", web)
	}
}

func TestFederationProblems(t *testing.T) {
	head := "apiVersion: postern.dev/v1\nkind: Federation\nmetadata: {name: x}\nspec:\n"
	root := string(testca.New(t, "partner.example").RootPEM())
	tests := []struct {
		name string
		spec string
		want []string
	}{
		{
			name: "required fields",
			spec: "  caBundle: ''\n",
			want: []string{
				`f.yaml:4: trustDomain: required`,
				`f.yaml:4: bundleEndpointURL: required`,
				`f.yaml:4: profile: required (https_web or https_spiffe)`,
			},
		},
		{
			name: "bad trust domain, URL and profile",
			spec: "  trustDomain: spiffe://partner.example\n  bundleEndpointURL: http://127.0.0.1/bundle\n  profile: https\n",
			want: []string{
				`f.yaml:5: trustDomain: "spiffe://partner.example" is not a trust domain name like partner.example`,
				`f.yaml:6: bundleEndpointURL: "http://127.0.0.1/bundle": URL must use https`,
				`f.yaml:7: profile: "https" is not https_web or https_spiffe`,
			},
		},
		{
			name: "URL with credentials",
			spec: "  trustDomain: p.example\n  bundleEndpointURL: https://u:p@p.example/bundle\n  profile: https_web\n",
			want: []string{`f.yaml:6: bundleEndpointURL: "https://u:p@p.example/bundle": URL must not contain credentials`},
		},
		{
			name: "https_web with SPIFFE fields",
			spec: "  trustDomain: p.example\n  bundleEndpointURL: https://p.example/bundle\n  profile: https_web\n  endpointSPIFFEID: spiffe://p.example/s\n  bootstrapBundle: x\n",
			want: []string{
				`f.yaml:8: conflicting fields: endpointSPIFFEID is only for profile https_spiffe`,
				`f.yaml:9: conflicting fields: bootstrapBundle is only for profile https_spiffe`,
			},
		},
		{
			name: "https_web with a bad caBundle",
			spec: "  trustDomain: p.example\n  bundleEndpointURL: https://p.example/bundle\n  profile: https_web\n  caBundle: |\n    -----BEGIN PRIVATE KEY-----\n    AAAA\n    -----END PRIVATE KEY-----\n",
			want: []string{`f.yaml:8: caBundle: unexpected PEM block "PRIVATE KEY" (want CERTIFICATE)`},
		},
		{
			name: "https_spiffe without its fields",
			spec: "  trustDomain: p.example\n  bundleEndpointURL: https://p.example/bundle\n  profile: https_spiffe\n  caBundle: |\n" + indent(root, "    ") + "\n",
			want: []string{
				`f.yaml:4: endpointSPIFFEID: required for profile https_spiffe`,
				`f.yaml:4: bootstrapBundle: required for profile https_spiffe`,
				`f.yaml:8: conflicting fields: caBundle is only for profile https_web`,
			},
		},
		{
			name: "endpoint in another trust domain, garbage bootstrap",
			spec: "  trustDomain: p.example\n  bundleEndpointURL: https://p.example/bundle\n  profile: https_spiffe\n  endpointSPIFFEID: spiffe://other.example/s\n  bootstrapBundle: hello\n",
			want: []string{
				`f.yaml:8: endpointSPIFFEID: "spiffe://other.example/s" is not in trust domain "p.example" (its bundle authenticates the endpoint)`,
				`f.yaml:9: bootstrapBundle: neither a SPIFFE bundle (JSON) nor PEM certificates: not PEM certificates`,
			},
		},
		{
			name: "invalid endpoint ID, bundle without X.509 authorities",
			spec: "  trustDomain: p.example\n  bundleEndpointURL: https://p.example/bundle\n  profile: https_spiffe\n  endpointSPIFFEID: https://p.example/s\n  bootstrapBundle: '{\"keys\": []}'\n",
			want: []string{
				`f.yaml:8: endpointSPIFFEID: "https://p.example/s": invalid SPIFFE ID: scheme is missing or invalid`,
				`f.yaml:9: bootstrapBundle: the SPIFFE bundle holds no X.509 authority`,
			},
		},
		{
			name: "malformed bundle JSON",
			spec: "  trustDomain: p.example\n  bundleEndpointURL: https://p.example/bundle\n  profile: https_spiffe\n  endpointSPIFFEID: spiffe://p.example/s\n  bootstrapBundle: '{\"keys\": ['\n",
			want: []string{`f.yaml:9: bootstrapBundle: not a SPIFFE bundle: unable to parse JWKS: unexpected end of JSON input`},
		},
		{
			name: "unknown field",
			spec: "  trustDomain: p.example\n  bundleEndpointURL: https://p.example/bundle\n  profile: https_web\n  refreshHint: 5m\n",
			want: []string{`f.yaml:8: unknown field "refreshHint" in spec`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("f.yaml", []byte(head+tt.spec))
			got := problemsOf(t, err)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
		})
	}
}

func TestFederationCompileProblems(t *testing.T) {
	doc := func(name, td string) string {
		return "apiVersion: postern.dev/v1\nkind: Federation\nmetadata: {name: " + name + "}\nspec:\n  trustDomain: " + td +
			"\n  bundleEndpointURL: https://" + td + "/bundle\n  profile: https_web\n"
	}
	set, err := Parse("f.yaml", []byte(doc("a", "shop.local")+"---\n"+doc("b", "p.example")+"---\n"+doc("c", "p.example")+"---\n"+doc("c", "q.example")))
	want := []string{`f.yaml:27: duplicate Federation name "c" (first defined at f.yaml:17)`}
	if got := problemsOf(t, err); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	set, err = Parse("f.yaml", []byte(doc("a", "shop.local")+"---\n"+doc("b", "p.example")+"---\n"+doc("c", "p.example")))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Compile(set, CompileOptions{TrustDomain: "shop.local"})
	want = []string{
		`f.yaml:1: Federation "a" names our own trust domain "shop.local"`,
		`f.yaml:17: Federation "c" has the same trustDomain "p.example" as Federation "b"`,
	}
	if got := problemsOf(t, err); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := Compile(set, CompileOptions{}); err == nil || !strings.Contains(err.Error(), "same trustDomain") {
		t.Errorf("without a trust domain: %v", err)
	}
}
