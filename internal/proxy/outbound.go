package proxy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/exchange"
	"postern.dev/postern/internal/token"
)

// Exchanger obtains per-hop tokens; *exchange.Client implements it.
type Exchanger interface {
	Exchange(ctx context.Context, subjectToken, audience string) (*exchange.Token, error)
	ClientCredentials(ctx context.Context, audience string) (*exchange.Token, error)
}

// OutboundOptions configure NewOutbound. Zero values mean defaults where
// one is documented.
type OutboundOptions struct {
	// Config holds the upstreams, bounds and timeouts; it is validated
	// (and defaulted) by NewOutbound.
	Config OutboundConfig
	// Contexts resolves X-Postern-Context ids handed out inbound; nil
	// refuses every context id.
	Contexts *ContextStore
	// Exchange obtains the tokens sent upstream. Required.
	Exchange Exchanger
	// SVID is the sidecar's own X.509-SVID, presented to upstreams.
	// Required.
	SVID x509svid.Source
	// Bundle verifies upstreams' SVIDs. Required.
	Bundle x509bundle.Source
	// Registerer receives the outbound metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// Logger receives one line per failed request (never a token);
	// default discard.
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Revocations, when set, refuses a user context whose token the token
	// service has revoked (a RevocationList), before any cached exchange
	// of it is used.
	Revocations Revocations
	// Failed, if set, is told of every request the outbound half refuses
	// or fails, before its JSON error is written (the gateway answers
	// with its own body and decision id).
	Failed func(ctx context.Context, f OutboundFailure)
}

// Revocations is what the outbound half needs of a RevocationList.
type Revocations interface {
	Revoked(*token.Claims) bool
	Len() int
}

// Outbound is the outbound half of the sidecar: an http.Handler for the
// application's plain HTTP calls (forward-proxy absolute-form requests, or
// Host: <upstream name>) that obtains a per-hop token for the upstream and
// forwards the call over mutual TLS to one of the upstream's addresses,
// refusing a server whose SPIFFE ID is not the expected one.
type Outbound struct {
	cfg       OutboundConfig
	contexts  *ContextStore
	exchange  Exchanger
	svid      x509svid.Source
	bundle    x509bundle.Source
	log       *slog.Logger
	now       func() time.Time
	upstreams map[string]*upstream
	metrics   *outboundMetrics
	thumb     atomic.Pointer[thumbMemo]
	buffers   *bufferPool
	failed    func(context.Context, OutboundFailure)
	revoked   Revocations
}

type thumbMemo struct {
	leaf       *x509.Certificate
	thumbprint string
}

var _ http.Handler = (*Outbound)(nil)

// NewOutbound validates opts and builds the handler. Connections are made
// on demand.
func NewOutbound(opts OutboundOptions) (*Outbound, error) {
	if opts.Exchange == nil || opts.SVID == nil || opts.Bundle == nil {
		return nil, errors.New("proxy: outbound: Exchange, SVID and Bundle are required")
	}
	cfg := opts.Config
	cfg.Upstreams = append([]Upstream(nil), cfg.Upstreams...)
	for i := range cfg.Upstreams {
		cfg.Upstreams[i].Addresses = append([]string(nil), cfg.Upstreams[i].Addresses...)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("proxy: outbound: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	o := &Outbound{
		cfg: cfg, contexts: opts.Contexts, exchange: opts.Exchange, svid: opts.SVID, bundle: opts.Bundle,
		log: opts.Logger, now: opts.Now, upstreams: map[string]*upstream{}, failed: opts.Failed, revoked: opts.Revocations,
	}
	o.buffers = &bufferPool{}
	names := make([]string, 0, len(cfg.Upstreams))
	for i, u := range cfg.Upstreams {
		id, _ := spiffeid.FromString(u.SPIFFEID) // validated
		up := &upstream{Upstream: u, id: id, o: o, metric: i}
		up.proxy = &httputil.ReverseProxy{
			Rewrite:   up.rewrite,
			Transport: up,
			// Zero: responses of unknown length (streams, gRPC, SSE) are
			// flushed at every write by ReverseProxy itself; a response of
			// known length goes out in full records, not one per write.
			FlushInterval: 0,
			BufferPool:    o.buffers,
			ErrorHandler:  up.proxyError,
			ModifyResponse: func(res *http.Response) error {
				// Identity headers are for applications from their own
				// sidecar, never from an upstream.
				stripPostern(res.Header)
				stripTrailers(res)
				// An HTTP/2 upstream may send Content-Length with
				// trailers; an HTTP/1.1 application needs chunking to get
				// them.
				if len(res.Trailer) > 0 {
					res.Header.Del("Content-Length")
					res.ContentLength = -1
				}
				return nil
			},
			ErrorLog: log.New(discardWriter{}, "", 0),
		}
		o.upstreams[u.Name] = up
		names = append(names, u.Name)
	}
	var stats func() exchange.Stats
	if s, ok := opts.Exchange.(interface{ Stats() exchange.Stats }); ok {
		stats = s.Stats
	}
	o.metrics = newOutboundMetrics(names, stats)
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(o.metrics); err != nil {
			return nil, fmt.Errorf("proxy: outbound metrics: %w", err)
		}
	}
	return o, nil
}

