package sts

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"postern.dev/postern/internal/store"
	"postern.dev/postern/internal/token"
)

// revocations is the in-memory revoked set: single tokens by jti and token
// families by sid, each remembered until the latest token it covers expires.
type revocations struct {
	mu   sync.RWMutex
	jtis map[string]time.Time
	sids map[string]time.Time
	// version changes whenever the set does; with epoch it is the
	// revocation list's ETag.
	version uint64
	epoch   string
}

func newRevocations() *revocations {
	// The epoch tells this process's versions from another's (a restart,
	// another replica), so an ETag never matches across them.
	return &revocations{jtis: map[string]time.Time{}, sids: map[string]time.Time{}, epoch: token.NewID()[:8]}
}

func (r *revocations) isRevoked(c *token.Claims) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if len(r.jtis) == 0 && len(r.sids) == 0 {
		return false
	}
	if _, ok := r.jtis[c.ID]; ok && c.ID != "" {
		return true
	}
	if _, ok := r.sids[c.SessionID]; ok && c.SessionID != "" {
		return true
	}
	return false
}

func (r *revocations) add(kind, id string, exp time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.jtis
	if kind == "sid" {
		m = r.sids
	}
	if cur, ok := m[id]; !ok || exp.After(cur) {
		m[id] = exp
		r.version++
	}
}

func (r *revocations) replace(list []store.Revocation) {
	jtis, sids := map[string]time.Time{}, map[string]time.Time{}
	for _, rv := range list {
		switch rv.Kind {
		case "jti":
			jtis[rv.ID] = rv.ExpiresAt
		case "sid":
			sids[rv.ID] = rv.ExpiresAt
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Keep what this process added but the store has not shown yet.
	for k, v := range r.jtis {
		if _, ok := jtis[k]; !ok {
			jtis[k] = v
		}
	}
	for k, v := range r.sids {
		if _, ok := sids[k]; !ok {
			sids[k] = v
		}
	}
	if !sameKeys(r.jtis, jtis) || !sameKeys(r.sids, sids) {
		r.version++
	}
	r.jtis, r.sids = jtis, sids
}

func sameKeys(a, b map[string]time.Time) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || !w.Equal(v) {
			return false
		}
	}
	return true
}

func (r *revocations) purge(now time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, v := range r.jtis {
		if now.After(v) {
			delete(r.jtis, k)
			r.version++
		}
	}
	for k, v := range r.sids {
		if now.After(v) {
			delete(r.sids, k)
			r.version++
		}
	}
}

// RevocationList is the body of the revocation list endpoint.
type RevocationList struct {
	// Revoked lists the revoked token ids (kind "jti") and sessions
	// (kind "sid"), each with the time after which no token it covers
	// can still be valid.
	Revoked []RevokedEntry `json:"revoked"`
}

// RevokedEntry is one revocation.
type RevokedEntry struct {
	Kind string `json:"kind"` // jti or sid
	ID   string `json:"id"`
	// Until is a NumericDate: the entry can be forgotten after it.
	Until int64 `json:"until"`
}

// list returns the set and its version.
func (r *revocations) list() (RevocationList, uint64) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := RevocationList{Revoked: make([]RevokedEntry, 0, len(r.jtis)+len(r.sids))}
	for k, v := range r.jtis {
		out.Revoked = append(out.Revoked, RevokedEntry{Kind: "jti", ID: k, Until: v.Unix()})
	}
	for k, v := range r.sids {
		out.Revoked = append(out.Revoked, RevokedEntry{Kind: "sid", ID: k, Until: v.Unix()})
	}
	return out, r.version
}

// LoadRevocations merges the store's revocations into memory (replicas
// share revocations through the store) and forgets expired ones.
func (s *Service) LoadRevocations(ctx context.Context) error {
	now := s.cfg.Now()
	list, err := s.cfg.Store.Revocations(ctx, now)
	if err != nil {
		return err
	}
	s.revoked.replace(list)
	s.revoked.purge(now)
	return nil
}

