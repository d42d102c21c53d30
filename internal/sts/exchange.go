package sts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"postern.dev/postern/internal/introspect"
	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/token"
)

// Grant types and token types.
const (
	GrantTokenExchange     = "urn:ietf:params:oauth:grant-type:token-exchange"
	GrantClientCredentials = "client_credentials"
	GrantJWTBearer         = "urn:ietf:params:oauth:grant-type:jwt-bearer"

	TokenTypeAccessToken = "urn:ietf:params:oauth:token-type:access_token"
	TokenTypeJWT         = "urn:ietf:params:oauth:token-type:jwt"
)

// tokenResponse is the RFC 6749 §5.1 / RFC 8693 §2.2.1 success body.
type tokenResponse struct {
	AccessToken     string `json:"access_token"`
	IssuedTokenType string `json:"issued_token_type,omitempty"`
	TokenType       string `json:"token_type"`
	ExpiresIn       int64  `json:"expires_in"`
	Scope           string `json:"scope,omitempty"`
}

// subject is a verified subject token (or assertion) with where it came from.
type subject struct {
	claims *token.Claims
	self   bool            // issued by this STS
	ext    *externalIssuer // set when issued by a TrustedIssuer
}

// audit carries what the audit line of one token request reports.
type audit struct {
	decisionID string
	grant      string
	client     string
	method     string
	subject    string
	issuer     string
	audience   string
	scopes     string
	actors     []string
	policy     string
	reason     string
	dryRun     []string
}

func (s *Service) handleToken(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	a := &audit{}
	resp, oerr := s.token(r.Context(), w, r, a)
	defer func() { s.metrics.observe(a.grant, oerr, time.Since(start)) }()
	if a.decisionID == "" {
		a.decisionID = token.NewID()
	}
	if oerr != nil {
		if oerr.Status >= 500 {
			s.cfg.Logger.Error("token request failed", slog.String("decision_id", a.decisionID), slog.String("error", oerr.Error()))
		}
		s.auditLine(r.Context(), a, "deny", oerr)
		w.Header().Set("X-Decision-Id", a.decisionID)
		writeError(w, oerr)
		return
	}
	s.auditLine(r.Context(), a, "issue", nil)
	w.Header().Set("X-Decision-Id", a.decisionID)
	writeJSON(w, http.StatusOK, resp)
}

func (s *Service) auditLine(ctx context.Context, a *audit, outcome string, oerr *Error) {
	attrs := []slog.Attr{
		slog.String("decision_id", a.decisionID),
		slog.String("outcome", outcome),
		slog.String("grant_type", a.grant),
		slog.String("client", a.client),
		slog.String("auth_method", a.method),
		slog.String("subject", a.subject),
		slog.String("subject_issuer", a.issuer),
		slog.String("audience", a.audience),
		slog.String("scope", a.scopes),
		slog.Any("act", a.actors),
		slog.String("policy", a.policy),
	}
	if a.reason != "" {
		attrs = append(attrs, slog.String("reason", a.reason))
	}
	if len(a.dryRun) > 0 {
		attrs = append(attrs, slog.Any("dry_run", a.dryRun))
	}
	if oerr != nil {
		attrs = append(attrs, slog.String("error", oerr.Code), slog.String("error_description", oerr.Description))
	}
	s.cfg.Audit.LogAttrs(ctx, slog.LevelInfo, "token", attrs...)
}

func (s *Service) token(ctx context.Context, w http.ResponseWriter, r *http.Request, a *audit) (*tokenResponse, *Error) {
	st := s.state.Load()
	if st == nil {
		return nil, oauthErr(codeServerError, "the token service has no policy loaded yet").withStatus(http.StatusServiceUnavailable)
	}
	f, oerr := readForm(w, r, s.cfg.MaxBodyBytes)
	if oerr != nil {
		return nil, oerr
	}
	a.grant = f.get("grant_type")
	switch a.grant {
	case GrantTokenExchange, GrantClientCredentials, GrantJWTBearer:
	case "":
		return nil, oauthErr(codeInvalidRequest, "grant_type is required")
	default:
		return nil, oauthErr(codeUnsupportedGrantType, "supported grant types: token-exchange, client_credentials, jwt-bearer")
	}
	c, oerr := s.authenticate(ctx, r, f, st)
	if oerr != nil {
		return nil, oerr
	}
	a.client, a.method = c.id, c.method
	switch a.grant {
	case GrantTokenExchange:
		return s.exchange(ctx, f, c, st, a)
	case GrantJWTBearer:
		return s.jwtBearer(ctx, f, c, st, a)
	default:
		return s.clientCredentials(f, c, st, a)
	}
}

