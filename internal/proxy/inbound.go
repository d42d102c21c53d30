package proxy

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/token"
)

// Headers the inbound chain sets for the application. Any header starting
// with HeaderPrefix that arrives from outside is removed first, always.
const (
	HeaderPrefix = "X-Postern-"
	HeaderClaims = "X-Postern-Claims"
	HeaderPeer   = "X-Postern-Peer"
)

// maxTokenHeaders bounds how many Authorization headers are looked at.
const maxTokenHeaders = 8

// InboundConfig configures an Inbound handler. Workload, Verdicts, Policy
// and App are required.
type InboundConfig struct {
	// Workload is the SPIFFE ID of the workload this sidecar fronts; it
	// selects the AuthorizationPolicies.
	Workload string
	// Verdicts verifies bearer tokens (once per token).
	Verdicts *VerdictCache
	// Policy returns the current policy engine (a policy.Watcher's Engine).
	Policy func() *policy.Engine
	// App is the application's loopback address, host:port.
	App string
	// ForwardToken forwards the verified bearer token to the application
	// in Authorization; by default it is removed.
	ForwardToken bool
	// RevocationsLoaded, when set, reports whether the revocation list has
	// been fetched once; until then a request with a token is answered 503
	// (a revoked token must not pass in the seconds after a start).
	RevocationsLoaded func() bool
	// Revoked, when set, refuses tokens the token service has revoked
	// (a RevocationList), checked on every request.
	Revoked func(*token.Claims) bool
	// Contexts, when set, receives the verified token and yields the opaque
	// X-Postern-Context id handed to the application.
	Contexts *ContextStore
	// Metrics, when set, counts requests by decision and their latency.
	Metrics *InboundMetrics
	// Logger receives one access/audit line per request; default discard.
	Logger *slog.Logger
	// Transport reaches the application over HTTP/1.1 (and WebSocket
	// upgrades); default a keep-alive pool. H2CTransport reaches it with
	// cleartext HTTP/2, used for gRPC; default a pool as well.
	Transport, H2CTransport http.RoundTripper
	// Now returns the current time; default time.Now.
	Now func() time.Time
}

// Inbound is the inbound chain as an http.Handler, served behind a mutual
// TLS listener whose client certificates were verified and authorized
// (tlsconfig.MTLSServerConfig): header hygiene, one bearer token, verdict
// cache, certificate binding, AuthorizationPolicy, then the application on
// loopback with the verified claims and peer identity. It never fails open:
// every path that is not an explicit allow answers 401, 403 or 502.
type Inbound struct {
	cfg     InboundConfig
	logger  *slog.Logger
	http1   *httputil.ReverseProxy
	h2c     *httputil.ReverseProxy
	closers []func()
	buffers bufferPool // outbound.go: recycled 32 KiB copy buffers
}

// forward carries per-request results from ServeHTTP to the reverse
// proxy's hooks, through the request context.
type forward struct {
	path, query string
	claims      string
	peer        string
	context     string
	token       string
	status      int
	failed      bool
}

type forwardKey struct{}

