package nodeapi

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/attest"
	"postern.dev/postern/internal/ca"
	"postern.dev/postern/internal/keys"
	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/store"
	"postern.dev/postern/internal/token"
)

// AgentPathPrefix is the path prefix of node agents' SPIFFE IDs. Only an
// identity under it may ask for other workloads' SVIDs.
const AgentPathPrefix = "/postern/agent/"

// ServerPath is the path of the postern server's own SPIFFE ID, which its
// serving certificate carries; clients of the node API require it.
const ServerPath = "/postern/server"

// DefaultJWTSVIDTTL is the lifetime of a JWT-SVID.
const DefaultJWTSVIDTTL = 5 * time.Minute

// CA is the part of *ca.CA the handler uses: it issues SVIDs and is the
// bundle source client certificates are verified against.
type CA interface {
	// IssueX509SVID signs an X.509-SVID for an attested identity.
	IssueX509SVID(ctx context.Context, req ca.X509SVIDRequest) (*ca.X509SVID, error)
	// GetX509BundleForTrustDomain returns the current X.509 bundle.
	GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error)
}

// SigningKeys yields the current JWT signing key (keys.Manager does).
type SigningKeys interface {
	// Current returns the key that signs now, or nil.
	Current() *keys.Key
}

// JoinTokens redeems join tokens (StoreJoinTokens does, with package
// attest's hashing).
type JoinTokens interface {
	// Consume redeems token once and returns the SPIFFE ID it was created
	// for. A refusal (unknown, expired or used token) wraps
	// attest.ErrAttestation; any other error means the store could not
	// decide, and the caller is told to retry.
	Consume(ctx context.Context, token string, now time.Time) (spiffeid.ID, error)
}

// StoreJoinTokens redeems join tokens kept in a store, with
// attest.ConsumeJoinToken.
type StoreJoinTokens struct {
	Store attest.JoinTokenStore
}

// Consume redeems token with attest.ConsumeJoinToken.
func (s StoreJoinTokens) Consume(ctx context.Context, token string, now time.Time) (spiffeid.ID, error) {
	return attest.ConsumeJoinToken(ctx, s.Store, token, now)
}

// Agents records the node agents the server attested (store.Store does).
// An agent's certificate is accepted only while its record exists and names
// the certificate's serial, so that an evicted agent, or one attested again
// elsewhere, is cut off at once instead of at the expiry of what it holds.
type Agents interface {
	// Agent returns the agent with SPIFFE ID id, or store.ErrNotFound.
	Agent(ctx context.Context, id string) (store.Agent, error)
	// PutAgent records an attestation, replacing any earlier record.
	PutAgent(ctx context.Context, a store.Agent) error
	// RenewAgent moves the agent from serial old (its current or previous
	// one) to new, and reports false when it is not stored or old is
	// neither.
	RenewAgent(ctx context.Context, id, old, new string, expiresAt time.Time) (bool, error)
	// ConfirmAgent drops the agent's previous serial once the current one
	// is in use.
	ConfirmAgent(ctx context.Context, id, serial string) error
}

// K8sAttestor verifies Kubernetes projected service-account tokens
// (*attest.K8sAttestor does).
type K8sAttestor interface {
	// Attest verifies token and returns the pod it names. A refusal wraps
	// attest.ErrAttestation; any other error means the cluster's keys
	// could not be obtained.
	Attest(ctx context.Context, token string) (*attest.K8sIdentity, error)
}

