package policy

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.yaml.in/yaml/v3"

	"postern.dev/postern/internal/strictyaml"
)

// APIVersion is the apiVersion every resource document carries.
const APIVersion = "postern.dev/v1"

// Resource kinds.
const (
	KindWorkload            = "Workload"
	KindTrustedIssuer       = "TrustedIssuer"
	KindExchangePolicy      = "ExchangePolicy"
	KindAuthorizationPolicy = "AuthorizationPolicy"
	KindPolicyTest          = "PolicyTest"
	KindFederation          = "Federation"
)

// Actions and modes shared by ExchangePolicy and AuthorizationPolicy.
const (
	ActionAllow = "ALLOW"
	ActionDeny  = "DENY"
	ActionAudit = "AUDIT"

	ModeEnforce = "Enforce"
	ModeDryRun  = "DryRun"
)

// Grant types an ExchangePolicy may name.
const (
	GrantTokenExchange     = "token-exchange"
	GrantJWTBearer         = "jwt-bearer"
	GrantClientCredentials = "client-credentials"
)

// Client authentication methods a Workload may use at the STS.
const (
	AuthTLSClient         = "tls_client_auth"
	AuthJWTSPIFFE         = "jwt_spiffe"
	AuthPrivateKeyJWT     = "private_key_jwt"
	AuthClientSecretBasic = "client_secret_basic"
)

// Set is the parsed and validated content of a directory of resource files.
// Compile turns it into an Engine.
type Set struct {
	Workloads             []Workload
	TrustedIssuers        []TrustedIssuer
	ExchangePolicies      []ExchangePolicy
	AuthorizationPolicies []AuthorizationPolicy
	Federations           []Federation
}

// Len is the number of resources in the set.
func (s *Set) Len() int {
	return len(s.Workloads) + len(s.TrustedIssuers) + len(s.ExchangePolicies) + len(s.AuthorizationPolicies) + len(s.Federations)
}

// Origin is where a resource was defined.
type Origin struct {
	File string
	Line int
}

// Workload is a service known to the trust domain (kind Workload).
type Workload struct {
	Name   string
	Labels map[string]string
	Origin Origin

	// SPIFFEID is the workload's identity.
	SPIFFEID string
	// Audience is the aud of tokens issued for it (default: SPIFFEID).
	Audience string
	// ClientAuthentication lists how it may authenticate to the STS
	// (default tls_client_auth, jwt_spiffe).
	ClientAuthentication []string
	// JWKS is its inline public key set for private_key_jwt (may be nil).
	JWKS *jose.JSONWebKeySet
	// JWKSURI is where its key set is fetched from instead of JWKS.
	JWKSURI string
	// DNSNames go into its X.509-SVID.
	DNSNames []string
	// SVIDTTL is the lifetime of its X.509-SVIDs (0: server default).
	SVIDTTL time.Duration
	// Selectors are the attestation selectors that identify it. A workload
	// attested by an agent gets this identity when every selector matches.
	Selectors []AttestationSelector
	// Agents are SPIFFE ID globs of the node agents that may obtain SVIDs
	// for this workload; empty: any agent of the trust domain.
	Agents []string

	agents []matcher
}

// AllowsAgent reports whether the node agent with SPIFFE ID id may obtain
// SVIDs for the workload.
func (w *Workload) AllowsAgent(id string) bool {
	if len(w.Agents) == 0 {
		return true
	}
	return matchAny(w.agents, id)
}

// AttestationSelector is one attestation property (type and value).
type AttestationSelector struct {
	Type  string `json:"type"`
	Value string `json:"value"`
}

// TrustedIssuer is an external identity provider whose tokens the STS accepts
// as subject tokens (kind TrustedIssuer).
type TrustedIssuer struct {
	Name   string
	Labels map[string]string
	Origin Origin

	// Issuer is the exact iss of its tokens.
	Issuer string
	// JWKS, JWKSURI and Discovery: exactly one says where its keys are.
	JWKS      *jose.JSONWebKeySet
	JWKSURI   string
	Discovery bool
	// Audiences are accepted aud values of its tokens.
	Audiences []string
	// Algorithms allowed for its signatures (default RS256, ES256, EdDSA).
	Algorithms []string
	// Claims are user claims that may be carried into issued tokens.
	Claims []string
	// Introspection configures RFC 7662 introspection of its opaque tokens.
	Introspection *Introspection
}

