//go:build linux

package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
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
	"sync/atomic"
	"time"

	"postern.dev/postern/bench/internal/loadgen"
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
	if w.userToken, err = loadgen.MintUserToken(filepath.Join(o.quickstart, "idp", "idp-key.pem")); err != nil {
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

// do sends one hop-2 exchange and records its latency from start (the
// scheduled time in an open loop) and its service time from the actual
// send. If r records handshakes it also records the TLS handshake time and
// whether the session was resumed.
func (w *workload) do(ctx context.Context, c *http.Client, r *loadgen.Recorder, start time.Time) {
	if r.RecordsHandshakes() {
		var hsStart time.Time
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			TLSHandshakeStart: func() { hsStart = time.Now() },
			TLSHandshakeDone: func(cs tls.ConnectionState, err error) {
				if err == nil {
					r.RecordHandshake(time.Since(hsStart), cs.DidResume)
				}
			},
		})
	}
	sent := time.Now()
	_, _, err := w.exchange(ctx, c, *w.body.Load(), false)
	end := time.Now()
	r.Record(end.Sub(start), end.Sub(sent), err)
}

// closedLoop runs one worker per client, each sending its next request as
// soon as the previous one is answered, for d or until maxReq requests.
func (w *workload) closedLoop(ctx context.Context, name string, pid int, clients []*http.Client, d time.Duration, maxReq int64) (*phaseResult, error) {
	handshakes := len(clients) > 0 && clients[0].Transport.(*http.Transport).DisableKeepAlives
	rec := loadgen.NewRecorder(maxReq, handshakes, false)
	m, err := startMeter(pid, &w.handshakes)
	if err != nil {
		return nil, err
	}
	err = loadgen.ClosedLoop(ctx, len(clients), m.Start().Add(d), maxReq, func(i int) {
		w.do(ctx, clients[i], rec, time.Now())
	})
	if err != nil {
		return nil, err
	}
	return m.finish(name, len(clients), rec, nil)
}

// openLoop sends requests at rate per second for d on a fixed schedule
// that does not wait for answers, latency measured from each request's due
// time (see loadgen.OpenLoop), one sender per keep-alive client.
func (w *workload) openLoop(ctx context.Context, name string, pid int, rate float64, d time.Duration, maxReq int64) (*phaseResult, error) {
	total, err := loadgen.OpenLoopSize(rate, d, maxReq)
	if err != nil {
		return nil, err
	}
	clients := w.keepAlive
	rec := loadgen.NewRecorder(total, false, true)
	m, err := startMeter(pid, &w.handshakes)
	if err != nil {
		return nil, err
	}
	lag, err := loadgen.OpenLoop(ctx, m.Start(), rate, total, len(clients), func(i int, due time.Time) {
		w.do(ctx, clients[i], rec, due)
	})
	if err != nil {
		return nil, err
	}
	res, err := m.finish(name, len(clients), rec, lag)
	if err != nil {
		return nil, err
	}
	res.TargetRate = rate
	return res, nil
}
