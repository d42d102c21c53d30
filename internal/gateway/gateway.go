package gateway

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"postern.dev/postern/internal/exchange"
	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/proxy"
	"postern.dev/postern/internal/token"
)

// Options are the parts of a gateway that are not configuration. Zero
// values mean defaults.
type Options struct {
	// Logger receives operational logs; default discard.
	Logger *slog.Logger
	// Audit receives one line per request; default Logger with log=audit.
	Audit *slog.Logger
	// Identity replaces the SPIFFE source named in the configuration.
	Identity proxy.Identity
	// Now returns the current time; default time.Now.
	Now func() time.Time
}

// Gateway is a running postern gateway: the TLS listener for users and the
// admin listener. Build it with New, serve with Run, release with Close.
type Gateway struct {
	cfg      *Config
	logger   *slog.Logger
	audit    *slog.Logger
	now      func() time.Time
	id       spiffeid.ID
	identity proxy.Identity
	closeID  func() error

	routes   *routeTable
	issuers  *issuers
	limiter  *limiter
	exchange *exchange.Client
	outbound *proxy.Outbound
	files    *certFiles // nil with fromSVID
	registry *prometheus.Registry
	metrics  *metrics

	idPrefix [8]byte
	idSeq    atomic.Uint64

	ln, adminLn net.Listener
	srv, admin  *http.Server

	draining  atomic.Bool
	closeOnce sync.Once
}

var _ http.Handler = (*Gateway)(nil)

// New builds a gateway from a validated configuration and opens its
// listeners. It waits for the first SVID from the Workload API (bounded by
// ctx); the issuers' remote keys are fetched by Run.
func New(ctx context.Context, cfg *Config, opts Options) (_ *Gateway, err error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Audit == nil {
		opts.Audit = opts.Logger.With(slog.String("log", "audit"))
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	g := &Gateway{cfg: cfg, logger: opts.Logger, audit: opts.Audit, now: opts.Now, closeID: func() error { return nil }}
	defer func() {
		if err != nil {
			g.Close()
		}
	}()
	if _, err := rand.Read(g.idPrefix[:]); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if err := g.openIdentity(ctx, td, opts.Identity); err != nil {
		return nil, err
	}
	if g.routes, err = compileRoutes(cfg.Routes, g.id.String()); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if g.issuers, err = loadIssuers(cfg.Issuers, issuerOptions{skew: time.Duration(cfg.ClockSkew), now: opts.Now, logger: opts.Logger}); err != nil {
		return nil, err
	}
	g.limiter = newLimiter(cfg.RateLimit, opts.Now)

	stsID, err := spiffeid.FromString(cfg.STS.SPIFFEID)
	if err != nil {
		return nil, fmt.Errorf("gateway: sts.spiffeID: %w", err)
	}
	if g.exchange, err = exchange.New(exchange.Config{
		TokenEndpoint: cfg.STS.TokenEndpoint,
		Roots:         g.identity,
		TrustDomain:   td,
		ServerID:      stsID,
		SVID:          g.identity,
		Now:           opts.Now,
		Logger:        opts.Logger,
	}); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	oc, err := cfg.outbound()
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.registry = prometheus.NewRegistry()
	g.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if g.outbound, err = proxy.NewOutbound(proxy.OutboundOptions{
		Config:     oc,
		Exchange:   prefetchExchanger{g.exchange},
		SVID:       g.identity,
		Bundle:     g.identity,
		Registerer: g.registry,
		Logger:     opts.Logger,
		Failed:     noteOutboundFailure,
		Now:        opts.Now,
	}); err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	if g.metrics, err = newMetrics(g); err != nil {
		return nil, err
	}

	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	if cfg.TLS.FromSVID {
		tlsCfg.GetCertificate = (&svidCert{src: g.identity}).GetCertificate
	} else {
		if g.files, err = newCertFiles(cfg.TLS.CertFile, cfg.TLS.KeyFile, opts.Now); err != nil {
			return nil, err
		}
		tlsCfg.GetCertificate = g.files.GetCertificate
	}
	errLog := slog.NewLogLogger(opts.Logger.Handler(), slog.LevelDebug)
	g.srv = &http.Server{
		Handler:           g,
		TLSConfig:         tlsCfg,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    cfg.MaxHeaderBytes,
		ErrorLog:          errLog,
	}
	g.admin = &http.Server{Handler: g.adminHandler(), ReadHeaderTimeout: 5 * time.Second, ErrorLog: errLog}
	if g.ln, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("gateway: listener: %w", err)
	}
	if g.adminLn, err = net.Listen("tcp", cfg.Admin.Listen); err != nil {
		return nil, fmt.Errorf("gateway: admin listener: %w", err)
	}
	return g, nil
}

