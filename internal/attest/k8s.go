package attest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/token"
)

// DefaultMaxK8sTokenTTL is the default bound on a PSAT's lifetime (exp-iat).
const DefaultMaxK8sTokenTTL = 24 * time.Hour

// maxJWKSFileBytes bounds a JWKS file.
const maxJWKSFileBytes = 1 << 20

// Causes of PSAT refusals beyond package token's.
var (
	errK8sClaims      = errors.New(`kubernetes token has no valid "kubernetes.io" claims`)
	errK8sPodBinding  = errors.New("kubernetes token is not bound to a pod (legacy or non-projected token)")
	errK8sSubject     = errors.New(`kubernetes token "sub" does not match its namespace and service account`)
	errK8sLifetime    = errors.New("kubernetes token lifetime exceeds the maximum")
	errK8sNoIssuedAt  = errors.New(`kubernetes token has no "iat"`)
	errK8sKeysMissing = errors.New("attest: kubernetes issuer keys unavailable")
)

// K8sConfig configures a K8sAttestor. Issuer and Audience are required.
type K8sConfig struct {
	// Issuer is the cluster's OIDC issuer, the exact "iss" of its
	// service-account tokens (kube-apiserver --service-account-issuer).
	Issuer string
	// Audience is the audience a token must carry (e.g. "postern"): the
	// one requested in the pod's projected token volume.
	Audience string
	// JWKSFile, when set, is a JWKS file with the cluster's signing keys
	// (kubectl get --raw /openid/v1/jwks), for clusters whose issuer is not
	// reachable. It is read once, by NewK8sAttestor. Otherwise the keys are
	// found by OIDC discovery on Issuer and cached (see Run).
	JWKSFile string
	// HTTPClient fetches discovery and keys; default: package token's
	// (10s timeout, no redirects).
	HTTPClient *http.Client
	// Cluster is an optional name for the cluster. It must be a DNS label
	// when set. The shared agent ID format has no cluster segment, so it is
	// not part of any ID yet.
	Cluster string
	// Now returns the current time; default time.Now.
	Now func() time.Time
	// MaxTokenTTL refuses tokens whose exp-iat exceeds it; default
	// DefaultMaxK8sTokenTTL. Projected tokens requested for a custom
	// audience are short-lived (1h by default); the one-year "extended"
	// tokens Kubernetes hands to legacy clients carry the API server's
	// audience, not ours.
	MaxTokenTTL time.Duration
}

// K8sAttestor verifies Kubernetes projected service-account tokens (PSAT).
// It is safe for concurrent use.
type K8sAttestor struct {
	cfg      K8sConfig
	verifier *token.Verifier
	remote   *token.RemoteKeySet // nil with a JWKS file
}

