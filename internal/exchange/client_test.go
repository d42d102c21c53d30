package exchange

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/token"
)

func TestCachePerKey(t *testing.T) {
	ca := testca.New(t, td)
	f := newFakeSTS(t, ca)
	clk := newClock()
	c, src := newTestClient(t, ca, f, clk)
	ctx := context.Background()

	t1, err := c.Exchange(ctx, "subject-a", invAud)
	if err != nil {
		t.Fatal(err)
	}
	form := f.lastForm()
	for k, want := range map[string]string{
		"grant_type": grantTokenExchange, "subject_token": "subject-a",
		"subject_token_type": tokenTypeAccessToken, "audience": invAud,
		"requested_token_type": tokenTypeAccessToken,
	} {
		if form[k] != want {
			t.Errorf("form %s = %q, want %q", k, form[k], want)
		}
	}
	if f.peers[0] != clientID {
		t.Errorf("the STS saw client %q", f.peers[0])
	}
	svid, _ := src.GetX509SVID()
	if t1.Thumbprint != token.Thumbprint(svid.Certificates[0]) || t1.Scope != "orders:write" || !t1.Expiry.Equal(clk.Now().Add(100*time.Second)) {
		t.Errorf("token = %+v", t1)
	}

	steps := []struct {
		name      string
		subject   string
		audience  string
		wantCalls int64
		wantSame  bool
	}{
		{"same subject and audience: cached", "subject-a", invAud, 1, true},
		{"other audience", "subject-a", "spiffe://example.test/ns/a/sa/finance", 2, false},
		{"other subject", "subject-b", invAud, 3, false},
		{"client credentials", "", invAud, 4, false},
		{"client credentials again: cached", "", invAud, 4, false},
		{"first again: still cached", "subject-a", invAud, 4, true},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			var tok *Token
			var err error
			if s.subject == "" {
				tok, err = c.ClientCredentials(ctx, s.audience)
			} else {
				tok, err = c.Exchange(ctx, s.subject, s.audience)
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := f.calls.Load(); got != s.wantCalls {
				t.Errorf("STS calls = %d, want %d", got, s.wantCalls)
			}
			if (tok == t1) != s.wantSame {
				t.Errorf("same token = %v, want %v", tok == t1, s.wantSame)
			}
		})
	}
	if form := f.lastForm(); form["grant_type"] != grantClientCredentials || form["subject_token"] != "" {
		t.Errorf("client credentials form = %v", form)
	}
	st := c.Stats()
	if st.CacheHits != 3 || st.CacheMisses != 4 || st.Issued != 4 {
		t.Errorf("stats = %+v", st)
	}
	if c.Len() != 4 {
		t.Errorf("cache holds %d tokens", c.Len())
	}
}

func TestRefreshAt(t *testing.T) {
	ca := testca.New(t, td)
	f := newFakeSTS(t, ca)
	clk := newClock()
	c, _ := newTestClient(t, ca, f, clk)
	ctx := context.Background()
	t1, err := c.Exchange(ctx, "s", invAud)
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(79 * time.Second) // lifetime 100s, RefreshAt 0.8
	if tok, _ := c.Exchange(ctx, "s", invAud); tok != t1 || f.calls.Load() != 1 {
		t.Fatalf("renewed before 80%% of the lifetime (calls %d)", f.calls.Load())
	}
	clk.Add(2 * time.Second)
	t2, err := c.Exchange(ctx, "s", invAud)
	if err != nil {
		t.Fatal(err)
	}
	if t2 == t1 || t2.Raw == t1.Raw || f.calls.Load() != 2 {
		t.Fatalf("not renewed after 80%% of the lifetime (calls %d)", f.calls.Load())
	}
	if tok, _ := c.Exchange(ctx, "s", invAud); tok != t2 {
		t.Fatal("the renewed token is not cached")
	}
}

