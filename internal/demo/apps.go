package demo

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"postern.dev/postern/internal/proxy"
	"postern.dev/postern/internal/token"
)

// Bounds on what the example apps read.
const (
	maxClaimsHeader = 16 << 10
	maxAppBody      = 64 << 10
)

// appReply is what every example app answers: who it is, who called it
// (the sidecar's X-Postern-Peer) and the verified claims it received
// (X-Postern-Claims, decoded). order-processing adds the results of its own
// calls.
type appReply struct {
	Service   string          `json:"service"`
	Peer      string          `json:"peer,omitempty"`
	Claims    json.RawMessage `json:"claims,omitempty"`
	Reserved  string          `json:"reserved,omitempty"`
	Inventory *callResult     `json:"inventory,omitempty"`
	Finance   *callResult     `json:"finance,omitempty"`
}

// callResult is the outcome of one call an app made through its sidecar.
type callResult struct {
	Status int             `json:"status"`
	Body   json.RawMessage `json:"body,omitempty"`
	Error  string          `json:"error,omitempty"`
}

// decodeClaims decodes an X-Postern-Claims header: base64url (unpadded)
// JSON of the verified token's claims.
func decodeClaims(h string) (*token.Claims, json.RawMessage, error) {
	if h == "" {
		return nil, nil, errors.New("demo: no X-Postern-Claims header")
	}
	if len(h) > maxClaimsHeader {
		return nil, nil, fmt.Errorf("demo: X-Postern-Claims is larger than %d bytes", maxClaimsHeader)
	}
	b, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		return nil, nil, fmt.Errorf("demo: X-Postern-Claims: %w", err)
	}
	var c token.Claims
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, nil, fmt.Errorf("demo: X-Postern-Claims: %w", err)
	}
	return &c, json.RawMessage(b), nil
}

// apps are the three example services. Their handlers are plain
// http.Handlers on loopback, reached only through their sidecars.
type apps struct {
	// ordersOutbound is order-processing's sidecar outbound address,
	// known once that sidecar listens.
	ordersOutbound atomic.Pointer[string]
	// captured is the last bearer token inventory received (its sidecar
	// forwards tokens): what an attacker on inventory's host could steal.
	captured atomic.Pointer[string]
	// hits count the requests that reached each app (probes aside).
	ordersHits, inventoryHits, financeHits atomic.Int64
	client                                 *http.Client
}

func newApps() *apps {
	return &apps{client: &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, MaxIdleConnsPerHost: 8}}}
}

func (a *apps) close() { a.client.CloseIdleConnections() }

// echo answers the reply of service for r.
func echo(service string, r *http.Request) appReply {
	rep := appReply{Service: service, Peer: r.Header.Get(proxy.HeaderPeer)}
	if _, raw, err := decodeClaims(r.Header.Get(proxy.HeaderClaims)); err == nil {
		rep.Claims = raw
	}
	return rep
}

func healthz(mux *http.ServeMux) {
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
}

// orders is order-processing: POST /orders reserves item 42 at inventory
// and then tries to report the order to finance on the user's behalf,
// forwarding the opaque user context it was handed both times, and answers
// both results.
func (a *apps) orders() http.Handler {
	mux := http.NewServeMux()
	healthz(mux)
	mux.HandleFunc("/orders", func(w http.ResponseWriter, r *http.Request) {
		a.ordersHits.Add(1)
		if r.Method != http.MethodPost {
			writeJSON(w, http.StatusOK, echo("order-processing", r))
			return
		}
		rep := echo("order-processing", r)
		uctx := r.Header.Get(proxy.HeaderContext)
		rep.Inventory = a.call(r, "inventory", "/items/42/reserve", uctx)
		rep.Finance = a.call(r, "finance", "/reports", uctx)
		writeJSON(w, http.StatusOK, rep)
	})
	return mux
}

// call sends POST path to upstream through order-processing's sidecar.
func (a *apps) call(in *http.Request, upstream, path, uctx string) *callResult {
	out := a.ordersOutbound.Load()
	if out == nil {
		return &callResult{Error: "the sidecar is not ready"}
	}
	req, err := http.NewRequestWithContext(in.Context(), http.MethodPost, "http://"+*out+path, strings.NewReader(`{"item":"42","quantity":1}`))
	if err != nil {
		return &callResult{Error: err.Error()}
	}
	req.Host = upstream // the sidecar routes by Host
	req.Header.Set("Content-Type", "application/json")
	if uctx != "" {
		req.Header.Set(proxy.HeaderContext, uctx)
	}
	resp, err := a.client.Do(req)
	if err != nil {
		return &callResult{Error: err.Error()}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxAppBody))
	if err != nil {
		return &callResult{Status: resp.StatusCode, Error: err.Error()}
	}
	res := &callResult{Status: resp.StatusCode}
	if b = bytes.TrimSpace(b); json.Valid(b) {
		res.Body = b
	} else {
		res.Body, _ = json.Marshal(string(b))
	}
	return res
}

// inventory reserves items; it keeps the bearer token its sidecar forwards.
func (a *apps) inventory() http.Handler {
	mux := http.NewServeMux()
	healthz(mux)
	mux.HandleFunc("POST /items/{id}/reserve", func(w http.ResponseWriter, r *http.Request) {
		a.inventoryHits.Add(1)
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok && len(tok) <= maxClaimsHeader {
			a.captured.Store(&tok)
		}
		rep := echo("inventory", r)
		rep.Reserved = r.PathValue("id")
		writeJSON(w, http.StatusOK, rep)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		a.inventoryHits.Add(1)
		writeJSON(w, http.StatusOK, echo("inventory", r))
	})
	return mux
}

// finance takes reports; its policy admits only order-processing acting as
// itself, and the token service never issues a user's token for it.
func (a *apps) finance() http.Handler {
	mux := http.NewServeMux()
	healthz(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		a.financeHits.Add(1)
		writeJSON(w, http.StatusOK, echo("finance", r))
	})
	return mux
}