// openIdentity opens the SPIFFE source and checks the SVID it hands out.
func (g *Gateway) openIdentity(ctx context.Context, td spiffeid.TrustDomain, override proxy.Identity) error {
	cfg := g.cfg
	switch {
	case override != nil:
		g.identity = override
	case cfg.SPIFFE.Files != nil:
		f := cfg.SPIFFE.Files
		fs, err := proxy.NewFileSource(f.Cert, f.Key, f.Bundle, td)
		if err != nil {
			return fmt.Errorf("gateway: %w", err)
		}
		g.identity, g.closeID = fs, fs.Close
	default:
		wopts := []workloadapi.X509SourceOption{workloadapi.WithClientOptions(workloadapi.WithAddr(cfg.SPIFFE.WorkloadAPI.Socket))}
		if want := cfg.SPIFFEID; want != "" {
			wopts = append(wopts, workloadapi.WithDefaultX509SVIDPicker(func(svids []*x509svid.SVID) *x509svid.SVID {
				for _, s := range svids {
					if s.ID.String() == want {
						return s
					}
				}
				return svids[0]
			}))
		}
		src, err := workloadapi.NewX509Source(ctx, wopts...)
		if err != nil {
			return fmt.Errorf("gateway: workload API: %w", err)
		}
		g.identity, g.closeID = src, src.Close
	}
	svid, err := g.identity.GetX509SVID()
	if err != nil {
		return fmt.Errorf("gateway: no SVID: %w", err)
	}
	if svid.ID.TrustDomain() != td {
		return fmt.Errorf("gateway: the SVID %s is not in trust domain %s", svid.ID, td)
	}
	if cfg.SPIFFEID != "" && svid.ID.String() != cfg.SPIFFEID {
		return fmt.Errorf("gateway: the SVID is for %s, the configuration says %s", svid.ID, cfg.SPIFFEID)
	}
	g.id = svid.ID
	return nil
}

// ID returns the gateway's SPIFFE ID.
func (g *Gateway) ID() spiffeid.ID { return g.id }

// Addr returns the address of the user-facing TLS listener.
func (g *Gateway) Addr() net.Addr { return g.ln.Addr() }

// AdminAddr returns the address of the admin listener.
func (g *Gateway) AdminAddr() net.Addr { return g.adminLn.Addr() }

// Ready reports whether the gateway holds a valid SVID and every remote
// key set of its issuers, and is not draining.
func (g *Gateway) Ready() bool {
	if g.draining.Load() || !g.issuers.ready() {
		return false
	}
	svid, err := g.identity.GetX509SVID()
	return err == nil && svid != nil && len(svid.Certificates) > 0 && g.now().Before(svid.Certificates[0].NotAfter)
}

func (g *Gateway) adminHandler() http.Handler { return proxy.AdminHandler(g.Ready, g.registry) }

// Run serves until ctx is done, then drains: /readyz turns 503, the
// listener stops accepting, and requests in flight finish (bounded by
// drainTimeout).
func (g *Gateway) Run(ctx context.Context) error {
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	g.issuers.run(bg)
	g.logger.Info("postern gateway listening",
		slog.String("spiffe_id", g.id.String()),
		slog.String("listen", g.ln.Addr().String()),
		slog.String("admin", g.adminLn.Addr().String()),
		slog.Int("routes", len(g.cfg.Routes)))

	err := proxy.ServeAndDrain(ctx,
		[]proxy.Listening{{Server: g.srv, Listener: g.ln, TLS: true}},
		proxy.Listening{Server: g.admin, Listener: g.adminLn},
		time.Duration(g.cfg.DrainTimeout), func() { g.draining.Store(true) }, g.logger)
	var runErr error
	if err != nil {
		runErr = fmt.Errorf("gateway: serve: %w", err)
	}
	g.logger.Info("postern gateway stopped", slog.String("spiffe_id", g.id.String()))
	return runErr
}