// NewServer returns an http.Server for the outbound listener with the
// configured header bound and timeouts, serving HTTP/1.1 and unencrypted
// HTTP/2 (prior knowledge, as gRPC clients speak it on loopback).
func (o *Outbound) NewServer(errorLog *log.Logger) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           o,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    o.cfg.MaxHeaderBytes,
		Protocols:         &p,
		ErrorLog:          errorLog,
	}
}

// Listen returns the configured listen address.
func (o *Outbound) Listen() string { return o.cfg.Listen }

// Close releases the idle connections of every upstream pool.
func (o *Outbound) Close() {
	for _, u := range o.upstreams {
		u.closeIdle()
	}
}

// Error codes of the JSON error body.
const (
	errMethodNotAllowed = "method_not_allowed"
	errHeaderTooLarge   = "request_header_too_large"
	errInvalidRequest   = "invalid_request"
	errUnknownUpstream  = "unknown_upstream"
	errUnknownContext   = "unknown_context"
	errTokenRevoked     = "token_revoked"
	errExchangeRefused  = "token_exchange_refused"
	errSTSUnavailable   = "token_service_unavailable"
	errBadGateway       = "bad_gateway"
	errCertRotating     = "certificate_rotating"
)

// outboundFault is a refusal before forwarding: the answer's status, error
// code, safe reason and decision id, and the internal cause (logged only).
type outboundFault struct {
	status                 int
	code, reason, decision string
	cause                  error
}

func fault(status int, code, reason string) *outboundFault {
	return &outboundFault{status: status, code: code, reason: reason}
}

// ServeHTTP handles one call from the application.
func (o *Outbound) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := o.now()
	sw := &statusWriter{ResponseWriter: w}
	up := o.serve(sw, r)
	o.metrics.observe(up, sw.code(), o.now().Sub(start))
}

func (o *Outbound) serve(w *statusWriter, r *http.Request) *upstream {
	if r.Method == http.MethodConnect {
		w.Header().Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		o.fail(w, r, nil, http.StatusMethodNotAllowed, errMethodNotAllowed, "CONNECT is refused: send plain HTTP so the sidecar can add the token", "", nil)
		return nil
	}
	if headerSize(r) > o.cfg.MaxHeaderBytes {
		o.fail(w, r, nil, http.StatusRequestHeaderFieldsTooLarge, errHeaderTooLarge, fmt.Sprintf("the request header exceeds %d bytes", o.cfg.MaxHeaderBytes), "", nil)
		return nil
	}
	host := r.Host
	if r.URL.IsAbs() {
		if r.URL.Scheme != "http" {
			o.fail(w, r, nil, http.StatusBadRequest, errInvalidRequest, "only http:// URLs are proxied (the sidecar originates TLS)", "", nil)
			return nil
		}
		host = r.URL.Host
	}
	up := o.route(host)
	if up == nil {
		o.fail(w, r, nil, http.StatusBadGateway, errUnknownUpstream, "no upstream is configured for this host", "", nil)
		return nil
	}
	var tr http.RoundTripper
	var tok *exchange.Token
	// Twice at most: a certificate rotation between the exchange and the
	// choice of pool makes the token unusable; the second exchange is
	// for the new certificate.
	for attempt := 0; tr == nil; attempt++ {
		var fault *outboundFault
		if tok, fault = o.token(r, up); fault != nil {
			o.fail(w, r, up, fault.status, fault.code, fault.reason, fault.decision, fault.cause)
			return up
		}
		var err error
		if tr, err = o.pool(up, tok, r); err != nil && attempt == 1 {
			o.fail(w, r, up, http.StatusServiceUnavailable, errCertRotating, "the sidecar's certificate is rotating; retry", "", err)
			return up
		}
	}
	ctx := context.WithValue(r.Context(), outboundKey{}, &outboundCall{token: tok.Raw, transport: tr})
	up.proxy.ServeHTTP(w, r.WithContext(ctx))
	return up
}