// Introspection is the shape of a TrustedIssuer's introspection settings.
type Introspection struct {
	Endpoint         string `json:"endpoint"`
	ClientID         string `json:"clientID"`
	ClientSecretFile string `json:"clientSecretFile"`
	// TokenPrefix routes opaque tokens: only tokens starting with it are
	// sent to this issuer. Required when more than one TrustedIssuer
	// introspects, so that no IdP is shown another IdP's live tokens.
	TokenPrefix string `json:"tokenPrefix,omitempty"`
}

// Accepts reports whether an opaque token may be sent to this issuer's
// introspection endpoint.
func (in *Introspection) Accepts(tok string) bool {
	return strings.HasPrefix(tok, in.TokenPrefix)
}

// Bundle endpoint profiles of a Federation (SPIFFE Federation §5.2).
const (
	// ProfileHTTPSWeb authenticates the bundle endpoint with Web PKI.
	ProfileHTTPSWeb = "https_web"
	// ProfileHTTPSSPIFFE authenticates the bundle endpoint by its
	// X.509-SVID, verified against the federated trust domain's own bundle.
	ProfileHTTPSSPIFFE = "https_spiffe"
)

// Federation names another trust domain whose bundle is fetched from its
// SPIFFE bundle endpoint and served to workloads as a federated bundle
// (kind Federation).
type Federation struct {
	Name   string
	Labels map[string]string
	Origin Origin

	// TrustDomain is the federated trust domain's name (not our own).
	TrustDomain spiffeid.TrustDomain
	// BundleEndpointURL is the https URL of its bundle endpoint.
	BundleEndpointURL string
	// Profile is ProfileHTTPSWeb or ProfileHTTPSSPIFFE.
	Profile string
	// EndpointSPIFFEID is the SPIFFE ID the endpoint must present
	// (https_spiffe only); it belongs to TrustDomain.
	EndpointSPIFFEID spiffeid.ID
	// BootstrapBundle is the trust domain's bundle to start from
	// (https_spiffe only): it authenticates the first fetch.
	BootstrapBundle *spiffebundle.Bundle
	// CABundle are the roots that authenticate the endpoint instead of the
	// system pool (https_web only; nil: system roots).
	CABundle []*x509.Certificate
}

// ExchangePolicy says who may exchange which subject tokens for which
// audiences (kind ExchangePolicy). The YAML field names are in the json tags.
type ExchangePolicy struct {
	Name   string            `json:"-"`
	Labels map[string]string `json:"-"`
	Origin Origin            `json:"-"`

	// Action is ALLOW (default) or DENY.
	Action string `json:"action,omitempty"`
	// Mode is Enforce (default) or DryRun (evaluated and reported, not enforced).
	Mode string `json:"mode,omitempty"`
	// GrantTypes the policy applies to (default token-exchange).
	GrantTypes []string `json:"grantTypes,omitempty"`
	// Clients are SPIFFE ID globs of the authenticated client.
	Clients []string `json:"clients"`
	// SubjectIssuers are exact issuers of the subject token; "self" is this STS.
	SubjectIssuers []string `json:"subjectIssuers,omitempty"`
	// Audiences are target audience globs.
	Audiences []string `json:"audiences"`
	// Scopes is the scope ceiling: nil (omitted) means no ceiling, empty
	// means no scope at all.
	Scopes []string `json:"scopes,omitempty" strictyaml:"emptyok"`
	// Claims are user claims carried into the issued token.
	Claims []string `json:"claims,omitempty"`
	// MaxLifetime of the issued token (at most 24h); without it the token
	// service's tokens.defaultLifetime (5m) applies.
	MaxLifetime Duration `json:"maxLifetime,omitempty"`
	// When is an optional CEL condition that must return a bool.
	When string `json:"when,omitempty"`
}

// AuthorizationPolicy says what a workload accepts (kind
// AuthorizationPolicy), modelled on Istio's security.istio.io/v1
// AuthorizationPolicy. See the package documentation for the semantics.
type AuthorizationPolicy struct {
	Name   string            `json:"-"`
	Labels map[string]string `json:"-"`
	Origin Origin            `json:"-"`

	// Selector picks the workloads the policy applies to; nil: all workloads.
	Selector *WorkloadSelector `json:"selector,omitempty"`
	// Action is ALLOW (default), DENY or AUDIT.
	Action string `json:"action,omitempty"`
	// Mode is Enforce (default) or DryRun.
	Mode string `json:"mode,omitempty"`
	// Rules: a request matches the policy when it matches any rule.
	Rules []Rule `json:"rules,omitempty"`
}