// Config configures a Handler. TrustDomain, CA, Keys, Issuer and Policy are
// required; the rest have defaults.
type Config struct {
	// TrustDomain is the trust domain of every identity served.
	TrustDomain spiffeid.TrustDomain
	// CA issues the X.509-SVIDs and verifies callers' SVIDs.
	CA CA
	// Keys sign JWT-SVIDs: the STS's keys, so that JWT-SVIDs verify against
	// its JWKS.
	Keys SigningKeys
	// Issuer is the STS issuer URL, the iss of JWT-SVIDs.
	Issuer string
	// Policy returns the current resources (the Workloads).
	Policy func() *policy.Engine
	// FederatedBundles returns the bundles of the federated trust domains
	// (federation.Manager.Bundles); nil: none.
	FederatedBundles func() map[spiffeid.TrustDomain]*spiffebundle.Bundle
	// JoinTokens redeems join tokens; nil disables join_token attestation.
	JoinTokens JoinTokens
	// Agents records attested agents; required.
	Agents Agents
	// K8s verifies PSATs; nil disables k8s_psat attestation.
	K8s K8sAttestor
	// K8sAgents lists the service accounts, as "namespace:name", whose
	// pods may attest as agents with a PSAT. Every pod can obtain a token
	// for the server's audience, so without an entry here no pod is an
	// agent (the allow list of SPIRE's k8s_psat attestor).
	K8sAgents []string
	// SVIDTTL is the CA's default X.509-SVID lifetime, reported for
	// Workloads that name none (default ca.DefaultSVIDTTL). Issuance leaves
	// the default to the CA.
	SVIDTTL time.Duration
	// JWTSVIDTTL is the lifetime of JWT-SVIDs (default 5 minutes).
	JWTSVIDTTL time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives operational errors (default: discard).
	Logger *slog.Logger
	// Audit receives one line per issuance and per refusal (default:
	// Logger).
	Audit *slog.Logger
}

// Handler serves the node API under Prefix. It is safe for concurrent use.
type Handler struct {
	cfg       Config
	k8sAgents map[string]bool // "namespace:name"

	agentsMu   sync.Mutex
	lastAgents map[string]seenAgent // by SPIFFE ID: the last registration read
	sweepAt    int                  // prune lastAgents when it reaches this size

	log    *slog.Logger
	audit  *slog.Logger
	signer atomic.Pointer[token.Signer]
}

var _ http.Handler = (*Handler)(nil)

// NewHandler validates cfg and returns a Handler.
func NewHandler(cfg Config) (*Handler, error) {
	switch {
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("nodeapi: config: trust domain is required")
	case cfg.CA == nil:
		return nil, errors.New("nodeapi: config: CA is required")
	case cfg.Keys == nil:
		return nil, errors.New("nodeapi: config: signing keys are required")
	case cfg.Issuer == "":
		return nil, errors.New("nodeapi: config: issuer is required")
	case cfg.Policy == nil:
		return nil, errors.New("nodeapi: config: policy is required")
	case cfg.Agents == nil:
		return nil, errors.New("nodeapi: config: the agent registry is required")
	case cfg.SVIDTTL < 0 || cfg.JWTSVIDTTL < 0:
		return nil, errors.New("nodeapi: config: negative duration")
	}
	if cfg.SVIDTTL == 0 {
		cfg.SVIDTTL = ca.DefaultSVIDTTL
	}
	if cfg.JWTSVIDTTL == 0 {
		cfg.JWTSVIDTTL = DefaultJWTSVIDTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Audit == nil {
		cfg.Audit = cfg.Logger
	}
	agents := map[string]bool{}
	for _, sa := range cfg.K8sAgents {
		ns, name, ok := strings.Cut(sa, ":")
		if !ok || ns == "" || name == "" || strings.Contains(name, ":") {
			return nil, fmt.Errorf("nodeapi: config: k8s agent service account %q: want namespace:name", sa)
		}
		agents[sa] = true
	}
	return &Handler{cfg: cfg, log: cfg.Logger, audit: cfg.Audit, k8sAgents: agents, lastAgents: map[string]seenAgent{}, sweepAt: 1024}, nil
}

// apiError is an error answer: the public code and description, and the
// internal cause that is logged but never sent.
type apiError struct {
	status int
	code   string
	desc   string
	cause  error
}

func (e *apiError) Error() string { return e.code + ": " + e.desc }

func errorf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, desc: fmt.Sprintf(format, args...)}
}

func (e *apiError) withCause(err error) *apiError { e.cause = err; return e }

// record is what an audit line says about one request.
type record struct {
	caller   string   // SPIFFE ID of the mTLS caller
	method   string   // attestation method
	role     string   // attestation role
	ids      []string // identities issued for or refused
	expires  time.Time
	audience int
}

