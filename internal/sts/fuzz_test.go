package sts

import (
	"encoding/json"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func FuzzParseForm(f *testing.F) {
	for _, s := range []string{
		"grant_type=client_credentials&audience=inventory-api",
		"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=eyJhbGciOiJFUzI1NiJ9.e30.sig&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt",
		"a=1&a=2", "%zz", "=x", "a&b&c", "", "a=&a=1", "a=1;b=2", "a+b=c+d%20e", "&&a=1&&",
		strings.Repeat("p=1&", 40), "a=%", "%41=1&A=2", "a=1" + strings.Repeat("&", 10000), "a=1" + strings.Repeat("&", 9998),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fm, err := parseForm(body)
		// The reference: url.ParseQuery, then no repeats and at most
		// maxParams names.
		vals, qerr := url.ParseQuery(string(body))
		wantOK := qerr == nil && len(vals) <= maxParams
		for _, v := range vals {
			wantOK = wantOK && len(v) == 1
		}
		if (err == nil) != wantOK {
			t.Fatalf("parseForm error %v, url.ParseQuery error %v with %d names", err, qerr, len(vals))
		}
		if err != nil {
			return
		}
		for k, v := range vals {
			if fm[k] != v[0] {
				t.Fatalf("parameter %q = %q, url.ParseQuery says %q", k, fm[k], v[0])
			}
		}
		for k, v := range fm {
			if v == "" || len(vals[k]) != 1 {
				t.Fatalf("parameter %q accepted with %d values", k, len(vals[k]))
			}
		}
	})
}

// FuzzTokenEndpoint drives the whole token endpoint with arbitrary bodies,
// seeded with real requests: it must never panic, never answer 5xx, and
// always answer with an RFC 6749 error or a token.
func FuzzTokenEndpoint(f *testing.F) {
	h := newHarness(f)
	user := h.userToken("alice", "orders:read orders:write")
	t1, _ := h.exchange(gatewayID, user, ordersID, "")
	f.Add(exchangeForm(user, TokenTypeJWT, ordersID, "").Encode(), true)
	f.Add(exchangeForm(t1, TokenTypeAccessToken, "inventory-api", "orders:write").Encode(), false)
	f.Add(url.Values{"grant_type": {GrantClientCredentials}, "audience": {"inventory-api"}}.Encode(), true)
	f.Add(url.Values{"grant_type": {GrantJWTBearer}, "assertion": {user}}.Encode(), true)
	f.Add("grant_type=password&username=a&password=b", false)
	gwPeer, ordersPeer := h.asPeer(gatewayID), h.asPeer(ordersID)
	f.Fuzz(func(t *testing.T, body string, gateway bool) {
		h.now = time.Now().Truncate(time.Second)
		req := httptest.NewRequest("POST", PathToken, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if gateway {
			gwPeer(req)
		} else {
			ordersPeer(req)
		}
		rec := httptest.NewRecorder()
		h.svc.Handler().ServeHTTP(rec, req)
		r := &response{status: rec.Code, raw: rec.Body.String()}
		if err := json.Unmarshal(rec.Body.Bytes(), &r.body); err != nil {
			t.Fatalf("response is not JSON: %d %q", rec.Code, rec.Body.String())
		}
		if r.status >= 500 {
			t.Fatalf("status %d for %q: %s", r.status, body, r.raw)
		}
		if r.status == 200 && r.str("access_token") == "" {
			t.Fatalf("200 without a token: %s", r.raw)
		}
		if r.status != 200 && r.str("error") == "" {
			t.Fatalf("error without an OAuth error code: %d %s", r.status, r.raw)
		}
	})
}