// NewK8sAttestor validates cfg and returns an attestor. With a JWKS file it
// reads the file now; with discovery it fetches nothing until first used.
func NewK8sAttestor(cfg K8sConfig) (*K8sAttestor, error) {
	if cfg.Issuer == "" {
		return nil, errors.New("attest: kubernetes attestor needs an issuer")
	}
	if cfg.Audience == "" {
		return nil, errors.New("attest: kubernetes attestor needs an audience")
	}
	if cfg.Cluster != "" && !isDNSLabel(cfg.Cluster) {
		return nil, fmt.Errorf("attest: kubernetes cluster name %q is not a DNS label", cfg.Cluster)
	}
	if cfg.MaxTokenTTL < 0 {
		return nil, errors.New("attest: kubernetes max token ttl is negative")
	}
	if cfg.MaxTokenTTL == 0 {
		cfg.MaxTokenTTL = DefaultMaxK8sTokenTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &K8sAttestor{cfg: cfg}
	var keys token.KeySet
	if cfg.JWKSFile != "" {
		set, err := readJWKSFile(cfg.JWKSFile)
		if err != nil {
			return nil, err
		}
		static, err := token.NewStaticKeySet(set)
		if err != nil {
			return nil, fmt.Errorf("attest: jwks file %s: %w", cfg.JWKSFile, err)
		}
		keys = static
	} else {
		remote, err := token.NewRemoteKeySet(token.RemoteConfig{
			DiscoveryIssuer: cfg.Issuer,
			HTTPClient:      cfg.HTTPClient,
			Now:             cfg.Now,
		})
		if err != nil {
			return nil, fmt.Errorf("attest: kubernetes issuer: %w", err)
		}
		a.remote, keys = remote, remote
	}
	v, err := token.NewVerifier(token.VerifierConfig{
		Issuer:     cfg.Issuer,
		Audience:   cfg.Audience,
		Algorithms: []jose.SignatureAlgorithm{jose.RS256, jose.ES256},
		// Kubernetes sets no typ; accept none or "JWT", nothing else.
		Types: []string{"", "JWT"},
		Keys:  keys,
		Now:   cfg.Now,
	})
	if err != nil {
		return nil, fmt.Errorf("attest: kubernetes verifier: %w", err)
	}
	a.verifier = v
	return a, nil
}

// readJWKSFile reads an operator's JWKS file. It must hold public keys only.
func readJWKSFile(path string) (jose.JSONWebKeySet, error) {
	f, err := os.Open(path)
	if err != nil {
		return jose.JSONWebKeySet{}, fmt.Errorf("attest: jwks file: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxJWKSFileBytes+1))
	if err != nil {
		return jose.JSONWebKeySet{}, fmt.Errorf("attest: jwks file: %w", err)
	}
	if len(b) > maxJWKSFileBytes {
		return jose.JSONWebKeySet{}, fmt.Errorf("attest: jwks file %s is over %d bytes", path, maxJWKSFileBytes)
	}
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(b, &set); err != nil {
		return jose.JSONWebKeySet{}, fmt.Errorf("attest: jwks file %s is not a JWK set: %w", path, err)
	}
	for _, k := range set.Keys {
		if !k.IsPublic() {
			return jose.JSONWebKeySet{}, fmt.Errorf("attest: jwks file %s: key %q carries private or symmetric key material", path, k.KeyID)
		}
	}
	return set, nil
}

// Run keeps a discovered key set fresh (so keys the cluster removed stop
// being trusted) until ctx is done. It returns at once with a JWKS file.
// Without Run, keys are fetched on first use and on an unknown key id only.
func (a *K8sAttestor) Run(ctx context.Context) {
	if a.remote != nil {
		a.remote.Run(ctx)
	}
}

// K8sIdentity is what a verified PSAT says about the pod that presented it.
// Every field is validated: namespace a DNS label, names DNS subdomains,
// the pod UID a UID. NodeName is empty when the token has no node binding.
type K8sIdentity struct {
	Namespace, ServiceAccount, PodName, PodUID, NodeName string
}

// Attest verifies a projected service-account token: signature (RS256 or
// ES256) with the cluster's keys, iss, aud, exp, nbf, a lifetime of at most
// MaxTokenTTL, the "kubernetes.io" claims with the pod binding, and a "sub"
// of system:serviceaccount:<ns>:<sa> consistent with them. A refusal wraps
// ErrAttestation (and package token's error, when it found the fault); the
// cluster's keys being unavailable does not.
func (a *K8sAttestor) Attest(ctx context.Context, raw string) (*K8sIdentity, error) {
	c, err := a.verifier.Verify(ctx, strings.TrimSpace(raw))
	if err != nil {
		if errors.Is(err, token.ErrKeysUnavailable) {
			return nil, fmt.Errorf("%w: %w", errK8sKeysMissing, err)
		}
		return nil, refuse(err)
	}
	if c.IssuedAt.IsZero() {
		return nil, refuse(errK8sNoIssuedAt)
	}
	if life := c.Expiry.Sub(c.IssuedAt); life > a.cfg.MaxTokenTTL {
		return nil, refuse(fmt.Errorf("%w: %s > %s", errK8sLifetime, life, a.cfg.MaxTokenTTL))
	}
	id, err := identityFromClaims(c)
	if err != nil {
		return nil, refuse(err)
	}
	return id, nil
}

// identityFromClaims reads and validates the Kubernetes claims of a token
// whose signature and registered claims were verified:
//
//	"sub": "system:serviceaccount:<ns>:<sa>",
//	"kubernetes.io": {"namespace": "<ns>",
//	  "serviceaccount": {"name": "<sa>", "uid": "..."},
//	  "pod": {"name": "...", "uid": "..."}, "node": {"name": "...", "uid": "..."}}
func identityFromClaims(c *token.Claims) (*K8sIdentity, error) {
	k, ok := c.Extra["kubernetes.io"].(map[string]any)
	if !ok {
		return nil, errK8sClaims
	}
	ns, ok := k["namespace"].(string)
	if !ok || !isDNSLabel(ns) {
		return nil, fmt.Errorf("%w: namespace", errK8sClaims)
	}
	sa, ok := k["serviceaccount"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: serviceaccount", errK8sClaims)
	}
	saName, ok := sa["name"].(string)
	if !ok || !isDNSSubdomain(saName) {
		return nil, fmt.Errorf("%w: serviceaccount.name", errK8sClaims)
	}
	if uid, ok := sa["uid"].(string); !ok || !isUID(uid) {
		return nil, fmt.Errorf("%w: serviceaccount.uid", errK8sClaims)
	}
	podV, ok := k["pod"]
	if !ok || podV == nil {
		return nil, errK8sPodBinding
	}
	pod, ok := podV.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("%w: pod", errK8sClaims)
	}
	podName, ok := pod["name"].(string)
	if !ok || !isDNSSubdomain(podName) {
		return nil, fmt.Errorf("%w: pod.name", errK8sClaims)
	}
	podUID, ok := pod["uid"].(string)
	if !ok || !isUID(podUID) {
		return nil, fmt.Errorf("%w: pod.uid", errK8sClaims)
	}
	id := &K8sIdentity{Namespace: ns, ServiceAccount: saName, PodName: podName, PodUID: podUID}
	if nodeV, ok := k["node"]; ok {
		node, ok := nodeV.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("%w: node", errK8sClaims)
		}
		name, ok := node["name"].(string)
		if !ok || !isDNSSubdomain(name) {
			return nil, fmt.Errorf("%w: node.name", errK8sClaims)
		}
		id.NodeName = name
	}
	if c.Subject != "system:serviceaccount:"+ns+":"+saName {
		return nil, errK8sSubject
	}
	return id, nil
}

// Selectors returns the k8s selectors of the identity: ns, sa, pod-name,
// pod-uid and, when the token names one, node-name.
func (k *K8sIdentity) Selectors() []Selector {
	out := []Selector{
		{SelectorK8s, "ns:" + k.Namespace},
		{SelectorK8s, "sa:" + k.ServiceAccount},
		{SelectorK8s, "pod-name:" + k.PodName},
		{SelectorK8s, "pod-uid:" + k.PodUID},
	}
	if k.NodeName != "" {
		out = append(out, Selector{SelectorK8s, "node-name:" + k.NodeName})
	}
	return out
}

// SPIFFEID returns the default identity of the pod's service account,
// spiffe://td/ns/<ns>/sa/<sa>. It is the zero ID if td is zero or the
// identity was not produced by Attest (whose validation makes the segments
// valid).
func (k *K8sIdentity) SPIFFEID(td spiffeid.TrustDomain) spiffeid.ID {
	id, err := spiffeid.FromSegments(td, "ns", k.Namespace, "sa", k.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}
	}
	return id
}

