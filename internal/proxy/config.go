package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/strictyaml"
)

// Config is the sidecar's configuration, as written in sidecar.yaml and
// read strictly (an unknown field is an error). Zero values mean the
// documented defaults. Relative paths are resolved against the directory of
// the configuration file.
type Config struct {
	// TrustDomain is the SPIFFE trust domain, e.g. quickstart.local.
	// Required.
	TrustDomain string `json:"trustDomain"`
	// SPIFFE says where the sidecar's X.509-SVID and the trust bundle come
	// from: exactly one of workloadAPI and files.
	SPIFFE IdentitySource `json:"spiffe"`
	// SPIFFEID, when set, is the ID the sidecar's SVID must carry; by
	// default whatever the source hands out is used.
	SPIFFEID string `json:"spiffeID,omitempty"`
	// STS is the trust domain's token service, the issuer of the tokens
	// this sidecar accepts and the one it exchanges tokens at.
	STS STSConfig `json:"sts"`
	// Audience is the aud that inbound tokens must carry; default the
	// sidecar's SPIFFE ID (a Workload's default audience).
	Audience string `json:"audience,omitempty"`
	// Policies is a directory of AuthorizationPolicy (and Workload)
	// resources, watched for changes with last-known-good semantics.
	// Required: without an ALLOW policy every request is denied.
	Policies string `json:"policies"`
	// PolicyReloadInterval is how often Policies is checked; default 2s.
	PolicyReloadInterval policy.Duration `json:"policyReloadInterval,omitempty"`
	// ClockSkew is tolerated on token exp, nbf and iat; default 30s.
	ClockSkew policy.Duration `json:"clockSkew,omitempty"`
	// Inbound configures the mutual TLS listener in front of the app.
	Inbound InboundListener `json:"inbound"`
	// Outbound configures the listener the app sends its calls to.
	Outbound OutboundConfig `json:"outbound,omitempty"`
	// Admin configures the plain HTTP listener of /healthz, /readyz and
	// /metrics.
	Admin AdminConfig `json:"admin,omitempty"`
	// DrainTimeout bounds the graceful drain on shutdown; default 15s.
	DrainTimeout policy.Duration `json:"drainTimeout,omitempty"`
	// Log configures logging (used by postern sidecar).
	Log LogConfig `json:"log,omitempty"`
	// MaxProcs is how many threads run Go code at once in postern sidecar
	// (GOMAXPROCS); default DefaultMaxProcs. The GOMAXPROCS environment
	// variable, when set, wins.
	MaxProcs int `json:"maxProcs,omitempty"`
}

// DefaultMaxProcs is the sidecar's default MaxProcs. A sidecar serves one
// workload: one thread handles thousands of requests per second, and at
// the usual rates a second one mostly costs CPU in scheduler wake-ups
// (about a fifth more per request in bench/sidecar at 1,000 req/s).
const DefaultMaxProcs = 1

// IdentitySource selects where the SVID and bundle come from.
type IdentitySource struct {
	// WorkloadAPI reads them from a SPIFFE Workload API socket (postern
	// agent, SPIRE agent...).
	WorkloadAPI *WorkloadAPISource `json:"workloadAPI,omitempty"`
	// Files reads them from PEM files, re-read when they change.
	Files *FilesSource `json:"files,omitempty"`
	// Attest attests directly to postern server (no agent) with a join
	// token or a Kubernetes token, and renews the SVID at half-life.
	Attest *AttestSource `json:"attest,omitempty"`
}

// WorkloadAPISource is the address of a SPIFFE Workload API.
type WorkloadAPISource struct {
	// Socket is the Workload API address, e.g. unix:///run/postern/agent.sock.
	Socket string `json:"socket"`
}

// FilesSource names the PEM files of an SVID and a bundle.
type FilesSource struct {
	// Cert is the SVID's certificate chain, leaf first.
	Cert string `json:"cert"`
	// Key is the SVID's private key (PKCS#8).
	Key string `json:"key"`
	// Bundle holds the trust domain's X.509 authorities.
	Bundle string `json:"bundle"`
}

