package sts

import (
	"encoding/json"
	"net/http"
)

// OAuth 2.0 error codes (RFC 6749 §5.2, RFC 8693 §2.2.2, RFC 8707).
const (
	codeInvalidRequest       = "invalid_request"
	codeInvalidClient        = "invalid_client"
	codeInvalidGrant         = "invalid_grant"
	codeUnauthorizedClient   = "unauthorized_client"
	codeUnsupportedGrantType = "unsupported_grant_type"
	codeInvalidScope         = "invalid_scope"
	codeInvalidTarget        = "invalid_target"
	codeAccessDenied         = "access_denied"
	codeServerError          = "server_error"
	codeUnsupportedTokenType = "unsupported_token_type"
)

// Error is an OAuth error response. Description is safe to send; Cause is
// internal and only logged.
type Error struct {
	Code        string
	Description string
	Status      int
	Cause       error
	basic       bool // the client tried HTTP Basic: answer with a challenge
}

func (e *Error) Error() string {
	if e.Cause != nil {
		return "sts: " + e.Code + ": " + e.Description + ": " + e.Cause.Error()
	}
	return "sts: " + e.Code + ": " + e.Description
}

func (e *Error) Unwrap() error { return e.Cause }

func oauthErr(code, desc string) *Error {
	status := http.StatusBadRequest
	switch code {
	case codeInvalidClient:
		status = http.StatusUnauthorized
	case codeAccessDenied:
		status = http.StatusForbidden
	case codeServerError:
		status = http.StatusInternalServerError
	}
	return &Error{Code: code, Description: desc, Status: status}
}

func (e *Error) withStatus(s int) *Error { e.Status = s; return e }

func (e *Error) withCause(err error) *Error { e.Cause = err; return e }

func writeError(w http.ResponseWriter, e *Error) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	if e.Status == http.StatusUnauthorized {
		if e.basic {
			h.Set("WWW-Authenticate", `Basic realm="postern"`)
		} else {
			h.Set("WWW-Authenticate", `Bearer realm="postern", error="invalid_client"`)
		}
	}
	w.WriteHeader(e.Status)
	_ = json.NewEncoder(w).Encode(struct {
		Error       string `json:"error"`
		Description string `json:"error_description,omitempty"`
	}{e.Code, e.Description})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	h.Set("Pragma", "no-cache")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