// Close releases the listeners, the pools and the identity source. Call it
// after Run returns (or instead of Run).
func (g *Gateway) Close() error {
	var err error
	g.closeOnce.Do(func() {
		for _, l := range []net.Listener{g.ln, g.adminLn} {
			if l != nil {
				_ = l.Close()
			}
		}
		if g.outbound != nil {
			g.outbound.Close()
		}
		if g.exchange != nil {
			g.exchange.Close()
		}
		err = g.closeID()
	})
	return err
}

// newID returns a decision id: a random prefix per gateway and a sequence
// number, as 32 hex digits (the form of policy.DecisionID).
func (g *Gateway) newID() string {
	var b [16]byte
	copy(b[:8], g.idPrefix[:])
	n := g.idSeq.Add(1)
	for i := 15; i >= 8; i-- {
		b[i] = byte(n)
		n >>= 8
	}
	return hex.EncodeToString(b[:])
}

// Decisions of the audit line and the request counter.
const (
	decisionAllow        = "allow"
	decisionDeny         = "deny"
	decisionUnauthorized = "unauthenticated"
	decisionLimited      = "rate_limited"
	decisionNoRoute      = "no_route"
	decisionError        = "error"
)

// reqState is the state of one request shared, through its context, with
// the outbound handler's exchanger and logger.
type reqState struct {
	id string

	// The token exchanged before forwarding, handed to the outbound
	// handler once.
	subject, audience string
	tok               *exchange.Token
	used              bool

	// A refusal by the outbound handler (from its log record).
	outFault            bool
	outStatus           int
	outCode, outReason  string
	outCause            string
	decision, reason    string
	routeName, sub, iss string
}

type stateKey struct{}

// ServeHTTP handles one user request.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := g.now()
	st := &reqState{id: g.newID(), routeName: "-"}
	gw := &gwWriter{ResponseWriter: w, st: st}
	defer func() {
		// A panic (http.ErrAbortHandler when an upstream stream breaks)
		// still gets its audit line, then goes on to net/http.
		if p := recover(); p != nil {
			st.decision, st.reason = decisionError, "the response was aborted"
			g.finish(r, st, gw.code(), start)
			panic(p)
		}
	}()
	g.serve(gw, r, st)
	g.finish(r, st, gw.code(), start)
}

// finish counts the request and writes its audit line.
func (g *Gateway) finish(r *http.Request, st *reqState, status int, start time.Time) {
	if st.outFault && st.decision == decisionAllow {
		st.decision = decisionError
	}
	d := g.now().Sub(start)
	g.metrics.observe(st.routeName, st.decision, d)
	attrs := []slog.Attr{
		slog.String("decision_id", st.id),
		slog.String("decision", st.decision),
		slog.String("route", st.routeName),
		slog.String("sub", st.sub),
		slog.String("issuer", st.iss),
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.Int("status", status),
		slog.Duration("duration", d),
	}
	if st.reason != "" {
		attrs = append(attrs, slog.String("reason", st.reason))
	}
	if st.outCause != "" {
		attrs = append(attrs, slog.String("cause", st.outCause))
	}
	g.audit.LogAttrs(r.Context(), slog.LevelInfo, "gateway request", attrs...)
}

// refuse answers with the JSON error body and records the decision.
func (g *Gateway) refuse(w http.ResponseWriter, st *reqState, status int, decision, code, reason string) {
	st.decision, st.reason = decision, reason
	writeProblem(w, status, code, safeReason(reason), st.id)
}