// NewInbound validates cfg and returns the handler.
func NewInbound(cfg InboundConfig) (*Inbound, error) {
	switch {
	case cfg.Workload == "":
		return nil, errors.New("proxy: inbound needs the workload's SPIFFE ID")
	case cfg.Verdicts == nil:
		return nil, errors.New("proxy: inbound needs a verdict cache")
	case cfg.Policy == nil:
		return nil, errors.New("proxy: inbound needs a policy engine")
	case cfg.App == "":
		return nil, errors.New("proxy: inbound needs the application's address")
	}
	if _, _, err := net.SplitHostPort(cfg.App); err != nil {
		return nil, fmt.Errorf("proxy: inbound: application address %q: %w", cfg.App, err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	h := &Inbound{cfg: cfg, logger: cfg.Logger}
	if cfg.Transport == nil {
		dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
		t := &http.Transport{
			Proxy:               nil,
			DialContext:         dialer.DialContext,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     90 * time.Second,
			DisableCompression:  true,
		}
		// Requests without a body go to the application on the
		// handler's goroutine; the rest through t.
		st := &syncTransport{
			dial:        func(ctx context.Context) (net.Conn, error) { return dialer.DialContext(ctx, "tcp", cfg.App) },
			peek:        tcpIdleUsable,
			fallback:    t,
			maxIdle:     1024,
			idleTimeout: 90 * time.Second,
			now:         time.Now,
		}
		cfg.Transport = st
		h.closers = append(h.closers, st.close)
	}
	if cfg.H2CTransport == nil {
		t := &http.Transport{
			Proxy:              nil,
			DialContext:        (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			IdleConnTimeout:    90 * time.Second,
			DisableCompression: true,
			Protocols:          new(http.Protocols),
		}
		t.Protocols.SetUnencryptedHTTP2(true)
		cfg.H2CTransport = t
		h.closers = append(h.closers, t.CloseIdleConnections)
	}
	h.http1 = h.reverseProxy(cfg.Transport)
	h.h2c = h.reverseProxy(cfg.H2CTransport)
	return h, nil
}

// Close releases the idle connections to the application.
func (h *Inbound) Close() {
	for _, c := range h.closers {
		c()
	}
}

func (h *Inbound) reverseProxy(t http.RoundTripper) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Transport: t,
		// Zero: responses of unknown length (streams, gRPC, SSE) are
		// flushed at every write by ReverseProxy itself; a response of
		// known length goes out in full records, not one per write.
		FlushInterval: 0,
		BufferPool:    &h.buffers,
		Rewrite: func(pr *httputil.ProxyRequest) {
			f := pr.In.Context().Value(forwardKey{}).(*forward)
			out := pr.Out
			out.URL.Scheme = "http"
			out.URL.Host = h.cfg.App
			out.URL.Path, out.URL.RawPath = f.path, ""
			out.URL.RawQuery = f.query
			out.Host = pr.In.Host
			// pr.Out holds a copy of the caller's headers without the
			// hop-by-hop ones. Remove every X-Postern-* and the token,
			// then set ours, so nothing the caller sent can remove or
			// override them.
			stripPostern(out.Header)
			stripPostern(out.Trailer)
			delete(out.Header, "Authorization")
			if f.claims != "" {
				out.Header[HeaderClaims] = []string{f.claims}
			}
			out.Header[HeaderPeer] = []string{f.peer}
			if f.context != "" {
				out.Header[HeaderContext] = []string{f.context}
			}
			if f.token != "" {
				out.Header["Authorization"] = []string{"Bearer " + f.token}
			}
		},
		ModifyResponse: func(resp *http.Response) error {
			if f, ok := resp.Request.Context().Value(forwardKey{}).(*forward); ok {
				f.status = resp.StatusCode
			}
			// The app must not set identity headers on the way back,
			// as headers or as trailers.
			stripPostern(resp.Header)
			grpcTrailersOnly(resp)
			stripTrailers(resp)
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			f := r.Context().Value(forwardKey{}).(*forward)
			f.failed = true
			if errors.Is(err, context.Canceled) {
				// The caller went away; there is nobody to answer.
				f.status = 499
				return
			}
			f.status = http.StatusBadGateway
			h.logger.Warn("inbound: application unreachable", slog.String("app", h.cfg.App), slog.String("error", err.Error()))
			writeProblem(w, http.StatusBadGateway, "bad_gateway", "the application did not answer", "")
		},
		ErrorLog: slog.NewLogLogger(h.logger.Handler(), slog.LevelDebug),
	}
}

// ServeHTTP runs the inbound chain.
func (h *Inbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := h.cfg.Now()

	var peer string
	var cert *x509.Certificate
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		cert = r.TLS.PeerCertificates[0]
		if id, err := x509svid.IDFromCert(cert); err == nil {
			peer = id.String()
		}
	}
	if peer == "" {
		// The mTLS listener refuses such connections; this is defence
		// in depth for a misconfigured server.
		h.deny(w, r, start, http.StatusForbidden, "access_denied", "no peer SPIFFE ID", newID(), "", "", decisionUnauthorized)
		return
	}
	p, ok := CleanPath(r)
	if !ok {
		h.deny(w, r, start, http.StatusBadRequest, "invalid_request", "the path has an encoded slash or backslash", newID(), peer, "", decisionUnauthorized)
		return
	}
	raw, query, fault := ExtractToken(r)
	if fault != "" {
		h.tokenFault(w, r, start, "invalid_request", fault, peer)
		return
	}

	req := policy.Request{
		Workload: h.cfg.Workload,
		Peer:     peer,
		Method:   r.Method,
		Path:     p,
		Host:     r.Host,
		Port:     localPort(r),
	}
	req.Headers, req.RepeatedHeaders = headerMap(r.Header)
	var v *Verified
	if raw != "" {
		var err error
		v, err = h.cfg.Verdicts.Verify(r.Context(), raw, cert)
		if err != nil {
			if errors.Is(err, token.ErrKeysUnavailable) {
				h.deny(w, r, start, http.StatusServiceUnavailable, "temporarily_unavailable", "token verification keys are not available", newID(), peer, "", decisionError)
				return
			}
			h.tokenFault(w, r, start, "invalid_token", err.Error(), peer)
			return
		}
		if h.cfg.RevocationsLoaded != nil && !h.cfg.RevocationsLoaded() {
			h.deny(w, r, start, http.StatusServiceUnavailable, "temporarily_unavailable", "the revocation list is not loaded yet", newID(), peer, "", decisionError)
			return
		}
		if h.cfg.Revoked != nil && h.cfg.Revoked(v.Claims) {
			h.tokenFault(w, r, start, "invalid_token", "the token has been revoked", peer)
			return
		}
		req.HasToken = true
		req.Issuer, req.Subject = v.Claims.Issuer, v.Claims.Subject
		req.Claims = v.Map
		req.Actors = v.Actors
	}
	d := h.cfg.Policy().Authorize(&req)
	id := d.DecisionID.String()
	if !d.Allow {
		if raw == "" {
			// No token and no rule admits token-less calls: that is an
			// authentication failure (RFC 6750 §3.1: no error code).
			w.Header().Set("WWW-Authenticate", `Bearer realm="postern"`)
			h.deny(w, r, start, http.StatusUnauthorized, "unauthorized", "a bearer token is required", id, peer, d.Policy, decisionUnauthorized)
			return
		}
		writeProblem(w, http.StatusForbidden, "access_denied", d.Reason, id)
		h.audit(r, start, http.StatusForbidden, id, peer, req.Subject, d.Policy, decisionDeny)
		return
	}

	f := &forward{path: p, query: query, peer: peer}
	sub := ""
	if v != nil {
		f.claims = v.Header
		sub = v.Claims.Subject
		if h.cfg.Contexts != nil {
			f.context = v.contextID(h.cfg.Contexts, raw, h.cfg.Verdicts.Leeway())
		}
		if h.cfg.ForwardToken {
			f.token = raw
		}
	}
	rp := h.http1
	if r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
		rp = h.h2c
	}
	rp.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), forwardKey{}, f)))
	decision := decisionAllow
	if f.failed {
		decision = decisionError
	}
	h.audit(r, start, f.status, id, peer, sub, d.Policy, decision)
}

