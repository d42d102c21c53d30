package policy

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"

	"postern.dev/postern/internal/strictyaml"
)

// MinSVIDTTL and MaxSVIDTTL bound a Workload's svidTTL: renewal happens at
// half-life, less jitter, so a very short lifetime would renew in a loop.
const (
	MinSVIDTTL = 5 * time.Minute
	MaxSVIDTTL = 24 * time.Hour
)

// MaxFileSize bounds one resource file.
const MaxFileSize = 1 << 20

// LoadDir reads every resource in dir: files ending in .yaml or .yml, not
// recursively, skipping hidden files. Documents of kind PolicyTest are
// ignored. The error, when not nil, is a Problems value listing every
// problem (file:line: reason).
func LoadDir(dir string) (*Set, error) {
	l, err := newLoader()
	if err != nil {
		return nil, err
	}
	files, err := l.readDir(dir)
	if err != nil {
		return nil, err
	}
	for _, f := range files {
		l.parse(f.name, f.data)
	}
	if len(l.problems) > 0 {
		return nil, l.problems.sorted()
	}
	return &l.set, nil
}

// Parse parses one file's bytes; name is used in problems. The error, when
// not nil, is a Problems value.
func Parse(name string, data []byte) (*Set, error) {
	l, err := newLoader()
	if err != nil {
		return nil, err
	}
	l.parse(name, data)
	if len(l.problems) > 0 {
		return nil, l.problems.sorted()
	}
	return &l.set, nil
}

type fileData struct {
	name string
	data []byte
}

// loader accumulates the resources and problems of one or more files.
type loader struct {
	envs     *celEnvs
	set      Set
	problems Problems
	names    map[string]map[string]Origin // kind → name → where
	// tests collects PolicyTest documents when wanted (policy test).
	tests     []*testDoc
	wantTests bool
}

func newLoader() (*loader, error) {
	envs, err := newCELEnvs()
	if err != nil {
		return nil, err
	}
	return &loader{envs: envs, names: map[string]map[string]Origin{}}, nil
}

// readDir reads the resource files of dir; unreadable or oversized files
// become problems, an unreadable directory is an error.
func (l *loader) readDir(dir string) ([]fileData, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("policy: read %s: %w", dir, err)
	}
	var out []fileData
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || e.IsDir() {
			continue
		}
		if ext := filepath.Ext(name); ext != ".yaml" && ext != ".yml" {
			continue
		}
		path := filepath.Join(dir, name)
		data, err := readBounded(path)
		if err != nil {
			l.problems = append(l.problems, Problem{File: path, Message: err.Error()})
			continue
		}
		out = append(out, fileData{path, data})
	}
	return out, nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read: %w", errors.Unwrap(err))
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("cannot read: %w", err)
	}
	if len(data) > MaxFileSize {
		return nil, fmt.Errorf("file is larger than %d bytes", MaxFileSize)
	}
	return data, nil
}

// fileCtx is the state of one document being loaded.
type fileCtx struct {
	l       *loader
	file    string
	docLine int
	lines   map[string]int // field path → line
}

func (f *fileCtx) add(line int, msg string) {
	f.l.problems = append(f.l.problems, Problem{File: f.file, Line: line, Message: msg})
}

// line finds the line of a field path, or of its closest parent.
func (f *fileCtx) line(path string) int {
	for path != "" {
		if l, ok := f.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return f.docLine
}

func (f *fileCtx) report(path, msg string) { f.add(f.line(path), msg) }

func (l *loader) parse(name string, data []byte) {
	if len(data) > MaxFileSize {
		l.problems = append(l.problems, Problem{File: name, Message: fmt.Sprintf("file is larger than %d bytes", MaxFileSize)})
		return
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			p := strictyaml.ParseError(err)
			l.problems = append(l.problems, Problem{File: name, Line: p.Line, Message: p.Message})
			return
		}
		if len(doc.Content) == 0 {
			continue
		}
		if root := doc.Content[0]; root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null" && root.Value == "" {
			continue // an empty document: "---" with nothing after it
		}
		l.document(name, doc.Content[0])
	}
}

// document is the envelope every resource shares.
type document[T any] struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Metadata   metadata `json:"metadata"`
	Spec       T        `json:"spec"`
}

type metadata struct {
	Name   string            `json:"name"`
	Labels map[string]string `json:"labels,omitempty"`
}

