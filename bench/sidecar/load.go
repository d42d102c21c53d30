//go:build linux

package main

import (
	"bufio"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"

	"postern.dev/postern/internal/token"
)

// The request every path carries: the same method, path and headers.
const (
	requestPath = "/items/42"
	maxBody     = 64 << 10
)

// target is one path to the application: where the client sends and with
// which Host header, over one keep-alive HTTP/1.1 connection per worker.
type target struct {
	name    string
	url     string
	host    string // Host header; empty: the URL's
	clients []*http.Client
	// wantPeer, if set, is the X-Postern-Peer the application must have
	// received (the Postern path).
	wantPeer string
}

// newTarget builds the clients of a path to addr.
func newTarget(name, addr, host string, workers int) *target {
	t := &target{name: name, url: "http://" + addr + requestPath, host: host}
	for range workers {
		p := new(http.Protocols)
		p.SetHTTP1(true)
		t.clients = append(t.clients, &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			Proxy:               nil,
			Protocols:           p,
			DisableCompression:  true,
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     3 * time.Minute,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		}})
	}
	return t
}

// close releases the clients' idle connections.
func (t *target) close() {
	for _, c := range t.clients {
		c.CloseIdleConnections()
	}
}

// load sends the benchmark's requests. Every request, on every path,
// carries Authorization: Bearer <hop-1 token>: the Postern path needs it
// (sidecar A exchanges it), the others pass it along, so that the bytes
// sent are the same.
type load struct {
	auth atomic.Pointer[string]
	// meterGroups are the processes whose CPU time each phase reads.
	meterGroups func() []procGroup
}

// procGroup is a named set of processes measured together.
type procGroup struct {
	Name string
	PIDs []int
}

// do sends one request on t with c and records its latency from start (the
// scheduled time in an open loop) and its service time from the actual
// send.
func (l *load) do(ctx context.Context, t *target, c *http.Client, r *recorder, start time.Time) {
	sent := time.Now()
	err := l.send(ctx, t, c, nil)
	end := time.Now()
	r.record(end.Sub(start), end.Sub(sent), err)
}

// send sends one request and drains the answer; a status other than 200 is
// an error (with the first bytes of the answer: the sidecars' error bodies
// never hold a token). With check it also checks the body and, on the
// Postern path, that the application saw sidecar A's identity.
func (l *load) send(ctx context.Context, t *target, c *http.Client, check func(*http.Response, []byte) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, t.url, nil)
	if err != nil {
		return err
	}
	if t.host != "" {
		req.Host = t.host
	}
	req.Header.Set("Authorization", *l.auth.Load())
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body []byte
	if check != nil || resp.StatusCode != http.StatusOK {
		body, err = io.ReadAll(io.LimitReader(resp.Body, maxBody))
	} else {
		_, err = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
	}
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d: %s", resp.StatusCode, printable(body, 160))
	}
	if check != nil {
		return check(resp, body)
	}
	return nil
}

