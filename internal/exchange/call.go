package exchange

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ErrUnavailable is matched (errors.Is) by errors meaning the STS could not
// be reached or could not answer (network errors, timeouts, 5xx): a proxy
// maps it to 503. A refusal (*Error with a 4xx status) does not match it.
var ErrUnavailable = errors.New("exchange: token service unavailable")

// Error is a refusal by the STS: the OAuth error code and description of
// its RFC 6749 §5.2 answer (both safe to show to the application), the HTTP
// status, and the decision id of the STS's audit line.
type Error struct {
	Code        string
	Description string
	Status      int
	DecisionID  string
}

func (e *Error) Error() string {
	if e.Description == "" {
		return fmt.Sprintf("exchange: token service refused (%d): %s", e.Status, e.Code)
	}
	return fmt.Sprintf("exchange: token service refused (%d): %s: %s", e.Status, e.Code, e.Description)
}

// Unwrap makes an answer with a 5xx or 429 status, or a redirect (never
// followed), match ErrUnavailable.
func (e *Error) Unwrap() error {
	if e.Status >= 500 || e.Status == http.StatusTooManyRequests || (e.Status >= 300 && e.Status < 400) {
		return ErrUnavailable
	}
	return nil
}

// Bounds on what the STS may send back.
const (
	maxResponseBytes = 64 << 10
	maxTokenBytes    = 16 << 10
	maxFieldBytes    = 1 << 10
	maxLifetime      = 24 * time.Hour
)

// call performs one token request.
func (c *Client) call(ctx context.Context, req request) (*Token, error) {
	form := url.Values{"audience": {req.audience}}
	if req.subject == "" {
		form.Set("grant_type", grantClientCredentials)
	} else {
		form.Set("grant_type", grantTokenExchange)
		form.Set("subject_token", req.subject)
		form.Set("subject_token_type", tokenTypeAccessToken)
		form.Set("requested_token_type", tokenTypeAccessToken)
	}
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, c.endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, fmt.Errorf("exchange: build request: %w", err)
	}
	hr.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	hr.Header.Set("Accept", "application/json")
	now := c.cfg.Now()
	resp, err := c.httpClient(req).Do(hr)
	if err != nil {
		// *url.Error carries the endpoint URL only, never the form.
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: read response: %w", ErrUnavailable, err)
	}
	if len(body) > maxResponseBytes {
		return nil, fmt.Errorf("%w: response exceeds %d bytes", ErrUnavailable, maxResponseBytes)
	}
	tok, err := parseResponse(resp.StatusCode, resp.Header.Get("X-Decision-Id"), body, now, req.subject != "")
	if err != nil {
		return nil, err
	}
	tok.Thumbprint = req.thumbprint
	return tok, nil
}

// parseResponse turns an STS answer into a token or an error. body is
// untrusted and bounded by the caller; exchange says whether it answers a
// token exchange, whose issued_token_type must be an access token.
func parseResponse(status int, decisionID string, body []byte, now time.Time, exchange bool) (*Token, error) {
	if len(decisionID) > maxFieldBytes {
		decisionID = ""
	}
	if status != http.StatusOK {
		var oe struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		e := &Error{Status: status, DecisionID: decisionID}
		if json.Unmarshal(body, &oe) == nil && oe.Error != "" && printable(oe.Error) && len(oe.Error) <= maxFieldBytes {
			e.Code = oe.Error
			if printable(oe.Description) && len(oe.Description) <= maxFieldBytes {
				e.Description = oe.Description
			}
		} else if status >= 500 || status == http.StatusTooManyRequests || (status >= 300 && status < 400) {
			// A redirect is not followed (the form holds the subject
			// token) and is no answer of the token service's.
			e.Code = "server_error"
		} else {
			e.Code = "invalid_response"
			e.Description = fmt.Sprintf("the token service answered %d without an OAuth error", status)
		}
		return nil, e
	}
	var ok struct {
		AccessToken     string  `json:"access_token"`
		TokenType       string  `json:"token_type"`
		IssuedTokenType string  `json:"issued_token_type"`
		ExpiresIn       float64 `json:"expires_in"`
		Scope           string  `json:"scope"`
	}
	if err := json.Unmarshal(body, &ok); err != nil {
		return nil, fmt.Errorf("%w: malformed token response: %w", ErrUnavailable, err)
	}
	switch {
	case ok.AccessToken == "" || len(ok.AccessToken) > maxTokenBytes || !tokenChars(ok.AccessToken):
		return nil, fmt.Errorf("%w: token response holds no usable access_token", ErrUnavailable)
	case !strings.EqualFold(ok.TokenType, "Bearer"):
		return nil, fmt.Errorf("%w: token response has token_type %q, not Bearer", ErrUnavailable, truncate(ok.TokenType))
	case exchange && ok.IssuedTokenType != tokenTypeAccessToken,
		!exchange && ok.IssuedTokenType != "" && ok.IssuedTokenType != tokenTypeAccessToken:
		return nil, fmt.Errorf("%w: token response has issued_token_type %q, not an access token", ErrUnavailable, truncate(ok.IssuedTokenType))
	case !(ok.ExpiresIn >= 1) || ok.ExpiresIn > maxLifetime.Seconds():
		return nil, fmt.Errorf("%w: token response has no usable expires_in", ErrUnavailable)
	case len(ok.Scope) > maxFieldBytes || !printable(ok.Scope):
		return nil, fmt.Errorf("%w: token response has a malformed scope", ErrUnavailable)
	}
	return &Token{
		Raw:    ok.AccessToken,
		Expiry: now.Add(time.Duration(ok.ExpiresIn) * time.Second),
		Scope:  ok.Scope,
	}, nil
}

// tokenChars reports whether s may go in an Authorization header as a
// bearer token (RFC 6750 b64token).
func tokenChars(s string) bool {
	for i := 0; i < len(s); i++ {
		b := s[i]
		switch {
		case b >= 'a' && b <= 'z', b >= 'A' && b <= 'Z', b >= '0' && b <= '9':
		case b == '-' || b == '.' || b == '_' || b == '~' || b == '+' || b == '/' || b == '=':
		default:
			return false
		}
	}
	return true
}

func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func truncate(s string) string {
	if len(s) > 32 {
		s = s[:32]
	}
	if !printable(s) {
		return "?"
	}
	return s
}
