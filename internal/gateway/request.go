package gateway

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"postern.dev/postern/internal/proxy"
)

// maxDescription bounds an error description sent to users.
const maxDescription = 200

// Error codes of the JSON error body (and of WWW-Authenticate where RFC
// 6750 defines them).
const (
	codeInvalidRequest     = "invalid_request"
	codeInvalidToken       = "invalid_token"
	codeUnauthorized       = "unauthorized"
	codeInsufficientScope  = "insufficient_scope"
	codeAccessDenied       = "access_denied"
	codeNotFound           = "not_found"
	codeMethodNotAllowed   = "method_not_allowed"
	codeRateLimited        = "rate_limited"
	codeUnavailable        = "temporarily_unavailable"
	codeBadGateway         = "bad_gateway"
	codeUpstreamTimeout    = "upstream_timeout"
	codeTokenService       = "token_service_unavailable"
	codeExchangeRefused    = "token_exchange_refused"
	codeExchangeFailed     = "token_exchange_failed"
	codeRequestHeaderLarge = "request_header_too_large"
)

// problem is the JSON body of every answer the gateway makes itself.
type problem struct {
	Error      string `json:"error"`
	Reason     string `json:"reason"`
	DecisionID string `json:"decision_id"`
}

func writeProblem(w http.ResponseWriter, status int, code, reason, id string) {
	b, _ := json.Marshal(problem{Error: code, Reason: reason, DecisionID: id})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Del("Content-Length")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// bearerChallenge is an RFC 6750 §3 WWW-Authenticate value.
func bearerChallenge(code, desc, scope string) string {
	v := `Bearer realm="postern"`
	if code != "" {
		v += fmt.Sprintf(`, error=%q`, code)
	}
	if desc != "" {
		v += fmt.Sprintf(`, error_description=%q`, headerSafe(desc))
	}
	if scope != "" {
		v += fmt.Sprintf(`, scope=%q`, headerSafe(scope))
	}
	return v
}

// headerSafe makes s safe inside a quoted header parameter, bounded.
func headerSafe(s string) string {
	if len(s) > maxDescription {
		s = s[:maxDescription]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '"' || r == '\\' || r > 0x7e {
			return '\''
		}
		return r
	}, s)
}

// safeReason bounds a reason for a JSON body.
func safeReason(s string) string {
	if len(s) > maxDescription {
		return s[:maxDescription]
	}
	return s
}

// hasPosternPrefix reports whether a header name is one of Postern's
// identity headers (X-Postern-*, in any case, "_" for "-").
func hasPosternPrefix(k string) bool { return proxy.IsPosternHeader(k) }

// overrideHeaders are request headers with which some frameworks route a
// request to another path or method than its request line names, or take
// the client's address, undoing what the gateway decided on; they never
// reach an upstream from outside.
var overrideHeaders = map[string]bool{
	"X-Original-Url":         true,
	"X-Rewrite-Url":          true,
	"X-Http-Method-Override": true,
	"X-Http-Method":          true,
	"X-Method-Override":      true,
	"X-Real-Ip":              true,
}

// forwardHeader copies h without X-Postern-* headers, Authorization, the
// override headers, and an Upgrade to anything but WebSocket (after an
// upgrade the connection is a tunnel the gateway no longer checks).
func forwardHeader(h http.Header) http.Header {
	out := make(http.Header, len(h))
	for k, v := range h {
		ck := http.CanonicalHeaderKey(k)
		if ck == "Authorization" || hasPosternPrefix(k) || overrideHeaders[ck] {
			continue
		}
		if ck == "Upgrade" && !(len(v) == 1 && strings.EqualFold(strings.TrimSpace(v[0]), "websocket")) {
			continue
		}
		out[k] = v
	}
	return out
}

// scopesOf returns the token's scopes: the space-separated scope claim, or
// scp as a string or a list (Entra ID, Okta).
func scopesOf(p *principal) []string {
	if p.claims.Scope != "" {
		return strings.Fields(p.claims.Scope)
	}
	switch v := p.m["scp"].(type) {
	case string:
		return strings.Fields(v)
	case []any:
		out := make([]string, 0, len(v))
		for _, s := range v {
			if str, ok := s.(string); ok {
				out = append(out, str)
			}
		}
		return out
	}
	return nil
}

// missingScope returns the first required scope the token lacks, or "".
func missingScope(required, have []string) string {
outer:
	for _, r := range required {
		for _, h := range have {
			if h == r {
				continue outer
			}
		}
		return r
	}
	return ""
}
