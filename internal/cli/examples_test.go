package cli

import (
	"bytes"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"postern.dev/postern/internal/gateway"
	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/proxy"
	"postern.dev/postern/internal/server"
)

// repoRoot is the repository root, seen from this package's directory.
const repoRoot = "../.."

// exampleKind is what a file under examples/ is.
type exampleKind int

const (
	kindUnknown  exampleKind = iota
	kindDoc                  // prose (.md)
	kindPEM                  // keys and certificates (.pem, .key, .crt)
	kindResource             // postern.dev/v1 resources (apiVersion + kind)
	kindServer               // server.yaml (top-level resources)
	kindSidecar              // sidecar configuration (top-level inbound)
	kindGateway              // gateway configuration (top-level routes)
)

func (k exampleKind) String() string {
	return [...]string{"unknown", "doc", "pem", "resource", "server", "sidecar", "gateway"}[k]
}

// classifyExample decides what the file at path is, from its extension and,
// for YAML, from the top-level keys of its first document.
func classifyExample(path string, data []byte) (exampleKind, error) {
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".md":
		return kindDoc, nil
	case ".pem", ".key", ".crt":
		if b, _ := pem.Decode(data); b == nil {
			return kindUnknown, errors.New("not PEM")
		}
		return kindPEM, nil
	case ".yaml", ".yml":
	default:
		return kindUnknown, fmt.Errorf("unknown extension %q: teach TestExamples what it is", ext)
	}
	var top map[string]any
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&top); err != nil && !errors.Is(err, io.EOF) {
		return kindUnknown, fmt.Errorf("not YAML: %v", err)
	}
	has := func(k string) bool { _, ok := top[k]; return ok }
	switch {
	case has("apiVersion") && has("kind"):
		return kindResource, nil
	case has("inbound"):
		return kindSidecar, nil
	case has("routes"):
		return kindGateway, nil
	case has("resources"):
		return kindServer, nil
	}
	keys := make([]string, 0, len(top))
	for k := range top {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return kindUnknown, fmt.Errorf("YAML with top-level keys %v is neither a resource, a server, a sidecar nor a gateway configuration", keys)
}

// example is one configuration of an example tree, loaded.
type example struct {
	path    string
	server  *server.Config
	sidecar *proxy.Config
	gateway *gateway.Config
}

// TestExamples loads every file under examples/ the way postern would:
// server configurations with server.LoadConfig, sidecar configurations with
// proxy.LoadConfig (which validates), gateway configurations with
// gateway.LoadConfig, and resource directories with policy.LoadDir and
// policy.Compile (PolicyTest files in them must pass). Files it cannot
// classify fail the test, and so do configurations that disagree with the
// server of their example (trust domain, issuer, unknown workloads, ports),
// so the examples and the guides built on them cannot rot.
func TestExamples(t *testing.T) {
	root := filepath.Join(repoRoot, "examples")
	kinds := map[string]exampleKind{}
	var paths []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			// A data dir that a server created while someone followed a
			// guide in place is state, not an example.
			if _, err := os.Stat(filepath.Join(path, "instance.json")); err == nil {
				return filepath.SkipDir
			}
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		k, err := classifyExample(path, data)
		if err != nil {
			t.Errorf("%s: cannot classify: %v", path, err)
			return nil
		}
		kinds[path] = k
		paths = append(paths, path)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) == 0 {
		t.Fatalf("no files under %s", root)
	}

	// Configurations, grouped by example (the first directory under
	// examples/).
	byExample := map[string][]*example{}
	resourceDirs := map[string]bool{}
	for _, p := range paths {
		rel, _ := filepath.Rel(root, p)
		group := strings.Split(filepath.ToSlash(rel), "/")[0]
		ex := &example{path: p}
		switch kinds[p] {
		case kindResource:
			resourceDirs[filepath.Dir(p)] = true
			continue
		case kindServer:
			c, err := server.LoadConfig(p)
			if err != nil {
				t.Errorf("%s: %v", p, err)
				continue
			}
			ex.server = c
		case kindSidecar:
			c, err := proxy.LoadConfig(p)
			if err != nil {
				t.Errorf("%s: %v", p, err)
				continue
			}
			ex.sidecar = c
		case kindGateway:
			c, err := gateway.LoadConfig(p)
			if err != nil {
				t.Errorf("%s: %v", p, err)
				continue
			}
			ex.gateway = c
		default:
			continue
		}
		byExample[group] = append(byExample[group], ex)
	}

	counts := map[exampleKind]int{}
	for _, k := range kinds {
		counts[k]++
	}
	t.Logf("examples: %d server, %d sidecar and %d gateway configurations, %d resource files in %d directories, %d PEM files, %d documents",
		counts[kindServer], counts[kindSidecar], counts[kindGateway], counts[kindResource], len(resourceDirs), counts[kindPEM], counts[kindDoc])

	// Resource directories no configuration names still load on their own.
	named := map[string]bool{}
	for _, exs := range byExample {
		for _, ex := range exs {
			switch {
			case ex.server != nil:
				named[filepath.Clean(ex.server.Resources)] = true
			case ex.sidecar != nil:
				named[filepath.Clean(ex.sidecar.Policies)] = true
			case ex.gateway != nil:
				named[filepath.Clean(ex.gateway.Issuers)] = true
			}
		}
	}
	for dir := range resourceDirs {
		if !named[filepath.Clean(dir)] {
			t.Run("resources/"+dir, func(t *testing.T) { loadResources(t, dir, policy.CompileOptions{}) })
		}
	}

	groups := make([]string, 0, len(byExample))
	for g := range byExample {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	for _, g := range groups {
		t.Run(g, func(t *testing.T) { checkExample(t, byExample[g]) })
	}
}

