package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	goyaml "go.yaml.in/yaml/v3"
	"sigs.k8s.io/yaml"

	"postern.dev/postern/internal/strictyaml"
)

// Config is the control plane's configuration, as written in server.yaml.
// Zero values mean the documented defaults. Relative paths are resolved
// against the directory of the configuration file.
type Config struct {
	// TrustDomain is the SPIFFE trust domain, e.g. quickstart.local. Required.
	TrustDomain string `json:"trustDomain"`
	// Listen is the HTTPS listen address; default 127.0.0.1:8443.
	Listen string `json:"listen,omitempty"`
	// Issuer is the STS issuer URL; default https://<listen>.
	Issuer string `json:"issuer,omitempty"`
	// DataDir holds the embedded store, the dev key-encryption key and
	// bundle.pem; default "data" next to the config file.
	DataDir string `json:"dataDir,omitempty"`
	// Resources is the directory of Workload, TrustedIssuer and
	// ExchangePolicy resources, watched for changes. Required.
	Resources string `json:"resources"`
	// ReloadInterval is how often the resources directory is checked for
	// changes; default 2s.
	ReloadInterval Duration `json:"reloadInterval,omitempty"`
	// Store selects the database: empty for SQLite in DataDir, or a
	// postgres:// DSN.
	Store StoreConfig `json:"store,omitempty"`
	// Keys configures JWT signing keys.
	Keys KeysConfig `json:"keys,omitempty"`
	// Tokens configures issued tokens.
	Tokens TokensConfig `json:"tokens,omitempty"`
	// CA configures the X.509-SVID certificate authority.
	CA CAConfig `json:"ca,omitempty"`
	// Serving names the DNS names and IP addresses the server's own
	// HTTPS certificate carries; default localhost and 127.0.0.1.
	Serving ServingConfig `json:"serving,omitempty"`
	// Attestation configures how node agents and workloads prove their
	// identity to the node API (/node/v1/). Join tokens (postern ca
	// join-token) are always accepted.
	Attestation AttestationConfig `json:"attestation,omitempty"`
	// Log configures logging.
	Log LogConfig `json:"log,omitempty"`
}

// StoreConfig selects the store.
type StoreConfig struct {
	// DSN is empty (SQLite at <dataDir>/postern.db) or a postgres:// URL.
	DSN string `json:"dsn,omitempty"`
}

// KeysConfig configures signing keys and their encryption at rest.
type KeysConfig struct {
	// Algorithm is ES256 (default) or EdDSA.
	Algorithm string `json:"algorithm,omitempty"`
	// RotationPeriod is how long a key signs; default 24h.
	RotationPeriod Duration `json:"rotationPeriod,omitempty"`
	// LeadTime is how long a key is published before it signs; default 1h.
	// It is also the JWKS Cache-Control max-age.
	LeadTime Duration `json:"leadTime,omitempty"`
	// KEKFile is a file holding the 32-byte key-encryption key (raw or
	// base64). KEKEnv names an environment variable holding it in base64.
	// With neither, a key is generated in the data dir (development only).
	KEKFile string `json:"kekFile,omitempty"`
	KEKEnv  string `json:"kekEnv,omitempty"`
}

// TokensConfig configures issued tokens.
type TokensConfig struct {
	// DefaultLifetime of exchanged tokens when the policy names none; 5m.
	DefaultLifetime Duration `json:"defaultLifetime,omitempty"`
	// MaxChainDepth caps the act chain; default 8.
	MaxChainDepth int `json:"maxChainDepth,omitempty"`
}

// CAConfig configures the certificate authority.
type CAConfig struct {
	// TTL of a self-signed root; default 30 days.
	TTL Duration `json:"ttl,omitempty"`
	// SVIDTTL is the default X.509-SVID lifetime; default 1h.
	SVIDTTL Duration `json:"svidTTL,omitempty"`
	// UpstreamCert and UpstreamKey import an intermediate CA from PEM files
	// instead of creating a root.
	UpstreamCert string `json:"upstreamCert,omitempty"`
	UpstreamKey  string `json:"upstreamKey,omitempty"`
}

