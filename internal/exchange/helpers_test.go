package exchange

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/testca"
)

const (
	td       = "example.test"
	clientID = "spiffe://example.test/ns/a/sa/orders"
	invAud   = "spiffe://example.test/ns/a/sa/inventory"
)

// fakeSTS answers token requests like internal/sts: it requires a client
// certificate chaining to the test CA, reads the form, and issues opaque
// tokens or OAuth errors.
type fakeSTS struct {
	srv   *httptest.Server
	calls atomic.Int64
	// status forces an answer: 0 issues tokens.
	status atomic.Int64
	// expiresIn is the lifetime of issued tokens in seconds.
	expiresIn atomic.Int64
	// gate, when set, blocks every answer until it is closed.
	gate chan struct{}
	// redirect, when set, is where every answer redirects (307).
	redirect string

	mu       sync.Mutex
	forms    []map[string]string
	peers    []string
	lastCert *x509.Certificate
}

func newFakeSTS(t *testing.T, ca *testca.CA) *fakeSTS {
	t.Helper()
	f := &fakeSTS{}
	f.expiresIn.Store(100)
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.handle))
	f.srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{ca.ServerCert(t)},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    ca.Pool(),
		MinVersion:   tls.VersionTLS12,
	}
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeSTS) endpoint() string { return f.srv.URL + "/oauth2/token" }

func (f *fakeSTS) handle(w http.ResponseWriter, r *http.Request) {
	n := f.calls.Add(1)
	if f.gate != nil {
		<-f.gate
	}
	if err := r.ParseForm(); err != nil || r.Method != http.MethodPost || r.URL.Path != "/oauth2/token" {
		oauthError(w, http.StatusBadRequest, "invalid_request", "bad request")
		return
	}
	form := map[string]string{}
	for k, v := range r.PostForm {
		form[k] = v[0]
	}
	f.mu.Lock()
	f.forms = append(f.forms, form)
	leaf := r.TLS.PeerCertificates[0]
	f.peers = append(f.peers, leaf.URIs[0].String())
	f.lastCert = leaf
	f.mu.Unlock()
	w.Header().Set("X-Decision-Id", fmt.Sprintf("dec-%d", n))
	if f.redirect != "" {
		http.Redirect(w, r, f.redirect, http.StatusTemporaryRedirect)
		return
	}
	switch s := f.status.Load(); s {
	case 0:
	case http.StatusForbidden:
		oauthError(w, 403, "access_denied", "no ExchangePolicy allows this exchange")
		return
	case http.StatusBadGateway:
		w.WriteHeader(http.StatusBadGateway)
		_, _ = w.Write([]byte("<html>bad gateway</html>"))
		return
	default:
		oauthError(w, int(s), "server_error", "the store is unavailable")
		return
	}
	switch form["grant_type"] {
	case grantTokenExchange:
		switch form["subject_token"] {
		case "":
			oauthError(w, 400, "invalid_request", "subject_token is required")
			return
		case "expired":
			oauthError(w, 400, "invalid_grant", "subject_token rejected: token: expired")
			return
		case "refused":
			oauthError(w, 403, "access_denied", "no ExchangePolicy allows this exchange")
			return
		}
	case grantClientCredentials:
	default:
		oauthError(w, 400, "unsupported_grant_type", "no")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"access_token":      fmt.Sprintf("eyJ.tok%d.sig", n),
		"issued_token_type": tokenTypeAccessToken,
		"token_type":        "Bearer",
		"expires_in":        f.expiresIn.Load(),
		"scope":             "orders:write",
	})
}

func (f *fakeSTS) lastForm() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.forms[len(f.forms)-1]
}

func oauthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

// svidSource is an x509svid.Source whose SVID a test can rotate.
type svidSource struct{ p atomic.Pointer[x509svid.SVID] }

func newSVIDSource(t *testing.T, ca *testca.CA, id string) *svidSource {
	s := &svidSource{}
	s.rotate(t, ca, id)
	return s
}

func (s *svidSource) rotate(t *testing.T, ca *testca.CA, id string) *testca.SVID {
	t.Helper()
	v := ca.SVID(t, id)
	s.p.Store(&x509svid.SVID{ID: v.ID, Certificates: []*x509.Certificate{v.Cert}, PrivateKey: v.Key})
	return v
}

func (s *svidSource) GetX509SVID() (*x509svid.SVID, error) { return s.p.Load(), nil }

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Unix(1_800_000_000, 0)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// newTestClient returns a client of f authenticating as clientID.
func newTestClient(t *testing.T, ca *testca.CA, f *fakeSTS, clk *clock, mods ...func(*Config)) (*Client, *svidSource) {
	t.Helper()
	src := newSVIDSource(t, ca, clientID)
	cfg := Config{
		TokenEndpoint: f.endpoint(),
		Roots:         x509bundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.Cert}),
		TrustDomain:   ca.TrustDomain,
		SVID:          src,
		Now:           clk.Now,
	}
	for _, m := range mods {
		m(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, src
}
