package proxy

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/ca"
	"postern.dev/postern/internal/server"
	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/testserver"
	"postern.dev/postern/internal/token"
)

const (
	qsTD      = "quickstart.local"
	gatewayID = "spiffe://quickstart.local/ns/shop/sa/gateway"
	ordersID  = "spiffe://quickstart.local/ns/shop/sa/order-processing"
	invID     = "spiffe://quickstart.local/ns/shop/sa/inventory"
	financeID = "spiffe://quickstart.local/ns/shop/sa/finance"

	examples = "../../examples/quickstart"
)

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.DiscardHandler)
}

// startServer runs a real postern server on 127.0.0.1:0 with a copy of the
// quickstart's resources.
func startServer(t *testing.T) *server.Server {
	t.Helper()
	srv, _ := testserver.Quickstart(t, nil)
	return srv
}

// issue gets an X.509-SVID for id from the server's CA.
func issue(t *testing.T, srv *server.Server, id string) *x509svid.SVID {
	t.Helper()
	key := testca.NewKey(t)
	s, err := srv.CA().IssueX509SVID(context.Background(), ca.X509SVIDRequest{ID: spiffeid.RequireFromString(id), PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: s.Certificates, PrivateKey: key}
}

// writeSVID writes svid and the server's bundle as the files source reads
// them, atomically per file.
func writeSVID(t *testing.T, srv *server.Server, svid *x509svid.SVID, dir string) {
	t.Helper()
	certs, key, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := os.ReadFile(srv.BundlePath())
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"svid.pem": certs, "svid.key": key, "bundle.pem": bundle} {
		tmp := filepath.Join(dir, "."+name)
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

// sidecarUnderTest is a running sidecar with the SVID it holds.
type sidecarUnderTest struct {
	*Sidecar
	svid *x509svid.SVID
	dir  string
}

// startSidecar runs the quickstart example sidecar of name (its config file,
// with listeners on 127.0.0.1:0, the test server as STS) in front of app,
// its upstreams at the addresses given by name.
func startSidecar(t *testing.T, srv *server.Server, name, app string, upstreams map[string]string, mutate ...func(*Config)) *sidecarUnderTest {
	t.Helper()
	cfg, err := LoadConfig(filepath.Join(examples, "sidecars", name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	svid := issue(t, srv, cfg.SPIFFEID)
	writeSVID(t, srv, svid, dir)
	cfg.SPIFFE.Files = &FilesSource{Cert: filepath.Join(dir, "svid.pem"), Key: filepath.Join(dir, "svid.key"), Bundle: filepath.Join(dir, "bundle.pem")}
	cfg.STS.Issuer = srv.Issuer()
	cfg.STS.TokenEndpoint, cfg.STS.RevocationsURI = "", ""
	cfg.Inbound.Listen = "127.0.0.1:0"
	cfg.Inbound.App = app
	cfg.Admin.Listen = "127.0.0.1:0"
	cfg.Outbound.Listen = "127.0.0.1:0"
	for i, u := range cfg.Outbound.Upstreams {
		cfg.Outbound.Upstreams[i].Addresses = []string{"127.0.0.1:1"}
		if a, ok := upstreams[u.Name]; ok {
			cfg.Outbound.Upstreams[i].Addresses = []string{a}
		}
	}
	cfg.DrainTimeout = 0
	for _, m := range mutate {
		m(cfg)
	}
	sc, err := NewSidecar(context.Background(), cfg, SidecarOptions{Logger: testLogger()})
	if err != nil {
		t.Fatalf("sidecar %s: %v", name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sidecar run: %v", err)
		}
		sc.Close()
	})
	waitFor(t, "sidecar ready", sc.Ready)
	return &sidecarUnderTest{Sidecar: sc, svid: svid, dir: dir}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// mtlsClient presents svid and accepts only a server with SPIFFE ID want.
func mtlsClient(srv *server.Server, svid *x509svid.SVID, want spiffeid.ID, h2 bool) *http.Client {
	cfg := tlsconfig.MTLSClientConfig(svid, srv.CA(), tlsconfig.AuthorizeID(want))
	if !h2 {
		cfg.NextProtos = []string{"http/1.1"}
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: h2}}
}

// stsExchange exchanges subject at the STS as the holder of svid.
func stsExchange(t *testing.T, srv *server.Server, svid *x509svid.SVID, subject, subjectType, audience string) string {
	t.Helper()
	tok, err := exchangeToken(srv, svid, subject, subjectType, audience)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func exchangeToken(srv *server.Server, svid *x509svid.SVID, subject, subjectType, audience string) (string, error) {
	pool := x509.NewCertPool()
	for _, c := range srv.CA().X509Authorities() {
		pool.AddCert(c)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: tlsconfig.MTLSWebClientConfig(svid, pool)}}
	resp, err := c.PostForm(srv.Issuer()+"/oauth2/token", url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {subject},
		"subject_token_type": {subjectType},
		"audience":           {audience},
	})
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("exchange for %s: %d %v", audience, resp.StatusCode, body)
	}
	return body["access_token"].(string), nil
}

const (
	jwtType = "urn:ietf:params:oauth:token-type:jwt"
	atType  = "urn:ietf:params:oauth:token-type:access_token"
)

// userToken is a token of the quickstart IdP for sub.
func userToken(t *testing.T, sub, scope string) string {
	t.Helper()
	b, err := os.ReadFile(examples + "/idp/idp-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key := k.(*ecdsa.PrivateKey)
	tp, _ := (&jose.JSONWebKey{Key: key.Public()}).Thumbprint(crypto.SHA256)
	sg, err := token.NewSigner(base64.RawURLEncoding.EncodeToString(tp), jose.ES256, key, "JWT")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	raw, err := sg.Sign(&token.Claims{Issuer: "https://idp.quickstart.local", Subject: sub, Audience: []string{"quickstart-shop"},
		Scope: scope, IssuedAt: now, Expiry: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// recorder is an app that records what reaches it.
type recorder struct {
	mu   sync.Mutex
	reqs []*http.Request
	next http.HandlerFunc
}

func (a *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	a.reqs = append(a.reqs, r.Clone(context.Background()))
	a.mu.Unlock()
	if a.next != nil {
		a.next(w, r)
		return
	}
	_, _ = io.WriteString(w, "ok")
}

func (a *recorder) last() *http.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.reqs) == 0 {
		return nil
	}
	return a.reqs[len(a.reqs)-1]
}

func (a *recorder) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.reqs)
}

// serveApp serves h on a loopback listener.
func serveApp(t *testing.T, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = s.Serve(ln) }()
	t.Cleanup(func() { _ = s.Close() })
	return ln.Addr().String()
}