func TestSingleflight(t *testing.T) {
	ca := testca.New(t, td)
	f := newFakeSTS(t, ca)
	f.gate = make(chan struct{})
	c, _ := newTestClient(t, ca, f, newClock())
	const n = 50
	var wg sync.WaitGroup
	toks := make([]*Token, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { toks[i], errs[i] = c.Exchange(context.Background(), "s", invAud) })
	}
	// Hold the STS until every caller has missed the cache and joined.
	for c.Stats().CacheMisses < n {
		runtime.Gosched()
	}
	close(f.gate)
	wg.Wait()
	for i := range n {
		if errs[i] != nil || toks[i] != toks[0] {
			t.Fatalf("call %d: %v %v", i, toks[i], errs[i])
		}
	}
	if got := f.calls.Load(); got != 1 {
		t.Errorf("%d concurrent identical calls made %d STS calls, want 1", n, got)
	}
}

func TestCancelledWaiter(t *testing.T) {
	ca := testca.New(t, td)
	f := newFakeSTS(t, ca)
	f.gate = make(chan struct{})
	c, _ := newTestClient(t, ca, f, newClock())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Exchange(ctx, "s", invAud); !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
	close(f.gate)
	// The flight went on for others: the next caller gets its token.
	if _, err := c.Exchange(context.Background(), "s", invAud); err != nil {
		t.Fatal(err)
	}
}

func TestServesCachedWhileSTSDown(t *testing.T) {
	ca := testca.New(t, td)
	f := newFakeSTS(t, ca)
	clk := newClock()
	c, _ := newTestClient(t, ca, f, clk)
	ctx := context.Background()
	t1, err := c.Exchange(ctx, "s", invAud)
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(90 * time.Second) // past RefreshAt, before expiry

	f.status.Store(http.StatusServiceUnavailable)
	if tok, err := c.Exchange(ctx, "s", invAud); err != nil || tok != t1 {
		t.Fatalf("STS answering 503: %v", err)
	}
	f.srv.Close() // unreachable
	if tok, err := c.Exchange(ctx, "s", invAud); err != nil || tok != t1 {
		t.Fatalf("STS unreachable: %v", err)
	}
	if st := c.Stats(); st.StaleServed != 2 || st.Unavailable != 2 {
		t.Errorf("stats = %+v", st)
	}
	// No cached token for another subject: unavailable.
	if _, err := c.Exchange(ctx, "other", invAud); !errors.Is(err, ErrUnavailable) {
		t.Errorf("uncached while down: %v", err)
	}
	clk.Add(10 * time.Second) // expired
	if _, err := c.Exchange(ctx, "s", invAud); !errors.Is(err, ErrUnavailable) {
		t.Errorf("expired while down: %v", err)
	}
}

func TestRefusals(t *testing.T) {
	ca := testca.New(t, td)
	f := newFakeSTS(t, ca)
	c, _ := newTestClient(t, ca, f, newClock())
	ctx := context.Background()
	for _, tc := range []struct {
		name        string
		status      int64
		subject     string
		want        *Error
		unavailable bool
	}{
		{"policy refusal", 0, "refused", &Error{Code: "access_denied", Description: "no ExchangePolicy allows this exchange", Status: 403, DecisionID: "dec-1"}, false},
		{"invalid subject", 0, "expired", &Error{Code: "invalid_grant", Description: "subject_token rejected: token: expired", Status: 400, DecisionID: "dec-2"}, false},
		{"store down", http.StatusServiceUnavailable, "s", &Error{Code: "server_error", Description: "the store is unavailable", Status: 503, DecisionID: "dec-3"}, true},
		{"rate limited", http.StatusTooManyRequests, "s", &Error{Code: "server_error", Description: "the store is unavailable", Status: 429, DecisionID: "dec-4"}, true},
		{"not OAuth", http.StatusBadGateway, "s", &Error{Code: "server_error", Status: 502, DecisionID: "dec-5"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f.status.Store(tc.status)
			_, err := c.Exchange(ctx, tc.subject, invAud)
			var e *Error
			if !errors.As(err, &e) || *e != *tc.want {
				t.Fatalf("err = %#v, want %#v", err, tc.want)
			}
			if errors.Is(err, ErrUnavailable) != tc.unavailable {
				t.Errorf("errors.Is(ErrUnavailable) = %v", !tc.unavailable)
			}
		})
	}
	if got := c.Stats(); got.Refused != 2 || got.Unavailable != 3 {
		t.Errorf("stats = %+v", got)
	}
}