type workloadSpec struct {
	SPIFFEID             string                `json:"spiffeID"`
	Audience             string                `json:"audience,omitempty"`
	ClientAuthentication []string              `json:"clientAuthentication,omitempty"`
	JWKS                 json.RawMessage       `json:"jwks,omitempty"`
	JWKSURI              string                `json:"jwksURI,omitempty"`
	DNSNames             []string              `json:"dnsNames,omitempty"`
	SVIDTTL              Duration              `json:"svidTTL,omitempty"`
	Selectors            []AttestationSelector `json:"selectors,omitempty"`
	Agents               []string              `json:"agents,omitempty"`
}

type issuerSpec struct {
	Issuer        string          `json:"issuer"`
	JWKS          json.RawMessage `json:"jwks,omitempty"`
	JWKSURI       string          `json:"jwksURI,omitempty"`
	Discovery     bool            `json:"discovery,omitempty"`
	Audiences     []string        `json:"audiences"`
	Algorithms    []string        `json:"algorithms,omitempty"`
	Claims        []string        `json:"claims,omitempty"`
	Introspection *Introspection  `json:"introspection,omitempty"`
}

type federationSpec struct {
	TrustDomain       string `json:"trustDomain"`
	BundleEndpointURL string `json:"bundleEndpointURL"`
	Profile           string `json:"profile"`
	EndpointSPIFFEID  string `json:"endpointSPIFFEID,omitempty"`
	BootstrapBundle   string `json:"bootstrapBundle,omitempty"`
	CABundle          string `json:"caBundle,omitempty"`
}

