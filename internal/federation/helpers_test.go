package federation

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/federation"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/testca"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), sub)
}

type sourceFunc func(spiffeid.TrustDomain) (*spiffebundle.Bundle, error)

func (f sourceFunc) GetBundleForTrustDomain(td spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
	return f(td)
}

// endpoint is a SPIFFE bundle endpoint on 127.0.0.1, served by go-spiffe's
// federation.NewHandler.
type endpoint struct {
	td     spiffeid.TrustDomain
	srv    *httptest.Server
	bundle atomic.Pointer[spiffebundle.Bundle]
	cert   atomic.Pointer[tls.Certificate]
	status atomic.Int32           // if not 0, answer this status instead
	body   atomic.Pointer[[]byte] // if set, answer these bytes instead
	hits   atomic.Int64
}

func newEndpoint(t *testing.T, td spiffeid.TrustDomain, cert tls.Certificate, b *spiffebundle.Bundle) *endpoint {
	t.Helper()
	e := &endpoint{td: td}
	e.bundle.Store(b)
	e.cert.Store(&cert)
	h, err := federation.NewHandler(td, sourceFunc(func(spiffeid.TrustDomain) (*spiffebundle.Bundle, error) {
		return e.bundle.Load(), nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.hits.Add(1)
		if s := e.status.Load(); s != 0 {
			http.Error(w, "unavailable", int(s))
			return
		}
		if b := e.body.Load(); b != nil {
			_, _ = w.Write(*b)
			return
		}
		h.ServeHTTP(w, r)
	}))
	// httptest fills in Certificates, which win over GetCertificate
	// without SNI; a per-connection config reads the current certificate.
	e.srv.TLS = &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{*e.cert.Load()}}, nil
		},
	}
	e.srv.Config.ErrorLog = log.New(io.Discard, "", 0) // refused handshakes are expected
	e.srv.StartTLS()
	t.Cleanup(e.srv.Close)
	return e
}

func (e *endpoint) url() string { return e.srv.URL + "/bundle" }

// bundleOf builds a bundle of td with roots and, if jwtKey is set, one JWT
// authority.
func bundleOf(t testing.TB, td spiffeid.TrustDomain, seq uint64, roots ...*x509.Certificate) *spiffebundle.Bundle {
	t.Helper()
	b := spiffebundle.FromX509Authorities(td, roots)
	b.SetSequenceNumber(seq)
	if err := b.AddJWTAuthority("k1", testca.NewKey(t).Public()); err != nil {
		t.Fatal(err)
	}
	return b
}

// harness is a running Manager on a test clock.
type harness struct {
	m     *Manager
	clock *clock
	log   *syncBuffer
}

func start(t *testing.T, feds ...policy.Federation) *harness {
	t.Helper()
	h := &harness{clock: &clock{t: time.Now()}, log: &syncBuffer{}}
	h.m = New(Config{
		TrustDomain:  spiffeid.RequireTrustDomainFromString("shop.local"),
		Now:          h.clock.Now,
		Logger:       slog.New(slog.NewJSONHandler(h.log, nil)),
		PollInterval: 5 * time.Millisecond,
		Timeout:      5 * time.Second,
	})
	h.m.Update(feds)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.m.Run(ctx); close(done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Run did not return")
		}
	})
	return h
}

// eventually polls cond until it holds or 10s pass.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// bundleIs reports whether the Manager serves want for its trust domain.
func (h *harness) bundleIs(want *spiffebundle.Bundle) func() bool {
	return func() bool {
		b := h.m.Bundles()[want.TrustDomain()]
		return b != nil && b.Equal(want)
	}
}