// route finds the upstream named by host (with or without a port).
func (o *Outbound) route(host string) *upstream {
	if len(host) > 260 {
		return nil
	}
	name := strings.ToLower(host)
	if up := o.upstreams[name]; up != nil {
		return up
	}
	if h, _, err := net.SplitHostPort(name); err == nil {
		return o.upstreams[h]
	}
	if inner, ok := strings.CutPrefix(name, "["); ok {
		if inner, ok = strings.CutSuffix(inner, "]"); ok && net.ParseIP(inner) != nil {
			return o.upstreams[inner]
		}
	}
	return nil
}

// token finds the user context of the call and obtains the token for up:
// exchanged from the context's token or the forwarded bearer token, or
// client credentials when there is no user context.
func (o *Outbound) token(r *http.Request, up *upstream) (*exchange.Token, *outboundFault) {
	ids := r.Header.Values(HeaderContext)
	auths := r.Header.Values("Authorization")
	if len(ids) > 1 || len(auths) > 1 {
		return nil, fault(http.StatusBadRequest, errInvalidRequest, "more than one X-Postern-Context or Authorization header")
	}
	var subject string
	if len(auths) == 1 {
		if scheme, cred, _ := strings.Cut(strings.TrimSpace(auths[0]), " "); strings.EqualFold(scheme, "Bearer") {
			subject = strings.TrimSpace(cred)
			if subject == "" {
				return nil, fault(http.StatusBadRequest, errInvalidRequest, "empty bearer token")
			}
		}
		// Another scheme is the application's own business with no
		// meaning for the mesh: removed, and the call has no user context.
	}
	if len(ids) == 1 {
		if subject != "" {
			return nil, fault(http.StatusBadRequest, errInvalidRequest, "both X-Postern-Context and a bearer token: send one user context")
		}
		var ok bool
		if o.contexts != nil {
			subject, ok = o.contexts.Get(ids[0])
		}
		if !ok {
			return nil, fault(http.StatusUnauthorized, errUnknownContext, "X-Postern-Context is unknown or has expired")
		}
	}
	// A cached exchange would outlive a revocation by up to 80% of its
	// token's life: look first. The claims are read without verifying
	// them, which is enough to refuse (never to admit) a call.
	if subject != "" && o.revoked != nil && o.revoked.Len() > 0 {
		if _, c, err := token.ParseUnverified(subject); err == nil && o.revoked.Revoked(c) {
			return nil, fault(http.StatusUnauthorized, errTokenRevoked, "the user's token has been revoked")
		}
	}
	ctx := r.Context()
	var tok *exchange.Token
	var err error
	if subject == "" {
		tok, err = o.exchange.ClientCredentials(ctx, up.Audience)
	} else {
		tok, err = o.exchange.Exchange(ctx, subject, up.Audience)
	}
	if err == nil {
		return tok, nil
	}
	var xe *exchange.Error
	switch {
	case errors.Is(err, exchange.ErrUnavailable):
		return nil, &outboundFault{http.StatusServiceUnavailable, errSTSUnavailable, "the token service cannot be reached", decisionOf(err), err}
	case errors.As(err, &xe):
		reason := xe.Code
		if xe.Description != "" {
			reason += ": " + xe.Description
		}
		if subject == "" {
			reason = "client credentials refused: " + reason
		}
		return nil, &outboundFault{http.StatusForbidden, errExchangeRefused, reason, xe.DecisionID, err}
	case ctx.Err() != nil:
		return nil, &outboundFault{http.StatusServiceUnavailable, errSTSUnavailable, "the request was cancelled", "", err}
	default:
		// Input faults found before any STS call (size bounds).
		return nil, &outboundFault{http.StatusBadRequest, errInvalidRequest, err.Error(), "", err}
	}
}