func (g *Gateway) serve(w http.ResponseWriter, r *http.Request, st *reqState) {
	if r.Method == http.MethodConnect {
		w.Header().Set("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")
		g.refuse(w, st, http.StatusMethodNotAllowed, decisionDeny, codeMethodNotAllowed, "CONNECT is not supported")
		return
	}
	p, ok := proxy.CleanPath(r)
	if !ok {
		g.refuse(w, st, http.StatusBadRequest, decisionDeny, codeInvalidRequest, "the path has an encoded slash or backslash")
		return
	}
	rt := g.routes.match(r.Host, p)
	if rt == nil {
		g.refuse(w, st, http.StatusNotFound, decisionNoRoute, codeNotFound, "no route for this host and path")
		return
	}
	st.routeName = rt.Name
	raw, query, fault := proxy.ExtractToken(r)
	if fault != "" {
		w.Header().Set("WWW-Authenticate", bearerChallenge(codeInvalidRequest, fault, ""))
		g.refuse(w, st, http.StatusUnauthorized, decisionUnauthorized, codeInvalidRequest, fault)
		return
	}
	if raw == "" {
		// RFC 6750 §3.1: no error code when the request has no token.
		w.Header().Set("WWW-Authenticate", bearerChallenge("", "", ""))
		g.refuse(w, st, http.StatusUnauthorized, decisionUnauthorized, codeUnauthorized, "a bearer token is required")
		return
	}
	ctx := r.Context()
	user, err := g.issuers.authenticate(ctx, raw, clientAddr(r))
	if err != nil {
		if errors.Is(err, errIntrospectLimited) {
			w.Header().Set("Retry-After", "1")
			g.refuse(w, st, http.StatusTooManyRequests, decisionLimited, codeRateLimited, "too many unknown opaque tokens from this address; retry later")
			return
		}
		if errors.Is(err, token.ErrKeysUnavailable) || errors.Is(err, errIntrospectUnavailable) {
			st.outCause = err.Error()
			g.refuse(w, st, http.StatusServiceUnavailable, decisionError, codeUnavailable, "the identity provider's keys or introspection endpoint cannot be reached")
			return
		}
		desc := err.Error()
		w.Header().Set("WWW-Authenticate", bearerChallenge(codeInvalidToken, desc, ""))
		g.refuse(w, st, http.StatusUnauthorized, decisionUnauthorized, codeInvalidToken, desc)
		return
	}
	st.sub, st.iss = user.claims.Subject, user.claims.Issuer
	if g.limiter != nil {
		if ok, wait := g.limiter.allow(g.rateKey(user)); !ok {
			w.Header().Set("Retry-After", strconv.Itoa(retryAfter(wait)))
			g.refuse(w, st, http.StatusTooManyRequests, decisionLimited, codeRateLimited, "too many requests from this client; retry later")
			return
		}
	}
	if len(rt.RequiredScopes) > 0 {
		if missing := missingScope(rt.RequiredScopes, scopesOf(user)); missing != "" {
			reason := fmt.Sprintf("the token lacks scope %q", missing)
			w.Header().Set("WWW-Authenticate", bearerChallenge(codeInsufficientScope, reason, rt.scopeHdr))
			g.refuse(w, st, http.StatusForbidden, decisionDeny, codeInsufficientScope, reason)
			return
		}
	}
	if rt.engine != nil {
		req := policy.Request{
			Workload: g.id.String(),
			HasToken: true,
			Issuer:   user.claims.Issuer,
			Subject:  user.claims.Subject,
			Claims:   user.m,
			Actors:   user.claims.Act.Chain(),
			Method:   r.Method,
			Path:     p,
			Host:     normHost(r.Host), // as the route matched it
			Port:     localPort(r),
		}
		req.Headers, req.RepeatedHeaders = proxy.PolicyHeaders(r.Header)
		if d := rt.engine.Authorize(&req); !d.Allow {
			st.outCause = d.Reason
			g.refuse(w, st, http.StatusForbidden, decisionDeny, codeAccessDenied, "the route's conditions do not admit this request")
			return
		}
	}
	tok, err := g.exchange.Exchange(ctx, raw, rt.Upstream.Audience)
	if err != nil {
		g.exchangeFault(ctx, w, st, err)
		return
	}
	st.subject, st.audience, st.tok = raw, rt.Upstream.Audience, tok
	st.decision = decisionAllow

	// The request upstream: the cleaned path, the query without
	// access_token, no X-Postern-* header, no Authorization but the user's
	// token, which the outbound handler replaces by the exchanged one.
	out := r.WithContext(context.WithValue(ctx, stateKey{}, st))
	u := *r.URL
	u.Scheme, u.Host, u.User = "", "", nil
	u.Path, u.RawPath, u.RawQuery = p, "", query
	out.URL = &u
	out.Host = rt.Upstream.Name
	out.Header = forwardHeader(r.Header)
	out.Header["Authorization"] = []string{"Bearer " + raw}
	out.Trailer = nil
	g.outbound.ServeHTTP(w, out)
}

