package nodeapi

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/attest"
	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/store"
)

// attest serves POST /node/v1/attest. Everything the request says is checked
// before the credential is redeemed, so that a bad CSR does not burn a join
// token; an inconsistent role after redemption does burn it.
func (h *Handler) attest(w http.ResponseWriter, r *http.Request, rec *record) (any, *apiError) {
	var body attestRequest
	if aerr := decodeBody(w, r, &body); aerr != nil {
		return nil, aerr
	}
	switch body.Method {
	case MethodJoinToken, MethodK8sPSAT:
		rec.method = body.Method
	case "":
		return nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "method is required (join_token or k8s_psat)")
	default:
		return nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "unknown method %q (want join_token or k8s_psat)", clip(body.Method, 32))
	}
	switch body.Role {
	case RoleAgent, RoleWorkload:
		rec.role = body.Role
	case "":
		return nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "role is required (agent or workload)")
	default:
		return nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "unknown role %q (want agent or workload)", clip(body.Role, 32))
	}
	switch {
	case body.Token == "":
		return nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "token is required")
	case len(body.Token) > maxTokenBytes:
		return nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "token is longer than %d bytes", maxTokenBytes)
	}
	req, aerr := parseCSR(body.CSR, "")
	if aerr != nil {
		return nil, aerr
	}
	e, aerr := h.engine()
	if aerr != nil {
		return nil, aerr
	}
	var (
		id spiffeid.ID
		wl *policy.Workload
	)
	switch body.Method {
	case MethodJoinToken:
		id, wl, aerr = h.attestJoinToken(r.Context(), e, body.Token, body.Role)
	case MethodK8sPSAT:
		id, wl, aerr = h.attestK8s(r.Context(), e, body.Token, body.Role)
	}
	if !id.IsZero() {
		rec.ids = []string{id.String()}
	}
	if aerr != nil {
		return nil, aerr
	}
	// A Kubernetes token is presented again for every new SVID, so that
	// changes to the Workload's selectors, or to the agent allow list,
	// apply within one SVID lifetime (renewal would skip those checks).
	req.Reattest = body.Method == MethodK8sPSAT
	b, aerr := h.issue(r.Context(), req, id, wl)
	if aerr != nil {
		return nil, aerr
	}
	if body.Role == RoleAgent {
		// The new registration supersedes every certificate issued to
		// this agent before; without it, the SVID is not handed out.
		err := h.cfg.Agents.PutAgent(r.Context(), store.Agent{SPIFFEID: id.String(), Method: body.Method,
			AttestedAt: h.cfg.Now(), Serial: b.serial, ExpiresAt: b.notAfter})
		if err != nil {
			return nil, errorf(http.StatusServiceUnavailable, CodeUnavailable, "the agent registry is unavailable; retry later").withCause(err)
		}
	}
	rec.expires = b.notAfter
	return b, nil
}

// credentialError maps an attestor's error to 401, or 503 when it could not
// decide.
func credentialError(err error, what string) *apiError {
	if errors.Is(err, attest.ErrAttestation) {
		return errorf(http.StatusUnauthorized, CodeAttestationFailed, "%s was refused", what).withCause(err)
	}
	return errorf(http.StatusServiceUnavailable, CodeUnavailable, "%s could not be checked; retry later", what).withCause(err)
}

func (h *Handler) attestJoinToken(ctx context.Context, e *policy.Engine, tok, role string) (spiffeid.ID, *policy.Workload, *apiError) {
	if h.cfg.JoinTokens == nil {
		return spiffeid.ID{}, nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "join_token attestation is not enabled on this server")
	}
	id, err := h.cfg.JoinTokens.Consume(ctx, tok, h.cfg.Now())
	if err != nil {
		ae := credentialError(err, "the join token")
		if ae.status == http.StatusUnauthorized {
			ae.desc = "the join token is unknown, expired or was already used"
		}
		return spiffeid.ID{}, nil, ae
	}
	if id.TrustDomain() != h.cfg.TrustDomain {
		return id, nil, errorf(http.StatusForbidden, CodeForbidden, "the join token names %s, outside trust domain %s", id, h.cfg.TrustDomain)
	}
	return h.forRole(e, id, role, "the join token")
}

// forRole checks that id fits role: an agent ID for role agent; for role
// workload an ID that is not an agent's and is a known Workload.
func (h *Handler) forRole(e *policy.Engine, id spiffeid.ID, role, what string) (spiffeid.ID, *policy.Workload, *apiError) {
	if role == RoleAgent {
		if !h.isAgent(id) {
			return id, nil, errorf(http.StatusForbidden, CodeForbidden, "%s names %s, which is not a node agent ID (%s...)", what, id, AgentPathPrefix)
		}
		return id, nil, nil
	}
	if reserved(id) {
		return id, nil, errorf(http.StatusForbidden, CodeForbidden, "%s names %s, which is reserved for postern itself (agents attest with role agent)", what, id)
	}
	wl, ok := workloadFor(e, id)
	if !ok {
		return id, nil, errorf(http.StatusForbidden, CodeForbidden, "%s is not a known Workload", id)
	}
	if aerr := directlyAttestable(wl); aerr != nil {
		return id, nil, aerr
	}
	return id, wl, nil
}

