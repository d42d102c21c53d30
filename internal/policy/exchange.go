package policy

import (
	"fmt"
	"slices"
	"time"
)

// ExchangeRequest is the input of an exchange decision, built by the STS from
// the authenticated client and the verified subject token.
type ExchangeRequest struct {
	// GrantType is "token-exchange", "jwt-bearer" or "client-credentials".
	GrantType string
	// Client is the authenticated client's SPIFFE ID.
	Client string
	// SubjectIssuer is the iss of the subject token ("" for client-credentials).
	SubjectIssuer string
	// Subject holds the verified subject-token claims (nil for client-credentials).
	Subject map[string]any
	// Actors are the act chain subjects of the subject token, newest first.
	Actors []string
	// Audience is the requested audience; "" lets the policy pick its only target.
	Audience string
	// Scopes are the requested scopes (nil: none requested).
	Scopes []string
}

// ExchangeDecision is the outcome of Exchange.
type ExchangeDecision struct {
	// Allow is true when an enforced ALLOW policy matched and no enforced DENY did.
	Allow bool
	// DecisionID identifies this decision (32 hex digits).
	DecisionID string
	// Policy is the deciding policy ("" if none matched).
	Policy string
	// Reason says why the exchange is allowed or denied.
	Reason string
	// Audience is the resolved target audience (when allowed).
	Audience string
	// Scopes is the policy's scope ceiling; nil means no ceiling (the STS
	// intersects it with the requested and the subject token's scopes).
	// Do not modify it: it is shared with the Engine.
	Scopes []string
	// Claims are the user claims the policy lets through (already limited
	// by the TrustedIssuer's claims for external subjects).
	Claims []string
	// MaxLifetime is the longest lifetime the issued token may have; zero
	// when the policy names none (the token service's default applies).
	MaxLifetime time.Duration
	// DryRun lists what DryRun policies would have decided.
	DryRun []string
}

// Exchange decides whether a client may exchange a subject token for a token
// towards an audience: enforced DENY policies first (any match denies), then
// ALLOW policies in name order (the first match decides). Anything else is
// denied.
func (e *Engine) Exchange(req *ExchangeRequest) ExchangeDecision {
	d := ExchangeDecision{DecisionID: e.newID().String()}
	switch req.GrantType {
	case GrantTokenExchange, GrantJWTBearer, GrantClientCredentials:
	default:
		d.Reason = fmt.Sprintf("unsupported grant type %q", req.GrantType)
		return d
	}
	if req.Client == "" {
		d.Reason = "no authenticated client"
		return d
	}
	if req.GrantType != GrantClientCredentials && req.SubjectIssuer == "" {
		d.Reason = "no subject token issuer"
		return d
	}
	aud := req.Audience
	if aud == "" {
		found, ambiguous := "", false
		for _, p := range e.exchAllow {
			if p.dryRun || !p.matchesBase(req) {
				continue
			}
			for i := range p.audiences {
				m := &p.audiences[i]
				switch {
				case m.kind != mExact:
					ambiguous = true
				case found == "":
					found = m.s
				case found != m.s:
					ambiguous = true
				}
			}
		}
		if ambiguous || found == "" {
			d.Reason = fmt.Sprintf("audience required: no single audience can be chosen for client %s", req.Client)
			return d
		}
		aud = found
	}

	for _, p := range e.exchDeny {
		if !p.matchesBase(req) || !matchAny(p.audiences, aud) {
			continue
		}
		ok, err := p.when(req, aud)
		if err == nil && !ok {
			continue
		}
		reason := fmt.Sprintf("ExchangePolicy %q denies client %s tokens for audience %s", p.name, req.Client, aud)
		if err != nil {
			reason += fmt.Sprintf(" (its condition could not be evaluated: %v; fail closed)", err)
		}
		if p.dryRun {
			d.DryRun = append(d.DryRun, "dry-run: "+reason)
			continue
		}
		d.Policy, d.Reason = p.name, reason
		return d
	}
	var notes string
	for _, p := range e.exchAllow {
		if !p.matchesBase(req) || !matchAny(p.audiences, aud) {
			continue
		}
		ok, err := p.when(req, aud)
		if err != nil {
			notes += fmt.Sprintf("; ExchangePolicy %q: condition could not be evaluated: %v", p.name, err)
			continue
		}
		if !ok {
			continue
		}
		if p.dryRun {
			d.DryRun = append(d.DryRun, fmt.Sprintf("dry-run: ExchangePolicy %q would allow client %s tokens for audience %s", p.name, req.Client, aud))
			continue
		}
		d.Allow = true
		d.Policy = p.name
		d.Audience = aud
		d.Scopes = p.scopes
		d.Claims = e.carriedClaims(p.claims, req.SubjectIssuer)
		d.MaxLifetime = p.maxLifetime
		d.Reason = fmt.Sprintf("ExchangePolicy %q allows client %s tokens for audience %s", p.name, req.Client, aud)
		return d
	}
	if req.GrantType == GrantClientCredentials {
		d.Reason = fmt.Sprintf("no ExchangePolicy allows client %s to obtain tokens (client-credentials) for audience %s", req.Client, aud)
	} else {
		d.Reason = fmt.Sprintf("no ExchangePolicy allows client %s to exchange tokens from issuer %s for audience %s", req.Client, req.SubjectIssuer, aud)
	}
	d.Reason += notes
	return d
}

// carriedClaims limits a policy's claims by the TrustedIssuer's claims when
// the subject comes from an external issuer.
func (e *Engine) carriedClaims(claims []string, issuer string) []string {
	if issuer == "" || issuer == e.opts.SelfIssuer {
		return claims
	}
	i, ok := e.byIssuer[issuer]
	if !ok {
		return nil
	}
	allowed := e.issuers[i].Claims
	var out []string
	for _, c := range claims {
		if slices.Contains(allowed, c) {
			out = append(out, c)
		}
	}
	return out
}

func (p *cexch) matchesBase(req *ExchangeRequest) bool {
	if !slices.Contains(p.grants, req.GrantType) || !matchAny(p.clients, req.Client) {
		return false
	}
	if req.GrantType == GrantClientCredentials {
		return true
	}
	return slices.Contains(p.issuers, req.SubjectIssuer)
}

func (p *cexch) when(req *ExchangeRequest, aud string) (bool, error) {
	if p.prg == nil {
		return true, nil
	}
	return evalBool(p.prg, exchangeActivation{r: req, audience: aud})
}
