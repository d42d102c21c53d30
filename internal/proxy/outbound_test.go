package proxy

import (
	"bufio"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"postern.dev/postern/internal/token"
)

// TestOutboundUserContexts checks the three ways a call gets its token and
// that the upstream sees the exchanged token and nothing the application
// (or an attacker) put in X-Postern-* or Authorization.
func TestOutboundUserContexts(t *testing.T) {
	h := newObHarness(t, obOptions{})
	ctxID := h.contexts.Put("alice-token", time.Now().Add(time.Hour))
	spoofed := map[string]string{
		"X-Postern-Claims": "eyJzdWIiOiJyb290In0",
		"X-Postern-Peer":   "spiffe://example.test/ns/shop/sa/gateway",
		"X-Postern-Other":  "x",
	}
	for _, tc := range []struct {
		name    string
		headers map[string]string
		grant   string
		subject string
	}{
		{"context header", map[string]string{HeaderContext: ctxID}, "urn:ietf:params:oauth:grant-type:token-exchange", "alice-token"},
		{"forwarded bearer token", map[string]string{"Authorization": "Bearer bob-token"}, "urn:ietf:params:oauth:grant-type:token-exchange", "bob-token"},
		{"no user context", nil, "client_credentials", ""},
		{"basic auth is not a user context", map[string]string{"Authorization": "Basic dTpw"}, "client_credentials", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hdr := map[string]string{}
			for k, v := range spoofed {
				hdr[k] = v
			}
			for k, v := range tc.headers {
				hdr[k] = v
			}
			resp, body := h.do(t, h.request(t, "GET", obUpstream, hdr))
			if resp.StatusCode != 200 || string(body) != "hello from upstream" {
				t.Fatalf("%d %s", resp.StatusCode, body)
			}
			got := h.up.last()
			raw, ok := strings.CutPrefix(got.header.Get("Authorization"), "Bearer ")
			if !ok {
				t.Fatalf("upstream Authorization = %q", got.header.Get("Authorization"))
			}
			form := h.sts.form(raw)
			if form == nil {
				t.Fatalf("the upstream got a token the STS did not issue: %q", raw)
			}
			if form["grant_type"] != tc.grant || form["subject_token"] != tc.subject || form["audience"] != obInvID {
				t.Errorf("token obtained with %v", form)
			}
			for k := range got.header {
				if strings.HasPrefix(strings.ToLower(k), "x-postern-") {
					t.Errorf("upstream received %s", k)
				}
			}
			if len(got.header.Values("Authorization")) != 1 {
				t.Errorf("Authorization values %q", got.header.Values("Authorization"))
			}
			if got.host != obUpstream || got.path != "/orders/42?x=1" {
				t.Errorf("upstream saw host %q path %q", got.host, got.path)
			}
			if got.peer.URIs[0].String() != obSelfID {
				t.Errorf("upstream saw client %s", got.peer.URIs[0])
			}
		})
	}
}

func TestOutboundForwardProxy(t *testing.T) {
	h := newObHarness(t, obOptions{})
	proxyURL, _ := url.Parse(h.front.URL)
	c := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxyURL)}}
	resp, err := c.Get("http://inventory:8080/items?id=7")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "hello from upstream" {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
	if got := h.up.last(); got.path != "/items?id=7" || !strings.HasPrefix(got.header.Get("Authorization"), "Bearer eyJ.") {
		t.Errorf("upstream saw %+v", got)
	}
}