// verifySubject verifies a subject token or assertion from this STS or a
// TrustedIssuer. Tokens from this STS must be addressed to the client (a
// workload can only exchange what was sent to it) and not be revoked.
func (s *Service) verifySubject(ctx context.Context, raw string, c *caller, st *state, what string, selfAudience []string) (*subject, *Error) {
	if len(raw) > s.cfg.MaxTokenBytes {
		return nil, oauthErr(codeInvalidRequest, fmt.Sprintf("%s exceeds %d bytes", what, s.cfg.MaxTokenBytes))
	}
	// Parse once; the unverified issuer only chooses the verifier.
	parsed, err := token.Parse(raw, s.cfg.MaxTokenBytes)
	if err != nil {
		if errors.Is(err, token.ErrMalformed) && len(st.opaque) > 0 {
			return s.verifyOpaque(ctx, raw, c, st, what)
		}
		return nil, grantErr(what, err)
	}
	iss := parsed.UnverifiedIssuer()
	if iss == "" {
		return nil, oauthErr(codeInvalidRequest, what+" has no issuer")
	}
	if iss == s.cfg.Issuer {
		claims, err := s.self.VerifyParsed(ctx, parsed)
		if err != nil {
			return nil, grantErr(what, err)
		}
		ok := false
		for _, aud := range selfAudience {
			ok = ok || claims.HasAudience(aud)
		}
		if !ok {
			return nil, oauthErr(codeInvalidGrant, fmt.Sprintf("%s is not addressed to client %s", what, c.id))
		}
		if s.revoked.isRevoked(claims) {
			return nil, oauthErr(codeInvalidGrant, what+" has been revoked")
		}
		return &subject{claims: claims, self: true}, nil
	}
	ei, ok := st.issuers[iss]
	if !ok || ei.verifier == nil {
		return nil, oauthErr(codeInvalidGrant, fmt.Sprintf("%s issuer %q is not trusted", what, iss))
	}
	claims, err := ei.verifier.VerifyParsed(ctx, parsed)
	if err != nil {
		if errors.Is(err, token.ErrKeysUnavailable) {
			return nil, oauthErr(codeServerError, fmt.Sprintf("keys of issuer %q are unavailable", iss)).withStatus(http.StatusServiceUnavailable).withCause(err)
		}
		return nil, grantErr(what, err)
	}
	if e := ei.checkAudience(what, claims.Audience); e != nil {
		return nil, e
	}
	if err := claims.CheckBinding(c.cert); err != nil {
		return nil, oauthErr(codeInvalidGrant, fmt.Sprintf("%s is sender-constrained to a key or certificate this client did not present: %v", what, err))
	}
	if claims.Act != nil {
		return nil, externalActErr(what, iss)
	}
	if claims.Subject == "" {
		return nil, oauthErr(codeInvalidGrant, what+" has no sub")
	}
	return &subject{claims: claims, ext: ei}, nil
}

// verifyOpaque asks the trusted issuers that introspect (RFC 7662), in
// name order, about a token that is not a JWT. The first that reports it
// active, for an accepted audience, vouches for it; an unreachable
// endpoint is never taken for an answer.
func (s *Service) verifyOpaque(ctx context.Context, raw string, c *caller, st *state, what string) (*subject, *Error) {
	var unavailable error
	for _, ei := range st.opaque {
		if !ei.res.Introspection.Accepts(raw) {
			continue // another issuer's token: never shown to this one
		}
		claims, err := ei.introspect.Introspect(ctx, raw)
		if errors.Is(err, introspect.ErrUnavailable) {
			unavailable = err
			continue
		}
		if err != nil {
			continue
		}
		if e := ei.checkAudience(what, claims.Audience); e != nil {
			return nil, e
		}
		if err := claims.CheckBinding(c.cert); err != nil {
			return nil, oauthErr(codeInvalidGrant, fmt.Sprintf("%s is sender-constrained to a key or certificate this client did not present: %v", what, err))
		}
		if claims.Act != nil {
			return nil, externalActErr(what, ei.res.Issuer)
		}
		return &subject{claims: claims, ext: ei}, nil
	}
	if unavailable != nil {
		return nil, oauthErr(codeServerError, what+" could not be introspected: the issuer is unavailable").withStatus(http.StatusServiceUnavailable).withCause(unavailable)
	}
	return nil, oauthErr(codeInvalidGrant, what+" is neither a JWT nor an active token of a trusted issuer")
}