// Revoke revokes one token by its claims; with family it revokes every token
// descending from the same first issuance. The revocation applies in this
// process at once; an error means it may not have reached the store (and so
// other replicas), and the caller should retry.
func (s *Service) Revoke(ctx context.Context, c *token.Claims, family bool) error {
	// A family's tokens never outlive their first token's session by more
	// than the longest lifetime; remember it for a day to be safe.
	exp := c.Expiry.Add(s.cfg.Leeway)
	kind, id := "jti", c.ID
	if family {
		kind, id = "sid", c.SessionID
		exp = s.cfg.Now().Add(24 * time.Hour)
	}
	if id == "" {
		return nil
	}
	// Deny here at once, even if persisting fails: the caller is told to
	// retry (so other replicas learn of it), but this replica never lets
	// the token through in the meantime.
	s.revoked.add(kind, id, exp)
	return s.cfg.Store.PutRevocation(ctx, store.Revocation{Kind: kind, ID: id, ExpiresAt: exp, CreatedAt: s.cfg.Now()})
}

// handleRevoke is RFC 7009. The client must be authenticated and may revoke
// tokens addressed to it or issued to it. The extension parameter
// "revoke_family=true" revokes the token's whole family. Tokens that are not
// valid tokens of this STS are answered with 200, as the RFC asks.
func (s *Service) handleRevoke(w http.ResponseWriter, r *http.Request) {
	f, c, raw, oerr := s.tokenRequest(w, r)
	if oerr != nil {
		writeError(w, oerr)
		return
	}
	switch hint := f.get("token_type_hint"); hint {
	case "", "access_token":
	default:
		writeError(w, oauthErr(codeUnsupportedTokenType, "only access tokens can be revoked"))
		return
	}
	family := false
	switch f.get("revoke_family") {
	case "", "false":
	case "true":
		family = true
	default:
		writeError(w, oauthErr(codeInvalidRequest, "revoke_family must be true or false"))
		return
	}
	claims, err := s.self.Verify(r.Context(), raw)
	decisionID := token.NewID()
	if err != nil {
		s.cfg.Audit.LogAttrs(r.Context(), slog.LevelInfo, "revoke",
			slog.String("decision_id", decisionID), slog.String("client", c.id),
			slog.String("outcome", "ignored"), slog.String("reason", "not a valid token of this issuer"))
		w.WriteHeader(http.StatusOK)
		return
	}
	if !claims.HasAudience(c.audience) && claims.ClientID != c.id {
		writeError(w, oauthErr(codeUnauthorizedClient, "a client may revoke only tokens issued to it or addressed to it"))
		return
	}
	if err := s.Revoke(r.Context(), claims, family); err != nil {
		s.cfg.Logger.Error("could not persist revocation", slog.String("decision_id", decisionID), slog.String("error", err.Error()))
		writeError(w, oauthErr(codeServerError, "could not record the revocation; try again").withStatus(http.StatusServiceUnavailable))
		return
	}
	s.cfg.Audit.LogAttrs(r.Context(), slog.LevelInfo, "revoke",
		slog.String("decision_id", decisionID), slog.String("client", c.id),
		slog.String("outcome", "revoked"), slog.String("subject", claims.Subject),
		slog.String("jti", claims.ID), slog.String("sid", claims.SessionID), slog.Bool("family", family))
	w.WriteHeader(http.StatusOK)
}

// handleRevocations serves the revocation list to workloads of the trust
// domain (mutual TLS with an X.509-SVID): sidecars poll it so that a
// revoked token, or every token of a revoked session, is refused at once
// rather than when it expires. The ETag is the set's version; a matching
// If-None-Match is answered 304.
func (s *Service) handleRevocations(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, oauthErr(codeInvalidRequest, "the endpoint takes GET").withStatus(http.StatusMethodNotAllowed))
		return
	}
	if _, _, ok := s.peerID(r); !ok {
		writeError(w, oauthErr(codeInvalidClient, "the revocation list is for workloads of the trust domain: present an X.509-SVID").withStatus(http.StatusUnauthorized))
		return
	}
	list, version := s.revoked.list()
	etag := `"` + s.revoked.epoch + "-" + itoa(int64(version)) + `"`
	h := w.Header()
	h.Set("ETag", etag)
	if r.Header.Get("If-None-Match") == etag {
		h.Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusNotModified)
		return
	}
	writeJSON(w, http.StatusOK, list)
}