// directlyAttestable refuses a Workload whose selectors are all unix
// selectors: only a node agent can check those (it sees the caller's
// process), so its SVIDs come through agents alone, at attestation and at
// every renewal.
func directlyAttestable(wl *policy.Workload) *apiError {
	if attest.AgentServable(wl.Selectors) {
		return errorf(http.StatusForbidden, CodeForbidden, "Workload %s has only unix selectors: its SVIDs are obtained through a node agent, not by direct attestation", wl.SPIFFEID)
	}
	return nil
}

func (h *Handler) attestK8s(ctx context.Context, e *policy.Engine, tok, role string) (spiffeid.ID, *policy.Workload, *apiError) {
	if h.cfg.K8s == nil {
		return spiffeid.ID{}, nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "k8s_psat attestation is not configured on this server")
	}
	k, err := h.cfg.K8s.Attest(ctx, tok)
	if err != nil {
		return spiffeid.ID{}, nil, credentialError(err, "the Kubernetes service-account token")
	}
	if k == nil {
		return spiffeid.ID{}, nil, errorf(http.StatusUnauthorized, CodeAttestationFailed, "the Kubernetes service-account token names no namespace and service account")
	}
	if role == RoleAgent {
		if !h.k8sAgents[k.Namespace+":"+k.ServiceAccount] {
			return spiffeid.ID{}, nil, errorf(http.StatusForbidden, CodeForbidden, "service account %s/%s may not attest as an agent (it is not in attestation.k8s.agentServiceAccounts)", k.Namespace, k.ServiceAccount)
		}
		id, err := k.AgentSPIFFEID(h.cfg.TrustDomain)
		if err != nil {
			return spiffeid.ID{}, nil, errorf(http.StatusUnauthorized, CodeAttestationFailed, "the Kubernetes service-account token is not bound to a node").withCause(err)
		}
		return id, nil, nil
	}
	id, aerr := h.mapK8s(e, k)
	if aerr != nil {
		return id, nil, aerr
	}
	return h.forRole(e, id, role, "the Kubernetes service-account token")
}

// mapK8s returns the SPIFFE ID a pod maps to: the Workload whose selectors
// are all k8s selectors matched by the pod, else ns/<ns>/sa/<sa>. When
// several Workloads match, the one with the most selectors wins; a tie is
// refused rather than guessed.
func (h *Handler) mapK8s(e *policy.Engine, k *attest.K8sIdentity) (spiffeid.ID, *apiError) {
	have := k.Selectors()
	var (
		best  *policy.Workload
		tie   bool
		names []string
	)
	wls := e.Workloads()
	for i := range wls {
		wl := &wls[i]
		if !matchesK8s(wl.Selectors, have) {
			continue
		}
		names = append(names, wl.Name)
		switch {
		case best == nil || len(wl.Selectors) > len(best.Selectors):
			best, tie = wl, false
		case len(wl.Selectors) == len(best.Selectors):
			tie = true
		}
	}
	if tie {
		return spiffeid.ID{}, errorf(http.StatusForbidden, CodeForbidden, "several Workloads match this pod equally (%s)", strings.Join(names, ", "))
	}
	if best != nil {
		id, err := spiffeid.FromString(best.SPIFFEID)
		if err != nil {
			return spiffeid.ID{}, errorf(http.StatusServiceUnavailable, CodeUnavailable, "Workload %s has an invalid SPIFFE ID", best.Name).withCause(err)
		}
		return id, nil
	}
	id := k.SPIFFEID(h.cfg.TrustDomain)
	if id.IsZero() {
		return spiffeid.ID{}, errorf(http.StatusUnauthorized, CodeAttestationFailed, "the Kubernetes identity does not form a SPIFFE ID")
	}
	// The ns/<ns>/sa/<sa> default is only for a Workload that asks for
	// nothing more: one with selectors gets exactly the pods they match.
	if wl, ok := workloadFor(e, id); ok && len(wl.Selectors) > 0 {
		return spiffeid.ID{}, errorf(http.StatusForbidden, CodeForbidden, "Workload %s has selectors this pod does not match", id)
	}
	return id, nil
}

// matchesK8s reports whether want is non-empty, all k8s selectors, and each
// among have.
func matchesK8s(want []policy.AttestationSelector, have []attest.Selector) bool {
	for _, s := range want {
		if s.Type != attest.SelectorK8s {
			return false
		}
	}
	return attest.Matches(have, want)
}