// checkAudience refuses a token of an external issuer none of whose
// audiences the TrustedIssuer accepts. The description names both sides, so
// that a caller with a token minted for the wrong audience sees why; the
// token's values are quoted and bounded.
func (ei *externalIssuer) checkAudience(what string, auds []string) *Error {
	for _, aud := range auds {
		if ei.aud[aud] {
			return nil
		}
	}
	return oauthErr(codeInvalidGrant, fmt.Sprintf("%s audience %s is not accepted for issuer %q (accepted: %s)",
		what, quoteList(auds, 4), ei.res.Issuer, quoteList(slices.Sorted(maps.Keys(ei.aud)), 8)))
}

// externalActErr refuses an external token that names actors: a
// TrustedIssuer is trusted to name users, not to say which workloads of
// this trust domain acted. Carried over, its act would enter the chain (and
// the policy's actors) as if this STS had verified it.
func externalActErr(what, iss string) *Error {
	return oauthErr(codeInvalidGrant, fmt.Sprintf("%s from issuer %q carries an act claim; only this token service's delegation chains are accepted", what, iss))
}

// quoteList renders at most n values, each quoted and cut to 100 bytes, for
// an error description.
func quoteList(vs []string, n int) string {
	if len(vs) == 0 {
		return "[]"
	}
	var b strings.Builder
	b.WriteByte('[')
	for i, v := range vs {
		if i == n {
			fmt.Fprintf(&b, " and %d more", len(vs)-n)
			break
		}
		if i > 0 {
			b.WriteByte(' ')
		}
		if len(v) > 100 {
			v = v[:100] + "..."
		}
		b.WriteString(strconv.Quote(v))
	}
	b.WriteByte(']')
	return b.String()
}

func grantErr(what string, err error) *Error {
	code := codeInvalidGrant
	if errors.Is(err, token.ErrTooLarge) || errors.Is(err, token.ErrMalformed) {
		code = codeInvalidRequest
	}
	return oauthErr(code, fmt.Sprintf("%s rejected: %v", what, err)).withCause(err)
}

// target resolves the audience/resource parameters to one workload audience.
func target(f form, st *state) (string, *Error) {
	aud, res := f.get("audience"), f.get("resource")
	if aud != "" && res != "" && aud != res {
		return "", oauthErr(codeInvalidTarget, "audience and resource name different targets; name exactly one")
	}
	if aud == "" {
		aud = res
	}
	if aud == "" {
		return "", nil
	}
	if w, ok := st.engine.WorkloadByAudience(aud); ok {
		return audienceOf(w), nil
	}
	if w, ok := st.engine.WorkloadBySPIFFEID(aud); ok {
		return audienceOf(w), nil
	}
	return "", oauthErr(codeInvalidTarget, fmt.Sprintf("no Workload has audience %q", aud))
}

func audienceOf(w *policy.Workload) string {
	if w.Audience != "" {
		return w.Audience
	}
	return w.SPIFFEID
}

