package gateway

import (
	"crypto/tls"
	"io"
	"net/http"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// benchGet sends GET url with a bearer token on c and checks for 200.
func benchGet(b *testing.B, c *http.Client, url, tok string) {
	r, _ := http.NewRequest("GET", url, nil)
	r.Header.Set("Authorization", "Bearer "+tok)
	resp, err := c.Do(r)
	if err != nil {
		b.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("status %d", resp.StatusCode)
	}
}

// BenchmarkGatewayCached is one user request through the gateway: TLS
// HTTP/2 keep-alive in, a cached JWT verdict and a cached exchange, the
// route's scope check, mutual TLS HTTP/2 out to a local upstream. Compare
// with BenchmarkDirectUpstream, the same upstream called directly.
func BenchmarkGatewayCached(b *testing.B) {
	h := newHarness(b, harnessOptions{})
	user := h.idp.token(b, h.clock.Now(), "alice", "orders:read", nil)
	url := h.base + "/orders/42"
	benchGet(b, h.client, url, user) // warm the caches and the pools
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		benchGet(b, h.client, url, user)
	}
	b.StopTimer()
	if n := h.sts.calls.Load(); n != 1 {
		b.Fatalf("%d STS calls", n)
	}
}

// BenchmarkDirectUpstream calls the upstream of BenchmarkGatewayCached
// directly over mutual TLS HTTP/2 (as the gateway), with a token.
func BenchmarkDirectUpstream(b *testing.B) {
	h := newHarness(b, harnessOptions{})
	c := directClient(b, h)
	url := "https://" + h.up.addr + "/orders/42"
	benchGet(b, c, url, "internal-token")
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		benchGet(b, c, url, "internal-token")
	}
}

// BenchmarkGatewayCachedParallel is BenchmarkGatewayCached from
// GOMAXPROCS*4 concurrent clients: throughput.
func BenchmarkGatewayCachedParallel(b *testing.B) {
	h := newHarness(b, harnessOptions{})
	user := h.idp.token(b, h.clock.Now(), "alice", "orders:read", nil)
	url := h.base + "/orders/42"
	benchGet(b, h.client, url, user)
	b.ReportAllocs()
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			benchGet(b, h.client, url, user)
		}
	})
}

// BenchmarkDirectUpstreamParallel is BenchmarkDirectUpstream from
// GOMAXPROCS*4 concurrent clients.
func BenchmarkDirectUpstreamParallel(b *testing.B) {
	h := newHarness(b, harnessOptions{})
	c := directClient(b, h)
	url := "https://" + h.up.addr + "/orders/42"
	benchGet(b, c, url, "internal-token")
	b.ReportAllocs()
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			benchGet(b, c, url, "internal-token")
		}
	})
}

func directClient(tb testing.TB, h *harness) *http.Client {
	id := newIdentity(h.ca, h.ca.SVID(tb, gatewayID))
	cfg := tlsconfig.MTLSClientConfig(id, id, tlsconfig.AuthorizeID(spiffeid.RequireFromString(ordersID)))
	cfg.MinVersion = tls.VersionTLS12
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 64}}
}
