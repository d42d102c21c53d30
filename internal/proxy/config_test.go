package proxy

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"postern.dev/postern/internal/policy"
)

// TestExampleConfigs loads every quickstart sidecar configuration.
func TestExampleConfigs(t *testing.T) {
	for _, name := range []string{"gateway", "order-processing", "inventory", "finance"} {
		t.Run(name, func(t *testing.T) {
			dir, _ := filepath.Abs(filepath.Join(examples, "sidecars"))
			cfg, err := LoadConfig(filepath.Join(dir, name+".yaml"))
			if err != nil {
				t.Fatal(err)
			}
			id := "spiffe://quickstart.local/ns/shop/sa/" + name
			if cfg.SPIFFEID != id {
				t.Errorf("spiffeID %q", cfg.SPIFFEID)
			}
			if f := cfg.SPIFFE.Files; f == nil || f.Cert != filepath.Join(dir, "certs", name, "svid.pem") ||
				f.Key != filepath.Join(dir, "certs", name, "svid.key") || f.Bundle != filepath.Join(dir, "certs", name, "bundle.pem") {
				t.Errorf("files not resolved against the config's directory: %+v", cfg.SPIFFE.Files)
			}
			if cfg.Policies != filepath.Join(dir, "policies") {
				t.Errorf("policies %q", cfg.Policies)
			}
			if cfg.STS.SPIFFEID != "spiffe://quickstart.local/postern/server" || cfg.STS.TokenEndpoint != "https://127.0.0.1:8443/oauth2/token" {
				t.Errorf("sts defaults: %+v", cfg.STS)
			}
			if time.Duration(cfg.DrainTimeout) != 15*time.Second {
				t.Errorf("drainTimeout %v", cfg.DrainTimeout)
			}
			if cfg.MaxProcs != DefaultMaxProcs {
				t.Errorf("maxProcs %d, want the default %d", cfg.MaxProcs, DefaultMaxProcs)
			}
			if _, err := policy.LoadDir(cfg.Policies); err != nil {
				t.Errorf("example policies: %v", err)
			}
		})
	}
}

func TestParseConfigErrors(t *testing.T) {
	const base = `
trustDomain: example.org
spiffe: {files: {cert: c.pem, key: k.pem, bundle: b.pem}}
sts: {issuer: "https://sts.example.org"}
policies: p
inbound: {app: "127.0.0.1:8080"}
`
	tests := []struct {
		name string
		yaml string
		want string // every line must appear in the error
	}{
		{name: "valid", yaml: base},
		{name: "unknown field", yaml: base + "inbund: {}\n", want: `unknown field "inbund"`},
		{name: "nothing", yaml: "{}", want: strings.Join([]string{
			"trustDomain: trust domain is missing",
			"spiffe: exactly one of workloadAPI, files and attest is required",
			`sts.issuer: want an https URL, got ""`,
			"policies: a directory of AuthorizationPolicy resources is required",
			"inbound.app: the application's loopback address is required",
		}, "\n")},
		{name: "two identity sources", yaml: strings.Replace(base, "spiffe: {", "spiffe: {workloadAPI: {socket: unix:///s}, ", 1),
			want: "spiffe: exactly one of workloadAPI, files and attest is required"},
		{name: "bad socket", yaml: strings.Replace(base, "spiffe: {files: {cert: c.pem, key: k.pem, bundle: b.pem}}", "spiffe: {workloadAPI: {socket: /run/s}}", 1),
			want: `spiffe.workloadAPI.socket: want unix:///path or tcp://host:port, got "/run/s"`},
		{name: "plain http issuer", yaml: strings.Replace(base, "https://sts", "http://sts", 1), want: `sts.issuer: want an https URL, got "http://sts.example.org"`},
		{name: "app off the host", yaml: strings.Replace(base, "127.0.0.1:8080", "10.0.0.1:8080", 1), want: `inbound.app: "10.0.0.1:8080" is not a loopback address`},
		{name: "app without port", yaml: strings.Replace(base, "127.0.0.1:8080", "127.0.0.1:0", 1), want: `inbound.app: "127.0.0.1:0" has no port`},
		{name: "spiffeID of another trust domain", yaml: base + "spiffeID: spiffe://other.org/x\n", want: `spiffeID: "spiffe://other.org/x" is not in trust domain "example.org"`},
		{name: "skew too large", yaml: base + "clockSkew: 1h\n", want: "clockSkew: at most 5m"},
		{name: "negative maxProcs", yaml: base + "maxProcs: -1\n", want: "maxProcs: -1 is not between 1 and 1024"},
		{name: "maxProcs as text", yaml: base + "maxProcs: many\n", want: "maxProcs"},
		{name: "outbound off the host", yaml: base + "outbound: {listen: \"0.0.0.0:15001\"}\n", want: "outbound.listen:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			for _, line := range strings.Split(tc.want, "\n") {
				if !strings.Contains(err.Error(), line) {
					t.Errorf("error %q lacks %q", err, line)
				}
			}
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, name := range []string{"gateway", "order-processing"} {
		b, err := readFileBounded(filepath.Join(examples, "sidecars", name+".yaml"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("{}"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		if c.SPIFFE.Files == nil == (c.SPIFFE.WorkloadAPI == nil) || checkLoopback(c.Inbound.App) != nil {
			t.Fatalf("invalid configuration accepted: %+v", c)
		}
	})
}