func (s *Service) exchange(ctx context.Context, f form, c *caller, st *state, a *audit) (*tokenResponse, *Error) {
	raw := f.get("subject_token")
	if raw == "" {
		return nil, oauthErr(codeInvalidRequest, "subject_token is required")
	}
	switch f.get("subject_token_type") {
	case TokenTypeAccessToken, TokenTypeJWT:
	case "":
		return nil, oauthErr(codeInvalidRequest, "subject_token_type is required")
	default:
		return nil, oauthErr(codeInvalidRequest, "subject_token_type must be an access token or a JWT").withStatus(http.StatusBadRequest)
	}
	// Only access tokens (typ at+jwt) are issued: a plain JWT from this
	// issuer, signed with the trust domain's keys, would pass for a
	// JWT-SVID of its subject wherever JWT-SVIDs are validated.
	issuedType := TokenTypeAccessToken
	switch f.get("requested_token_type") {
	case "", TokenTypeAccessToken:
	default:
		return nil, oauthErr(codeInvalidRequest, "this token service issues access tokens only (requested_token_type urn:ietf:params:oauth:token-type:access_token)")
	}
	sub, oerr := s.verifySubject(ctx, raw, c, st, "subject_token", []string{c.audience})
	if oerr != nil {
		return nil, oerr
	}
	// The actor: the client itself, or the subject of a verified actor token.
	actor := &token.Actor{Subject: c.id}
	if at := f.get("actor_token"); at != "" {
		if f.get("actor_token_type") == "" {
			return nil, oauthErr(codeInvalidRequest, "actor_token_type is required with actor_token")
		}
		ac, err := s.svid.Verify(ctx, at)
		if err != nil {
			return nil, grantErr("actor_token", err)
		}
		if !s.checkAssertionAudience(ac) {
			return nil, oauthErr(codeInvalidGrant, "actor_token must name the token endpoint as its only audience")
		}
		if e := s.checkAssertionLifetime(ac); e != nil {
			return nil, oauthErr(codeInvalidGrant, "actor_token lives too long")
		}
		// The actor is the party that authenticated: an actor token may
		// prove it (and satisfy may_act) but never name someone else, or
		// any client holding another workload's JWT-SVID could forge the
		// act chain that callees authorize on.
		if ac.Subject != c.id {
			return nil, oauthErr(codeInvalidGrant, "actor_token must name the authenticated client")
		}
		actor = &token.Actor{Subject: ac.Subject}
	} else if f.get("actor_token_type") != "" {
		return nil, oauthErr(codeInvalidRequest, "actor_token_type without actor_token")
	}
	if oerr := s.checkMayAct(sub, actor); oerr != nil {
		return nil, oerr
	}
	return s.issue(f, c, st, a, sub, actor, issuedType, "token-exchange")
}

// checkMayAct enforces the subject token's may_act (RFC 8693 §4.4) on the
// party about to act, for every grant that has a subject token.
func (s *Service) checkMayAct(sub *subject, actor *token.Actor) *Error {
	ma := sub.claims.MayAct
	if ma == nil {
		return nil
	}
	if ma.Subject != actor.Subject || (ma.Issuer != "" && ma.Issuer != s.cfg.Issuer) {
		return oauthErr(codeInvalidGrant, fmt.Sprintf("the subject token's may_act does not allow %s to act", actor.Subject))
	}
	return nil
}

func (s *Service) jwtBearer(ctx context.Context, f form, c *caller, st *state, a *audit) (*tokenResponse, *Error) {
	raw := f.get("assertion")
	if raw == "" {
		return nil, oauthErr(codeInvalidRequest, "assertion is required")
	}
	sub, oerr := s.verifySubject(ctx, raw, c, st, "assertion", []string{s.TokenEndpoint(), s.cfg.Issuer})
	if oerr != nil {
		return nil, oerr
	}
	actor := &token.Actor{Subject: c.id}
	if oerr := s.checkMayAct(sub, actor); oerr != nil {
		return nil, oerr
	}
	return s.issue(f, c, st, a, sub, actor, TokenTypeAccessToken, "jwt-bearer")
}

func (s *Service) clientCredentials(f form, c *caller, st *state, a *audit) (*tokenResponse, *Error) {
	if f.get("subject_token") != "" || f.get("assertion") != "" {
		return nil, oauthErr(codeInvalidRequest, "client_credentials takes no subject token")
	}
	return s.issue(f, c, st, a, nil, nil, TokenTypeAccessToken, "client-credentials")
}

