package sts

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// maxParams bounds the number of form parameters in one request.
const maxParams = 32

// maxFormFields is url.ParseQuery's bound on &-separated fields, empty
// ones included; parseForm applies it too, to accept exactly what
// url.ParseQuery accepts.
const maxFormFields = 10000

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
// number of parameters, no parameter repeated (RFC 6749 §3.1). It accepts
// exactly what url.ParseQuery accepts, without building a []string per
// parameter (FuzzParseForm holds the two together).
func parseForm(body []byte) (form, error) {
	s := string(body)
	// As url.ParseQuery does (its default limit), before anything else:
	// empty fields count too.
	if strings.Count(s, "&") >= maxFormFields {
		return nil, fmt.Errorf("too many fields (the limit is %d parameters)", maxParams)
	}
	f := make(form, 8)
	var empty []string // parameters sent with an empty value, which count as absent
	for s != "" {
		var kv string
		kv, s, _ = strings.Cut(s, "&")
		if strings.Contains(kv, ";") {
			return nil, errors.New("request body is not valid form encoding")
		}
		if kv == "" {
			continue
		}
		rk, rv, _ := strings.Cut(kv, "=")
		k, err := url.QueryUnescape(rk)
		if err != nil {
			return nil, errors.New("request body is not valid form encoding")
		}
		v, err := url.QueryUnescape(rv)
		if err != nil {
			return nil, errors.New("request body is not valid form encoding")
		}
		if _, dup := f[k]; dup || slices.Contains(empty, k) {
			return nil, fmt.Errorf("parameter %q is repeated", k)
		}
		if len(f)+len(empty) == maxParams {
			return nil, fmt.Errorf("too many parameters (the limit is %d)", maxParams)
		}
		if v == "" {
			empty = append(empty, k)
			continue
		}
		f[k] = v
	}
	return f, nil
}
