package gateway

import (
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/proxy"
	"postern.dev/postern/internal/strictyaml"
)

// Config is the gateway's configuration, as written in gateway.yaml and read
// strictly (an unknown field is an error). Zero values mean the documented
// defaults. Relative paths are resolved against the directory of the file.
type Config struct {
	// TrustDomain is the SPIFFE trust domain, e.g. quickstart.local.
	// Required.
	TrustDomain string `json:"trustDomain"`
	// SPIFFEID, when set, is the ID the gateway's SVID must carry; by
	// default whatever the source hands out is used.
	SPIFFEID string `json:"spiffeID,omitempty"`
	// SPIFFE says where the gateway's X.509-SVID and the trust bundle come
	// from: exactly one of workloadAPI and files.
	SPIFFE proxy.IdentitySource `json:"spiffe"`
	// STS is the trust domain's token service, where user tokens are
	// exchanged for internal ones (mutual TLS as the gateway's SVID).
	STS proxy.STSConfig `json:"sts"`
	// Listen is the TLS listener users connect to; default :8080.
	Listen string `json:"listen,omitempty"`
	// TLS selects the certificate users see: exactly one of certFile and
	// keyFile, or fromSVID.
	TLS TLSConfig `json:"tls"`
	// Issuers is a directory of TrustedIssuer resources (other kinds are
	// ignored), usually the same directory the server loads. Required.
	Issuers string `json:"issuers"`
	// Routes map host and path prefix to an upstream. At least one.
	Routes []Route `json:"routes"`
	// RateLimit, when set, limits each client's requests.
	RateLimit *RateLimitConfig `json:"rateLimit,omitempty"`
	// Admin configures the plain HTTP listener of /healthz, /readyz and
	// /metrics; default 127.0.0.1:15900.
	Admin proxy.AdminConfig `json:"admin,omitempty"`
	// ClockSkew is tolerated on user tokens' exp, nbf and iat; default 30s,
	// at most 5m.
	ClockSkew policy.Duration `json:"clockSkew,omitempty"`
	// MaxHeaderBytes bounds a request's header; default 64 KiB, 1 KiB to
	// 1 MiB.
	MaxHeaderBytes int `json:"maxHeaderBytes,omitempty"`
	// ResponseHeaderTimeout bounds the wait for an upstream's response
	// header (not its body); default 60s.
	ResponseHeaderTimeout policy.Duration `json:"responseHeaderTimeout,omitempty"`
	// DrainTimeout bounds the graceful drain on shutdown; default 15s.
	DrainTimeout policy.Duration `json:"drainTimeout,omitempty"`
	// Log configures logging (used by postern gateway).
	Log proxy.LogConfig `json:"log,omitempty"`
}

// TLSConfig selects the certificate of the user-facing listener.
type TLSConfig struct {
	// CertFile and KeyFile are a PEM certificate chain and its private
	// key, re-read when they change (a broken pair keeps the last good one).
	CertFile string `json:"certFile,omitempty"`
	KeyFile  string `json:"keyFile,omitempty"`
	// FromSVID serves the gateway's own X.509-SVID, for internal use where
	// clients trust the trust domain's bundle.
	FromSVID bool `json:"fromSVID,omitempty"`
}

// Route sends the requests matching Host and PathPrefix to Upstream.
type Route struct {
	// Name identifies the route in audit lines and metrics. Required,
	// unique.
	Name string `json:"name"`
	// Host is an exact host name, "*.example.com" (any subdomain) or "*"
	// (default). The port of the request's Host is ignored.
	Host string `json:"host,omitempty"`
	// PathPrefix selects requests whose path is the prefix or lies below
	// it, segment-wise: /orders matches /orders and /orders/42, not
	// /orderstatus. The longest matching prefix wins, then the most
	// specific host. Required, starting with "/".
	PathPrefix string `json:"pathPrefix"`
	// Upstream is the workload the requests go to: its name (the Host
	// upstream), addresses, expected SPIFFE ID and token audience (default
	// its SPIFFE ID). Routes may share an upstream if they define it alike.
	Upstream proxy.Upstream `json:"upstream"`
	// RequiredScopes must all be in the user token's scope (or scp);
	// otherwise 403 insufficient_scope.
	RequiredScopes []string `json:"requiredScopes,omitempty"`
	// When are AuthorizationPolicy conditions on the user token, e.g.
	// {key: "request.auth.claims[groups]", values: [shoppers]}; all must
	// hold.
	When []policy.Condition `json:"when,omitempty"`
	// Condition is an optional CEL expression over the user token
	// (subject, issuer) and the request (method, path, host, headers).
	Condition string `json:"condition,omitempty"`
}