// TestOutboundCachedToken: the second call reuses the token; an STS outage
// does not break calls whose tokens are cached.
func TestOutboundCachedToken(t *testing.T) {
	h := newObHarness(t, obOptions{})
	ctxID := h.contexts.Put("alice-token", time.Now().Add(time.Hour))
	for range 3 {
		if resp, body := h.do(t, h.request(t, "GET", obUpstream, map[string]string{HeaderContext: ctxID})); resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
	}
	if n := h.sts.calls.Load(); n != 1 {
		t.Errorf("%d STS calls for one user and upstream", n)
	}
	h.sts.srv.Close()
	if resp, body := h.do(t, h.request(t, "GET", obUpstream, map[string]string{HeaderContext: ctxID})); resp.StatusCode != 200 {
		t.Fatalf("cached token while the STS is down: %d %s", resp.StatusCode, body)
	}
	resp, body := h.do(t, h.request(t, "GET", obUpstream, map[string]string{"Authorization": "Bearer carol-token"}))
	if e := decodeObError(t, body); resp.StatusCode != 503 || e != (obErrorBody{Error: "token_service_unavailable", Reason: "the token service cannot be reached"}) {
		t.Errorf("uncached while the STS is down: %d %+v", resp.StatusCode, e)
	}
	if m := obCounter(t, h, obUpstream, 200); m != 4 {
		t.Errorf("requests_total{inventory,200} = %v", m)
	}
	if m := obCounter(t, h, obUpstream, 503); m != 1 {
		t.Errorf("requests_total{inventory,503} = %v", m)
	}
	n, err := testutil.GatherAndCount(h.reg, "postern_exchange_cache_hits_total", "postern_exchange_requests_total", "postern_outbound_request_duration_seconds")
	if err != nil || n != 6 { // hits, 3 results, 2 latency series
		t.Errorf("exchange and latency metrics: %d series, %v", n, err)
	}
}

func TestOutboundRefusals(t *testing.T) {
	h := newObHarness(t, obOptions{})
	for _, tc := range []struct {
		name    string
		method  string
		host    string
		headers map[string]string
		refuse  bool
		status  int
		want    obErrorBody
	}{
		{"unknown context", "GET", obUpstream, map[string]string{HeaderContext: "bm8tc3VjaC1jb250ZXh0"}, false, 401,
			obErrorBody{Error: "unknown_context", Reason: "X-Postern-Context is unknown or has expired"}},
		{"exchange refused", "GET", obUpstream, map[string]string{"Authorization": "Bearer refused"}, false, 403,
			obErrorBody{Error: "token_exchange_refused", Reason: "access_denied: no ExchangePolicy allows this exchange", DecisionID: "dec-1"}},
		{"client credentials refused", "GET", obUpstream, nil, true, 403,
			obErrorBody{Error: "token_exchange_refused", Reason: "client credentials refused: access_denied: no ExchangePolicy allows this exchange", DecisionID: "dec-2"}},
		{"unknown upstream", "GET", "payments", nil, false, 502,
			obErrorBody{Error: "unknown_upstream", Reason: "no upstream is configured for this host"}},
		{"CONNECT", "CONNECT", obUpstream, nil, false, 405,
			obErrorBody{Error: "method_not_allowed", Reason: "CONNECT is refused: send plain HTTP so the sidecar can add the token"}},
		{"context and bearer", "GET", obUpstream, map[string]string{HeaderContext: "x", "Authorization": "Bearer y"}, false, 400,
			obErrorBody{Error: "invalid_request", Reason: "both X-Postern-Context and a bearer token: send one user context"}},
		{"empty bearer", "GET", obUpstream, map[string]string{"Authorization": "Bearer "}, false, 400,
			obErrorBody{Error: "invalid_request", Reason: "empty bearer token"}},
		{"header too large", "GET", obUpstream, map[string]string{"X-Big": strings.Repeat("a", 65<<10)}, false, 431,
			obErrorBody{Error: "request_header_too_large", Reason: "the request header exceeds 65536 bytes"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h.sts.refuse.Store(tc.refuse)
			var resp *http.Response
			var body []byte
			if tc.method == "CONNECT" {
				resp, body = rawRequest(t, h.front.Listener.Addr().String(), "CONNECT inventory:443 HTTP/1.1\r\nHost: inventory:443\r\n\r\n")
			} else {
				resp, body = h.do(t, h.request(t, tc.method, tc.host, tc.headers))
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d (%s)", resp.StatusCode, tc.status, body)
			}
			if got := decodeObError(t, body); got != tc.want {
				t.Errorf("body %+v, want %+v", got, tc.want)
			}
		})
	}
	if h.up.count() != 0 {
		t.Error("a refused call reached the upstream")
	}
	proxyURL, _ := url.Parse(h.front.URL)
	// Absolute-form https URLs are not proxied (Go's client would tunnel;
	// send the request line by hand).
	resp, body := rawRequest(t, proxyURL.Host, "GET https://inventory/x HTTP/1.1\r\nHost: inventory\r\n\r\n")
	if resp.StatusCode != 400 || decodeObError(t, body).Reason != "only http:// URLs are proxied (the sidecar originates TLS)" {
		t.Errorf("https absolute-form: %d %s", resp.StatusCode, body)
	}
}