// grpcTrailersOnly rewrites a gRPC Trailers-Only response (grpc-status in
// the only header block, sent with END_STREAM) into headers followed by
// trailers. Relayed as it is, the status would arrive in a header block
// that is not the end of the stream whenever the headers are flushed
// before the (empty) body ends, and the client would report a stream
// closed without trailers.
func grpcTrailersOnly(resp *http.Response) {
	if resp.ProtoMajor != 2 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/grpc") {
		return
	}
	if _, ok := resp.Header["Grpc-Status"]; !ok {
		return
	}
	if resp.Trailer == nil {
		resp.Trailer = http.Header{}
	}
	for _, k := range []string{"Grpc-Status", "Grpc-Message", "Grpc-Status-Details-Bin"} {
		if v, ok := resp.Header[k]; ok {
			resp.Trailer[k] = v
			delete(resp.Header, k)
		}
	}
}

// contextID returns the X-Postern-Context id of this token, putting it in
// store the first time and again after the store evicted it. The id lives
// as long as the token is accepted: its exp plus the verdict cache's
// leeway (a token accepted within the skew allowance must not come with an
// id that is already dead).
func (v *Verified) contextID(store *ContextStore, raw string, leeway time.Duration) string {
	if p := v.ctxID.Load(); p != nil {
		if _, ok := store.Get(*p); ok {
			return *p
		}
	}
	id := store.Put(raw, v.Claims.Expiry.Add(leeway))
	v.ctxID.Store(&id)
	return id
}