// RateLimitConfig is a token bucket per client.
type RateLimitConfig struct {
	// RequestsPerSecond is the sustained rate per client. Required (> 0).
	RequestsPerSecond float64 `json:"requestsPerSecond"`
	// Burst is the bucket size; default RequestsPerSecond rounded up.
	Burst int `json:"burst,omitempty"`
	// By is the client key: sub (default, per issuer) or client_id (the
	// token's client_id or azp claim, else its sub).
	By string `json:"by,omitempty"`
	// MaxClients bounds the buckets held; default 100,000. When full, idle
	// buckets are dropped first.
	MaxClients int `json:"maxClients,omitempty"`
}

// Defaults.
const (
	DefaultListen      = ":8080"
	DefaultAdminListen = "127.0.0.1:15900"
	defaultMaxHeader   = 64 << 10
	defaultDrain       = 15 * time.Second
	defaultSkew        = 30 * time.Second
	defaultMaxClients  = 100_000
	maxConfigBytes     = 1 << 20
	maxRoutes          = 1024
	maxPrefixBytes     = 1024
	maxScopes          = 64
	rateByClientID     = "client_id"
	rateBySub          = "sub"
)

// LoadConfig reads and validates a configuration file.
func LoadConfig(path string) (*Config, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("gateway: config: %w", err)
	}
	if fi.Size() > maxConfigBytes {
		return nil, fmt.Errorf("gateway: config %s is larger than 1 MiB", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("gateway: config: %w", err)
	}
	c, err := parseConfig(path, b)
	if err != nil {
		return nil, fmt.Errorf("gateway: config %w", err)
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
	if len(b) > maxConfigBytes {
		return nil, errors.New("gateway: config is larger than 1 MiB")
	}
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
	paths := []*string{&c.Issuers, &c.TLS.CertFile, &c.TLS.KeyFile}
	if f := c.SPIFFE.Files; f != nil {
		paths = append(paths, &f.Cert, &f.Key, &f.Bundle)
	}
	for _, p := range paths {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
}

// Validate checks the configuration and fills in defaults. It compiles the
// routes' conditions, so a bad condition is reported here.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	// The identity, STS, admin and drain settings are the sidecar's: check
	// them with the sidecar's validation on a sidecar-shaped copy.
	side := proxy.Config{
		TrustDomain: c.TrustDomain, SPIFFE: c.SPIFFE, SPIFFEID: c.SPIFFEID, STS: c.STS,
		Policies: "-", Inbound: proxy.InboundListener{Listen: "127.0.0.1:0", App: "127.0.0.1:1"},
		Admin: c.Admin, ClockSkew: c.ClockSkew, DrainTimeout: c.DrainTimeout,
	}
	if err := side.Validate(); err != nil {
		errs = append(errs, err)
	} else {
		c.STS = side.STS
	}
	if c.Admin.Listen == "" {
		c.Admin.Listen = DefaultAdminListen
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		bad("listen: %v", err)
	}
	switch t := c.TLS; {
	case t.FromSVID && (t.CertFile != "" || t.KeyFile != ""):
		bad("tls: exactly one of certFile/keyFile and fromSVID")
	case !t.FromSVID && (t.CertFile == "" || t.KeyFile == ""):
		bad("tls: certFile and keyFile are required (or fromSVID: true)")
	}
	if c.Issuers == "" {
		bad("issuers: a directory of TrustedIssuer resources is required")
	}
	if c.ClockSkew == 0 {
		c.ClockSkew = policy.Duration(defaultSkew)
	}
	if c.DrainTimeout == 0 {
		c.DrainTimeout = policy.Duration(defaultDrain)
	}
	if c.MaxHeaderBytes == 0 {
		c.MaxHeaderBytes = defaultMaxHeader
	}
	if c.MaxHeaderBytes < 1<<10 || c.MaxHeaderBytes > 1<<20 {
		bad("maxHeaderBytes: want 1 KiB to 1 MiB, got %d", c.MaxHeaderBytes)
	}
	if c.ResponseHeaderTimeout < 0 {
		bad("responseHeaderTimeout: must not be negative")
	}
	if c.ResponseHeaderTimeout == 0 {
		c.ResponseHeaderTimeout = policy.Duration(proxy.DefaultResponseHeaderTimeout)
	}
	if rl := c.RateLimit; rl != nil {
		if !(rl.RequestsPerSecond > 0) || rl.RequestsPerSecond > 1e6 || math.IsInf(rl.RequestsPerSecond, 0) {
			bad("rateLimit.requestsPerSecond: want more than 0 and at most 1e6")
		}
		if rl.Burst < 0 || rl.Burst > 1e6 {
			bad("rateLimit.burst: want 0 (default) to 1e6")
		}
		if rl.Burst == 0 && rl.RequestsPerSecond > 0 && rl.RequestsPerSecond <= 1e6 {
			rl.Burst = int(math.Ceil(rl.RequestsPerSecond))
		}
		switch rl.By {
		case "":
			rl.By = rateBySub
		case rateBySub, rateByClientID:
		default:
			bad("rateLimit.by: %q is not sub or client_id", rl.By)
		}
		if rl.MaxClients < 0 {
			bad("rateLimit.maxClients: must not be negative")
		}
		if rl.MaxClients == 0 {
			rl.MaxClients = defaultMaxClients
		}
	}
	if err := c.validateRoutes(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return fmt.Errorf("gateway: %w", errors.Join(errs...))
	}
	return nil
}

// validateRoutes checks the routes, the upstreams they name and their
// conditions.
func (c *Config) validateRoutes() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if len(c.Routes) == 0 {
		bad("routes: at least one route is required")
	}
	if len(c.Routes) > maxRoutes {
		return fmt.Errorf("routes: more than %d", maxRoutes)
	}
	names := map[string]bool{}
	keys := map[string]string{}
	for i := range c.Routes {
		r := &c.Routes[i]
		at := fmt.Sprintf("routes[%d]", i)
		if r.Name == "" || len(r.Name) > 253 || !printableASCII(r.Name) {
			bad("%s.name: required, printable, at most 253 bytes", at)
		} else {
			at = fmt.Sprintf("routes[%d] (%s)", i, r.Name)
			if names[r.Name] {
				bad("%s.name: used twice", at)
			}
			names[r.Name] = true
		}
		r.Host = strings.ToLower(strings.TrimSpace(r.Host))
		if r.Host == "" {
			r.Host = "*"
		}
		if err := checkHostPattern(r.Host); err != nil {
			bad("%s.host: %v", at, err)
		}
		if err := checkPrefix(r.PathPrefix); err != nil {
			bad("%s.pathPrefix: %v", at, err)
		}
		key := r.Host + " " + r.PathPrefix
		if other, dup := keys[key]; dup {
			bad("%s: host %q and pathPrefix %q are those of route %q", at, r.Host, r.PathPrefix, other)
		}
		keys[key] = r.Name
		if len(r.RequiredScopes) > maxScopes {
			bad("%s.requiredScopes: more than %d", at, maxScopes)
		}
		for _, s := range r.RequiredScopes {
			if s == "" || strings.ContainsAny(s, " \"\\") || !printableASCII(s) {
				bad("%s.requiredScopes: %q is not a scope token", at, s)
			}
		}
	}
	if _, err := c.outbound(); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		td, _ := spiffeid.TrustDomainFromString(c.TrustDomain)
		self := c.SPIFFEID
		if self == "" && !td.IsZero() {
			self = "spiffe://" + td.Name() + "/gateway"
		}
		if _, err := compileRoutes(c.Routes, self); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// outbound returns the proxy.OutboundConfig of the routes' upstreams, each
// once, validated.
func (c *Config) outbound() (proxy.OutboundConfig, error) {
	oc := proxy.OutboundConfig{
		Listen:                "127.0.0.1:1", // never listened on: the gateway calls the handler itself
		MaxHeaderBytes:        c.MaxHeaderBytes,
		ResponseHeaderTimeout: c.ResponseHeaderTimeout,
	}
	byName := map[string]int{}
	var errs []error
	for i := range c.Routes {
		u := c.Routes[i].Upstream
		u.Name = strings.ToLower(u.Name)
		c.Routes[i].Upstream.Name = u.Name
		if j, ok := byName[u.Name]; ok {
			if !sameUpstream(oc.Upstreams[j], u) {
				errs = append(errs, fmt.Errorf("routes[%d].upstream: %q is defined differently by another route", i, u.Name))
			}
			continue
		}
		byName[u.Name] = len(oc.Upstreams)
		oc.Upstreams = append(oc.Upstreams, u)
	}
	if err := oc.Validate(); err != nil {
		errs = append(errs, err)
	}
	// Validate defaulted the audiences; give them back to the routes.
	for i := range c.Routes {
		if j, ok := byName[c.Routes[i].Upstream.Name]; ok && j < len(oc.Upstreams) && c.Routes[i].Upstream.Audience == "" {
			c.Routes[i].Upstream.Audience = oc.Upstreams[j].Audience
		}
	}
	return oc, errors.Join(errs...)
}

func sameUpstream(a, b proxy.Upstream) bool {
	if a.Name != b.Name || a.SPIFFEID != b.SPIFFEID || len(a.Addresses) != len(b.Addresses) {
		return false
	}
	aa, ba := a.Audience, b.Audience
	if aa == "" {
		aa = a.SPIFFEID
	}
	if ba == "" {
		ba = b.SPIFFEID
	}
	if aa != ba {
		return false
	}
	for i := range a.Addresses {
		if a.Addresses[i] != b.Addresses[i] {
			return false
		}
	}
	return true
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}