// ServeHTTP routes a node API request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var (
		op     = strings.TrimPrefix(r.URL.Path, Prefix)
		method string
		serve  func(http.ResponseWriter, *http.Request, *record) (any, *apiError)
	)
	switch r.URL.Path {
	case PathAttest:
		method, serve = http.MethodPost, h.attest
	case PathRenew:
		method, serve = http.MethodPost, h.renew
	case PathWorkloads:
		method, serve = http.MethodGet, h.workloads
	case PathX509SVIDs:
		method, serve = http.MethodPost, h.x509SVIDs
	case PathJWTSVID:
		method, serve = http.MethodPost, h.jwtSVID
	case PathFederatedBundles:
		method, serve = http.MethodGet, h.federatedBundles
	default:
		writeError(w, errorf(http.StatusNotFound, CodeNotFound, "no such node API endpoint"))
		return
	}
	if r.Method != method {
		w.Header().Set("Allow", method)
		writeError(w, errorf(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "use %s", method))
		return
	}
	var rec record
	resp, aerr := serve(w, r, &rec)
	if aerr != nil {
		h.logRefusal(r, op, &rec, aerr)
		writeError(w, aerr)
		return
	}
	if r.Method != http.MethodGet {
		h.logIssue(r, op, &rec)
	}
	writeJSON(w, http.StatusOK, resp)
}

func (h *Handler) attrs(r *http.Request, op string, rec *record) []slog.Attr {
	a := []slog.Attr{slog.String("op", op), slog.String("remote_addr", r.RemoteAddr)}
	if rec.caller != "" {
		a = append(a, slog.String("caller", rec.caller))
	}
	if rec.method != "" {
		a = append(a, slog.String("attestation_method", rec.method))
	}
	if rec.role != "" {
		a = append(a, slog.String("role", rec.role))
	}
	if len(rec.ids) == 1 {
		a = append(a, slog.String("spiffe_id", rec.ids[0]))
	} else if len(rec.ids) > 1 {
		a = append(a, slog.Any("spiffe_ids", rec.ids))
	}
	if rec.audience > 0 {
		a = append(a, slog.Int("audiences", rec.audience))
	}
	return a
}

func (h *Handler) logIssue(r *http.Request, op string, rec *record) {
	a := h.attrs(r, op, rec)
	if !rec.expires.IsZero() {
		a = append(a, slog.Time("expires_at", rec.expires))
	}
	h.audit.LogAttrs(r.Context(), slog.LevelInfo, "nodeapi: issued", a...)
}

func (h *Handler) logRefusal(r *http.Request, op string, rec *record, e *apiError) {
	a := append(h.attrs(r, op, rec),
		slog.Int("status", e.status), slog.String("error", e.code), slog.String("error_description", e.desc))
	if e.cause != nil {
		a = append(a, slog.String("cause", e.cause.Error()))
	}
	h.audit.LogAttrs(r.Context(), slog.LevelWarn, "nodeapi: refused", a...)
	if e.status >= 500 && e.cause != nil {
		h.log.LogAttrs(r.Context(), slog.LevelError, "nodeapi: unavailable", slog.String("op", op), slog.String("error", e.cause.Error()))
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, e *apiError) {
	writeJSON(w, e.status, errorBody{Error: e.code, Description: e.desc})
}

// decodeBody reads a JSON request body of at most MaxBodyBytes strictly.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) *apiError {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != "application/json" {
			return errorf(http.StatusBadRequest, CodeInvalidRequest, "the request body must be application/json")
		}
	}
	if r.ContentLength > MaxBodyBytes {
		return errorf(http.StatusBadRequest, CodeInvalidRequest, "the request body is larger than %d bytes", MaxBodyBytes)
	}
	if err := decodeJSON(http.MaxBytesReader(w, r.Body, MaxBodyBytes), v); err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return errorf(http.StatusBadRequest, CodeInvalidRequest, "the request body is larger than %d bytes", MaxBodyBytes)
		}
		return errorf(http.StatusBadRequest, CodeInvalidRequest, "malformed request: %s", clip(err.Error(), 200))
	}
	return nil
}

// decodeJSON decodes exactly one JSON value from r into v, refusing unknown
// fields and trailing data.
func decodeJSON(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return errors.New("empty body")
		}
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if err != nil {
			return err
		}
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// clip shortens s to at most n bytes on a rune boundary.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

func (h *Handler) engine() (*policy.Engine, *apiError) {
	e := h.cfg.Policy()
	if e == nil {
		return nil, errorf(http.StatusServiceUnavailable, CodeUnavailable, "no resources are loaded yet")
	}
	return e, nil
}

