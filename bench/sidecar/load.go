//go:build linux

package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"postern.dev/postern/bench/internal/loadgen"
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
	meterGroups func() []loadgen.Group
}

// do sends one request on t with c and records its latency from start (the
// scheduled time in an open loop) and its service time from the actual
// send.
func (l *load) do(ctx context.Context, t *target, c *http.Client, r *loadgen.Recorder, start time.Time) {
	sent := time.Now()
	err := l.send(ctx, t, c, nil)
	end := time.Now()
	r.Record(end.Sub(start), end.Sub(sent), err)
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

// closedLoop runs one worker per client of t, each sending its next
// request as soon as the previous one is answered, for d or until maxReq
// requests.
func (l *load) closedLoop(ctx context.Context, kind string, t *target, d time.Duration, maxReq int64) (*phaseResult, error) {
	rec := loadgen.NewRecorder(maxReq, false, false)
	m, err := startMeter(l.meterGroups())
	if err != nil {
		return nil, err
	}
	err = loadgen.ClosedLoop(ctx, len(t.clients), m.Start().Add(d), maxReq, func(i int) {
		l.do(ctx, t, t.clients[i], rec, time.Now())
	})
	if err != nil {
		return nil, err
	}
	return m.finish(t.name, kind, len(t.clients), rec, nil)
}

// openLoop sends requests on t at rate per second for d on a fixed
// schedule that does not wait for answers, latency measured from each
// request's due time, so that a stalled proxy is charged for the requests
// it delayed (see loadgen.OpenLoop); one sender per client.
func (l *load) openLoop(ctx context.Context, t *target, rate float64, d time.Duration, maxReq int64) (*phaseResult, error) {
	total, err := loadgen.OpenLoopSize(rate, d, maxReq)
	if err != nil {
		return nil, err
	}
	rec := loadgen.NewRecorder(total, false, true)
	m, err := startMeter(l.meterGroups())
	if err != nil {
		return nil, err
	}
	lag, err := loadgen.OpenLoop(ctx, m.Start(), rate, total, len(t.clients), func(i int, due time.Time) {
		l.do(ctx, t, t.clients[i], rec, due)
	})
	if err != nil {
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
func newHop1(issuer string, gateway loadgen.SVIDFiles, idpKey string) (*hop1, error) {
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
	user, err := loadgen.MintUserToken(idpKey)
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