// AttestationConfig configures the attestation methods beyond join tokens.
type AttestationConfig struct {
	// K8s enables Kubernetes projected service-account token (PSAT)
	// attestation; it is off while K8s.Issuer is empty.
	K8s K8sAttestationConfig `json:"k8s,omitempty"`
}

// K8sAttestationConfig configures Kubernetes PSAT attestation.
type K8sAttestationConfig struct {
	// Issuer is the cluster's service-account token issuer (the API
	// server's --service-account-issuer), the exact iss of its tokens.
	// Setting it enables k8s_psat attestation.
	Issuer string `json:"issuer,omitempty"`
	// Audience is the audience the tokens must carry, as requested in the
	// pods' projected token volume (e.g. "postern"). Required with Issuer.
	Audience string `json:"audience,omitempty"`
	// JWKSFile is a file with the cluster's public keys (kubectl get --raw
	// /openid/v1/jwks), for clusters whose issuer is not reachable from the
	// server; read at start. Empty: the keys are found by OIDC discovery on
	// Issuer and kept fresh.
	JWKSFile string `json:"jwksFile,omitempty"`
	// AgentServiceAccounts lists the service accounts, as
	// "namespace:name", whose pods may attest as node agents. Any pod can
	// request a token for Audience, so only these become agents; empty:
	// none (pods still attest as workloads).
	AgentServiceAccounts []string `json:"agentServiceAccounts,omitempty"`
}

// ServingConfig names the server certificate's subject alternative names.
type ServingConfig struct {
	DNSNames    []string `json:"dnsNames,omitempty"`
	IPAddresses []string `json:"ipAddresses,omitempty"`
}

// LogConfig configures logging.
type LogConfig struct {
	// Level is debug, info (default), warn or error.
	Level string `json:"level,omitempty"`
	// Format is json, text or auto (default: text on a terminal).
	Format string `json:"format,omitempty"`
}

// Duration is a time.Duration written as a Go duration string ("5m").
type Duration time.Duration

// UnmarshalJSON parses a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := yaml.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"5m\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil || v < 0 {
		return fmt.Errorf("invalid duration %q", s)
	}
	*d = Duration(v)
	return nil
}

// CheckYAML reports a node that is not a duration string
// (strictyaml.Checker), so the problem gets its line.
func (Duration) CheckYAML(n *goyaml.Node) string {
	if n.Kind != goyaml.ScalarNode || n.Tag != "!!str" {
		return "want a duration string such as \"5m\""
	}
	if v, err := time.ParseDuration(n.Value); err != nil || v < 0 {
		return fmt.Sprintf("invalid duration %q", n.Value)
	}
	return ""
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(`"` + time.Duration(d).String() + `"`), nil
}

// LoadConfig reads a configuration file strictly: unknown fields are errors.
func LoadConfig(path string) (*Config, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("server: config: %w", err)
	}
	if fi.Size() > 1<<20 {
		return nil, fmt.Errorf("server: config %s is larger than 1 MiB", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("server: config: %w", err)
	}
	var c Config
	if err := strictyaml.Unmarshal(path, b, &c); err != nil {
		return nil, fmt.Errorf("server: config %w", err)
	}
	base := filepath.Dir(path)
	if c.DataDir == "" {
		// The default, like every relative path here, is next to the
		// config file: started from another directory, the server must
		// not quietly make a new data dir (a new CA, new keys).
		c.DataDir = "data"
	}
	for _, p := range []*string{&c.DataDir, &c.Resources, &c.Keys.KEKFile, &c.CA.UpstreamCert, &c.CA.UpstreamKey, &c.Attestation.K8s.JWKSFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(base, *p)
		}
	}
	return &c, nil
}

