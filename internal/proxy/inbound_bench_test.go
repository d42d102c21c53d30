package proxy

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
)

// BenchmarkInboundCached is one request through the inbound handler with a
// cached verdict (header hygiene, token extraction, verdict cache hit with
// binding and expiry checks, policy, context id, reverse proxy) to an app on
// loopback. Compare with BenchmarkDirectApp: the difference is the inbound
// chain's cost, TLS excluded.
func BenchmarkInboundCached(b *testing.B) {
	benchInbound(b, nil)
}

// BenchmarkInboundCachedAudit is BenchmarkInboundCached with the JSON
// access/audit line written (to io.Discard).
func BenchmarkInboundCachedAudit(b *testing.B) {
	benchInbound(b, slog.New(slog.NewJSONHandler(io.Discard, nil)))
}

func benchInbound(b *testing.B, logger *slog.Logger) {
	h := newHarness(b, func(c *InboundConfig) { c.Logger = logger })
	caller := h.ca.SVID(b, testCaller)
	tok := h.token(b, testSelf, caller.Cert, nil)
	h.app.Config.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	r := h.request("GET", "/orders/1", caller.Cert)
	r.Header.Set("Authorization", "Bearer "+tok)
	if w := h.serve(r); w.Code != 200 {
		b.Fatalf("status %d", w.Code)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		req := r.Clone(r.Context())
		w := httptest.NewRecorder()
		h.inbound.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatalf("status %d", w.Code)
		}
	}
}

// BenchmarkDirectApp is the same app called directly over loopback HTTP/1.1
// with a keep-alive pool.
func BenchmarkDirectApp(b *testing.B) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer app.Close()
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	u := app.URL + "/orders/1"
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		resp, err := c.Get(u)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}
