package proxy

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/token"
)

func TestParseRevocationList(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	future, past := now.Add(time.Hour).Unix(), now.Add(-time.Second).Unix()
	tests := []struct {
		name       string
		body       string
		jtis, sids int
		wantErr    string
	}{
		{name: "empty", body: `{"revoked":[]}`},
		{name: "both kinds, expired dropped, unknown member ignored",
			body: `{"revoked":[{"kind":"jti","id":"a","until":` + itoa(future) + `},{"kind":"sid","id":"s","until":` + itoa(future) +
				`},{"kind":"jti","id":"old","until":` + itoa(past) + `}],"next":1}`,
			jtis: 1, sids: 1},
		// A kind this sidecar cannot apply fails the whole list (the last
		// good one stays): taking the rest would let those tokens pass.
		{name: "unknown kind", body: `{"revoked":[{"kind":"jti","id":"a","until":` + itoa(future) + `},{"kind":"sub","id":"alice","until":` + itoa(future) + `}]}`,
			wantErr: `entry 1 has kind "sub"`},
		{name: "no revoked member", body: `{}`, wantErr: `no "revoked" member`},
		{name: "null", body: `null`, wantErr: `no "revoked" member`},
		{name: "not JSON", body: `<html>`, wantErr: "revocation list:"},
		{name: "entry without id", body: `{"revoked":[{"kind":"jti","until":` + itoa(future) + `}]}`, wantErr: "entry 0"},
		{name: "entry without until", body: `{"revoked":[{"kind":"jti","id":"a"}]}`, wantErr: "entry 0"},
		{name: "id too long", body: `{"revoked":[{"kind":"jti","id":"` + strings.Repeat("a", 300) + `","until":` + itoa(future) + `}]}`, wantErr: "entry 0"},
		{name: "wrong type", body: `{"revoked":[{"kind":"jti","id":5,"until":1}]}`, wantErr: "revocation list:"},
		{name: "too large", body: `{"revoked":[` + strings.Repeat(" ", maxRevocationBody) + `]}`, wantErr: "over"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			set, err := parseRevocationList(strings.NewReader(tc.body), now, 0)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(set.jtis) != tc.jtis || len(set.sids) != tc.sids {
				t.Errorf("%d jtis, %d sids; want %d, %d", len(set.jtis), len(set.sids), tc.jtis, tc.sids)
			}
		})
	}
}