// A refusal on renewal drops the cached token: policy changes apply within
// one refresh period.
func TestRefusalDropsCachedToken(t *testing.T) {
	ca := testca.New(t, td)
	f := newFakeSTS(t, ca)
	clk := newClock()
	c, _ := newTestClient(t, ca, f, clk)
	ctx := context.Background()
	if _, err := c.Exchange(ctx, "s", invAud); err != nil {
		t.Fatal(err)
	}
	clk.Add(85 * time.Second)
	f.status.Store(http.StatusForbidden)
	var e *Error
	if _, err := c.Exchange(ctx, "s", invAud); !errors.As(err, &e) || e.Code != "access_denied" {
		t.Fatalf("err = %v", err)
	}
	if c.Len() != 0 {
		t.Error("refused token still cached")
	}
}

func TestRotationRebinds(t *testing.T) {
	ca := testca.New(t, td)
	f := newFakeSTS(t, ca)
	c, src := newTestClient(t, ca, f, newClock())
	ctx := context.Background()
	t1, err := c.Exchange(ctx, "s", invAud)
	if err != nil {
		t.Fatal(err)
	}
	v := src.rotate(t, ca, clientID)
	t2, err := c.Exchange(ctx, "s", invAud)
	if err != nil {
		t.Fatal(err)
	}
	if t2 == t1 || t2.Thumbprint != token.Thumbprint(v.Cert) || f.calls.Load() != 2 {
		t.Fatalf("a token bound to the old certificate was served after rotation")
	}
	f.mu.Lock()
	got := f.lastCert
	f.mu.Unlock()
	if !got.Equal(v.Cert) {
		t.Error("the STS was not called with the new certificate")
	}
}

func TestUntrustedSTS(t *testing.T) {
	ca := testca.New(t, td)
	other := testca.New(t, td)
	f := newFakeSTS(t, other) // serving certificate from another CA
	c, _ := newTestClient(t, ca, f, newClock())
	_, err := c.Exchange(context.Background(), "s", invAud)
	var uerr x509.UnknownAuthorityError
	if !errors.Is(err, ErrUnavailable) || !errors.As(err, &uerr) {
		t.Fatalf("err = %v", err)
	}
	if f.calls.Load() != 0 {
		t.Error("request reached an untrusted STS")
	}
}

func TestInputBounds(t *testing.T) {
	ca := testca.New(t, td)
	f := newFakeSTS(t, ca)
	c, _ := newTestClient(t, ca, f, newClock())
	ctx := context.Background()
	for _, tc := range []struct {
		name, subject, audience, want string
	}{
		{"empty subject", "", invAud, "exchange: empty subject token"},
		{"huge subject", strings.Repeat("a", MaxSubjectTokenBytes+1), invAud, "exchange: subject token exceeds 16384 bytes"},
		{"no audience", "s", "", "exchange: audience is empty or too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.Exchange(ctx, tc.subject, tc.audience); err == nil || err.Error() != tc.want {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if f.calls.Load() != 0 {
		t.Error("STS called")
	}
}

func TestCacheBound(t *testing.T) {
	ca := testca.New(t, td)
	f := newFakeSTS(t, ca)
	src := newSVIDSource(t, ca, clientID)
	c, err := New(Config{
		TokenEndpoint: f.endpoint(), SVID: src, TrustDomain: ca.TrustDomain, MaxEntries: 10,
		Roots: x509bundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.Cert}),
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if _, err := c.Exchange(context.Background(), "s"+string(rune('a'+i)), invAud); err != nil {
			t.Fatal(err)
		}
	}
	if c.Len() > 10 {
		t.Errorf("cache holds %d, bound 10", c.Len())
	}
}