func decisionOf(err error) string {
	var xe *exchange.Error
	if errors.As(err, &xe) {
		return xe.DecisionID
	}
	return ""
}

// currentSVID returns the current SVID and its x5t#S256.
func (o *Outbound) currentSVID() (*x509svid.SVID, string, error) {
	s, err := o.svid.GetX509SVID()
	if err != nil {
		return nil, "", err
	}
	if s == nil || len(s.Certificates) == 0 {
		return nil, "", errors.New("proxy: outbound: the SVID source returned no certificate")
	}
	leaf := s.Certificates[0]
	if m := o.thumb.Load(); m != nil && m.leaf == leaf {
		return s, m.thumbprint, nil
	}
	m := &thumbMemo{leaf: leaf, thumbprint: token.Thumbprint(leaf)}
	o.thumb.Store(m)
	return s, m.thumbprint, nil
}

// pool returns up's transport presenting the certificate tok is bound to.
// A token bound to another certificate than the current one (a rotation
// between the exchange and now) cannot be presented; the caller retries.
func (o *Outbound) pool(up *upstream, tok *exchange.Token, r *http.Request) (http.RoundTripper, error) {
	svid, tp, err := o.currentSVID()
	if err != nil {
		return nil, err
	}
	if tok.Thumbprint != "" && tok.Thumbprint != tp {
		return nil, errors.New("proxy: outbound: the token is bound to another certificate than the current SVID")
	}
	return up.transport(svid, tp, needsHTTP2(r)), nil
}

// needsHTTP2 reports whether a request must travel over HTTP/2 to the
// upstream: gRPC (and anything else the application sends as HTTP/2 with
// trailers in mind). Everything else goes over a pool of HTTP/1.1
// keep-alive connections, which costs the sidecars about 40% less CPU per
// request than Go's HTTP/2 client and server (bench/sidecar), and carries
// WebSocket upgrades, which HTTP/2 cannot.
func needsHTTP2(r *http.Request) bool {
	if r.ProtoMajor == 2 {
		return true
	}
	ct := r.Header.Get("Content-Type")
	return strings.HasPrefix(ct, "application/grpc")
}

// fail answers with the JSON error body and logs the cause.
// OutboundFailure describes a request the outbound half refused or failed.
type OutboundFailure struct {
	Status     int    // the HTTP status answered
	Code       string // the error code of the JSON body
	Reason     string // the reason of the JSON body
	DecisionID string // the STS's decision id, when the STS refused
	Cause      error  // the internal cause (logged, never sent)
}

func (o *Outbound) fail(w http.ResponseWriter, r *http.Request, up *upstream, status int, code, reason, decision string, cause error) {
	if decision == "" {
		// Refused here, not by the STS: a local id, so that every refusal
		// the application sees can be found in this sidecar's log.
		decision = newID()
	}
	if o.failed != nil {
		o.failed(r.Context(), OutboundFailure{Status: status, Code: code, Reason: reason, DecisionID: decision, Cause: cause})
	}
	attrs := []slog.Attr{
		slog.String("method", r.Method),
		slog.Int("status", status),
		slog.String("error", code),
		slog.String("reason", reason),
	}
	if up != nil {
		attrs = append(attrs, slog.String("upstream", up.Name))
	}
	attrs = append(attrs, slog.String("decision_id", decision))
	if cause != nil {
		attrs = append(attrs, slog.String("cause", cause.Error()))
	}
	o.log.LogAttrs(r.Context(), slog.LevelWarn, "outbound request failed", attrs...)
	writeOutboundError(w, status, code, reason, decision)
}

func writeOutboundError(w http.ResponseWriter, status int, code, reason, decision string) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(struct {
		Error      string `json:"error"`
		Reason     string `json:"reason"`
		DecisionID string `json:"decision_id,omitempty"`
	}{code, reason, decision})
}