// STSConfig locates the token service.
type STSConfig struct {
	// Issuer is the STS's issuer URL (https), the iss of every token it
	// issues. Required.
	Issuer string `json:"issuer"`
	// JWKSURI is the STS's key set; default: found by discovery from the
	// issuer.
	JWKSURI string `json:"jwksURI,omitempty"`
	// TokenEndpoint is where tokens are exchanged; default
	// <issuer>/oauth2/token.
	TokenEndpoint string `json:"tokenEndpoint,omitempty"`
	// SPIFFEID is the STS's own SPIFFE ID, checked on its certificate;
	// default spiffe://<trust domain>/postern/server.
	SPIFFEID string `json:"spiffeID,omitempty"`
	// RevocationsURI is the STS's revocation list; default (left empty
	// here, derived when the sidecar starts) <issuer>/oauth2/revocations.
	RevocationsURI string `json:"revocationsURI,omitempty"`
	// RevocationPollInterval is how often the revocation list is fetched;
	// default 5s, at least 100ms.
	RevocationPollInterval policy.Duration `json:"revocationPollInterval,omitempty"`
}

// InboundListener configures the inbound side.
type InboundListener struct {
	// Listen is the mutual TLS listen address; default :15006.
	Listen string `json:"listen,omitempty"`
	// App is the application's address, a loopback host:port. Required.
	App string `json:"app"`
	// ForwardToken forwards the verified bearer token to the app; by
	// default it is removed and the app gets X-Postern-Context instead.
	ForwardToken bool `json:"forwardToken,omitempty"`
}

// AdminConfig configures the admin listener.
type AdminConfig struct {
	// Listen is the plain HTTP admin address; default 127.0.0.1:15000.
	Listen string `json:"listen,omitempty"`
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is debug, info (default), warn or error.
	Level string `json:"level,omitempty"`
	// Format is json, text or auto (default: text on a terminal).
	Format string `json:"format,omitempty"`
}

// Defaults.
const (
	DefaultInboundListen = ":15006"
	DefaultAdminListen   = "127.0.0.1:15000"
	defaultDrain         = 15 * time.Second
	maxConfigBytes       = 1 << 20
)

// LoadConfig reads and validates a configuration file.
func LoadConfig(path string) (*Config, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("proxy: config: %w", err)
	}
	if fi.Size() > maxConfigBytes {
		return nil, fmt.Errorf("proxy: config %s is larger than 1 MiB", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("proxy: config: %w", err)
	}
	c, err := parseConfig(path, b)
	if err != nil {
		return nil, fmt.Errorf("proxy: config %w", err)
	}
	c.resolve(filepath.Dir(path))
	return c, nil
}

// ParseConfig decodes and validates a configuration; relative paths stay
// relative.
func ParseConfig(b []byte) (*Config, error) { return parseConfig("", b) }