func rawRequest(t *testing.T, addr, req string) (*http.Response, []byte) {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, req); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

// TestOutboundWrongSPIFFEID: an upstream proving another identity is
// refused at the handshake; the request never reaches it.
func TestOutboundWrongSPIFFEID(t *testing.T) {
	h := newObHarness(t, obOptions{upstreamID: obFinance})
	resp, body := h.do(t, h.request(t, "GET", obUpstream, nil))
	e := decodeObError(t, body)
	if resp.StatusCode != 502 || e.Error != "bad_gateway" || !strings.Contains(e.Reason, `unexpected ID "`+obFinance+`"`) {
		t.Fatalf("%d %+v", resp.StatusCode, e)
	}
	if h.up.count() != 0 {
		t.Error("the request reached an upstream with the wrong SPIFFE ID")
	}
}

// TestOutboundStreaming: a response is passed on as it is produced.
func TestOutboundStreaming(t *testing.T) {
	release := make(chan struct{})
	h := newObHarness(t, obOptions{handler: func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "first\n")
		w.(http.Flusher).Flush()
		<-release
		_, _ = io.WriteString(w, "second\n")
	}})
	resp, err := h.front.Client().Do(h.request(t, "GET", obUpstream, nil))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	br := bufio.NewReader(resp.Body)
	line, err := br.ReadString('\n')
	if err != nil || line != "first\n" {
		t.Fatalf("first chunk %q %v", line, err)
	}
	close(release) // only now may the upstream finish
	if rest, _ := io.ReadAll(br); string(rest) != "second\n" {
		t.Errorf("rest %q", rest)
	}
}

// TestOutboundHTTP2: HTTP/2 to the upstream (ALPN), trailers intact, a
// request body streamed through.
func TestOutboundHTTP2(t *testing.T) {
	h := newObHarness(t, obOptions{h2: true, handler: func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "Grpc-Status")
		w.Header().Set("Content-Type", "application/grpc")
		_, _ = w.Write(b)
		w.Header().Set("Grpc-Status", "0")
	}})
	r := h.request(t, "POST", obUpstream, nil)
	r.Header.Set("Content-Type", "application/grpc")
	r.Body = io.NopCloser(strings.NewReader("payload"))
	r.ContentLength = -1
	resp, body := h.do(t, r)
	if resp.StatusCode != 200 || string(body) != "payload" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if resp.Trailer.Get("Grpc-Status") != "0" {
		t.Errorf("trailers %v header %v te %v", resp.Trailer, resp.Header, resp.TransferEncoding)
	}
	if p := h.up.last().proto; p != 2 {
		t.Errorf("gRPC went to the upstream over HTTP/%d, want 2", p)
	}
	// Plain requests take the (cheaper) HTTP/1.1 keep-alive pool.
	plain := h.request(t, "GET", obUpstream, nil)
	if resp, _ := h.do(t, plain); resp.StatusCode != 200 {
		t.Fatalf("plain: %d", resp.StatusCode)
	}
	if p := h.up.last().proto; p != 1 {
		t.Errorf("a plain request went over HTTP/%d, want the HTTP/1.1 pool", p)
	}
}

