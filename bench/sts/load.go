//go:build linux

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"

	"postern.dev/postern/internal/token"
)

// Token type URNs of RFC 8693.
const (
	jwtType = "urn:ietf:params:oauth:token-type:jwt"
	atType  = "urn:ietf:params:oauth:token-type:access_token"
)

// maxBody bounds what is read of a token endpoint response.
const maxBody = 64 << 10

// workload is the hop-2 exchange: order-processing, holding a hop-1 token
// the gateway obtained for it, asks for a token addressed to inventory.
type workload struct {
	o          *options
	tokenURL   string
	pool       *x509.CertPool
	gateway    tls.Certificate
	orders     tls.Certificate
	userToken  string
	body       atomic.Pointer[string] // the form-encoded hop-2 request
	handshakes atomic.Int64           // TLS handshakes the clients completed
	// keepAlive, fullHandshake and resumedHandshake are one client per
	// worker for phases A+B, C (full) and C (resumed).
	keepAlive, fullHandshake, resumedHandshake []*http.Client
	proto                                      string // negotiated on keep-alive connections
	tlsVersion                                 string
}

// newWorkload loads the child's bundle and SVIDs, mints the user token with
// the quickstart IdP key and checks one hop-2 exchange end to end.
func newWorkload(ctx context.Context, o *options, info childInfo) (*workload, error) {
	w := &workload{o: o, tokenURL: info.Issuer + "/oauth2/token"}
	b, err := os.ReadFile(info.Bundle)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	w.pool = x509.NewCertPool()
	if !w.pool.AppendCertsFromPEM(b) {
		return nil, errors.New("bundle: no certificates")
	}
	for id, dst := range map[string]*tls.Certificate{gatewayID: &w.gateway, ordersID: &w.orders} {
		f, ok := info.SVIDs[id]
		if !ok {
			return nil, fmt.Errorf("the server issued no SVID for %s", id)
		}
		if *dst, err = tls.LoadX509KeyPair(f.Cert, f.Key); err != nil {
			return nil, fmt.Errorf("SVID for %s: %w", id, err)
		}
	}
	if w.userToken, err = mintUserToken(filepath.Join(o.quickstart, "idp", "idp-key.pem")); err != nil {
		return nil, err
	}

	shared := w.newTransport(true, nil) // h2: every worker shares one connection
	for range o.workers {
		t := shared
		if o.proto == "h1" {
			t = w.newTransport(true, nil)
		}
		w.keepAlive = append(w.keepAlive, &http.Client{Transport: t, Timeout: 10 * time.Second})
		w.fullHandshake = append(w.fullHandshake, &http.Client{Transport: w.newTransport(false, nil), Timeout: 10 * time.Second})
		w.resumedHandshake = append(w.resumedHandshake, &http.Client{Transport: w.newTransport(false, tls.NewLRUClientSessionCache(4)), Timeout: 10 * time.Second})
	}

	if err := w.refreshSubject(ctx); err != nil {
		return nil, err
	}
	// One checked exchange: the benchmark measures successes only.
	raw, resp, err := w.exchange(ctx, w.keepAlive[0], *w.body.Load(), true)
	if err != nil {
		return nil, fmt.Errorf("hop-2 exchange: %w", err)
	}
	_, c, err := token.ParseUnverified(raw)
	if err != nil {
		return nil, fmt.Errorf("hop-2 exchange: %w", err)
	}
	if !c.HasAudience(invID) || !slices.Equal(c.Act.Chain(), []string{ordersID, gatewayID}) {
		return nil, fmt.Errorf("hop-2 exchange: unexpected claims (aud %v, act chain %v)", c.Audience, c.Act.Chain())
	}
	w.proto = resp.Proto
	w.tlsVersion = tls.VersionName(resp.TLS.Version)
	return w, nil
}

// newTransport returns a transport for order-processing's SVID; without
// keep-alive every request opens a new TLS connection.
func (w *workload) newTransport(keepAlive bool, cache tls.ClientSessionCache) *http.Transport {
	cfg := &tls.Config{
		RootCAs:            w.pool,
		Certificates:       []tls.Certificate{w.orders},
		MinVersion:         tls.VersionTLS12,
		ClientSessionCache: cache,
		VerifyConnection: func(tls.ConnectionState) error {
			w.handshakes.Add(1)
			return nil
		},
	}
	p := new(http.Protocols)
	if w.o.proto == "h2" && keepAlive {
		p.SetHTTP2(true)
	} else {
		p.SetHTTP1(true)
	}
	return &http.Transport{
		TLSClientConfig:     cfg,
		Protocols:           p,
		DisableKeepAlives:   !keepAlive,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 1,
		IdleConnTimeout:     time.Minute,
		TLSHandshakeTimeout: 10 * time.Second,
	}
}