// parseConfig is ParseConfig for a file named name ("": unnamed), whose
// name the errors start with.
func parseConfig(name string, b []byte) (*Config, error) {
	var c Config
	if err := strictyaml.Unmarshal(name, b, &c); err != nil {
		return nil, err
	}
	if err := c.Validate(); err != nil {
		if name != "" {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		return nil, err
	}
	return &c, nil
}

func (c *Config) resolve(base string) {
	paths := []*string{&c.Policies}
	if f := c.SPIFFE.Files; f != nil {
		paths = append(paths, &f.Cert, &f.Key, &f.Bundle)
	}
	if a := c.SPIFFE.Attest; a != nil {
		paths = append(paths, &a.Bundle, &a.JoinTokenFile, &a.K8sTokenFile)
	}
	for _, p := range paths {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
}

// RevocationsURL returns sts.revocationsURI or its default.
func (s STSConfig) RevocationsURL() string {
	if s.RevocationsURI != "" {
		return s.RevocationsURI
	}
	return strings.TrimSuffix(s.Issuer, "/") + "/oauth2/revocations"
}

// Validate checks the configuration and fills in defaults.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil {
		bad("trustDomain: %v", err)
	}
	switch s := c.SPIFFE; {
	case countSources(s) != 1:
		bad("spiffe: exactly one of workloadAPI, files and attest is required")
	case s.Attest != nil:
		if u, err := url.Parse(s.Attest.Server); err != nil || u.Scheme != "https" || u.Host == "" {
			bad("spiffe.attest.server: want an https URL, got %q", s.Attest.Server)
		}
		if s.Attest.Bundle == "" {
			bad("spiffe.attest.bundle: required (the trust domain's roots, to trust the server)")
		}
		if s.Attest.JoinTokenFile != "" && s.Attest.K8sTokenFile != "" {
			bad("spiffe.attest: joinTokenFile and k8sTokenFile are exclusive")
		}
	case s.WorkloadAPI != nil:
		if u, err := url.Parse(s.WorkloadAPI.Socket); err != nil || (u.Scheme != "unix" && u.Scheme != "tcp") {
			bad("spiffe.workloadAPI.socket: want unix:///path or tcp://host:port, got %q", s.WorkloadAPI.Socket)
		}
	default:
		if s.Files.Cert == "" || s.Files.Key == "" || s.Files.Bundle == "" {
			bad("spiffe.files: cert, key and bundle are required")
		}
	}
	if c.SPIFFEID != "" {
		id, err := spiffeid.FromString(c.SPIFFEID)
		if err != nil {
			bad("spiffeID: %v", err)
		} else if !td.IsZero() && id.TrustDomain() != td {
			bad("spiffeID: %q is not in trust domain %q", c.SPIFFEID, c.TrustDomain)
		}
	}
	if u, err := url.Parse(c.STS.Issuer); err != nil || u.Scheme != "https" || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		bad("sts.issuer: want an https URL, got %q", c.STS.Issuer)
	}
	for _, f := range []struct{ name, v string }{{"sts.jwksURI", c.STS.JWKSURI}, {"sts.tokenEndpoint", c.STS.TokenEndpoint}, {"sts.revocationsURI", c.STS.RevocationsURI}} {
		name, v := f.name, f.v
		if v == "" {
			continue
		}
		if u, err := url.Parse(v); err != nil || u.Scheme != "https" || u.Host == "" {
			bad("%s: want an https URL, got %q", name, v)
		}
	}
	if c.STS.SPIFFEID != "" {
		if _, err := spiffeid.FromString(c.STS.SPIFFEID); err != nil {
			bad("sts.spiffeID: %v", err)
		}
	}
	if c.Policies == "" {
		bad("policies: a directory of AuthorizationPolicy resources is required")
	}
	if c.Inbound.Listen == "" {
		c.Inbound.Listen = DefaultInboundListen
	}
	if _, _, err := net.SplitHostPort(c.Inbound.Listen); err != nil {
		bad("inbound.listen: %v", err)
	}
	if err := checkLoopback(c.Inbound.App); err != nil {
		bad("inbound.app: %v", err)
	} else if _, port, _ := net.SplitHostPort(c.Inbound.App); port == "0" {
		bad("inbound.app: %q has no port", c.Inbound.App)
	}
	if c.Admin.Listen == "" {
		c.Admin.Listen = DefaultAdminListen
	}
	if _, _, err := net.SplitHostPort(c.Admin.Listen); err != nil {
		bad("admin.listen: %v", err)
	}
	for _, f := range []struct {
		name string
		d    policy.Duration
	}{{"clockSkew", c.ClockSkew}, {"policyReloadInterval", c.PolicyReloadInterval}, {"drainTimeout", c.DrainTimeout}} {
		if f.d < 0 {
			bad("%s: must not be negative", f.name)
		}
	}
	if c.ClockSkew > policy.Duration(5*time.Minute) {
		bad("clockSkew: at most 5m")
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = policy.Duration(defaultDrain)
	}
	switch {
	case c.MaxProcs < 0 || c.MaxProcs > 1024:
		bad("maxProcs: %d is not between 1 and 1024", c.MaxProcs)
	case c.MaxProcs == 0:
		c.MaxProcs = DefaultMaxProcs
	}
	if err := c.Outbound.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.STS.SPIFFEID == "" && !td.IsZero() {
		c.STS.SPIFFEID = "spiffe://" + td.Name() + "/postern/server"
	}
	if c.STS.TokenEndpoint == "" && c.STS.Issuer != "" {
		c.STS.TokenEndpoint = strings.TrimSuffix(c.STS.Issuer, "/") + "/oauth2/token"
	}
	switch p := time.Duration(c.STS.RevocationPollInterval); {
	case p == 0:
		c.STS.RevocationPollInterval = policy.Duration(DefaultRevocationPoll)
	case p < 100*time.Millisecond:
		bad("sts.revocationPollInterval: at least 100ms")
	}
	return errors.Join(errs...)
}

// checkLoopback accepts host:port where host is a loopback IP or localhost:
// plain HTTP (to the application, from it) must not leave the host.
func checkLoopback(addr string) error {
	if addr == "" {
		return errors.New("the application's loopback address is required")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if port == "" {
		return fmt.Errorf("%q has no port", addr)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback address", addr)
	}
	return nil
}

func countSources(s IdentitySource) int {
	n := 0
	if s.WorkloadAPI != nil {
		n++
	}
	if s.Files != nil {
		n++
	}
	if s.Attest != nil {
		n++
	}
	return n
}
