package nodeapi

import (
	"encoding/json"
	"fmt"
	"time"

	"postern.dev/postern/internal/policy"
)

// Paths of the node API, all under Prefix.
const (
	Prefix        = "/node/v1/"
	PathAttest    = Prefix + "attest"
	PathRenew     = Prefix + "renew"
	PathWorkloads = Prefix + "workloads"
	PathX509SVIDs = Prefix + "x509svids"
	PathJWTSVID   = Prefix + "jwtsvid"
	// PathFederatedBundles lists the bundles of federated trust domains.
	PathFederatedBundles = Prefix + "federated-bundles"
)

// Attestation methods and roles of an attest request.
const (
	MethodJoinToken = "join_token"
	MethodK8sPSAT   = "k8s_psat"

	RoleAgent    = "agent"
	RoleWorkload = "workload"
)

// Error codes of the node API's error responses.
const (
	// CodeInvalidRequest: malformed, oversized or inconsistent input (400).
	CodeInvalidRequest = "invalid_request"
	// CodeAttestationFailed: the join token or PSAT was refused (401).
	CodeAttestationFailed = "attestation_failed"
	// CodeUnauthenticated: no valid X.509-SVID of this trust domain (401).
	CodeUnauthenticated = "unauthenticated"
	// CodeForbidden: the caller may not have what it asked for (403).
	CodeForbidden = "forbidden"
	// CodeNotFound: no such endpoint (404).
	CodeNotFound = "not_found"
	// CodeMethodNotAllowed: wrong HTTP method for the endpoint (405).
	CodeMethodNotAllowed = "method_not_allowed"
	// CodeUnavailable: the store, the CA or an attestation backend could
	// not answer; retry later (503).
	CodeUnavailable = "unavailable"
)

// Bounds on requests.
const (
	// MaxBodyBytes bounds every request body.
	MaxBodyBytes = 64 << 10
	// MaxX509SVIDRequests bounds the SVIDs asked for in one x509svids call.
	MaxX509SVIDRequests = 64
	// MaxAudiences bounds the audiences of a JWT-SVID.
	MaxAudiences = 8
	// MaxAudienceBytes bounds the length of one audience.
	MaxAudienceBytes = 512
	// maxTokenBytes bounds an attestation token (a PSAT is a few KiB).
	maxTokenBytes = 16 << 10
)

// Error is an error response of the node API. The client returns it (use
// errors.As) for every non-2xx answer.
type Error struct {
	// Status is the HTTP status code.
	Status int
	// Code is the "error" member, one of the Code constants (or empty when
	// the answer was not a node API error body).
	Code string
	// Description is the "error_description" member.
	Description string
}

// Error returns the code, description and status.
func (e *Error) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("nodeapi: server answered %d: %s", e.Status, e.Description)
	}
	return fmt.Sprintf("nodeapi: %s: %s (status %d)", e.Code, e.Description, e.Status)
}

// Temporary reports whether retrying later may succeed (503, or 5xx in
// general, and 429).
func (e *Error) Temporary() bool { return e.Status >= 500 || e.Status == 429 }

// Wire types. CSRs and certificates are base64 (standard, padded) DER, which
// is how encoding/json encodes []byte.

type errorBody struct {
	Error       string `json:"error"`
	Description string `json:"error_description,omitempty"`
}

type attestRequest struct {
	Method string `json:"method"`
	Token  string `json:"token"`
	Role   string `json:"role"`
	CSR    []byte `json:"csr"`
}

type renewRequest struct {
	CSR []byte `json:"csr"`
}

type svidBody struct {
	SPIFFEID  string   `json:"spiffe_id"`
	X509SVID  [][]byte `json:"x509_svid"`
	ExpiresAt string   `json:"expires_at"`

	serial   string    // the leaf's, as the agent registry records it
	notAfter time.Time // the leaf's
}

type workloadBody struct {
	SPIFFEID   string                       `json:"spiffe_id"`
	Selectors  []policy.AttestationSelector `json:"selectors"`
	DNSNames   []string                     `json:"dns_names,omitempty"`
	TTLSeconds int64                        `json:"ttl_seconds"`
}

type workloadsResponse struct {
	Workloads []workloadBody `json:"workloads"`
}

type x509SVIDItem struct {
	SPIFFEID string `json:"spiffe_id"`
	CSR      []byte `json:"csr"`
}

type x509SVIDsRequest struct {
	Requests []x509SVIDItem `json:"requests"`
}

type x509SVIDsResponse struct {
	SVIDs []svidBody `json:"svids"`
}

type jwtSVIDRequest struct {
	SPIFFEID string   `json:"spiffe_id"`
	Audience []string `json:"audience"`
}

type jwtSVIDResponse struct {
	Token     string `json:"token"`
	ExpiresAt string `json:"expires_at"`
}

// federatedBundlesResponse maps a trust domain name to its SPIFFE bundle
// (a JSON object, as served by its bundle endpoint).
type federatedBundlesResponse struct {
	Bundles map[string]json.RawMessage `json:"bundles"`
}