func TestNewErrors(t *testing.T) {
	ca := testca.New(t, td)
	roots := x509bundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.Cert})
	src := newSVIDSource(t, ca, clientID)
	tdID := spiffeid.RequireTrustDomainFromString(td)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"plain http", Config{TokenEndpoint: "http://sts/oauth2/token", Roots: roots, SVID: src, TrustDomain: tdID}, "exchange: token endpoint must be an https URL without credentials or fragment"},
		{"credentials", Config{TokenEndpoint: "https://u:p@sts/oauth2/token", Roots: roots, SVID: src, TrustDomain: tdID}, "exchange: token endpoint must be an https URL without credentials or fragment"},
		{"no svid", Config{TokenEndpoint: "https://sts/oauth2/token", Roots: roots, TrustDomain: tdID}, "exchange: SVID and Roots are required"},
		{"no trust domain", Config{TokenEndpoint: "https://sts/oauth2/token", Roots: roots, SVID: src}, "exchange: TrustDomain is required"},
		{"refresh", Config{TokenEndpoint: "https://sts/oauth2/token", Roots: roots, SVID: src, TrustDomain: tdID, RefreshAt: 1.5}, "exchange: RefreshAt 1.5 is not in (0, 1]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil || err.Error() != tc.want {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestParseResponse(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	for _, tc := range []struct {
		name, body string
		want       string // error text, empty for success
	}{
		{"ok", `{"access_token":"a.b.c","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":300,"scope":"x y"}`, ""},
		// What the STS answers when it issues something other than an
		// access token: never sent on as one.
		{"N_A type", `{"access_token":"a.b.c","issued_token_type":"urn:ietf:params:oauth:token-type:jwt","token_type":"N_A","expires_in":300}`, `exchange: token service unavailable: token response has token_type "N_A", not Bearer`},
		{"refresh token", `{"access_token":"a.b.c","issued_token_type":"urn:ietf:params:oauth:token-type:refresh_token","token_type":"Bearer","expires_in":300}`, `exchange: token service unavailable: token response has issued_token_type "urn:ietf:params:oauth:token-type", not an access token`},
		{"no issued type", `{"access_token":"a.b.c","token_type":"Bearer","expires_in":300}`, `exchange: token service unavailable: token response has issued_token_type "", not an access token`},
		{"no token", `{"issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":300}`, "exchange: token service unavailable: token response holds no usable access_token"},
		{"header injection", `{"access_token":"a.b\r\nX: y","token_type":"Bearer","expires_in":300}`, "exchange: token service unavailable: token response holds no usable access_token"},
		{"no lifetime", `{"access_token":"a.b.c","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer"}`, "exchange: token service unavailable: token response has no usable expires_in"},
		{"huge lifetime", `{"access_token":"a.b.c","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":1e12}`, "exchange: token service unavailable: token response has no usable expires_in"},
		{"mac", `{"access_token":"a.b.c","token_type":"mac","expires_in":3}`, `exchange: token service unavailable: token response has token_type "mac", not Bearer`},
		{"not json", `<html>`, "exchange: token service unavailable: malformed token response: invalid character '<' looking for beginning of value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := parseResponse(200, "", []byte(tc.body), now, true)
			if tc.want == "" {
				if err != nil || tok.Raw != "a.b.c" || !tok.Expiry.Equal(now.Add(300*time.Second)) {
					t.Fatalf("tok = %+v, err = %v", tok, err)
				}
				return
			}
			if err == nil || err.Error() != tc.want {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func FuzzParseResponse(f *testing.F) {
	f.Add(200, []byte(`{"access_token":"eyJ.a.b","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":300,"scope":"orders:write"}`))
	f.Add(403, []byte(`{"error":"access_denied","error_description":"no ExchangePolicy allows this exchange"}`))
	f.Add(400, []byte(`{"error":"invalid_grant","error_description":"subject_token rejected"}`))
	f.Add(503, []byte(`{"error":"server_error"}`))
	f.Add(502, []byte(`<html>`))
	now := time.Unix(1_800_000_000, 0)
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		tok, err := parseResponse(status, "d", body, now, true)
		if (tok == nil) == (err == nil) {
			t.Fatal("exactly one of token and error")
		}
		if tok != nil && (!tokenChars(tok.Raw) || tok.Raw == "" || !tok.Expiry.After(now)) {
			t.Fatalf("unusable token accepted: %+v", tok)
		}
		var e *Error
		if errors.As(err, &e) && (!printable(e.Code) || !printable(e.Description)) {
			t.Fatalf("unprintable error: %q", e.Error())
		}
	})
}

// With ServerID set, the STS must prove that SPIFFE ID: a certificate for
// the right host name is not enough.
func TestServerIDChecked(t *testing.T) {
	ca := testca.New(t, td)
	f := newFakeSTS(t, ca) // serving certificate without a SPIFFE ID
	c, err := New(Config{
		TokenEndpoint: f.endpoint(),
		Roots:         x509bundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.Cert}),
		TrustDomain:   ca.TrustDomain,
		ServerID:      spiffeid.RequireFromString("spiffe://example.test/postern/server"),
		SVID:          newSVIDSource(t, ca, clientID),
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Exchange(context.Background(), "s", invAud)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "certificate contains no URI SAN") {
		t.Fatalf("err = %v", err)
	}
	if f.calls.Load() != 0 {
		t.Error("request reached an STS without the expected SPIFFE ID")
	}
}