// AgentSPIFFEID returns the identity of a node agent that attested with its
// own pod's token: spiffe://td/postern/agent/k8s/<ns>/<sa>/<node-name>. It
// fails when the token carried no node binding.
func (k *K8sIdentity) AgentSPIFFEID(td spiffeid.TrustDomain) (spiffeid.ID, error) {
	if k.NodeName == "" {
		return spiffeid.ID{}, errors.New("attest: kubernetes token has no node binding for an agent identity")
	}
	id, err := spiffeid.FromSegments(td, "postern", "agent", "k8s", k.Namespace, k.ServiceAccount, k.NodeName)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("attest: agent identity: %w", err)
	}
	return id, nil
}

// isDNSLabel reports whether s is an RFC 1123 label as Kubernetes uses it
// for namespaces: lower-case alphanumerics and '-', starting and ending
// alphanumeric, at most 63 characters.
func isDNSLabel(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case c == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}

// isDNSSubdomain reports whether s is an RFC 1123 subdomain as Kubernetes
// uses it for object names: dot-separated labels, at most 253 characters.
// Such a name is always a valid SPIFFE ID path segment.
func isDNSSubdomain(s string) bool {
	if len(s) == 0 || len(s) > 253 {
		return false
	}
	for l := range strings.SplitSeq(s, ".") {
		if !isDNSLabel(l) {
			return false
		}
	}
	return true
}

// isUID reports whether s looks like a Kubernetes UID (a UUID): 1 to 64
// characters of ASCII letters, digits and '-'.
func isUID(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}