// checkOnce sends one request on t and checks the answer end to end.
func (l *load) checkOnce(ctx context.Context, t *target) error {
	err := l.send(ctx, t, t.clients[0], func(resp *http.Response, body []byte) error {
		if string(body) != appBody {
			return fmt.Errorf("unexpected body %q", printable(body, 80))
		}
		if got := resp.Header.Get(appPeerHeader); got != t.wantPeer {
			return fmt.Errorf("the application saw X-Postern-Peer %q, want %q", got, t.wantPeer)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%s path: %w", t.name, err)
	}
	return nil
}

// printable returns at most n bytes of b with control characters replaced.
func printable(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, string(b))
}

// recorder is one phase's tally, shared by its workers. Its sample slices
// are allocated once (untouched pages cost nothing) and never grow: a
// sample past their end is counted but not kept.
type recorder struct {
	lat, svc   []time.Duration
	nLat, nSvc atomic.Int64
	ok, errs   atomic.Int64
	errOnce    sync.Once
	firstErr   string
}

// newRecorder returns a recorder for at most capacity samples of latency
// and, if asked, of service time.
func newRecorder(capacity int64, service bool) *recorder {
	r := &recorder{lat: make([]time.Duration, capacity)}
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

// closedLoop runs one worker per client of t, each sending its next
// request as soon as the previous one is answered, for d or until maxReq
// requests.
func (l *load) closedLoop(ctx context.Context, kind string, t *target, d time.Duration, maxReq int64) (*phaseResult, error) {
	var sent atomic.Int64
	rec := newRecorder(maxReq, false)
	m, err := startMeter(l.meterGroups())
	if err != nil {
		return nil, err
	}
	deadline := m.start.Add(d)
	var wg sync.WaitGroup
	for _, c := range t.clients {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(deadline) && sent.Add(1) <= maxReq {
				l.do(ctx, t, c, rec, time.Now())
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return m.finish(t.name, kind, len(t.clients), rec, nil)
}

// openLoop sends requests on t at rate per second for d, on a fixed
// schedule that does not wait for answers: request i is due at start +
// i/rate, and its latency is measured from that due time, so a stalled
// proxy is charged for the requests it delayed (no coordinated omission).
// The workers (one per client) take due times from a queue.
func (l *load) openLoop(ctx context.Context, t *target, rate float64, d time.Duration, maxReq int64) (*phaseResult, error) {
	if rate <= 0 {
		return nil, errors.New("open loop: rate must be positive")
	}
	total := min(int64(rate*d.Seconds()), maxReq)
	interval := time.Duration(float64(time.Second) / rate)
	due := make(chan time.Time, 1024)
	rec := newRecorder(total, true)
	lag := make([]time.Duration, 0, total) // the dispatcher's own lateness
	m, err := startMeter(l.meterGroups())
	if err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	for _, c := range t.clients {
		wg.Go(func() {
			for at := range due {
				if ctx.Err() == nil {
					l.do(ctx, t, c, rec, at)
				}
			}
		})
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
schedule:
	for i := range total {
		at := m.start.Add(time.Duration(i) * interval)
		if wait := time.Until(at); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-ctx.Done():
				break schedule
			}
		}
		lag = append(lag, time.Since(at))
		due <- at
	}
	close(due)
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	res, err := m.finish(t.name, "open", len(t.clients), rec, lag)
	if err != nil {
		return nil, err
	}
	res.TargetRate = rate
	return res, nil
}

// hop1 obtains the token the client carries: the gateway exchanges a user
// token (alice, minted with the quickstart's demo IdP key) for a token
// addressed to order-processing, as the gateway's sidecar would. It lives
// 5 minutes; the benchmark gets a fresh one before each Postern phase.
type hop1 struct {
	tokenURL  string
	client    *http.Client
	userToken string
}

// newHop1 loads the gateway's SVID and the bundle and mints the user token.
func newHop1(issuer string, gateway svidFiles, idpKey string) (*hop1, error) {
	b, err := os.ReadFile(gateway.Bundle)
	if err != nil {
		return nil, fmt.Errorf("bundle: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, errors.New("bundle: no certificates")
	}
	cert, err := tls.LoadX509KeyPair(gateway.Cert, gateway.Key)
	if err != nil {
		return nil, fmt.Errorf("gateway SVID: %w", err)
	}
	user, err := mintUserToken(idpKey)
	if err != nil {
		return nil, err
	}
	return &hop1{
		tokenURL:  issuer + "/oauth2/token",
		userToken: user,
		client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
		}}},
	}, nil
}

// get exchanges the user token for a hop-1 token. Errors never carry a
// token: a refusal is reported by its status and OAuth error code.
func (h *hop1) get(ctx context.Context) (string, error) {
	body := url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {h.userToken},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"},
		"audience":           {ordersID},
	}.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.tokenURL, strings.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := h.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("hop-1 exchange: %w", err)
	}
	defer resp.Body.Close()
	var out struct {
		AccessToken string `json:"access_token"`
		Error       string `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxBody)).Decode(&out); err != nil {
		return "", fmt.Errorf("hop-1 exchange: status %d: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK || out.AccessToken == "" {
		return "", fmt.Errorf("hop-1 exchange: status %d, error %q", resp.StatusCode, out.Error)
	}
	return out.AccessToken, nil
}

// close releases the client's connections.
func (h *hop1) close() { h.client.CloseIdleConnections() }

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
	jwk := jose.JSONWebKey{Key: key.Public()}
	tp, err := jwk.Thumbprint(crypto.SHA256) // RFC 7638
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

// exchangeStats are sidecar A's exchange counters, read from its /metrics.
type exchangeStats struct {
	// Issued is how many tokens the STS issued to sidecar A.
	Issued int64 `json:"issued"`
	// Hits is how many outbound requests were served a cached token.
	Hits int64 `json:"cacheHits"`
	// Misses is how many needed the STS (or joined a call in flight).
	Misses int64 `json:"cacheMisses"`
}

// scrapeExchangeStats reads sidecar A's exchange counters from its admin
// listener's Prometheus text.
func scrapeExchangeStats(ctx context.Context, admin string) (exchangeStats, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	if err != nil {
		return exchangeStats{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return exchangeStats{}, fmt.Errorf("sidecar A metrics: %w", err)
	}
	defer resp.Body.Close()
	var s exchangeStats
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 4<<20))
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		var dst *int64
		switch name {
		case `postern_exchange_requests_total{result="issued"}`:
			dst = &s.Issued
		case "postern_exchange_cache_hits_total":
			dst = &s.Hits
		case "postern_exchange_cache_misses_total":
			dst = &s.Misses
		default:
			continue
		}
		f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil {
			return exchangeStats{}, fmt.Errorf("sidecar A metrics: %s: %w", name, err)
		}
		*dst = int64(f)
	}
	return s, sc.Err()
}