// exchangeFault answers a failed exchange: 503 when the STS is unreachable,
// 403 when it refuses to act for this user towards the upstream, 502 when
// it refuses the gateway itself (a deployment fault the user cannot fix).
func (g *Gateway) exchangeFault(ctx context.Context, w http.ResponseWriter, st *reqState, err error) {
	st.outCause = err.Error()
	var xe *exchange.Error
	switch {
	case errors.Is(err, exchange.ErrUnavailable) || ctx.Err() != nil:
		g.refuse(w, st, http.StatusServiceUnavailable, decisionError, codeTokenService, "the token service cannot be reached")
	case errors.As(err, &xe):
		switch xe.Code {
		case "invalid_grant", "access_denied", "invalid_scope", "invalid_target", "unauthorized_client":
			g.refuse(w, st, http.StatusForbidden, decisionDeny, codeExchangeRefused, "the token service refused to act for this user towards the route's upstream")
		default:
			g.refuse(w, st, http.StatusBadGateway, decisionError, codeExchangeFailed, "the token service refused the gateway's request")
		}
	default:
		g.refuse(w, st, http.StatusBadRequest, decisionDeny, codeInvalidRequest, "the token cannot be exchanged")
	}
}

// rateKey is the client a request counts against: the issuer and sub, or
// the client_id (azp), falling back to the sub.
func (g *Gateway) rateKey(p *principal) string {
	if g.cfg.RateLimit.By == rateByClientID {
		if c := p.claims.ClientID; c != "" {
			return "c\x00" + p.claims.Issuer + "\x00" + c
		}
		if azp, ok := p.m["azp"].(string); ok && azp != "" {
			return "c\x00" + p.claims.Issuer + "\x00" + azp
		}
	}
	return "s\x00" + p.claims.Issuer + "\x00" + p.claims.Subject
}

// clientAddr is the address a request came from (no port), what limits
// that apply before a user is known are keyed by.
func clientAddr(r *http.Request) string {
	if h, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return h
	}
	return r.RemoteAddr
}

func localPort(r *http.Request) int {
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); ok {
		return a.Port
	}
	return 0
}

// prefetchExchanger hands the outbound handler the token the gateway has
// already obtained for this request (once; a retry after a certificate
// rotation exchanges again) and refuses client credentials: the gateway
// never calls an upstream as itself.
type prefetchExchanger struct{ c *exchange.Client }

func (p prefetchExchanger) Exchange(ctx context.Context, subject, audience string) (*exchange.Token, error) {
	if st, ok := ctx.Value(stateKey{}).(*reqState); ok && !st.used && st.tok != nil && st.subject == subject && st.audience == audience {
		st.used = true
		return st.tok, nil
	}
	return p.c.Exchange(ctx, subject, audience)
}

func (p prefetchExchanger) ClientCredentials(context.Context, string) (*exchange.Token, error) {
	return nil, errors.New("gateway: a request without a user token is never forwarded")
}

// Stats exposes the exchange cache's counters to the outbound metrics.
func (p prefetchExchanger) Stats() exchange.Stats { return p.c.Stats() }

// noteOutboundFailure records, in the request's state, a forward the
// outbound half refused or failed, so the gateway answers with its own body
// and decision id and the audit line carries the cause.
func noteOutboundFailure(ctx context.Context, f proxy.OutboundFailure) {
	st, ok := ctx.Value(stateKey{}).(*reqState)
	if !ok {
		return
	}
	st.outFault = true
	st.outStatus, st.outCode, st.outReason = f.Status, f.Code, f.Reason
	st.outCause = f.Reason
	if f.Cause != nil {
		st.outCause = f.Cause.Error()
	}
}

// gwWriter records the status, removes X-Postern-* headers from responses,
// and replaces the outbound handler's own error answers by the gateway's
// (the decision id, no internal detail).
type gwWriter struct {
	http.ResponseWriter
	st      *reqState
	status  int
	swallow bool
}