// headerSize approximates the request header's size on the wire.
func headerSize(r *http.Request) int {
	n := len(r.Method) + len(r.RequestURI) + len(r.Host) + 16
	for k, vs := range r.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// outboundKey carries an *outboundCall from ServeHTTP to the upstream's
// RoundTrip through the request context.
type outboundKey struct{}

type outboundCall struct {
	token     string
	transport http.RoundTripper
}

// upstream is one configured upstream with its pools: one transport per
// own certificate (tokens are bound to it), the current one and the one
// before a rotation, so calls in flight finish on their connections.
type upstream struct {
	Upstream
	id     spiffeid.ID
	o      *Outbound
	metric int // index in outboundMetrics
	proxy  *httputil.ReverseProxy
	next   atomic.Uint32 // round-robin start among Addresses

	mu        sync.Mutex
	cur, prev *pinnedTransport
}

type pinnedTransport struct {
	thumbprint string
	t          *http.Transport // HTTP/2
	t1         *syncTransport  // HTTP/1.1 keep-alive
}

// RoundTrip sends the request on the transport chosen by ServeHTTP.
func (u *upstream) RoundTrip(r *http.Request) (*http.Response, error) {
	f, ok := r.Context().Value(outboundKey{}).(*outboundCall)
	if !ok {
		return nil, errors.New("proxy: outbound: no transport chosen")
	}
	return f.transport.RoundTrip(r)
}

// rewrite turns the application's request into the upstream request: https
// to the upstream (the pool dials one of its addresses), no X-Postern-*
// header, no Authorization from the application, the per-hop token.
// ReverseProxy has already removed hop-by-hop and X-Forwarded headers.
func (u *upstream) rewrite(pr *httputil.ProxyRequest) {
	pr.Out.URL.Scheme = "https"
	pr.Out.URL.Host = u.Name
	pr.Out.Host = u.Name
	h := pr.Out.Header
	stripPostern(h)
	h.Del("Authorization")
	if f, ok := pr.In.Context().Value(outboundKey{}).(*outboundCall); ok {
		h.Set("Authorization", "Bearer "+f.token)
	}
}

// proxyError answers a failed forward: 502 with the reason (a refused
// SPIFFE ID shows here), 504 on a timeout.
func (u *upstream) proxyError(w http.ResponseWriter, r *http.Request, err error) {
	status, reason := http.StatusBadGateway, "upstream "+u.Name+": "+err.Error()
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		status = http.StatusGatewayTimeout
	}
	if errors.Is(err, context.Canceled) {
		status = 499 // the application went away; nobody reads this
	}
	u.o.fail(w, r, u, status, errBadGateway, reason, "", err)
}

// transport returns the pool presenting svid (whose thumbprint is tp).
func (u *upstream) transport(svid *x509svid.SVID, tp string, h2 bool) http.RoundTripper {
	u.mu.Lock()
	defer u.mu.Unlock()
	var p *pinnedTransport
	switch {
	case u.cur != nil && u.cur.thumbprint == tp:
		p = u.cur
	case u.prev != nil && u.prev.thumbprint == tp:
		p = u.prev
	default:
		if u.prev != nil {
			u.prev.t.CloseIdleConnections()
			u.prev.t1.close() // connections in use close when done
		}
		p = &pinnedTransport{thumbprint: tp, t: u.newTransport(svid, true), t1: u.newSyncTransport(svid)}
		u.prev, u.cur = u.cur, p
	}
	if h2 {
		return p.t
	}
	return p.t1
}

func (u *upstream) closeIdle() {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, p := range []*pinnedTransport{u.cur, u.prev} {
		if p != nil {
			p.t.CloseIdleConnections()
			p.t1.close()
		}
	}
}

// tlsConfig is the client configuration of a pool presenting svid and
// accepting only u's SPIFFE ID, verified against the current bundle on
// every handshake, resumed ones included. alpn is the one protocol offered.
func (u *upstream) tlsConfig(svid *x509svid.SVID, alpn string) *tls.Config {
	cfg := tlsconfig.MTLSClientConfig(fixedSVID{svid}, u.o.bundle, tlsconfig.AuthorizeID(u.id))
	verifyEveryHandshake(cfg)
	cfg.ClientSessionCache = tls.NewLRUClientSessionCache(64)
	cfg.MinVersion = tls.VersionTLS12
	cfg.NextProtos = []string{alpn}
	return cfg
}