// setDefaults fills in defaults and validates.
func (c *Config) setDefaults() error {
	if c.TrustDomain == "" {
		return errors.New("server: config: trustDomain is required")
	}
	if _, err := spiffeid.TrustDomainFromString(c.TrustDomain); err != nil {
		return fmt.Errorf("server: config: trustDomain: %w", err)
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8443"
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("server: config: listen %q: %w", c.Listen, err)
	}
	if c.DataDir == "" {
		c.DataDir = "data"
	}
	if len(c.Serving.DNSNames) == 0 && len(c.Serving.IPAddresses) == 0 {
		c.Serving.DNSNames = []string{"localhost"}
		c.Serving.IPAddresses = []string{"127.0.0.1", "::1"}
	}
	if k := c.Attestation.K8s; k.Issuer == "" && (k.Audience != "" || k.JWKSFile != "") {
		return errors.New("server: config: attestation.k8s needs an issuer")
	} else if k.Issuer != "" && k.Audience == "" {
		return errors.New("server: config: attestation.k8s needs an audience")
	} else if k.Issuer == "" && len(k.AgentServiceAccounts) > 0 {
		return errors.New("server: config: attestation.k8s.agentServiceAccounts needs an issuer")
	}
	for _, sa := range c.Attestation.K8s.AgentServiceAccounts {
		if ns, name, ok := strings.Cut(sa, ":"); !ok || ns == "" || name == "" || strings.Contains(name, ":") {
			return fmt.Errorf("server: config: attestation.k8s.agentServiceAccounts: %q: want namespace:name", sa)
		}
	}
	if lt := time.Duration(c.Keys.LeadTime); lt != 0 && lt < time.Minute {
		// Replicas re-read the keys every 30s: a shorter lead could make
		// a key sign before every replica (and so every JWKS) has it.
		return fmt.Errorf("server: config: keys.leadTime %s is shorter than 1m", lt)
	}
	for _, ip := range c.Serving.IPAddresses {
		if net.ParseIP(ip) == nil {
			return fmt.Errorf("server: config: serving.ipAddresses: %q is not an IP address", ip)
		}
	}
	return nil
}

// instance is what a data dir remembers about the control plane it belongs
// to, so that offline commands need only --data-dir and a server is never
// started on another trust domain's data.
type instance struct {
	TrustDomain string `json:"trustDomain"`
}

const instanceFile = "instance.json"

// LoadDataDirConfig returns the configuration recorded in a data dir by the
// server's first start, for offline operator commands.
func LoadDataDirConfig(dataDir string) (*Config, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, instanceFile))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("server: %s is not a postern data dir (no %s; start the server once, or pass --config)", dataDir, instanceFile)
		}
		return nil, fmt.Errorf("server: data dir: %w", err)
	}
	var in instance
	if err := yaml.UnmarshalStrict(b, &in); err != nil {
		return nil, fmt.Errorf("server: %s: %w", filepath.Join(dataDir, instanceFile), err)
	}
	return &Config{TrustDomain: in.TrustDomain, DataDir: dataDir}, nil
}

// createFileAtomic creates path with data, whole or not at all: written and
// synced under a temporary name, then linked into place, which fails with
// os.ErrExist if path exists.
func createFileAtomic(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Link(tmp, path)
}

// stateFiles are what a data dir holds once a server has used it.
var stateFiles = []string{"postern.db", "kek", "bundle.pem"}

// checkInstance records the trust domain in a new data dir, and refuses a
// data dir that belongs to another trust domain, or that holds a server's
// state without saying whose (its instance.json lost): adopting it for the
// configured trust domain could mix two trust domains' keys and records.
func checkInstance(c *Config) error {
	path := filepath.Join(c.DataDir, instanceFile)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		for _, name := range stateFiles {
			if _, err := os.Lstat(filepath.Join(c.DataDir, name)); err == nil {
				return fmt.Errorf("server: data dir %s holds %s but no %s: it is not known which trust domain it belongs to; if it is %q, create %s containing {\"trustDomain\":%q}",
					c.DataDir, name, instanceFile, c.TrustDomain, path, c.TrustDomain)
			}
		}
		data, _ := json.Marshal(instance{TrustDomain: c.TrustDomain})
		if err := createFileAtomic(path, append(data, '\n')); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("server: data dir: %w", err)
		} else if err != nil {
			return checkInstance(c) // another server created it meanwhile
		}
		return nil
	case err != nil:
		return fmt.Errorf("server: data dir: %w", err)
	}
	var in instance
	if err := yaml.UnmarshalStrict(b, &in); err != nil {
		return fmt.Errorf("server: %s: %w", path, err)
	}
	if in.TrustDomain != c.TrustDomain {
		return fmt.Errorf("server: data dir %s belongs to trust domain %q, not %q", c.DataDir, in.TrustDomain, c.TrustDomain)
	}
	return nil
}
