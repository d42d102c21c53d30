package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"regexp"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/exchange"
	"postern.dev/postern/internal/testca"
)

const (
	obTD       = "example.test"
	obSelfID   = "spiffe://example.test/ns/shop/sa/orders"
	obInvID    = "spiffe://example.test/ns/shop/sa/inventory"
	obFinance  = "spiffe://example.test/ns/shop/sa/finance"
	obUpstream = "inventory"
)

// obSTS is a fake token service answering like internal/sts over mutual
// TLS. It remembers the form behind every token it issued.
type obSTS struct {
	srv    *httptest.Server
	calls  atomic.Int64
	refuse atomic.Bool // refuse every request with access_denied

	mu     sync.Mutex
	issued map[string]url2form
	certs  map[string]*x509.Certificate // token -> client certificate
}

type url2form map[string]string

func newObSTS(t testing.TB, ca *testca.CA) *obSTS {
	t.Helper()
	s := &obSTS{issued: map[string]url2form{}, certs: map[string]*x509.Certificate{}}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := s.calls.Add(1)
		_ = r.ParseForm()
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-Decision-Id", fmt.Sprintf("dec-%d", n))
		if s.refuse.Load() || r.PostForm.Get("subject_token") == "refused" {
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"error":"access_denied","error_description":"no ExchangePolicy allows this exchange"}`))
			return
		}
		raw := fmt.Sprintf("eyJ.tok%d.sig", n)
		f := url2form{}
		for k, v := range r.PostForm {
			f[k] = v[0]
		}
		s.mu.Lock()
		s.issued[raw] = f
		s.certs[raw] = r.TLS.PeerCertificates[0]
		s.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": raw, "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer", "expires_in": 300})
	}))
	s.srv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.ServerCert(t)}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Pool()}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

func (s *obSTS) form(raw string) url2form {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issued[raw]
}

// obSource is an x509svid.Source a test can rotate.
type obSource struct{ p atomic.Pointer[x509svid.SVID] }

func newObSource(t testing.TB, ca *testca.CA, id string) *obSource {
	s := &obSource{}
	s.rotate(t, ca, id)
	return s
}

func (s *obSource) rotate(t testing.TB, ca *testca.CA, id string) *testca.SVID {
	v := ca.SVID(t, id)
	s.p.Store(&x509svid.SVID{ID: v.ID, Certificates: []*x509.Certificate{v.Cert}, PrivateKey: v.Key})
	return v
}

func (s *obSource) GetX509SVID() (*x509svid.SVID, error) { return s.p.Load(), nil }

// seen is what an upstream received.
type seen struct {
	header http.Header
	proto  int
	peer   *x509.Certificate
	host   string
	path   string
}

// obUpstreamServer is an upstream serving with an SVID for id and
// requiring the sidecar's SPIFFE ID over mutual TLS.
type obUpstreamServer struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen []seen
}

func newObUpstream(t testing.TB, ca *testca.CA, id string, h2 bool, h http.HandlerFunc) *obUpstreamServer {
	t.Helper()
	u := &obUpstreamServer{}
	src := newObSource(t, ca, id)
	bundle := x509bundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.Cert})
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, seen{header: r.Header.Clone(), proto: r.ProtoMajor, peer: r.TLS.PeerCertificates[0], host: r.Host, path: r.URL.RequestURI()})
		u.mu.Unlock()
		if h != nil {
			h(w, r)
			return
		}
		_, _ = w.Write([]byte("hello from upstream"))
	}))
	u.srv.TLS = tlsconfig.MTLSServerConfig(src, bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromString(obSelfID)))
	// httptest adds its own certificate when there is none, and Go
	// prefers Certificates over GetCertificate without SNI.
	v, _ := src.GetX509SVID()
	u.srv.TLS.Certificates = []tls.Certificate{{Certificate: [][]byte{v.Certificates[0].Raw}, PrivateKey: v.PrivateKey, Leaf: v.Certificates[0]}}
	u.srv.EnableHTTP2 = h2
	u.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	u.srv.StartTLS()
	t.Cleanup(u.srv.Close)
	return u
}

func (u *obUpstreamServer) last() seen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen[len(u.seen)-1]
}

func (u *obUpstreamServer) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.seen)
}

// obHarness is an outbound handler in front of one upstream, with a
// fake STS, served on a plain HTTP test server.
type obHarness struct {
	ca       *testca.CA
	sts      *obSTS
	up       *obUpstreamServer
	src      *obSource
	contexts *ContextStore
	xc       *exchange.Client
	out      *Outbound
	front    *httptest.Server
	reg      *prometheus.Registry
}

type obOptions struct {
	upstreamID string // the upstream's actual SPIFFE ID; default obInvID
	h2         bool
	handler    http.HandlerFunc
}

func newObHarness(t testing.TB, opt obOptions) *obHarness {
	t.Helper()
	if opt.upstreamID == "" {
		opt.upstreamID = obInvID
	}
	h := &obHarness{ca: testca.New(t, obTD)}
	h.sts = newObSTS(t, h.ca)
	h.up = newObUpstream(t, h.ca, opt.upstreamID, opt.h2, opt.handler)
	h.src = newObSource(t, h.ca, obSelfID)
	bundle := x509bundle.FromX509Authorities(h.ca.TrustDomain, []*x509.Certificate{h.ca.Cert})
	var err error
	h.xc, err = exchange.New(exchange.Config{
		TokenEndpoint: h.sts.srv.URL + "/oauth2/token",
		Roots:         bundle,
		TrustDomain:   h.ca.TrustDomain,
		SVID:          h.src,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.contexts = NewContextStore(0, nil)
	h.reg = prometheus.NewRegistry()
	h.out, err = NewOutbound(OutboundOptions{
		Config: OutboundConfig{Upstreams: []Upstream{{
			Name:      obUpstream,
			Addresses: []string{h.up.srv.Listener.Addr().String()},
			SPIFFEID:  obInvID,
		}}},
		Contexts:   h.contexts,
		Exchange:   h.xc,
		SVID:       h.src,
		Bundle:     bundle,
		Registerer: h.reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.front = httptest.NewUnstartedServer(h.out)
	h.front.Config = h.out.NewServer(nil)
	h.front.Start()
	t.Cleanup(func() {
		h.front.Close()
		h.out.Close()
		h.xc.Close()
	})
	return h
}

// hostClient sends to the outbound listener with Host: <upstream>.
func (h *obHarness) request(t testing.TB, method, host string, hdr map[string]string) *http.Request {
	t.Helper()
	r, err := http.NewRequest(method, h.front.URL+"/orders/42?x=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	r.Host = host
	for k, v := range hdr {
		r.Header.Set(k, v)
	}
	return r
}

func (h *obHarness) do(t testing.TB, r *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := h.front.Client().Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b []byte
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b = append(b, buf[:n]...)
		if err != nil {
			break
		}
	}
	return resp, b
}

// obErrorBody decodes the JSON error body.
type obErrorBody struct {
	Error      string `json:"error"`
	Reason     string `json:"reason"`
	DecisionID string `json:"decision_id"`
}

func decodeObError(t testing.TB, b []byte) obErrorBody {
	t.Helper()
	var e obErrorBody
	if err := json.Unmarshal(b, &e); err != nil {
		t.Fatalf("error body %q: %v", b, err)
	}
	// Every refusal carries a decision id: the STS's, or one the sidecar
	// made (32 hex digits), which the tests cannot predict and drop.
	switch {
	case e.DecisionID == "":
		t.Errorf("refusal without a decision id: %s", b)
	case localIDRE.MatchString(e.DecisionID):
		e.DecisionID = ""
	}
	return e
}

var localIDRE = regexp.MustCompile(`^[0-9a-f]{32}$`)