// checkExample loads the resource directories of one example's
// configurations and checks that they agree with its server.
func checkExample(t *testing.T, exs []*example) {
	var srv *example
	for _, ex := range exs {
		if ex.server != nil {
			if srv != nil {
				t.Fatalf("%s and %s: one server configuration per example", srv.path, ex.path)
			}
			srv = ex
		}
	}
	var (
		engine   *policy.Engine
		issuer   string
		td       string
		listens  = map[string]string{} // address → who listens there
		inbounds = map[string]string{} // SPIFFE ID → its sidecar's inbound address
	)
	listen := func(who, addr string) {
		if addr == "" {
			return
		}
		if other, ok := listens[addr]; ok {
			t.Errorf("%s and %s both listen on %s", other, who, addr)
		}
		listens[addr] = who
	}
	if srv != nil {
		c := srv.server
		td = c.TrustDomain
		addr := c.Listen
		if addr == "" {
			addr = "127.0.0.1:8443"
		}
		listen(srv.path, addr)
		issuer = c.Issuer
		if issuer == "" {
			issuer = "https://" + addr
		}
		engine = loadResources(t, c.Resources, policy.CompileOptions{SelfIssuer: issuer, TrustDomain: td})
	}
	knownWorkload := func(who, id string) {
		if engine == nil || id == "" {
			return
		}
		if _, ok := engine.WorkloadBySPIFFEID(id); !ok {
			t.Errorf("%s: %s is not a Workload in %s", who, id, srv.server.Resources)
		}
	}
	sameServer := func(who, trustDomain, stsIssuer string) {
		if srv == nil {
			return
		}
		if trustDomain != td {
			t.Errorf("%s: trust domain %q, the server's is %q", who, trustDomain, td)
		}
		if stsIssuer != issuer {
			t.Errorf("%s: sts.issuer %q, the server's issuer is %q", who, stsIssuer, issuer)
		}
	}
	for _, ex := range exs {
		if c := ex.sidecar; c != nil {
			sameServer(ex.path, c.TrustDomain, c.STS.Issuer)
			knownWorkload(ex.path, c.SPIFFEID)
			listen(ex.path+" inbound", c.Inbound.Listen)
			listen(ex.path+" outbound", c.Outbound.Listen)
			listen(ex.path+" admin", c.Admin.Listen)
			if c.SPIFFEID != "" {
				inbounds[c.SPIFFEID] = c.Inbound.Listen
			}
			loadResources(t, c.Policies, policy.CompileOptions{SelfIssuer: c.STS.Issuer, TrustDomain: c.TrustDomain})
		}
		if c := ex.gateway; c != nil {
			sameServer(ex.path, c.TrustDomain, c.STS.Issuer)
			knownWorkload(ex.path, c.SPIFFEID)
			listen(ex.path, c.Listen)
			listen(ex.path+" admin", c.Admin.Listen)
			set, err := policy.LoadDir(c.Issuers)
			if err != nil {
				t.Errorf("%s: issuers: %v", ex.path, err)
			} else if len(set.TrustedIssuers) == 0 {
				t.Errorf("%s: issuers: no TrustedIssuer in %s", ex.path, c.Issuers)
			}
		}
	}
	// Every upstream is a known Workload and, when its sidecar is part of
	// the example, is dialled at that sidecar's inbound address.
	upstream := func(who string, u proxy.Upstream) {
		knownWorkload(who, u.SPIFFEID)
		if in, ok := inbounds[u.SPIFFEID]; ok && !slices.Contains(u.Addresses, in) {
			t.Errorf("%s: upstream %q dials %v, but its sidecar listens on %s", who, u.Name, u.Addresses, in)
		}
	}
	for _, ex := range exs {
		if c := ex.sidecar; c != nil {
			for _, u := range c.Outbound.Upstreams {
				upstream(ex.path, u)
			}
		}
		if c := ex.gateway; c != nil {
			for _, r := range c.Routes {
				upstream(ex.path+" route "+r.Name, r.Upstream)
			}
		}
	}
}