// TestRevocationLeeway: an entry outlives its until by the clock skew the
// sidecar tolerates on exp, so a revoked token that still verifies here is
// still refused.
func TestRevocationLeeway(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	body := `{"revoked":[{"kind":"jti","id":"a","until":` + itoa(now.Add(-10*time.Second).Unix()) + `}]}`
	set, err := parseRevocationList(strings.NewReader(body), now, 30*time.Second)
	if err != nil || len(set.jtis) != 1 {
		t.Fatalf("with 30s leeway: %v, %d entries", err, len(set.jtis))
	}
	l, _ := NewRevocationList(RevocationListConfig{URL: "https://x", Client: http.DefaultClient, Leeway: 30 * time.Second, Now: func() time.Time { return now }})
	l.set.Store(set)
	if !l.Revoked(&token.Claims{ID: "a"}) {
		t.Error("an entry within the leeway does not apply")
	}
	if set, _ := parseRevocationList(strings.NewReader(body), now, 0); len(set.jtis) != 0 {
		t.Error("without leeway an expired entry was kept")
	}
	if _, err := NewRevocationList(RevocationListConfig{URL: "https://x", Client: http.DefaultClient, Leeway: -time.Second}); err == nil {
		t.Error("a negative leeway was accepted")
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

// TestRevocationListRefresh: the list follows the server, revalidates with
// the ETag, and keeps the last good list through failures.
func TestRevocationListRefresh(t *testing.T) {
	now := time.Now()
	var body atomic.Value
	body.Store(`{"revoked":[{"kind":"sid","id":"s1","until":` + itoa(now.Add(time.Hour).Unix()) + `}]}`)
	var status atomic.Int32
	status.Store(200)
	var notModified atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b := body.Load().(string)
		etag := `"` + itoa(int64(len(b))) + `"`
		if s := int(status.Load()); s != 200 {
			w.WriteHeader(s)
			return
		}
		if r.Header.Get("If-None-Match") == etag {
			notModified.Add(1)
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.Header().Set("ETag", etag)
		io.WriteString(w, b)
	}))
	defer srv.Close()
	l, err := NewRevocationList(RevocationListConfig{URL: srv.URL, Client: srv.Client()})
	if err != nil {
		t.Fatal(err)
	}
	s1 := &token.Claims{ID: "j", SessionID: "s1"}
	if l.Revoked(s1) || l.Age() != -1 {
		t.Fatal("a list that was never fetched revokes something or has an age")
	}
	ctx := context.Background()
	if err := l.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if !l.Revoked(s1) || l.Revoked(&token.Claims{ID: "s1"}) || l.Revoked(&token.Claims{}) || l.Len() != 1 {
		t.Errorf("after the first fetch: revoked(s1)=%v len %d", l.Revoked(s1), l.Len())
	}
	if err := l.Refresh(ctx); err != nil || notModified.Load() != 1 {
		t.Errorf("second fetch: %v, %d not-modified answers", err, notModified.Load())
	}
	// Failures keep the last good list.
	status.Store(500)
	if err := l.Refresh(ctx); err == nil || !l.Revoked(s1) {
		t.Errorf("after a 500: error %v, revoked(s1)=%v", err, l.Revoked(s1))
	}
	status.Store(200)
	body.Store(`{"revoked":`)
	if err := l.Refresh(ctx); err == nil || !l.Revoked(s1) {
		t.Errorf("after a malformed list: error %v, revoked(s1)=%v", err, l.Revoked(s1))
	}
	// A 304 to a request that sent no ETag is not a list.
	always304 := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNotModified) }))
	defer always304.Close()
	l2, _ := NewRevocationList(RevocationListConfig{URL: always304.URL, Client: always304.Client()})
	if err := l2.Refresh(ctx); err == nil || l2.Age() >= 0 {
		t.Errorf("an unconditional 304 counted as a fetched list (error %v)", err)
	}
	// A new list replaces the old one.
	body.Store(`{"revoked":[{"kind":"jti","id":"j","until":` + itoa(now.Add(time.Hour).Unix()) + `}]}`)
	if err := l.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if !l.Revoked(s1) || l.Revoked(&token.Claims{SessionID: "s1"}) {
		t.Error("the new list was not applied")
	}
	// An entry stops applying once its until has passed.
	l.now = func() time.Time { return now.Add(2 * time.Hour) }
	if l.Revoked(s1) {
		t.Error("an entry applied past its until")
	}
}