// A redirect from the token endpoint is never followed: the form holds the
// subject token, and the new location could be anyone, in plain HTTP too.
func TestRedirectNotFollowed(t *testing.T) {
	ca := testca.New(t, td)
	f := newFakeSTS(t, ca)
	var leaked atomic.Int64
	elsewhere := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leaked.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"access_token":"forged","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":86400}`))
	}))
	defer elsewhere.Close()
	f.redirect = elsewhere.URL + "/steal"
	c, _ := newTestClient(t, ca, f, newClock())
	_, err := c.Exchange(context.Background(), "user-secret-token", invAud)
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("err = %v, want ErrUnavailable", err)
	}
	if n := leaked.Load(); n != 0 {
		t.Errorf("the redirect was followed: %d requests elsewhere", n)
	}
}

// Many distinct subject tokens at once become at most MaxInFlight calls to
// the STS; the others count as the STS unavailable once their Timeout ends.
func TestMaxInFlight(t *testing.T) {
	ca := testca.New(t, td)
	f := newFakeSTS(t, ca)
	f.gate = make(chan struct{})
	c, _ := newTestClient(t, ca, f, newClock(), func(cfg *Config) { cfg.MaxInFlight, cfg.Timeout = 2, 300*time.Millisecond })
	var wg sync.WaitGroup
	var unavailable atomic.Int64
	for i := range 6 {
		wg.Go(func() {
			if _, err := c.Exchange(context.Background(), fmt.Sprintf("subject-%d", i), invAud); errors.Is(err, ErrUnavailable) {
				unavailable.Add(1)
			}
		})
	}
	// Hold the two calls until the four others have given up.
	for deadline := time.Now().Add(10 * time.Second); unavailable.Load() < 4 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	close(f.gate)
	wg.Wait()
	if n := f.calls.Load(); n > 2 {
		t.Errorf("%d calls reached the STS, want at most 2", n)
	}
	if u := unavailable.Load(); u < 4 {
		t.Errorf("%d exchanges unavailable, want at least 4", u)
	}
}
