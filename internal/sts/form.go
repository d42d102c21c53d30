package sts

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
)

// maxParams bounds the number of form parameters in one request.
const maxParams = 32

// form is a parsed request body: each parameter appears at most once.
type form map[string]string

// get returns the parameter's value; an empty value counts as absent
// (RFC 6749 §3.1).
func (f form) get(name string) string { return f[name] }

// readForm reads and parses an application/x-www-form-urlencoded POST body of
// at most limit bytes.
func readForm(w http.ResponseWriter, r *http.Request, limit int64) (form, *Error) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return nil, oauthErr(codeInvalidRequest, "the endpoint takes POST").withStatus(http.StatusMethodNotAllowed)
	}
	if r.URL.RawQuery != "" {
		return nil, oauthErr(codeInvalidRequest, "parameters must be sent in the request body, not the URL")
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, oauthErr(codeInvalidRequest, "content type must be application/x-www-form-urlencoded").withStatus(http.StatusUnsupportedMediaType)
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, oauthErr(codeInvalidRequest, fmt.Sprintf("request body exceeds %d bytes", limit)).withStatus(http.StatusRequestEntityTooLarge)
		}
		return nil, oauthErr(codeInvalidRequest, "could not read the request body")
	}
	f, err := parseForm(body)
	if err != nil {
		return nil, oauthErr(codeInvalidRequest, err.Error())
	}
	return f, nil
}

// parseForm parses a urlencoded body strictly: valid encoding, a bounded
// number of parameters, no parameter repeated (RFC 6749 §3.1).
func parseForm(body []byte) (form, error) {
	vals, err := url.ParseQuery(string(body))
	if err != nil {
		return nil, errors.New("request body is not valid form encoding")
	}
	if len(vals) > maxParams {
		return nil, fmt.Errorf("too many parameters (the limit is %d)", maxParams)
	}
	f := make(form, len(vals))
	for k, v := range vals {
		if len(v) > 1 {
			return nil, fmt.Errorf("parameter %q is repeated", k)
		}
		if v[0] != "" {
			f[k] = v[0]
		}
	}
	return f, nil
}