func (h *Inbound) tokenFault(w http.ResponseWriter, r *http.Request, start time.Time, code, desc, peer string) {
	w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer error=%q, error_description=%q`, code, headerSafe(desc)))
	h.deny(w, r, start, http.StatusUnauthorized, code, desc, newID(), peer, "", decisionUnauthorized)
}

func (h *Inbound) deny(w http.ResponseWriter, r *http.Request, start time.Time, status int, code, reason, id, peer, pol, decision string) {
	writeProblem(w, status, code, reason, id)
	h.audit(r, start, status, id, peer, "", pol, decision)
}

func (h *Inbound) audit(r *http.Request, start time.Time, status int, id, peer, sub, pol, decision string) {
	d := h.cfg.Now().Sub(start)
	h.cfg.Metrics.observe(decision, d)
	h.logger.LogAttrs(r.Context(), slog.LevelInfo, "inbound request",
		slog.String("decision_id", id),
		slog.String("decision", decision),
		slog.String("peer", peer),
		slog.String("sub", sub),
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		slog.String("policy", pol),
		slog.Duration("duration", d),
	)
}

// problem is the JSON body of a refusal.
type problem struct {
	Error      string `json:"error"`
	Reason     string `json:"reason"`
	DecisionID string `json:"decision_id,omitempty"`
}

func writeProblem(w http.ResponseWriter, status int, code, reason, id string) {
	b, _ := json.Marshal(problem{Error: code, Reason: reason, DecisionID: id})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

// newID returns a decision id for refusals made before the policy engine
// ran (token faults): the same form as policy.DecisionID.
func newID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// stripPostern removes every header whose name starts with X-Postern-, in
// any case (a header set without canonicalisation keeps its spelling).
func stripPostern(h http.Header) {
	for k := range h {
		if hasPosternPrefix(k) {
			delete(h, k)
		}
	}
}

// IsPosternHeader reports whether name is one of Postern's identity
// headers, which only a sidecar (or the gateway) may set: see
// hasPosternPrefix.
func IsPosternHeader(name string) bool { return hasPosternPrefix(name) }

// hasPosternPrefix reports whether a header name starts with X-Postern-,
// in any case, with "_" counting as "-": CGI-style servers (WSGI, Rack,
// PHP) read X-Postern_Claims and X-Postern-Claims as the same
// HTTP_X_POSTERN_CLAIMS, so a caller must not be able to slip one past us.
func hasPosternPrefix(k string) bool {
	const p = "x-postern-"
	if len(k) < len(p) {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := k[i]
		switch {
		case c == '_':
			c = '-'
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		if c != p[i] {
			return false
		}
	}
	return true
}

// ExtractToken finds the one bearer token of r in Authorization or the
// access_token query parameter (RFC 6750 §2.1, §2.3). It returns the query
// without access_token, and a fault for more than one token or a malformed
// Authorization header.
func ExtractToken(r *http.Request) (raw, query, fault string) {
	query = r.URL.RawQuery
	n := 0
	auth := r.Header["Authorization"]
	if len(auth) > maxTokenHeaders {
		return "", query, "too many Authorization headers"
	}
	for _, a := range auth {
		scheme, tok, ok := strings.Cut(strings.TrimSpace(a), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return "", query, "the Authorization header is not a Bearer token"
		}
		tok = strings.TrimSpace(tok)
		if tok == "" || strings.ContainsAny(tok, " ,") {
			return "", query, "the Authorization header is not a Bearer token"
		}
		raw = tok
		n++
	}
	if query != "" {
		// Decode before looking: "access%5Ftoken" is access_token too.
		vals, err := url.ParseQuery(query)
		if err != nil && queryMayHoldToken(query) {
			return "", query, "the query string does not parse"
		}
		found := false
		for k, vs := range vals {
			if !isTokenParam(k) {
				continue
			}
			if k != "access_token" {
				return "", query, "the query carries an access token under another spelling"
			}
			for _, v := range vs {
				raw = v
				n++
			}
			delete(vals, k)
			found = true
		}
		if found {
			query = vals.Encode()
		}
	}
	if n > 1 {
		return "", query, "more than one token in the request"
	}
	if n == 1 && raw == "" {
		return "", query, "empty access token"
	}
	return raw, query, ""
}

// stripTrailers removes X-Postern-* trailers from resp: those it declares
// now, those that arrive with the end of the body (undeclared ones) when
// the body ends. Upgraded connections are left alone.
func stripTrailers(resp *http.Response) {
	stripPostern(resp.Trailer)
	if resp.StatusCode == http.StatusSwitchingProtocols || resp.Body == nil || resp.Body == http.NoBody {
		return
	}
	resp.Body = &trailerStripper{ReadCloser: resp.Body, resp: resp}
}

// trailerStripper strips the response's X-Postern-* trailers once its body
// has been read to the end (when the transport fills them in) and on Close.
type trailerStripper struct {
	io.ReadCloser
	resp *http.Response
}

func (t *trailerStripper) Read(p []byte) (int, error) {
	n, err := t.ReadCloser.Read(p)
	if err != nil {
		stripPostern(t.resp.Trailer)
	}
	return n, err
}

func (t *trailerStripper) Close() error {
	err := t.ReadCloser.Close()
	stripPostern(t.resp.Trailer)
	return err
}

// queryMayHoldToken reports whether some parser could read an access_token
// parameter in a query that url.ParseQuery refused: pairs split on "&" and
// ";", names unescaped leniently, compared in any case.
func queryMayHoldToken(q string) bool {
	for _, pair := range strings.FieldsFunc(q, func(r rune) bool { return r == '&' || r == ';' }) {
		name, _, _ := strings.Cut(pair, "=")
		if isTokenParam(lenientUnescape(name)) {
			return true
		}
	}
	return false
}

// isTokenParam reports whether some application could read the query
// parameter name (already unescaped) as access_token: in any case, with
// surrounding white space trimmed, and with " ", "." and "[" read as "_"
// (as PHP does).
func isTokenParam(name string) bool {
	name = strings.TrimSpace(name)
	if len(name) != len("access_token") {
		return false
	}
	return strings.EqualFold(strings.Map(func(r rune) rune {
		switch r {
		case ' ', '.', '[':
			return '_'
		}
		return r
	}, name), "access_token")
}

// lenientUnescape decodes the valid %XX escapes and "+" of s and keeps
// everything else as it is, as forgiving query parsers do.
func lenientUnescape(s string) string {
	if !strings.ContainsAny(s, "%+") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '+':
			b.WriteByte(' ')
		case c == '%' && i+2 < len(s) && ishex(s[i+1]) && ishex(s[i+2]):
			b.WriteByte(unhex(s[i+1])<<4 | unhex(s[i+2]))
			i += 2
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func ishex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c >= 'a':
		return c - 'a' + 10
	case c >= 'A':
		return c - 'A' + 10
	}
	return c - '0'
}

// CleanPath returns the request's path with dot segments and repeated
// slashes resolved: the path the policy decides on is the one the
// application receives. Encoded slashes and backslashes are refused, since
// the application could split the path where the policy did not.
func CleanPath(r *http.Request) (string, bool) {
	if raw := r.URL.RawPath; raw != "" {
		l := strings.ToLower(raw)
		if strings.Contains(l, "%2f") || strings.Contains(l, "%5c") {
			return "", false
		}
	}
	p := r.URL.Path
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	if strings.Contains(p, "\\") {
		return "", false
	}
	// A dot segment with path parameters ("..;x", ".;"): servers that drop
	// ";params" (Tomcat, Spring) then resolve it as a dot segment, which
	// path.Clean does not; policy and application would see different paths.
	if strings.Contains(p, ";") {
		for seg := range strings.SplitSeq(p, "/") {
			if s, _, ok := strings.Cut(seg, ";"); ok && (s == "." || s == "..") {
				return "", false
			}
		}
	}
	if !strings.Contains(p, "//") && !strings.Contains(p, "/.") {
		return p, true
	}
	c := path.Clean(p)
	if strings.HasSuffix(p, "/") && c != "/" {
		c += "/"
	}
	return c, true
}

func localPort(r *http.Request) int {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok {
		return a.Port
	}
	return 0
}

// PolicyHeaders is headerMap for the gateway, which decides its routes'
// conditions with the same engine and must see headers the same way.
func PolicyHeaders(h http.Header) (map[string]string, map[string]bool) { return headerMap(h) }

// headerMap gives policies the request headers (lower-case names),
// without Authorization and X-Postern-*: those sent once in the map, the
// names of those sent more than once in the set (see
// policy.Request.RepeatedHeaders).
func headerMap(h http.Header) (map[string]string, map[string]bool) {
	m := make(map[string]string, len(h))
	var repeated map[string]bool
	for k, v := range h {
		if strings.EqualFold(k, "Authorization") || len(v) == 0 || hasPosternPrefix(k) {
			continue
		}
		name := strings.ToLower(k)
		_, dup := m[name]
		if len(v) > 1 || dup || repeated[name] {
			if repeated == nil {
				repeated = map[string]bool{}
			}
			repeated[name] = true
			delete(m, name)
			continue
		}
		m[name] = v[0]
	}
	return m, repeated
}

// headerSafe makes s safe inside a quoted WWW-Authenticate parameter.
func headerSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '"' || r == '\\' || r > 0x7e {
			return '\''
		}
		return r
	}, s)
}

var _ http.Handler = (*Inbound)(nil)