func get(t *testing.T, c *http.Client, u string, hdr map[string]string) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Add(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b, resp.Header
}

func claimsOf(t *testing.T, r *http.Request) *token.Claims {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(r.Header.Get(HeaderClaims))
	if err != nil {
		t.Fatalf("X-Postern-Claims: %v", err)
	}
	var c token.Claims
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("X-Postern-Claims: %v", err)
	}
	return &c
}

// proxyClient sends through a sidecar's outbound listener as HTTP_PROXY.
func proxyClient(sc *sidecarUnderTest) *http.Client {
	u := &url.URL{Scheme: "http", Host: sc.OutboundAddr().String()}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: http.ProxyURL(u)}}
}

// TestSidecarChain runs app A → sidecar A → sidecar B → app B → sidecar B
// → sidecar C → app C (gateway, order-processing, inventory) with tokens
// exchanged per hop at a real STS, and checks the inbound refusals on the
// way.
func TestSidecarChain(t *testing.T) {
	srv := startServer(t)
	invApp := &recorder{}
	inv := startSidecar(t, srv, "inventory", serveApp(t, invApp), nil)

	var orders *sidecarUnderTest
	ordersApp := &recorder{}
	ordersApp.next = func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/orders/reserve" {
			_, _ = io.WriteString(w, "ok")
			return
		}
		// The app forwards the opaque context it was handed; it never
		// sees a token.
		req, _ := http.NewRequest(http.MethodPost, "http://inventory/items/42/reserve", nil)
		req.Header.Set(HeaderContext, r.Header.Get(HeaderContext))
		resp, err := proxyClient(orders).Do(req)
		if err != nil {
			http.Error(w, err.Error(), 502)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	}
	orders = startSidecar(t, srv, "order-processing", serveApp(t, ordersApp), map[string]string{"inventory": inv.InboundAddr().String()})
	gwApp := &recorder{}
	gateway := startSidecar(t, srv, "gateway", serveApp(t, gwApp), map[string]string{"order-processing": orders.InboundAddr().String()})

	checkChain := func(t *testing.T) {
		t.Helper()
		at := ordersApp.last()
		if at.Header.Get(HeaderPeer) != gatewayID || at.Header.Get("Authorization") != "" {
			t.Errorf("order-processing app saw peer %q, authorization %q", at.Header.Get(HeaderPeer), at.Header.Get("Authorization"))
		}
		if c := claimsOf(t, at); c.Subject != "alice" || !slices.Equal(c.Act.Chain(), []string{gatewayID}) {
			t.Errorf("order-processing app claims: %+v", c)
		}
		for k := range at.Header {
			if strings.HasPrefix(k, "X-Postern-") && k != HeaderClaims && k != HeaderPeer && k != HeaderContext {
				t.Errorf("%s reached the order-processing app", k)
			}
		}
		last := invApp.last()
		if last == nil {
			t.Fatal("inventory app not reached")
		}
		c2 := claimsOf(t, last)
		if c2.Subject != "alice" || !slices.Equal(c2.Act.Chain(), []string{ordersID, gatewayID}) || !c2.HasAudience(invID) {
			t.Errorf("inventory app claims: sub %q act %v aud %v", c2.Subject, c2.Act.Chain(), c2.Audience)
		}
		if last.Header.Get(HeaderPeer) != ordersID || last.Header.Get("Authorization") != "" {
			t.Errorf("inventory app saw peer %q, authorization %q", last.Header.Get(HeaderPeer), last.Header.Get("Authorization"))
		}
	}

	t.Run("three hops through the sidecars", func(t *testing.T) {
		before := invApp.count()
		req, _ := http.NewRequest(http.MethodGet, "http://order-processing/orders/reserve", nil)
		req.Header.Set("Authorization", "Bearer "+userToken(t, "alice", "orders:read orders:write"))
		req.Header.Set("X-Postern-Peer", "spiffe://quickstart.local/ns/shop/sa/evil")
		req.Header.Set("X-Postern-Claims", "e30")
		resp, err := proxyClient(gateway).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("status %d: %s", resp.StatusCode, body)
		}
		if invApp.count() != before+1 {
			t.Fatal("inventory app not reached once")
		}
		checkChain(t)
	})

	gw := issue(t, srv, gatewayID)
	fin := issue(t, srv, financeID)
	alice := stsExchange(t, srv, gw, userToken(t, "alice", "orders:read orders:write"), jwtType, ordersID)
	base := "https://" + orders.InboundAddr().String()

	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("direct to sidecar B h2=%v", h2), func(t *testing.T) {
			c := mtlsClient(srv, gw, orders.ID(), h2)
			status, body, _ := get(t, c, base+"/orders/reserve", map[string]string{
				"Authorization": "Bearer " + alice, "X-Postern-Peer": "spiffe://quickstart.local/ns/shop/sa/evil",
				"X-Postern-Claims": "e30", "X-Postern-Context": "forged", "x-postern-other": "x"})
			if status != 200 {
				t.Fatalf("status %d: %s", status, body)
			}
			checkChain(t)
		})
	}

	invTok := stsExchange(t, srv, orders.svid, alice, atType, invID)
	gwClient := mtlsClient(srv, gw, orders.ID(), true)
	cases := []struct {
		name   string
		client *http.Client
		path   string
		hdr    map[string]string
		status int
		reason string
	}{
		{name: "token replayed to the wrong service", client: mtlsClient(srv, orders.svid, orders.ID(), true), path: "/orders/1",
			hdr: map[string]string{"Authorization": "Bearer " + invTok}, status: 401, reason: "token: wrong audience"},
		{name: "token presented by another workload", client: mtlsClient(srv, fin, orders.ID(), true), path: "/orders/1",
			hdr: map[string]string{"Authorization": "Bearer " + alice}, status: 401, reason: "token: certificate binding mismatch"},
		{name: "missing token", client: gwClient, path: "/orders/1", status: 401, reason: "a bearer token is required"},
		{name: "two tokens", client: gwClient, path: "/orders/1?access_token=" + alice,
			hdr: map[string]string{"Authorization": "Bearer " + alice}, status: 401, reason: "more than one token in the request"},
		{name: "policy denial: DENY rule", client: gwClient, path: "/admin",
			hdr: map[string]string{"Authorization": "Bearer " + alice}, status: 403, reason: `DENY policy "no-admin" rule 0 matched`},
		{name: "policy denial: no rule", client: gwClient, path: "/invoices",
			hdr: map[string]string{"Authorization": "Bearer " + alice}, status: 403, reason: "no ALLOW rule matched"},
		{name: "health probe without a token", client: mtlsClient(srv, fin, orders.ID(), true), path: "/healthz", status: 200},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			before := ordersApp.count()
			status, body, hdr := get(t, tc.client, base+tc.path, tc.hdr)
			if status != tc.status {
				t.Fatalf("status %d, want %d: %s", status, tc.status, body)
			}
			if tc.reason == "" {
				return
			}
			if ordersApp.count() != before {
				t.Error("a refused request reached the app")
			}
			var p problem
			if err := json.Unmarshal(body, &p); err != nil || !strings.Contains(p.Reason, tc.reason) || len(p.DecisionID) != 32 {
				t.Errorf("body %s, want reason %q and a decision id", body, tc.reason)
			}
			if tc.status == 401 && !strings.HasPrefix(hdr.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("WWW-Authenticate = %q", hdr.Get("WWW-Authenticate"))
			}
		})
	}

	t.Run("plaintext is refused at the handshake", func(t *testing.T) {
		before := ordersApp.count()
		resp, err := http.Get("http://" + orders.InboundAddr().String() + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("plaintext request answered %d", resp.StatusCode)
			}
		}
		if ordersApp.count() != before {
			t.Error("a plaintext request reached the app")
		}
	})
	t.Run("untrusted certificate is refused at the handshake", func(t *testing.T) {
		rogue := testca.New(t, qsTD).SVID(t, gatewayID)
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			Certificates: []tls.Certificate{rogue.TLSCertificate()}, InsecureSkipVerify: true}}}
		if resp, err := c.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			t.Fatalf("untrusted client certificate accepted: %d", resp.StatusCode)
		}
		noCert := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		if resp, err := noCert.Get(base + "/healthz"); err == nil {
			resp.Body.Close()
			t.Fatalf("client without certificate accepted: %d", resp.StatusCode)
		}
	})
	t.Run("admin", func(t *testing.T) {
		admin := "http://" + orders.AdminAddr().String()
		for _, p := range []string{"/healthz", "/readyz"} {
			if status, body, _ := get(t, http.DefaultClient, admin+p, nil); status != 200 {
				t.Errorf("%s: %d %s", p, status, body)
			}
		}
		status, body, _ := get(t, http.DefaultClient, admin+"/metrics", nil)
		for _, want := range []string{`postern_inbound_requests_total{decision="allow"}`, `postern_inbound_requests_total{decision="deny"}`,
			"postern_inbound_request_duration_seconds_bucket", "postern_sidecar_svid_expiry_seconds", "postern_sidecar_jwks_ready 1"} {
			if status != 200 || !strings.Contains(string(body), want) {
				t.Errorf("/metrics lacks %s", want)
			}
		}
	})
}