// issue asks the policy and signs the new token. sub is nil for
// client_credentials (the client is its own subject).
func (s *Service) issue(f form, c *caller, st *state, a *audit, sub *subject, actor *token.Actor, issuedType, grant string) (*tokenResponse, *Error) {
	now := s.cfg.Now()
	aud, oerr := target(f, st)
	if oerr != nil {
		// The audit line names what was asked for, bounded (the form's
		// values are already bounded by the body size).
		a.audience = f.get("audience")
		if a.audience == "" {
			a.audience = f.get("resource")
		}
		if len(a.audience) > 256 {
			a.audience = a.audience[:256]
		}
		return nil, oerr
	}
	requested := scopesOf(f.get("scope"))
	if len(requested) > 64 {
		return nil, oauthErr(codeInvalidScope, "too many scopes requested")
	}
	req := &policy.ExchangeRequest{GrantType: grant, Client: c.id, Audience: aud, Scopes: requested}
	var act *token.Actor
	if sub != nil {
		a.subject, a.issuer = sub.claims.Subject, sub.claims.Issuer
		req.SubjectIssuer = sub.claims.Issuer
		req.Subject = sub.claims.Map()
		req.Actors = sub.claims.Act.Chain()
		// The new actor goes first; the subject token's chain nests inside,
		// never stripped.
		act = &token.Actor{Subject: actor.Subject, Actor: sub.claims.Act}
		if d := act.Depth(); d > s.cfg.MaxChainDepth {
			return nil, oauthErr(codeInvalidGrant, fmt.Sprintf("delegation chain would be %d actors deep (the limit is %d)", d, s.cfg.MaxChainDepth))
		}
		a.actors = act.Chain()
	}
	d := st.engine.Exchange(req)
	a.decisionID, a.policy, a.reason, a.dryRun = d.DecisionID, d.Policy, d.Reason, d.DryRun
	if !d.Allow {
		a.audience = aud
		if d.Reason == "" {
			d.Reason = "no ExchangePolicy allows this exchange"
		}
		return nil, oauthErr(codeAccessDenied, d.Reason)
	}
	aud = d.Audience
	a.audience = aud
	if aud == "" {
		return nil, oauthErr(codeInvalidTarget, "audience (or resource) is required")
	}
	// Scopes only narrow: requested ⊆ subject's ∩ policy's ceiling.
	var available []string
	if sub != nil {
		available = sub.claims.Scopes()
	}
	if d.Scopes != nil {
		if sub == nil {
			available = slices.Clone(d.Scopes)
		} else {
			available = slices.DeleteFunc(available, func(x string) bool { return !slices.Contains(d.Scopes, x) })
		}
	}
	granted := available
	if len(requested) > 0 {
		for _, sc := range requested {
			if !slices.Contains(available, sc) {
				return nil, oauthErr(codeInvalidScope, fmt.Sprintf("scope %q may not be granted", sc))
			}
		}
		granted = requested
	}
	a.scopes = canonicalScopes(granted)

	lifetime := d.MaxLifetime
	if lifetime <= 0 {
		lifetime = s.cfg.DefaultLifetime
	}
	exp := now.Add(lifetime)
	claims := &token.Claims{
		Issuer: s.cfg.Issuer, Audience: []string{aud},
		IssuedAt: now, NotBefore: now, ID: token.NewID(),
		ClientID: c.id, Scope: a.scopes, Act: act,
	}
	if sub != nil {
		if sub.claims.Expiry.Before(exp) {
			exp = sub.claims.Expiry
		}
		claims.Subject = sub.claims.Subject
		if sub.self {
			claims.SessionID = sub.claims.SessionID
		}
		for _, name := range d.Claims {
			if token.IsRegistered(name) {
				continue
			}
			if sub.ext != nil && !sub.ext.claims[name] {
				continue
			}
			if v, ok := sub.claims.Extra[name]; ok {
				if claims.Extra == nil {
					claims.Extra = map[string]any{}
				}
				claims.Extra[name] = v
			}
		}
	} else {
		claims.Subject = c.id
	}
	if claims.SessionID == "" {
		claims.SessionID = claims.ID
	}
	if !exp.After(now) {
		return nil, oauthErr(codeInvalidGrant, "the subject token expires now")
	}
	claims.Expiry = exp
	if c.cert != nil {
		claims.Cnf = &token.Confirmation{X5tS256: token.Thumbprint(c.cert)}
	}
	typ := token.TypeAccessToken
	if issuedType == TokenTypeJWT {
		typ = token.TypeJWT
	}
	sg, err := s.signer(typ)
	if err != nil {
		return nil, oauthErr(codeServerError, "could not sign the token").withCause(err)
	}
	raw, err := sg.Sign(claims)
	if err != nil {
		return nil, oauthErr(codeServerError, "could not sign the token").withCause(err)
	}
	resp := &tokenResponse{
		AccessToken: raw, TokenType: "Bearer",
		ExpiresIn: int64(exp.Sub(now) / time.Second), Scope: a.scopes,
	}
	if grant == "token-exchange" {
		resp.IssuedTokenType = issuedType
		if issuedType != TokenTypeAccessToken {
			resp.TokenType = "N_A"
		}
	}
	return resp, nil
}

func scopesOf(s string) []string {
	out := scopesFields(s)
	slices.Sort(out)
	return slices.Compact(out)
}
