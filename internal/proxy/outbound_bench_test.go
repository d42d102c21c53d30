package proxy

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// BenchmarkOutboundCached is one call from the application through the
// outbound handler (plain HTTP/1.1 keep-alive in, a cached token, mutual
// TLS HTTP/2 out) to a local upstream. Compare with BenchmarkDirect.
func BenchmarkOutboundCached(b *testing.B) {
	h := newObHarness(b, obOptions{h2: true})
	ctxID := h.contexts.Put("alice-token", time.Now().Add(time.Hour))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	req := func() {
		r, _ := http.NewRequest("GET", h.front.URL+"/orders/42", nil)
		r.Host = obUpstream
		r.Header.Set(HeaderContext, ctxID)
		resp, err := client.Do(r)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	req() // warm the token cache and the pools
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		req()
	}
	b.StopTimer()
	if n := h.sts.calls.Load(); n != 1 {
		b.Fatalf("%d STS calls", n)
	}
}

// BenchmarkDirect calls the same kind of upstream directly over mutual TLS
// HTTP/2, without the sidecar: the baseline for BenchmarkOutboundCached.
func BenchmarkDirect(b *testing.B) {
	h := newObHarness(b, obOptions{h2: true})
	bundle := x509bundle.FromX509Authorities(h.ca.TrustDomain, []*x509.Certificate{h.ca.Cert})
	cfg := tlsconfig.MTLSClientConfig(h.src, bundle, tlsconfig.AuthorizeID(spiffeid.RequireFromString(obInvID)))
	cfg.MinVersion = tls.VersionTLS12
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true, MaxIdleConnsPerHost: 64}}
	url := "https://" + h.up.srv.Listener.Addr().String() + "/orders/42"
	req := func() {
		r, _ := http.NewRequest("GET", url, nil)
		r.Header.Set("Authorization", "Bearer eyJ.direct.sig")
		resp, err := client.Do(r)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	req()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		req()
	}
}