// TestSidecarRotation rewrites the sidecar's SVID files during traffic on
// new connections: every request succeeds, and new connections get the new
// certificate.
func TestSidecarRotation(t *testing.T) {
	srv := startServer(t)
	sc := startSidecar(t, srv, "order-processing", serveApp(t, &recorder{}), nil)
	gw := issue(t, srv, gatewayID)
	tok := stsExchange(t, srv, gw, userToken(t, "alice", "orders:read"), jwtType, ordersID)
	cfg := tlsconfig.MTLSClientConfig(gw, srv.CA(), tlsconfig.AuthorizeID(sc.ID()))
	var served sync.Map // serial numbers of the sidecar certificates seen
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		served.Store(cs.PeerCertificates[0].SerialNumber.String(), true)
		return nil
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}

	stop := make(chan struct{})
	var ok, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				req, _ := http.NewRequest(http.MethodGet, "https://"+sc.InboundAddr().String()+"/orders/1", nil)
				req.Header.Set("Authorization", "Bearer "+tok)
				resp, err := c.Do(req)
				if err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				ok.Add(1)
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	next := issue(t, srv, ordersID)
	writeSVID(t, srv, next, sc.dir)
	serial := next.Certificates[0].SerialNumber.String()
	waitFor(t, "the new certificate to be served", func() bool { _, seen := served.Load(serial); return seen })
	time.Sleep(200 * time.Millisecond)
	close(stop)
	wg.Wait()
	if failed.Load() != 0 {
		t.Errorf("%d of %d requests failed during rotation, first: %v", failed.Load(), failed.Load()+ok.Load(), firstErr.Load())
	}
	if ok.Load() < 10 {
		t.Errorf("only %d requests made", ok.Load())
	}
}