// isAgent reports whether id names a node agent of this trust domain.
func (h *Handler) isAgent(id spiffeid.ID) bool {
	p := id.Path()
	return id.TrustDomain() == h.cfg.TrustDomain && len(p) > len(AgentPathPrefix) && strings.HasPrefix(p, AgentPathPrefix)
}

// peer verifies the caller's client certificate chain as an X.509-SVID of
// this trust domain against the CA's current bundle.
func (h *Handler) peer(r *http.Request, rec *record) (spiffeid.ID, *apiError) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return spiffeid.ID{}, errorf(http.StatusUnauthorized, CodeUnauthenticated,
			"this endpoint needs mutual TLS with an X.509-SVID of trust domain %s", h.cfg.TrustDomain)
	}
	id, _, err := x509svid.Verify(r.TLS.PeerCertificates, h.cfg.CA, x509svid.WithTime(h.cfg.Now()))
	if err != nil {
		return spiffeid.ID{}, errorf(http.StatusUnauthorized, CodeUnauthenticated,
			"the client certificate is not a valid X.509-SVID of trust domain %s", h.cfg.TrustDomain).withCause(err)
	}
	rec.caller = id.String()
	if id.TrustDomain() != h.cfg.TrustDomain {
		return spiffeid.ID{}, errorf(http.StatusUnauthorized, CodeUnauthenticated,
			"the client certificate is not a valid X.509-SVID of trust domain %s", h.cfg.TrustDomain)
	}
	return id, nil
}

// agent authenticates the caller and requires a node agent.
func (h *Handler) agent(r *http.Request, rec *record) (spiffeid.ID, *apiError) {
	id, aerr := h.peer(r, rec)
	if aerr != nil {
		return id, aerr
	}
	if !h.isAgent(id) {
		return id, errorf(http.StatusForbidden, CodeForbidden, "%s is not a node agent (%s...)", id, AgentPathPrefix)
	}
	if aerr := h.registered(r.Context(), id, r.TLS.PeerCertificates[0]); aerr != nil {
		return id, aerr
	}
	return id, nil
}

// agentGrace is how long a registration read from the store stands in for
// it while the store fails: the last good state, never a guess. It is also
// how late an eviction can take effect on a replica that cannot read the
// store, so it is short.
const agentGrace = time.Minute

// registered checks that the agent's certificate is one of the two newest
// the server issued it: the agent is still registered (not evicted) and has
// not been attested again since. When the store fails, the registration
// this replica read last, within agentGrace, decides; without one, refused.
func (h *Handler) registered(ctx context.Context, id spiffeid.ID, leaf *x509.Certificate) *apiError {
	a, err := h.cfg.Agents.Agent(ctx, id.String())
	now := h.cfg.Now()
	h.agentsMu.Lock()
	switch {
	case err == nil:
		if len(h.lastAgents) >= h.sweepAt {
			for k, v := range h.lastAgents {
				if now.Sub(v.at) >= agentGrace {
					delete(h.lastAgents, k)
				}
			}
			h.sweepAt = max(1024, 2*len(h.lastAgents))
		}
		h.lastAgents[id.String()] = seenAgent{a, now}
	case errors.Is(err, store.ErrNotFound):
		delete(h.lastAgents, id.String())
	default:
		if seen, ok := h.lastAgents[id.String()]; ok && now.Sub(seen.at) < agentGrace {
			a, err = seen.agent, nil
		}
	}
	h.agentsMu.Unlock()
	if errors.Is(err, store.ErrNotFound) {
		return errorf(http.StatusForbidden, CodeForbidden, "agent %s is not registered (it was evicted, or its registration expired): it must attest again", id)
	}
	if err != nil {
		return errorf(http.StatusServiceUnavailable, CodeUnavailable, "the agent registry is unavailable; retry later").withCause(err)
	}
	s := serialOf(leaf)
	if s != a.Serial && (s != a.PrevSerial || a.PrevSerial == "") {
		return errorf(http.StatusForbidden, CodeForbidden, "this certificate of agent %s is no longer current (the agent renewed or attested again since, or was evicted and re-registered): it must attest again", id)
	}
	if s == a.Serial && a.PrevSerial != "" && err == nil {
		// The newest certificate is in use: the one before it (the agent
		// kept it in case the renewal's answer was lost) may not renew
		// from now on, so a copy of it cannot take the identity over.
		if err := h.cfg.Agents.ConfirmAgent(ctx, id.String(), s); err != nil {
			h.log.Warn("nodeapi: recording an agent's current certificate failed", slog.String("agent", id.String()), slog.String("error", err.Error()))
		} else {
			h.agentsMu.Lock()
			if seen, ok := h.lastAgents[id.String()]; ok && seen.agent.Serial == s {
				seen.agent.PrevSerial = ""
				h.lastAgents[id.String()] = seen
			}
			h.agentsMu.Unlock()
		}
	}
	return nil
}