func (w *gwWriter) WriteHeader(code int) {
	if w.status != 0 {
		return
	}
	h := w.ResponseWriter.Header()
	for k := range h {
		if hasPosternPrefix(k) {
			delete(h, k)
		}
	}
	if code < 200 {
		w.ResponseWriter.WriteHeader(code) // 1xx headers go out too
		return
	}
	w.status = code
	if st := w.st; st.outFault && code >= 400 {
		w.swallow = true
		for k := range h {
			delete(h, k)
		}
		status, ecode, reason := outboundAnswer(st.outStatus, st.outCode)
		if status == 499 {
			w.status = 499
			w.ResponseWriter.WriteHeader(http.StatusBadGateway) // nobody reads it
			return
		}
		st.reason = reason
		w.status = status
		writeProblem(w.ResponseWriter, status, ecode, reason, st.id)
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *gwWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.swallow {
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach Flush and the like.
func (w *gwWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (w *gwWriter) code() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// outboundAnswer maps a refusal of the outbound handler to the user's
// answer.
func outboundAnswer(status int, code string) (int, string, string) {
	switch {
	case status == 499:
		return 499, "", ""
	case status == http.StatusGatewayTimeout:
		return status, codeUpstreamTimeout, "the upstream did not answer in time"
	case code == "token_service_unavailable":
		return http.StatusServiceUnavailable, codeTokenService, "the token service cannot be reached"
	case code == "certificate_rotating":
		return http.StatusServiceUnavailable, codeUnavailable, "the gateway's certificate is rotating; retry"
	case code == "token_exchange_refused":
		return http.StatusForbidden, codeExchangeRefused, "the token service refused to act for this user towards the route's upstream"
	case code == "request_header_too_large":
		return http.StatusRequestHeaderFieldsTooLarge, codeRequestHeaderLarge, "the request header is too large"
	default:
		return http.StatusBadGateway, codeBadGateway, "the upstream could not be reached"
	}
}

// metrics are the gateway's own Prometheus metrics (the outbound handler
// registers its per-upstream ones beside them).
type metrics struct {
	reqs    *prometheus.CounterVec
	latency prometheus.Observer
}

func newMetrics(g *Gateway) (*metrics, error) {
	m := &metrics{
		reqs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "postern", Subsystem: "gateway", Name: "requests_total",
			Help: "User requests by route and decision: allow, deny, unauthenticated, rate_limited, no_route, error.",
		}, []string{"route", "decision"}),
	}
	lat := prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "postern", Subsystem: "gateway", Name: "request_duration_seconds",
		Help:    "Time from a user request's arrival to the end of its response, upstream included.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10},
	})
	m.latency = lat
	gauges := []prometheus.Collector{
		m.reqs, lat,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "postern", Subsystem: "gateway", Name: "svid_expiry_seconds",
			Help: "Seconds until the gateway's X.509-SVID expires (-1 when none is held).",
		}, func() float64 {
			s, err := g.identity.GetX509SVID()
			if err != nil || s == nil || len(s.Certificates) == 0 {
				return -1
			}
			return s.Certificates[0].NotAfter.Sub(g.now()).Seconds()
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "postern", Subsystem: "gateway", Name: "issuer_keys_ready",
			Help: "1 once every trusted issuer's remote signing keys are loaded.",
		}, func() float64 {
			if g.issuers.ready() {
				return 1
			}
			return 0
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "postern", Subsystem: "gateway", Name: "verified_tokens",
			Help: "User JWTs whose verdict is cached.",
		}, func() float64 { return float64(g.issuers.verdicts.Len()) }),
	}
	if g.limiter != nil {
		gauges = append(gauges, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "postern", Subsystem: "gateway", Name: "rate_limit_clients",
			Help: "Clients with a rate-limit bucket.",
		}, func() float64 { return float64(g.limiter.len()) }))
	}
	for _, c := range gauges {
		if err := g.registry.Register(c); err != nil {
			return nil, fmt.Errorf("gateway: metrics: %w", err)
		}
	}
	return m, nil
}

func (m *metrics) observe(route, decision string, d time.Duration) {
	m.reqs.WithLabelValues(route, decision).Inc()
	m.latency.Observe(d.Seconds())
}