// FuzzParseRevocationList: arbitrary bodies never panic, and a list that
// parses holds only bounded, unexpired ids.
func FuzzParseRevocationList(f *testing.F) {
	now := time.Unix(1_800_000_000, 0)
	for _, s := range []string{
		`{"revoked":[{"kind":"jti","id":"a","until":1900000000},{"kind":"sid","id":"s","until":1900000000}]}`,
		`{"revoked":[]}`, `{}`, `null`, `{"revoked":[{"kind":"jti","id":"a","until":1}]}`, `{"revoked":null}`,
		`{"revoked":[{"kind":"jti","id":"","until":1900000000}]}`, `[`, `{"revoked":[{"until":1e99}]}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		set, err := parseRevocationList(strings.NewReader(string(b)), now, 30*time.Second)
		if err != nil {
			return
		}
		for _, m := range []map[string]time.Time{set.jtis, set.sids} {
			for id, until := range m {
				if id == "" || len(id) > maxRevokedIDBytes || !now.Before(until) {
					t.Fatalf("kept %q until %v", id, until)
				}
			}
		}
	})
}

// TestSidecarRevocation: once the STS revokes a token's session, the
// callee's sidecar refuses the token within a poll of the revocation list,
// long before the token expires.
func TestSidecarRevocation(t *testing.T) {
	srv := startServer(t)
	app := &recorder{}
	inv := startSidecar(t, srv, "inventory", serveApp(t, app), nil, func(c *Config) {
		c.STS.RevocationPollInterval = policy.Duration(100 * time.Millisecond)
	})
	gw, orders := issue(t, srv, gatewayID), issue(t, srv, ordersID)
	hop1 := stsExchange(t, srv, gw, userToken(t, "alice", "orders:read orders:write"), jwtType, ordersID)
	hop2 := stsExchange(t, srv, orders, hop1, atType, invID)
	c := mtlsClient(srv, orders, inv.ID(), false)
	u := "https://" + inv.InboundAddr().String() + "/items/42"
	if status, body, _ := get(t, c, u, map[string]string{"Authorization": "Bearer " + hop2}); status != 200 {
		t.Fatalf("before revocation: %d %s", status, body)
	}

	// Order-processing revokes the session of the token it was handed.
	pool := x509.NewCertPool()
	for _, ca := range srv.CA().X509Authorities() {
		pool.AddCert(ca)
	}
	rc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSWebClientConfig(orders, pool)}}
	resp, err := rc.PostForm(srv.Issuer()+"/oauth2/revoke", url.Values{"token": {hop1}, "revoke_family": {"true"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("revoke: %d", resp.StatusCode)
	}

	var last []byte
	var lastHdr http.Header
	waitFor(t, "the sidecar to refuse the revoked session", func() bool {
		status, body, hdr := get(t, c, u, map[string]string{"Authorization": "Bearer " + hop2})
		last, lastHdr = body, hdr
		return status == http.StatusUnauthorized
	})
	if !strings.Contains(string(last), "revoked") || !strings.Contains(lastHdr.Get("WWW-Authenticate"), `error="invalid_token"`) {
		t.Errorf("refusal: %s, WWW-Authenticate %q", last, lastHdr.Get("WWW-Authenticate"))
	}
	if inv.revoked.Len() == 0 {
		t.Error("the sidecar holds no revocation")
	}
}

// TestSidecarOutboundRevocation: once a user's token is revoked (by its
// jti alone), the caller's sidecar stops sending the exchanged token it has
// cached for it, although the callee would still accept that token.
func TestSidecarOutboundRevocation(t *testing.T) {
	srv := startServer(t)
	inv := startSidecar(t, srv, "inventory", serveApp(t, &recorder{}), nil)
	fast := func(c *Config) { c.STS.RevocationPollInterval = policy.Duration(100 * time.Millisecond) }
	orders := startSidecar(t, srv, "order-processing", serveApp(t, &recorder{}), map[string]string{"inventory": inv.InboundAddr().String()}, fast)
	gw := issue(t, srv, gatewayID)
	hop1 := stsExchange(t, srv, gw, userToken(t, "alice", "orders:read orders:write"), jwtType, ordersID)
	call := func() (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "http://inventory/items/42", nil)
		req.Header.Set("Authorization", "Bearer "+hop1)
		resp, err := proxyClient(orders).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.Error
	}
	if status, code := call(); status != 200 {
		t.Fatalf("before revocation: %d %s", status, code)
	}

	pool := x509.NewCertPool()
	for _, ca := range srv.CA().X509Authorities() {
		pool.AddCert(ca)
	}
	rc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsconfig.MTLSWebClientConfig(orders.svid, pool)}}
	resp, err := rc.PostForm(srv.Issuer()+"/oauth2/revoke", url.Values{"token": {hop1}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("revoke: %d", resp.StatusCode)
	}
	var code string
	waitFor(t, "the caller's sidecar to refuse the revoked user token", func() bool {
		var status int
		status, code = call()
		return status == http.StatusUnauthorized
	})
	if code != errTokenRevoked {
		t.Errorf("error %q, want %q", code, errTokenRevoked)
	}
}