var nameRE = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$`)

func scalarField(n *yaml.Node, key string) (*yaml.Node, bool) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1], true
		}
	}
	return nil, false
}

func (l *loader) document(name string, root *yaml.Node) {
	f := &fileCtx{l: l, file: name, docLine: root.Line, lines: map[string]int{}}
	if root.Kind != yaml.MappingNode {
		f.add(root.Line, "a resource must be a mapping with apiVersion, kind, metadata and spec")
		return
	}
	kn, ok := scalarField(root, "kind")
	if !ok {
		f.add(root.Line, "missing kind")
		return
	}
	kind := kn.Value
	switch kind {
	case KindWorkload:
		var d document[workloadSpec]
		if f.decode(root, &d) {
			l.workload(f, &d)
		}
	case KindTrustedIssuer:
		var d document[issuerSpec]
		if f.decode(root, &d) {
			l.issuer(f, &d)
		}
	case KindExchangePolicy:
		var d document[ExchangePolicy]
		if f.decode(root, &d) {
			l.exchangePolicy(f, &d)
		}
	case KindAuthorizationPolicy:
		var d document[AuthorizationPolicy]
		if f.decode(root, &d) {
			l.authzPolicy(f, &d)
		}
	case KindFederation:
		var d document[federationSpec]
		if f.decode(root, &d) {
			l.federation(f, &d)
		}
	case KindPolicyTest:
		if l.wantTests {
			var d document[testSpec]
			if f.decode(root, &d) {
				l.testDoc(f, &d)
			}
		}
	default:
		f.add(kn.Line, fmt.Sprintf("unknown kind %q (want Workload, TrustedIssuer, ExchangePolicy, AuthorizationPolicy, Federation or PolicyTest)", kind))
	}
}

// decode checks the node tree against the type (unknown fields, wrong
// types, duplicate keys, aliases: each with its line), then decodes it with
// sigs.k8s.io/yaml in strict mode, then checks the envelope.
func (f *fileCtx) decode(root *yaml.Node, out any) bool {
	before := len(f.l.problems)
	w := strictyaml.Walker{Report: f.add, Visit: func(path string, line int) { f.lines[path] = line }, RefuseEmptyLists: true}
	w.Walk(root, reflect.TypeOf(out).Elem(), "")
	if len(f.l.problems) > before {
		return false
	}
	if err := strictyaml.DecodeJSON(root, out); err != nil {
		line, msg := f.docLine, err.Error()
		if le, ok := errors.AsType[*strictyaml.LineError](err); ok {
			line, msg = le.Line, le.Msg
		}
		f.add(line, strings.ReplaceAll(msg, "policy: ", ""))
		return false
	}
	v := reflect.ValueOf(out).Elem()
	api := v.FieldByName("APIVersion").String()
	md := v.FieldByName("Metadata").Interface().(metadata)
	if api != APIVersion {
		f.report("apiVersion", fmt.Sprintf("apiVersion: %q is not %s", api, APIVersion))
	}
	switch {
	case md.Name == "":
		f.report("metadata.name", "metadata.name: required")
	case !nameRE.MatchString(md.Name):
		f.report("metadata.name", fmt.Sprintf("metadata.name: %q must be lower case letters, digits, '-' and '.'", md.Name))
	}
	if _, ok := f.lines["spec"]; !ok {
		f.add(f.docLine, "missing spec")
	}
	return len(f.l.problems) == before
}

// claimName records a resource name, reporting duplicates per kind.
func (l *loader) claimName(f *fileCtx, kind, name string) bool {
	m := l.names[kind]
	if m == nil {
		m = map[string]Origin{}
		l.names[kind] = m
	}
	if o, dup := m[name]; dup {
		f.report("metadata.name", fmt.Sprintf("duplicate %s name %q (first defined at %s:%d)", kind, name, o.File, o.Line))
		return false
	}
	m[name] = Origin{f.file, f.docLine}
	return true
}

func validSPIFFEID(s string) error {
	if _, err := spiffeid.FromString(s); err != nil {
		return fmt.Errorf("invalid SPIFFE ID: %v", err)
	}
	return nil
}

// checkURL accepts https URLs, and http ones for loopback hosts.
func checkURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return errors.New("not an absolute URL")
	}
	switch {
	case u.User != nil:
		return errors.New("URL must not contain credentials")
	case u.Fragment != "" || u.RawQuery != "":
		return errors.New("URL must not have a query or fragment")
	case u.Scheme == "https":
		return nil
	case u.Scheme == "http" && (u.Hostname() == "localhost" || u.Hostname() == "127.0.0.1" || u.Hostname() == "::1"):
		return nil
	}
	return errors.New("URL must use https (http only for localhost)")
}

// parseJWKS decodes an inline public key set.
func parseJWKS(raw json.RawMessage) (*jose.JSONWebKeySet, error) {
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(raw, &set); err != nil {
		return nil, fmt.Errorf("jwks: %v", strings.TrimPrefix(err.Error(), "go-jose/go-jose: "))
	}
	if len(set.Keys) == 0 {
		return nil, errors.New("jwks: no keys")
	}
	for _, k := range set.Keys {
		if _, sym := k.Key.([]byte); sym {
			return nil, errors.New("jwks must not hold symmetric keys")
		}
		if !k.IsPublic() {
			return nil, errors.New("jwks must hold public keys only")
		}
		if !k.Valid() {
			return nil, errors.New("jwks: invalid key")
		}
	}
	return &set, nil
}

func nonEmpty(f *fileCtx, path, field string, vals []string) {
	for i, v := range vals {
		if strings.TrimSpace(v) == "" {
			f.report(fmt.Sprintf("%s[%d]", path, i), field+": empty value")
		}
	}
}

func (l *loader) workload(f *fileCtx, d *document[workloadSpec]) {
	s := &d.Spec
	before := len(l.problems)
	w := Workload{
		Name: d.Metadata.Name, Labels: d.Metadata.Labels, Origin: Origin{f.file, f.docLine},
		SPIFFEID: s.SPIFFEID, Audience: s.Audience, JWKSURI: s.JWKSURI,
		DNSNames: s.DNSNames, SVIDTTL: time.Duration(s.SVIDTTL), Selectors: s.Selectors,
		ClientAuthentication: s.ClientAuthentication, Agents: s.Agents,
	}
	if s.SPIFFEID == "" {
		f.report("spec.spiffeID", "spiffeID: required")
	} else if err := validSPIFFEID(s.SPIFFEID); err != nil {
		f.report("spec.spiffeID", fmt.Sprintf("spiffeID: %q: %v", s.SPIFFEID, err))
	}
	if w.Audience == "" {
		w.Audience = s.SPIFFEID
	}
	if len(w.ClientAuthentication) == 0 {
		w.ClientAuthentication = []string{AuthTLSClient, AuthJWTSPIFFE}
	}
	for i, m := range w.ClientAuthentication {
		switch m {
		case AuthTLSClient, AuthJWTSPIFFE, AuthPrivateKeyJWT, AuthClientSecretBasic:
		default:
			f.report(fmt.Sprintf("spec.clientAuthentication[%d]", i), fmt.Sprintf("clientAuthentication: %q is not tls_client_auth, jwt_spiffe, private_key_jwt or client_secret_basic", m))
		}
	}
	if len(s.JWKS) > 0 && s.JWKSURI != "" {
		f.report("spec.jwksURI", "conflicting fields: jwks and jwksURI")
	}
	if len(s.JWKS) > 0 {
		set, err := parseJWKS(s.JWKS)
		if err != nil {
			f.report("spec.jwks", err.Error())
		}
		w.JWKS = set
	}
	if s.JWKSURI != "" {
		if err := checkURL(s.JWKSURI); err != nil {
			f.report("spec.jwksURI", "jwksURI: "+err.Error())
		}
	}
	if slices.Contains(w.ClientAuthentication, AuthPrivateKeyJWT) && len(s.JWKS) == 0 && s.JWKSURI == "" {
		f.report("spec.clientAuthentication", "private_key_jwt needs jwks or jwksURI")
	}
	nonEmpty(f, "spec.dnsNames", "dnsNames", s.DNSNames)
	if w.SVIDTTL < 0 {
		f.report("spec.svidTTL", "svidTTL: must be positive")
	} else if w.SVIDTTL > 0 && w.SVIDTTL < MinSVIDTTL {
		f.report("spec.svidTTL", fmt.Sprintf("svidTTL: %s is shorter than %s (SVIDs are renewed at half-life)", w.SVIDTTL, MinSVIDTTL))
	} else if w.SVIDTTL > MaxSVIDTTL {
		f.report("spec.svidTTL", fmt.Sprintf("svidTTL: %s is longer than %s; short-lived SVIDs are the point (renewal is automatic)", w.SVIDTTL, MaxSVIDTTL))
	}
	unix, owner := false, false
	for i, sel := range s.Selectors {
		if sel.Type == "" || sel.Value == "" {
			f.report(fmt.Sprintf("spec.selectors[%d]", i), "selectors: type and value are required")
		}
		if sel.Type == "unix" && sel.Value != "" {
			unix = true
			owner = owner || strings.HasPrefix(sel.Value, "uid:") || strings.HasPrefix(sel.Value, "user:")
		}
	}
	if unix && !owner {
		// path: and sha256: describe a binary, not who runs it: any local
		// user can run that binary, or connect and then exec it.
		f.report("spec.selectors", "selectors: unix selectors need a uid: or user: selector; path: and sha256: alone do not tell apart processes of different users")
	}
	for i, a := range s.Agents {
		m, err := parseSPIFFEGlob(a)
		if err != nil {
			f.report(fmt.Sprintf("spec.agents[%d]", i), fmt.Sprintf("agents: %q: %v", a, err))
			continue
		}
		w.agents = append(w.agents, m)
	}
	if len(l.problems) == before && l.claimName(f, KindWorkload, w.Name) {
		l.set.Workloads = append(l.set.Workloads, w)
	}
}

var allowedAlgs = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

func (l *loader) issuer(f *fileCtx, d *document[issuerSpec]) {
	s := &d.Spec
	before := len(l.problems)
	t := TrustedIssuer{
		Name: d.Metadata.Name, Labels: d.Metadata.Labels, Origin: Origin{f.file, f.docLine},
		Issuer: s.Issuer, JWKSURI: s.JWKSURI, Discovery: s.Discovery, Audiences: s.Audiences,
		Algorithms: s.Algorithms, Claims: s.Claims, Introspection: s.Introspection,
	}
	if s.Issuer == "" {
		f.report("spec.issuer", "issuer: required")
	} else if err := checkURL(s.Issuer); err != nil {
		f.report("spec.issuer", fmt.Sprintf("issuer: %q: %v", s.Issuer, err))
	}
	n := 0
	if len(s.JWKS) > 0 {
		n++
		set, err := parseJWKS(s.JWKS)
		if err != nil {
			f.report("spec.jwks", err.Error())
		}
		t.JWKS = set
	}
	if s.JWKSURI != "" {
		n++
		if err := checkURL(s.JWKSURI); err != nil {
			f.report("spec.jwksURI", "jwksURI: "+err.Error())
		}
	}
	if s.Discovery {
		n++
	}
	switch {
	case n > 1:
		f.report("spec", "at most one of jwks, jwksURI and discovery: true")
	case n == 0 && s.Introspection == nil:
		f.report("spec", "one of jwks, jwksURI and discovery: true is required (or introspection, for an issuer of opaque tokens)")
	}
	if len(s.Audiences) == 0 {
		f.report("spec.audiences", "audiences: required")
	}
	nonEmpty(f, "spec.audiences", "audiences", s.Audiences)
	if len(t.Algorithms) == 0 {
		t.Algorithms = []string{"RS256", "ES256", "EdDSA"}
	}
	for i, a := range s.Algorithms {
		if !slices.Contains(allowedAlgs, a) {
			f.report(fmt.Sprintf("spec.algorithms[%d]", i), fmt.Sprintf("algorithms: %q is not allowed (none and HS* never are)", a))
		}
	}
	nonEmpty(f, "spec.claims", "claims", s.Claims)
	if in := s.Introspection; in != nil {
		if err := checkURL(in.Endpoint); err != nil {
			f.report("spec.introspection.endpoint", "introspection.endpoint: "+err.Error())
		}
		if in.ClientID == "" {
			f.report("spec.introspection", "introspection.clientID: required")
		}
		if in.ClientSecretFile == "" {
			f.report("spec.introspection", "introspection.clientSecretFile: required")
		} else if !filepath.IsAbs(in.ClientSecretFile) {
			// Relative to the resource file, as every path in Postern's
			// configuration is; absolute so every reader agrees.
			cp := *in
			cp.ClientSecretFile = filepath.Join(filepath.Dir(f.file), in.ClientSecretFile)
			if abs, err := filepath.Abs(cp.ClientSecretFile); err == nil {
				cp.ClientSecretFile = abs
			}
			t.Introspection = &cp
		}
	}
	if len(l.problems) == before && l.claimName(f, KindTrustedIssuer, t.Name) {
		l.set.TrustedIssuers = append(l.set.TrustedIssuers, t)
	}
}

func (l *loader) federation(f *fileCtx, d *document[federationSpec]) {
	s := &d.Spec
	before := len(l.problems)
	fed := Federation{
		Name: d.Metadata.Name, Labels: d.Metadata.Labels, Origin: Origin{f.file, f.docLine},
		BundleEndpointURL: s.BundleEndpointURL, Profile: s.Profile,
	}
	if s.TrustDomain == "" {
		f.report("spec.trustDomain", "trustDomain: required")
	} else if td, err := spiffeid.TrustDomainFromString(s.TrustDomain); err != nil || td.Name() != s.TrustDomain {
		f.report("spec.trustDomain", fmt.Sprintf("trustDomain: %q is not a trust domain name like partner.example", s.TrustDomain))
	} else {
		fed.TrustDomain = td
	}
	if s.BundleEndpointURL == "" {
		f.report("spec.bundleEndpointURL", "bundleEndpointURL: required")
	} else if err := checkHTTPSURL(s.BundleEndpointURL); err != nil {
		f.report("spec.bundleEndpointURL", fmt.Sprintf("bundleEndpointURL: %q: %v", s.BundleEndpointURL, err))
	}
	switch s.Profile {
	case "":
		f.report("spec.profile", "profile: required (https_web or https_spiffe)")
	case ProfileHTTPSWeb:
		if s.EndpointSPIFFEID != "" {
			f.report("spec.endpointSPIFFEID", "conflicting fields: endpointSPIFFEID is only for profile https_spiffe")
		}
		if s.BootstrapBundle != "" {
			f.report("spec.bootstrapBundle", "conflicting fields: bootstrapBundle is only for profile https_spiffe")
		}
		if s.CABundle != "" {
			certs, err := parsePEMCertificates([]byte(s.CABundle))
			if err != nil {
				f.report("spec.caBundle", "caBundle: "+err.Error())
			}
			fed.CABundle = certs
		}
	case ProfileHTTPSSPIFFE:
		if s.CABundle != "" {
			f.report("spec.caBundle", "conflicting fields: caBundle is only for profile https_web")
		}
		if s.EndpointSPIFFEID == "" {
			f.report("spec.endpointSPIFFEID", "endpointSPIFFEID: required for profile https_spiffe")
		} else if id, err := spiffeid.FromString(s.EndpointSPIFFEID); err != nil {
			f.report("spec.endpointSPIFFEID", fmt.Sprintf("endpointSPIFFEID: %q: invalid SPIFFE ID: %v", s.EndpointSPIFFEID, err))
		} else if !fed.TrustDomain.IsZero() && id.TrustDomain() != fed.TrustDomain {
			f.report("spec.endpointSPIFFEID", fmt.Sprintf("endpointSPIFFEID: %q is not in trust domain %q (its bundle authenticates the endpoint)", s.EndpointSPIFFEID, s.TrustDomain))
		} else {
			fed.EndpointSPIFFEID = id
		}
		if s.BootstrapBundle == "" {
			f.report("spec.bootstrapBundle", "bootstrapBundle: required for profile https_spiffe")
		} else if !fed.TrustDomain.IsZero() {
			b, err := parseBootstrapBundle(fed.TrustDomain, []byte(s.BootstrapBundle))
			if err != nil {
				f.report("spec.bootstrapBundle", "bootstrapBundle: "+err.Error())
			}
			fed.BootstrapBundle = b
		}
	default:
		f.report("spec.profile", fmt.Sprintf("profile: %q is not https_web or https_spiffe", s.Profile))
	}
	if len(l.problems) == before && l.claimName(f, KindFederation, fed.Name) {
		l.set.Federations = append(l.set.Federations, fed)
	}
}

// checkHTTPSURL accepts absolute https URLs without credentials or fragment.
func checkHTTPSURL(s string) error {
	u, err := url.Parse(s)
	switch {
	case err != nil || u.Host == "":
		return errors.New("not an absolute URL")
	case u.Scheme != "https":
		return errors.New("URL must use https")
	case u.User != nil:
		return errors.New("URL must not contain credentials")
	case u.Fragment != "":
		return errors.New("URL must not have a fragment")
	}
	return nil
}

// maxPEMCertificates bounds the certificates of an inline PEM bundle.
const maxPEMCertificates = 64

// parsePEMCertificates parses PEM CERTIFICATE blocks: at least one, nothing
// else but white space around them.
func parsePEMCertificates(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	rest := bytes.TrimSpace(data)
	for len(rest) > 0 {
		block, r := pem.Decode(rest)
		if block == nil {
			return nil, errors.New("not PEM certificates")
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q (want CERTIFICATE)", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %v", len(certs)+1, err)
		}
		if certs = append(certs, c); len(certs) > maxPEMCertificates {
			return nil, fmt.Errorf("more than %d certificates", maxPEMCertificates)
		}
		rest = bytes.TrimSpace(r)
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificates")
	}
	return certs, nil
}

// parseBootstrapBundle parses a SPIFFE bundle (JSON) or PEM root
// certificates; the result holds at least one X.509 authority.
func parseBootstrapBundle(td spiffeid.TrustDomain, data []byte) (*spiffebundle.Bundle, error) {
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] == '{' {
		b, err := spiffebundle.Parse(td, data)
		if err != nil {
			return nil, fmt.Errorf("not a SPIFFE bundle: %s", strings.TrimPrefix(err.Error(), "spiffebundle: "))
		}
		if len(b.X509Authorities()) == 0 {
			return nil, errors.New("the SPIFFE bundle holds no X.509 authority")
		}
		return b, nil
	}
	certs, err := parsePEMCertificates(data)
	if err != nil {
		return nil, fmt.Errorf("neither a SPIFFE bundle (JSON) nor PEM certificates: %v", err)
	}
	return spiffebundle.FromX509Authorities(td, certs), nil
}

func (l *loader) exchangePolicy(f *fileCtx, d *document[ExchangePolicy]) {
	p := d.Spec
	p.Name, p.Labels, p.Origin = d.Metadata.Name, d.Metadata.Labels, Origin{f.file, f.docLine}
	for i, iss := range p.SubjectIssuers {
		if iss != "self" && !strings.Contains(iss, "*") && iss != "" {
			if err := checkURL(iss); err != nil {
				f.report(fmt.Sprintf("spec.subjectIssuers[%d]", i), fmt.Sprintf("subjectIssuers: %q: %v", iss, err))
			}
		}
	}
	before := len(l.problems)
	if compileExchange(&p, l.envs, f.report) == nil || len(l.problems) > before {
		return
	}
	if l.claimName(f, KindExchangePolicy, p.Name) {
		l.set.ExchangePolicies = append(l.set.ExchangePolicies, p)
	}
}

func (l *loader) authzPolicy(f *fileCtx, d *document[AuthorizationPolicy]) {
	p := d.Spec
	p.Name, p.Labels, p.Origin = d.Metadata.Name, d.Metadata.Labels, Origin{f.file, f.docLine}
	if compileAuthz(&p, l.envs, f.report) == nil {
		return
	}
	if l.claimName(f, KindAuthorizationPolicy, p.Name) {
		l.set.AuthorizationPolicies = append(l.set.AuthorizationPolicies, p)
	}
}