// loadResources loads and compiles dir as postern would, and runs its
// PolicyTest files, if any.
func loadResources(t *testing.T, dir string, opts policy.CompileOptions) *policy.Engine {
	t.Helper()
	set, err := policy.LoadDir(dir)
	if err != nil {
		t.Errorf("%s: %v", dir, err)
		return nil
	}
	if set.Len() == 0 {
		t.Errorf("%s: no resources", dir)
	}
	e, err := policy.Compile(set, opts)
	if err != nil {
		t.Errorf("%s: %v", dir, err)
		return nil
	}
	var out bytes.Buffer
	sum, err := policy.RunTests(&out, dir, opts)
	switch {
	case errors.Is(err, policy.ErrNoTests):
	case err != nil:
		t.Errorf("%s: policy tests: %v\n%s", dir, err, out.String())
	case sum.Failed > 0:
		t.Errorf("%s: %d policy tests failed:\n%s", dir, sum.Failed, out.String())
	}
	return e
}

// docLink finds example paths mentioned in the documentation.
var docLink = regexp.MustCompile(`examples/[A-Za-z0-9_./-]*[A-Za-z0-9_/-]`)

// TestDocsNameRealExamples checks that every examples/... path the README
// and docs/ mention exists.
func TestDocsNameRealExamples(t *testing.T) {
	docs, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	docs = append(docs, filepath.Join(repoRoot, "README.md"))
	for _, doc := range docs {
		data, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for _, m := range docLink.FindAllString(string(data), -1) {
			m = strings.TrimSuffix(m, "/")
			if seen[m] {
				continue
			}
			seen[m] = true
			if _, err := os.Stat(filepath.Join(repoRoot, filepath.FromSlash(m))); err != nil {
				t.Errorf("%s mentions %s, which does not exist", doc, m)
			}
		}
	}
}

// TestClassifyExample pins the classification rules.
func TestClassifyExample(t *testing.T) {
	key := "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
	tests := []struct {
		name, path, data string
		want             exampleKind
		wantErr          string
	}{
		{"markdown", "a/README.md", "# hi", kindDoc, ""},
		{"pem", "a/k.pem", key, kindPEM, ""},
		{"key", "a/svid.key", key, kindPEM, ""},
		{"not pem", "a/k.pem", "hello", kindUnknown, "not PEM"},
		{"resource", "a/r.yaml", "apiVersion: postern.dev/v1\nkind: Workload\n", kindResource, ""},
		{"multi-document resource", "a/r.yml", "apiVersion: postern.dev/v1\nkind: Workload\n---\nkind: X\n", kindResource, ""},
		{"sidecar", "a/s.yaml", "trustDomain: x\ninbound: {app: 127.0.0.1:1}\n", kindSidecar, ""},
		{"gateway", "a/g.yaml", "trustDomain: x\nroutes: []\n", kindGateway, ""},
		{"server", "a/server.yaml", "trustDomain: x\nresources: r\n", kindServer, ""},
		{"unknown yaml", "a/x.yaml", "foo: 1\nbar: 2\n", kindUnknown, "YAML with top-level keys [bar foo] is neither a resource, a server, a sidecar nor a gateway configuration"},
		{"empty yaml", "a/x.yaml", "", kindUnknown, "YAML with top-level keys [] is neither a resource, a server, a sidecar nor a gateway configuration"},
		{"unknown extension", "a/app.py", "print()", kindUnknown, `unknown extension ".py": teach TestExamples what it is`},
		{"no extension", "a/Makefile", "all:", kindUnknown, `unknown extension "": teach TestExamples what it is`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := classifyExample(tt.path, []byte(tt.data))
			if got != tt.want {
				t.Errorf("kind = %v, want %v", got, tt.want)
			}
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("error = %v", err)
			case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
				t.Errorf("error = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

// yamlBlock finds the YAML code blocks of a Markdown file.
var yamlBlock = regexp.MustCompile("(?s)```yaml\n(.*?)```")

// TestDocsYAML parses the YAML examples of docs/ as postern would: server,
// sidecar and gateway configurations and resources. A block whose content
// is deliberately elided ("...") is skipped.
func TestDocsYAML(t *testing.T) {
	docs, err := filepath.Glob(filepath.Join(repoRoot, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, doc := range docs {
		data, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for i, m := range yamlBlock.FindAllSubmatch(data, -1) {
			block := m[1]
			name := fmt.Sprintf("%s#yaml%d", filepath.Base(doc), i+1)
			if bytes.Contains(block, []byte("...")) {
				continue
			}
			k, err := classifyExample(name+".yaml", block)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			switch k {
			case kindResource:
				_, err = policy.Parse(name, block)
			case kindServer:
				path := filepath.Join(t.TempDir(), "server.yaml")
				if err = os.WriteFile(path, block, 0o600); err == nil {
					_, err = server.LoadConfig(path)
				}
			case kindSidecar:
				_, err = proxy.ParseConfig(block)
			case kindGateway:
				_, err = gateway.ParseConfig(block)
			}
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			checked++
		}
	}
	if checked == 0 {
		t.Fatal("no YAML examples found in docs/")
	}
	t.Logf("%d YAML examples parsed", checked)
}