// dialTCP connects to one of u's addresses, trying them in turn from a
// rotating start.
func (u *upstream) dialTCP(ctx context.Context, dialer *net.Dialer) (net.Conn, error) {
	start := int(u.next.Add(1))
	var errs []error
	for i := range u.Addresses {
		addr := u.Addresses[(start+i)%len(u.Addresses)]
		c, err := dialer.DialContext(ctx, "tcp", addr)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// newTransport builds a keep-alive pool to u presenting svid (see
// tlsConfig): HTTP/2 when h2, else HTTP/1.1.
func (u *upstream) newTransport(svid *x509svid.SVID, h2 bool) *http.Transport {
	alpn := "http/1.1"
	if h2 {
		alpn = "h2"
	}
	dialTimeout := time.Duration(u.o.cfg.DialTimeout)
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return u.dialTCP(ctx, dialer)
		},
		TLSClientConfig:       u.tlsConfig(svid, alpn),
		TLSHandshakeTimeout:   dialTimeout,
		ForceAttemptHTTP2:     h2,
		MaxIdleConnsPerHost:   u.o.cfg.MaxIdlePerUpstream,
		IdleConnTimeout:       time.Duration(u.o.cfg.IdleTimeout),
		ResponseHeaderTimeout: time.Duration(u.o.cfg.ResponseHeaderTimeout),
		ExpectContinueTimeout: time.Second,
		DisableCompression:    true, // pass bodies through as they are
	}
}

// newSyncTransport builds the HTTP/1.1 pool to u presenting svid: requests
// without a body on the caller's goroutine (syncTransport), the rest
// through an http.Transport.
func (u *upstream) newSyncTransport(svid *x509svid.SVID) *syncTransport {
	dialTimeout := time.Duration(u.o.cfg.DialTimeout)
	dialer := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	cfg := u.tlsConfig(svid, "http/1.1")
	return &syncTransport{
		dial: func(ctx context.Context) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, dialTimeout)
			defer cancel()
			c, err := u.dialTCP(ctx, dialer)
			if err != nil {
				return nil, err
			}
			tc := tls.Client(c, cfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				_ = c.Close()
				return nil, err
			}
			if p := tc.ConnectionState().NegotiatedProtocol; p != "" && p != "http/1.1" {
				_ = c.Close()
				return nil, fmt.Errorf("proxy: upstream %s negotiated %q, not http/1.1", u.Name, p)
			}
			return tc, nil
		},
		fallback:      u.newTransport(svid, false),
		maxIdle:       u.o.cfg.MaxIdlePerUpstream,
		idleTimeout:   time.Duration(u.o.cfg.IdleTimeout),
		headerTimeout: time.Duration(u.o.cfg.ResponseHeaderTimeout),
		now:           time.Now,
	}
}

// verifyEveryHandshake moves go-spiffe's SPIFFE verification from
// VerifyPeerCertificate, which crypto/tls skips on resumed sessions, to
// VerifyConnection, which runs on every handshake: a resumed session is
// checked against the current bundle and authorizer too.
func verifyEveryHandshake(cfg *tls.Config) {
	verify := cfg.VerifyPeerCertificate
	if verify == nil {
		return
	}
	cfg.VerifyPeerCertificate = nil
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		raw := make([][]byte, len(cs.PeerCertificates))
		for i, c := range cs.PeerCertificates {
			raw[i] = c.Raw
		}
		return verify(raw, nil)
	}
}

// fixedSVID is an x509svid.Source that always returns one SVID: a pool's
// connections present the certificate its tokens are bound to.
type fixedSVID struct{ svid *x509svid.SVID }

func (f fixedSVID) GetX509SVID() (*x509svid.SVID, error) { return f.svid, nil }

// statusWriter records the final status code. Unwrap lets
// http.ResponseController (used by ReverseProxy) reach Flush and Hijack.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *statusWriter) code() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// bufferPool recycles ReverseProxy's copy buffers (32 KiB each).
type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if v, ok := b.p.Get().(*[]byte); ok {
		return *v
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) {
	if cap(buf) == 32<<10 {
		buf = buf[:cap(buf)]
		b.p.Put(&buf)
	}
}

type discardWriter struct{}

func (discardWriter) Write(p []byte) (int, error) { return len(p), nil }