// TestSidecarStartErrors checks what refuses to start.
func TestSidecarStartErrors(t *testing.T) {
	srv := startServer(t)
	base, err := LoadConfig(filepath.Join(examples, "sidecars", "inventory.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeSVID(t, srv, issue(t, srv, ordersID), dir)
	files := &FilesSource{Cert: filepath.Join(dir, "svid.pem"), Key: filepath.Join(dir, "svid.key"), Bundle: filepath.Join(dir, "bundle.pem")}
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{name: "SVID for another workload", mutate: func(c *Config) {}, want: "proxy: the SVID is for " + ordersID + ", the configuration says " + invID},
		{name: "missing policies", mutate: func(c *Config) { c.SPIFFEID = ""; c.Policies = filepath.Join(dir, "nope") }, want: "proxy: policies:"},
		{name: "missing SVID files", mutate: func(c *Config) { c.SPIFFE.Files = &FilesSource{Cert: "/nonexistent", Key: "/x", Bundle: "/y"} },
			want: "proxy: file source: stat /nonexistent: no such file or directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := *base
			cfg.SPIFFE.Files = files
			cfg.Inbound.Listen, cfg.Admin.Listen = "127.0.0.1:0", "127.0.0.1:0"
			tc.mutate(&cfg)
			sc, err := NewSidecar(context.Background(), &cfg, SidecarOptions{})
			if err == nil {
				sc.Close()
				t.Fatal("started")
			}
			if !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("error %q, want prefix %q", err, tc.want)
			}
		})
	}
}