// seenAgent is a registration and when it was read from the store.
type seenAgent struct {
	agent store.Agent
	at    time.Time
}

func serialOf(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// parseCSR checks a CSR; its subject and SANs are ignored.
func parseCSR(der []byte, what string) (*ca.X509SVIDRequest, *apiError) {
	if len(der) == 0 {
		return nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "%scsr is required", what)
	}
	csr, err := ca.ParseCSR(der)
	if err != nil {
		return nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "%s%s", what, err.Error())
	}
	return &ca.X509SVIDRequest{PublicKey: csr.PublicKey}, nil
}

// issue signs an SVID for id with the key in req; w is id's Workload (nil
// for agents).
func (h *Handler) issue(ctx context.Context, req *ca.X509SVIDRequest, id spiffeid.ID, w *policy.Workload) (svidBody, *apiError) {
	req.ID = id
	if w != nil {
		req.TTL, req.DNSNames = w.SVIDTTL, w.DNSNames
	}
	svid, err := h.cfg.CA.IssueX509SVID(ctx, *req)
	if err != nil {
		if errors.Is(err, ca.ErrWeakKey) {
			return svidBody{}, errorf(http.StatusBadRequest, CodeInvalidRequest, "%s", err.Error())
		}
		return svidBody{}, errorf(http.StatusServiceUnavailable, CodeUnavailable, "the CA could not issue an SVID for %s", id).withCause(err)
	}
	b := svidBody{SPIFFEID: id.String(), ExpiresAt: svid.NotAfter.UTC().Format(time.RFC3339),
		serial: serialOf(svid.Certificates[0]), notAfter: svid.NotAfter}
	for _, c := range svid.Certificates {
		b.X509SVID = append(b.X509SVID, c.Raw)
	}
	return b, nil
}

// reserved reports whether id is under /postern/, the paths of postern's own
// components (agents, the server), which no Workload may take.
func reserved(id spiffeid.ID) bool {
	p := id.Path()
	return p == "/postern" || strings.HasPrefix(p, "/postern/")
}

// workloadFor returns the Workload with SPIFFE ID id; identities under
// /postern/ are never Workloads.
func workloadFor(e *policy.Engine, id spiffeid.ID) (*policy.Workload, bool) {
	if reserved(id) {
		return nil, false
	}
	return e.WorkloadBySPIFFEID(id.String())
}

func (h *Handler) renew(w http.ResponseWriter, r *http.Request, rec *record) (any, *apiError) {
	id, aerr := h.peer(r, rec)
	if aerr != nil {
		return nil, aerr
	}
	rec.ids = []string{id.String()}
	if ca.IsDelegated(r.TLS.PeerCertificates[0]) {
		// Obtained through an agent: it comes back through an agent,
		// authorized again (the Workload's agents and selectors may
		// have changed since).
		return nil, errorf(http.StatusForbidden, CodeForbidden, "%s was obtained through a node agent; only an agent may renew it (x509svids)", id)
	}
	if ca.MustReattest(r.TLS.PeerCertificates[0]) {
		return nil, errorf(http.StatusForbidden, CodeForbidden, "%s was attested with a Kubernetes token: attest again with the current token instead of renewing", id)
	}
	var body renewRequest
	if aerr := decodeBody(w, r, &body); aerr != nil {
		return nil, aerr
	}
	req, aerr := parseCSR(body.CSR, "")
	if aerr != nil {
		return nil, aerr
	}
	var wl *policy.Workload
	agent := h.isAgent(id)
	if agent {
		if aerr := h.registered(r.Context(), id, r.TLS.PeerCertificates[0]); aerr != nil {
			return nil, aerr
		}
	} else {
		e, aerr := h.engine()
		if aerr != nil {
			return nil, aerr
		}
		var ok bool
		if wl, ok = workloadFor(e, id); !ok {
			return nil, errorf(http.StatusForbidden, CodeForbidden, "%s is not a known Workload (any more)", id)
		}
		// The Workload may have become agent-only since the attestation
		// that this renewal chain started from.
		if aerr := directlyAttestable(wl); aerr != nil {
			return nil, aerr
		}
	}
	b, aerr := h.issue(r.Context(), req, id, wl)
	if aerr != nil {
		return nil, aerr
	}
	if agent {
		// Only the answer to a recorded renewal is valid: on a lost race
		// (an eviction, a new attestation) the new certificate is dropped.
		ok, err := h.cfg.Agents.RenewAgent(r.Context(), id.String(), serialOf(r.TLS.PeerCertificates[0]), b.serial, b.notAfter)
		if err != nil {
			return nil, errorf(http.StatusServiceUnavailable, CodeUnavailable, "the agent registry is unavailable; retry later").withCause(err)
		}
		if !ok {
			return nil, errorf(http.StatusForbidden, CodeForbidden, "agent %s was evicted or attested again meanwhile: it must attest again", id)
		}
	}
	rec.expires = b.notAfter
	return b, nil
}