// handleIntrospect is RFC 7662. The client must be authenticated; it learns
// about tokens addressed to it or issued to it, and "active": false for any
// other token.
func (s *Service) handleIntrospect(w http.ResponseWriter, r *http.Request) {
	_, c, raw, oerr := s.tokenRequest(w, r)
	if oerr != nil {
		writeError(w, oerr)
		return
	}
	inactive := map[string]bool{"active": false}
	claims, err := s.self.Verify(r.Context(), raw)
	if err != nil || s.revoked.isRevoked(claims) || (!claims.HasAudience(c.audience) && claims.ClientID != c.id) {
		writeJSON(w, http.StatusOK, inactive)
		return
	}
	out := map[string]any{}
	for k, v := range claims.Map() {
		out[k] = v
	}
	out["active"] = true
	out["token_type"] = "Bearer"
	if len(claims.Audience) == 1 {
		out["aud"] = claims.Audience[0]
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Service) handleJWKS(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, oauthErr(codeInvalidRequest, "the endpoint takes GET").withStatus(http.StatusMethodNotAllowed))
		return
	}
	h := w.Header()
	h.Set("Content-Type", "application/jwk-set+json")
	h.Set("Cache-Control", "public, max-age="+itoa(int64(s.cfg.Keys.MaxAge()/time.Second)))
	_, _ = w.Write(s.cfg.Keys.JWKS())
}

func (s *Service) handleDiscovery(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, oauthErr(codeInvalidRequest, "the endpoint takes GET").withStatus(http.StatusMethodNotAllowed))
		return
	}
	auth := []string{AuthTLSClient, AuthJWTSPIFFE, AuthPrivateKey, AuthSecretBasic}
	doc := map[string]any{
		"issuer":                                s.cfg.Issuer,
		"token_endpoint":                        s.TokenEndpoint(),
		"jwks_uri":                              s.cfg.Issuer + PathJWKS,
		"introspection_endpoint":                s.cfg.Issuer + PathIntrospect,
		"revocation_endpoint":                   s.cfg.Issuer + PathRevoke,
		"postern_revocation_list_endpoint":      s.cfg.Issuer + PathRevocations,
		"grant_types_supported":                 []string{GrantTokenExchange, GrantClientCredentials, GrantJWTBearer},
		"token_endpoint_auth_methods_supported": auth,
		"token_endpoint_auth_signing_alg_values_supported": []string{"ES256", "ES384", "EdDSA", "RS256", "PS256"},
		"introspection_endpoint_auth_methods_supported":    auth,
		"revocation_endpoint_auth_methods_supported":       auth,
		"tls_client_certificate_bound_access_tokens":       true,
		"response_types_supported":                         []string{},
		"subject_types_supported":                          []string{"public"},
		"id_token_signing_alg_values_supported":            []string{string(s.cfg.Keys.Current().Algorithm)},
	}
	if strings.HasSuffix(r.URL.Path, "openid-configuration") {
		doc["scopes_supported"] = []string{}
	}
	w.Header().Set("Cache-Control", "public, max-age=300")
	w.Header().Set("Content-Type", "application/json")
	writeJSONNoStore(w, doc)
}

// tokenRequest is the common start of introspection and revocation: a
// policy set is loaded, the form parses, the client authenticates and names
// a token.
func (s *Service) tokenRequest(w http.ResponseWriter, r *http.Request) (form, *caller, string, *Error) {
	st := s.state.Load()
	if st == nil {
		return nil, nil, "", oauthErr(codeServerError, "the token service has no policy loaded yet").withStatus(http.StatusServiceUnavailable)
	}
	f, oerr := readForm(w, r, s.cfg.MaxBodyBytes)
	if oerr != nil {
		return nil, nil, "", oerr
	}
	c, oerr := s.authenticate(r.Context(), r, f, st)
	if oerr != nil {
		return nil, nil, "", oerr
	}
	raw := f.get("token")
	if raw == "" {
		return nil, nil, "", oauthErr(codeInvalidRequest, "token is required")
	}
	return f, c, raw, nil
}