// WorkloadSelector selects workloads by labels and/or SPIFFE ID globs. When
// both are given, a workload must satisfy both.
type WorkloadSelector struct {
	MatchLabels map[string]string `json:"matchLabels,omitempty"`
	SPIFFEIDs   []string          `json:"spiffeIDs,omitempty"`
}

// Rule matches a request when every part it has (from, to, when, condition)
// matches. A rule with no parts matches every request.
type Rule struct {
	// From: any source matches.
	From []From `json:"from,omitempty"`
	// To: any operation matches.
	To []To `json:"to,omitempty"`
	// When: every condition matches.
	When []Condition `json:"when,omitempty"`
	// Condition is a CEL expression that must return a bool.
	Condition string `json:"condition,omitempty"`
	// AllowWithoutToken lets an ALLOW rule match requests that carry no
	// token. It is restricted to exact paths (health probes and the like).
	AllowWithoutToken bool `json:"allowWithoutToken,omitempty"`
}

// From wraps a Source, as in Istio.
type From struct {
	Source Source `json:"source"`
}

// Source describes the peer and the token principal.
type Source struct {
	Principals           []string `json:"principals,omitempty"`
	NotPrincipals        []string `json:"notPrincipals,omitempty"`
	RequestPrincipals    []string `json:"requestPrincipals,omitempty"`
	NotRequestPrincipals []string `json:"notRequestPrincipals,omitempty"`
	Namespaces           []string `json:"namespaces,omitempty"`
	NotNamespaces        []string `json:"notNamespaces,omitempty"`
}

// To wraps an Operation, as in Istio.
type To struct {
	Operation Operation `json:"operation"`
}

// Operation describes the request itself.
type Operation struct {
	Methods    []string `json:"methods,omitempty"`
	NotMethods []string `json:"notMethods,omitempty"`
	Paths      []string `json:"paths,omitempty"`
	NotPaths   []string `json:"notPaths,omitempty"`
	Ports      []Port   `json:"ports,omitempty"`
	NotPorts   []Port   `json:"notPorts,omitempty"`
	Hosts      []string `json:"hosts,omitempty"`
	NotHosts   []string `json:"notHosts,omitempty"`
}

// Condition is one `when` entry: the value at Key must match one of Values
// (if given) and none of NotValues.
type Condition struct {
	Key       string   `json:"key"`
	Values    []string `json:"values,omitempty"`
	NotValues []string `json:"notValues,omitempty"`
}

// Duration is a time.Duration written as a Go duration string ("5m").
type Duration time.Duration

// UnmarshalJSON accepts a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("policy: duration must be a string like \"5m\"")
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("policy: invalid duration %q", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// CheckYAML reports a node that is not a duration string
// (strictyaml.Checker), so the problem gets its line.
func (Duration) CheckYAML(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		return "want a duration string like \"5m\""
	}
	if _, err := time.ParseDuration(n.Value); err != nil {
		return fmt.Sprintf("invalid duration %q", n.Value)
	}
	return ""
}

// Port is a TCP port, written as a number or, as in Istio, a numeric string.
type Port int

// UnmarshalJSON accepts 8080 or "8080".
func (p *Port) UnmarshalJSON(b []byte) error {
	var n int
	if err := json.Unmarshal(b, &n); err != nil {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("policy: port must be a number")
		}
		if n, err = strconv.Atoi(s); err != nil {
			return fmt.Errorf("policy: invalid port %q", s)
		}
	}
	if n < 1 || n > 65535 {
		return fmt.Errorf("policy: port %d out of range", n)
	}
	*p = Port(n)
	return nil
}

// CheckYAML reports a node that is not a port number (strictyaml.Checker).
func (Port) CheckYAML(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!int" && n.Tag != "!!str") {
		return "want a port number"
	}
	s := n.Value
	if n.Tag == "!!int" {
		// Read as it will be decoded: 0443 is refused, not taken as 443
		// here and as octal 291 there.
		var ok bool
		if s, ok = strictyaml.Int(n); !ok {
			return fmt.Sprintf("invalid port %q", n.Value)
		}
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 || v > 65535 {
		return fmt.Sprintf("invalid port %q", n.Value)
	}
	return ""
}