func (h *Handler) workloads(w http.ResponseWriter, r *http.Request, rec *record) (any, *apiError) {
	id, aerr := h.agent(r, rec)
	if aerr != nil {
		return nil, aerr
	}
	e, aerr := h.engine()
	if aerr != nil {
		return nil, aerr
	}
	out := workloadsResponse{Workloads: []workloadBody{}}
	for _, wl := range e.Workloads() {
		if !wl.AllowsAgent(id.String()) || !attest.AgentServable(wl.Selectors) {
			continue
		}
		ttl := wl.SVIDTTL
		if ttl <= 0 {
			ttl = h.cfg.SVIDTTL
		}
		sel := wl.Selectors
		if sel == nil {
			sel = []policy.AttestationSelector{}
		}
		out.Workloads = append(out.Workloads, workloadBody{
			SPIFFEID: wl.SPIFFEID, Selectors: sel, DNSNames: wl.DNSNames, TTLSeconds: int64(ttl / time.Second),
		})
	}
	return out, nil
}

// federatedBundles lists the bundles of the federated trust domains, for
// agents to serve to their workloads.
func (h *Handler) federatedBundles(w http.ResponseWriter, r *http.Request, rec *record) (any, *apiError) {
	if _, aerr := h.agent(r, rec); aerr != nil {
		return nil, aerr
	}
	out := federatedBundlesResponse{Bundles: map[string]json.RawMessage{}}
	if h.cfg.FederatedBundles == nil {
		return out, nil
	}
	for td, b := range h.cfg.FederatedBundles() {
		if b == nil || td == h.cfg.TrustDomain {
			continue
		}
		raw, err := b.Marshal()
		if err != nil {
			return nil, errorf(http.StatusServiceUnavailable, CodeUnavailable, "could not encode the bundle of %s", td.Name()).withCause(err)
		}
		out.Bundles[td.Name()] = raw
	}
	return out, nil
}

// allowed returns the Workload id names if agent may obtain its SVIDs.
func (h *Handler) allowed(e *policy.Engine, agent spiffeid.ID, rawID string) (spiffeid.ID, *policy.Workload, *apiError) {
	id, err := spiffeid.FromString(rawID)
	if err != nil {
		return spiffeid.ID{}, nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "spiffe_id %q: %s", clip(rawID, 128), err.Error())
	}
	wl, ok := workloadFor(e, id)
	if !ok || id.TrustDomain() != h.cfg.TrustDomain {
		return id, nil, errorf(http.StatusForbidden, CodeForbidden, "%s is not a known Workload", id)
	}
	if !wl.AllowsAgent(agent.String()) {
		return id, nil, errorf(http.StatusForbidden, CodeForbidden, "Workload %s does not allow agent %s", id, agent)
	}
	if !attest.AgentServable(wl.Selectors) {
		// No local process can be attested as it, so no honest agent asks:
		// refusing keeps one compromised agent (or any pod that attests as
		// an agent) from minting every such identity. Such workloads
		// attest directly (join token, Kubernetes).
		return id, nil, errorf(http.StatusForbidden, CodeForbidden, "Workload %s has no selectors an agent attests (unix): no agent may obtain its SVIDs", id)
	}
	return id, wl, nil
}