// close releases the clients' idle connections.
func (w *workload) close() {
	for _, set := range [][]*http.Client{w.keepAlive, w.fullHandshake, w.resumedHandshake} {
		for _, c := range set {
			c.CloseIdleConnections()
		}
	}
}

// describe names the keep-alive transport for the report.
func (w *workload) describe() string {
	if w.o.proto == "h2" {
		return fmt.Sprintf("%s over %s, keep-alive, %d streams on one shared connection", w.proto, w.tlsVersion, w.o.workers)
	}
	return fmt.Sprintf("%s over %s, keep-alive, one connection per worker (%d)", w.proto, w.tlsVersion, w.o.workers)
}

// refreshSubject has the gateway exchange the user token for a fresh hop-1
// token addressed to order-processing (it lives 5 minutes), and prepares the
// hop-2 request body around it.
func (w *workload) refreshSubject(ctx context.Context) error {
	gw := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: w.pool, Certificates: []tls.Certificate{w.gateway}, MinVersion: tls.VersionTLS12,
	}}, Timeout: 10 * time.Second}
	defer gw.CloseIdleConnections()
	hop1, _, err := w.exchange(ctx, gw, url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {w.userToken},
		"subject_token_type": {jwtType},
		"audience":           {ordersID},
	}.Encode(), true)
	if err != nil {
		return fmt.Errorf("hop-1 exchange (gateway): %w", err)
	}
	body := url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {hop1},
		"subject_token_type": {atType},
		"audience":           {invID},
	}.Encode()
	w.body.Store(&body)
	return nil
}

// exchange posts one token exchange. With wantToken it decodes and returns
// the access token; otherwise it only drains the body. Errors never carry
// a token: a refusal is reported by its status and OAuth error code.
func (w *workload) exchange(ctx context.Context, c *http.Client, body string, wantToken bool) (string, *http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.tokenURL, strings.NewReader(body))
	if err != nil {
		return "", nil, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := c.Do(req)
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&e)
		return "", resp, fmt.Errorf("status %d, error %q", resp.StatusCode, e.Error)
	}
	if !wantToken {
		_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
		return "", resp, err
	}
	var ok struct {
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&ok); err != nil {
		return "", resp, fmt.Errorf("response: %w", err)
	}
	if ok.AccessToken == "" {
		return "", resp, errors.New("response: no access_token")
	}
	return ok.AccessToken, resp, nil
}