// TestOutboundUpgrade: a WebSocket-style upgrade is tunnelled.
func TestOutboundUpgrade(t *testing.T) {
	h := newObHarness(t, obOptions{handler: func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") != "echo" {
			http.Error(w, "want upgrade", 400)
			return
		}
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
		_ = brw.Flush()
		line, _ := brw.ReadString('\n')
		_, _ = brw.WriteString("echo: " + line)
		_ = brw.Flush()
	}})
	conn, err := net.Dial("tcp", h.front.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, _ = io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: inventory\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 101 {
		t.Fatalf("%v %v", resp, err)
	}
	_, _ = io.WriteString(conn, "ping\n")
	if line, _ := br.ReadString('\n'); line != "echo: ping\n" {
		t.Errorf("got %q", line)
	}
	if !strings.HasPrefix(h.up.last().header.Get("Authorization"), "Bearer ") {
		t.Error("the upgrade went without a token")
	}
}

// TestOutboundRotation: after the sidecar's SVID rotates, calls carry a
// token bound to the new certificate over connections presenting it.
func TestOutboundRotation(t *testing.T) {
	h := newObHarness(t, obOptions{h2: true})
	call := func() (string, *x509.Certificate) {
		resp, body := h.do(t, h.request(t, "GET", obUpstream, map[string]string{"Authorization": "Bearer alice-token"}))
		if resp.StatusCode != 200 {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		s := h.up.last()
		return strings.TrimPrefix(s.header.Get("Authorization"), "Bearer "), s.peer
	}
	tok1, peer1 := call()
	v := h.src.rotate(t, h.ca, obSelfID)
	tok2, peer2 := call()
	if tok1 == tok2 || !peer2.Equal(v.Cert) || peer1.Equal(peer2) {
		t.Fatal("the call after rotation did not use the new certificate and a new token")
	}
	h.sts.mu.Lock()
	bound := h.sts.certs[tok2]
	h.sts.mu.Unlock()
	if token.Thumbprint(bound) != token.Thumbprint(peer2) {
		t.Error("the token is bound to another certificate than the one presented upstream")
	}
}

func TestOutboundConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  OutboundConfig
		want string
	}{
		{"public listen", OutboundConfig{Listen: "0.0.0.0:15001"}, `outbound.listen: "0.0.0.0:15001" is not a loopback address (the outbound side speaks plain HTTP: loopback only)`},
		{"bad name", OutboundConfig{Upstreams: []Upstream{{Name: "http://x", Addresses: []string{"a:1"}, SPIFFEID: obInvID}}}, `outbound.upstreams[0]: name "http://x" is not a host name`},
		{"no address", OutboundConfig{Upstreams: []Upstream{{Name: "x", SPIFFEID: obInvID}}}, `outbound.upstreams[0]: want 1 to 64 addresses`},
		{"bad address", OutboundConfig{Upstreams: []Upstream{{Name: "x", Addresses: []string{"x"}, SPIFFEID: obInvID}}}, `outbound.upstreams[0]: address "x" is not host:port`},
		{"bad id", OutboundConfig{Upstreams: []Upstream{{Name: "x", Addresses: []string{"a:1"}, SPIFFEID: "https://x"}}}, `outbound.upstreams[0]: spiffeID: scheme is missing or invalid`},
		{"duplicate", OutboundConfig{Upstreams: []Upstream{{Name: "x", Addresses: []string{"a:1"}, SPIFFEID: obInvID}, {Name: "X", Addresses: []string{"a:1"}, SPIFFEID: obInvID}}}, `outbound.upstreams[1]: name "x" is used twice`},
		{"negative timeout", OutboundConfig{DialTimeout: -1}, `outbound.dialTimeout: must not be negative`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.cfg.Validate(); err == nil || err.Error() != tc.want {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	c := OutboundConfig{Upstreams: []Upstream{{Name: "Inventory", Addresses: []string{"10.0.0.1:443"}, SPIFFEID: obInvID}}}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if c.Listen != DefaultOutboundListen || c.Upstreams[0].Audience != obInvID || c.Upstreams[0].Name != "inventory" || c.MaxHeaderBytes != DefaultOutboundMaxHeader {
		t.Errorf("defaults: %+v", c)
	}
}

func TestOutboundRoute(t *testing.T) {
	h := newObHarness(t, obOptions{})
	for host, want := range map[string]bool{
		"inventory": true, "INVENTORY": true, "inventory:8080": true, "inventory.": false,
		"payments": false, "": false, "[inventory]": false, "inventory:": true,
	} {
		if got := h.out.route(host) != nil; got != want {
			t.Errorf("route(%q) = %v, want %v", host, got, want)
		}
	}
}

func FuzzOutboundRoute(f *testing.F) {
	for _, s := range []string{"inventory", "inventory:8080", "[::1]:80", "INVENTORY", "a.b.c", "\x00", strings.Repeat("a", 300)} {
		f.Add(s)
	}
	o := &Outbound{upstreams: map[string]*upstream{"inventory": {}, "::1": {}}}
	f.Fuzz(func(t *testing.T, host string) {
		up := o.route(host)
		if up != nil && len(host) > 260 {
			t.Fatal("oversized host routed")
		}
		_ = validHostName(host)
		c := OutboundConfig{Upstreams: []Upstream{{Name: host, Addresses: []string{"127.0.0.1:1"}, SPIFFEID: obInvID}}}
		if c.Validate() == nil && net.ParseIP(host) == nil && strings.ContainsAny(c.Upstreams[0].Name, ":/ \r\n@[]") {
			t.Fatalf("upstream name %q accepted", host)
		}
	})
}

// obCounter reads postern_outbound_requests_total{upstream, code}.
func obCounter(t *testing.T, h *obHarness, upstream string, code int) float64 {
	t.Helper()
	mfs, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "postern_outbound_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			if l["upstream"] == upstream && l["code"] == strconv.Itoa(code) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestOutboundH2C: a gRPC-style client speaks HTTP/2 in the clear to the
// outbound listener; a streamed request body and the trailers pass both
// ways over HTTP/2 to the upstream.
func TestOutboundH2C(t *testing.T) {
	h := newObHarness(t, obOptions{h2: true, handler: func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "Grpc-Status")
		w.Header().Set("Content-Type", "application/grpc")
		w.WriteHeader(200)
		br := bufio.NewReader(r.Body)
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				break
			}
			_, _ = io.WriteString(w, "echo "+line)
			w.(http.Flusher).Flush()
		}
		w.Header().Set("Grpc-Status", "0")
	}})
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	c := &http.Client{Transport: &http.Transport{Protocols: &p}}
	pr, pw := io.Pipe()
	r, _ := http.NewRequest("POST", h.front.URL+"/pkg.Svc/Stream", pr)
	r.Host = obUpstream
	r.Header.Set("Content-Type", "application/grpc")
	r.Header.Set("Te", "trailers")
	type result struct {
		resp *http.Response
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := c.Do(r)
		done <- result{resp, err}
	}()
	_, _ = io.WriteString(pw, "one\n")
	res := <-done
	if res.err != nil {
		t.Fatal(res.err)
	}
	defer res.resp.Body.Close()
	if res.resp.ProtoMajor != 2 {
		t.Errorf("the application's side spoke HTTP/%d", res.resp.ProtoMajor)
	}
	br := bufio.NewReader(res.resp.Body)
	// The first message comes back while the request is still open.
	if line, err := br.ReadString('\n'); err != nil || line != "echo one\n" {
		t.Fatalf("%q %v", line, err)
	}
	_, _ = io.WriteString(pw, "two\n")
	if line, err := br.ReadString('\n'); err != nil || line != "echo two\n" {
		t.Fatalf("%q %v", line, err)
	}
	pw.Close()
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Errorf("rest %q", rest)
	}
	if res.resp.Trailer.Get("Grpc-Status") != "0" {
		t.Errorf("trailers %v", res.resp.Trailer)
	}
	if h.up.last().proto != 2 {
		t.Error("the upstream side did not speak HTTP/2")
	}
}