func (h *Handler) x509SVIDs(w http.ResponseWriter, r *http.Request, rec *record) (any, *apiError) {
	agent, aerr := h.agent(r, rec)
	if aerr != nil {
		return nil, aerr
	}
	var body x509SVIDsRequest
	if aerr := decodeBody(w, r, &body); aerr != nil {
		return nil, aerr
	}
	switch n := len(body.Requests); {
	case n == 0:
		return nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "requests is empty")
	case n > MaxX509SVIDRequests:
		return nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "more than %d requests", MaxX509SVIDRequests)
	}
	e, aerr := h.engine()
	if aerr != nil {
		return nil, aerr
	}
	type item struct {
		id  spiffeid.ID
		w   *policy.Workload
		req *ca.X509SVIDRequest
	}
	items := make([]item, 0, len(body.Requests))
	for i, q := range body.Requests {
		id, wl, aerr := h.allowed(e, agent, q.SPIFFEID)
		if !id.IsZero() {
			rec.ids = append(rec.ids, id.String())
		}
		if aerr != nil {
			return nil, aerr
		}
		req, aerr := parseCSR(q.CSR, fmt.Sprintf("requests[%d] (%s): ", i, id))
		if aerr != nil {
			return nil, aerr
		}
		items = append(items, item{id, wl, req})
	}
	out := x509SVIDsResponse{SVIDs: make([]svidBody, 0, len(items))}
	for _, it := range items {
		it.req.Delegated = true
		b, aerr := h.issue(r.Context(), it.req, it.id, it.w)
		if aerr != nil {
			return nil, aerr
		}
		out.SVIDs = append(out.SVIDs, b)
	}
	return out, nil
}

func (h *Handler) jwtSVID(w http.ResponseWriter, r *http.Request, rec *record) (any, *apiError) {
	agent, aerr := h.agent(r, rec)
	if aerr != nil {
		return nil, aerr
	}
	var body jwtSVIDRequest
	if aerr := decodeBody(w, r, &body); aerr != nil {
		return nil, aerr
	}
	rec.audience = len(body.Audience)
	switch n := len(body.Audience); {
	case n == 0:
		return nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "audience is required")
	case n > MaxAudiences:
		return nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "more than %d audiences", MaxAudiences)
	}
	for i, a := range body.Audience {
		if a == "" || len(a) > MaxAudienceBytes {
			return nil, errorf(http.StatusBadRequest, CodeInvalidRequest, "audience[%d] must be 1 to %d bytes", i, MaxAudienceBytes)
		}
	}
	e, aerr := h.engine()
	if aerr != nil {
		return nil, aerr
	}
	id, _, aerr := h.allowed(e, agent, body.SPIFFEID)
	if !id.IsZero() {
		rec.ids = []string{id.String()}
	}
	if aerr != nil {
		return nil, aerr
	}
	s, err := h.currentSigner()
	if err != nil {
		return nil, errorf(http.StatusServiceUnavailable, CodeUnavailable, "no signing key is available").withCause(err)
	}
	now := h.cfg.Now()
	exp := now.Add(h.cfg.JWTSVIDTTL)
	raw, err := s.Sign(&token.Claims{
		Issuer: h.cfg.Issuer, Subject: id.String(), Audience: body.Audience,
		IssuedAt: now, Expiry: exp,
	})
	if err != nil {
		return nil, errorf(http.StatusServiceUnavailable, CodeUnavailable, "could not sign the JWT-SVID").withCause(err)
	}
	rec.expires = exp
	return jwtSVIDResponse{Token: raw, ExpiresAt: exp.UTC().Format(time.RFC3339)}, nil
}

// currentSigner returns a signer for the current key, built once per key.
func (h *Handler) currentSigner() (*token.Signer, error) {
	k := h.cfg.Keys.Current()
	if k == nil {
		return nil, errors.New("nodeapi: no current signing key")
	}
	if s := h.signer.Load(); s != nil && s.KeyID() == k.ID && s.Algorithm() == k.Algorithm {
		return s, nil
	}
	s, err := token.NewSigner(k.ID, k.Algorithm, k.Signer, token.TypeJWT)
	if err != nil {
		return nil, err
	}
	h.signer.Store(s)
	return s, nil
}