// mintUserToken signs the quickstart user's token (alice, who may write
// orders) with the quickstart IdP's published demo key.
func mintUserToken(keyFile string) (string, error) {
	b, err := os.ReadFile(keyFile)
	if err != nil {
		return "", fmt.Errorf("idp key: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return "", errors.New("idp key: no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return "", fmt.Errorf("idp key: %w", err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return "", errors.New("idp key: not an ECDSA key")
	}
	tp, err := (&jose.JSONWebKey{Key: key.Public()}).Thumbprint(cryptoSHA256)
	if err != nil {
		return "", fmt.Errorf("idp key: %w", err)
	}
	sg, err := token.NewSigner(base64.RawURLEncoding.EncodeToString(tp), jose.ES256, key, token.TypeJWT)
	if err != nil {
		return "", err
	}
	now := time.Now()
	return sg.Sign(&token.Claims{
		Issuer: "https://idp.quickstart.local", Subject: "alice", Audience: []string{"quickstart-shop"},
		Scope: "orders:read orders:write", IssuedAt: now, Expiry: now.Add(time.Hour),
		Extra: map[string]any{"email": "alice@example.com"},
	})
}

// recorder is one phase's tally, shared by its workers. Its sample slices
// are allocated once (untouched pages cost nothing) and never grow: a
// sample past their end is counted but not kept.
type recorder struct {
	lat, hs, svc      []time.Duration
	nLat, nHS, nSvc   atomic.Int64
	ok, errs, resumed atomic.Int64
	errOnce           sync.Once
	firstErr          string
}

// newRecorder returns a recorder for at most capacity samples of latency
// and, if asked, of handshake time and of service time.
func newRecorder(capacity int64, handshakes, service bool) *recorder {
	r := &recorder{lat: make([]time.Duration, capacity)}
	if handshakes {
		r.hs = make([]time.Duration, capacity)
	}
	if service {
		r.svc = make([]time.Duration, capacity)
	}
	return r
}

// put stores d in the next free slot of s, if any.
func put(s []time.Duration, n *atomic.Int64, d time.Duration) {
	if i := n.Add(1) - 1; i < int64(len(s)) {
		s[i] = d
	}
}

// record counts one request; a success adds its latency and, if recorded,
// its service time.
func (r *recorder) record(lat, svc time.Duration, err error) {
	if err != nil {
		r.errs.Add(1)
		r.errOnce.Do(func() { r.firstErr = err.Error() })
		return
	}
	r.ok.Add(1)
	put(r.lat, &r.nLat, lat)
	if r.svc != nil {
		put(r.svc, &r.nSvc, svc)
	}
}

// kept returns the filled part of s.
func kept(s []time.Duration, n *atomic.Int64) []time.Duration {
	return s[:min(n.Load(), int64(len(s)))]
}

// do sends one hop-2 exchange and records its latency from start (the
// scheduled time in an open loop) and its service time from the actual
// send. With r.hs set it also records the TLS handshake time and whether
// the session was resumed.
func (w *workload) do(ctx context.Context, c *http.Client, r *recorder, start time.Time) {
	if r.hs != nil {
		var hsStart time.Time
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			TLSHandshakeStart: func() { hsStart = time.Now() },
			TLSHandshakeDone: func(cs tls.ConnectionState, err error) {
				if err != nil {
					return
				}
				put(r.hs, &r.nHS, time.Since(hsStart))
				if cs.DidResume {
					r.resumed.Add(1)
				}
			},
		})
	}
	sent := time.Now()
	_, _, err := w.exchange(ctx, c, *w.body.Load(), false)
	end := time.Now()
	r.record(end.Sub(start), end.Sub(sent), err)
}

// closedLoop runs one worker per client, each sending its next request as
// soon as the previous one is answered, for d or until maxReq requests.
func (w *workload) closedLoop(ctx context.Context, name string, pid int, clients []*http.Client, d time.Duration, maxReq int64) (*phaseResult, error) {
	handshakes := len(clients) > 0 && clients[0].Transport.(*http.Transport).DisableKeepAlives
	var sent atomic.Int64
	rec := newRecorder(maxReq, handshakes, false)
	m, err := startMeter(pid, &w.handshakes)
	if err != nil {
		return nil, err
	}
	deadline := m.start.Add(d)
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(deadline) && sent.Add(1) <= maxReq {
				w.do(ctx, c, rec, time.Now())
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return m.finish(name, len(clients), rec, nil)
}

// openLoop sends requests at rate per second for d, on a fixed schedule
// that does not wait for answers: request i is due at start + i/rate, and
// its latency is measured from that due time, so a stalled server is
// charged for the requests it delayed (no coordinated omission). The
// workers (one per client) take due times from a queue.
func (w *workload) openLoop(ctx context.Context, name string, pid int, rate float64, d time.Duration, maxReq int64) (*phaseResult, error) {
	if rate <= 0 {
		return nil, errors.New("open loop: rate must be positive")
	}
	total := min(int64(rate*d.Seconds()), maxReq)
	interval := time.Duration(float64(time.Second) / rate)
	clients := w.keepAlive
	due := make(chan time.Time, 1024)
	rec := newRecorder(total, false, true)
	lag := make([]time.Duration, 0, total) // the dispatcher's own lateness
	m, err := startMeter(pid, &w.handshakes)
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Go(func() {
			for t := range due {
				if ctx.Err() == nil {
					w.do(ctx, c, rec, t)
				}
			}
		})
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
schedule:
	for i := range total {
		t := m.start.Add(time.Duration(i) * interval)
		if wait := time.Until(t); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				break schedule
			}
		}
		lag = append(lag, time.Since(t))
		due <- t
	}
	close(due)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res, err := m.finish(name, len(clients), rec, lag)
	if err != nil {
		return nil, err
	}
	res.TargetRate = rate
	return res, nil
}
