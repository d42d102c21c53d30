package federation

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/testca"
)

var (
	partnerTD = spiffeid.RequireTrustDomainFromString("partner.example")
	webTD     = spiffeid.RequireTrustDomainFromString("web.example")
	serverID  = spiffeid.RequireFromPath(partnerTD, "/postern/server")
)

// partner is a trust domain with an https_spiffe bundle endpoint.
type partner struct {
	root *testca.CA
	ep   *endpoint
	fed  policy.Federation
}

func newPartner(t *testing.T) *partner {
	t.Helper()
	root := testca.New(t, partnerTD.Name())
	ep := newEndpoint(t, partnerTD, root.SVID(t, serverID.String()).TLSCertificate(), bundleOf(t, partnerTD, 1, root.Cert))
	return &partner{root: root, ep: ep, fed: policy.Federation{
		Name: "partner", TrustDomain: partnerTD, BundleEndpointURL: ep.url(),
		Profile: policy.ProfileHTTPSSPIFFE, EndpointSPIFFEID: serverID,
		BootstrapBundle: spiffebundle.FromX509Authorities(partnerTD, []*x509.Certificate{root.Cert}),
	}}
}

// newWeb is a trust domain whose bundle endpoint has a Web PKI certificate
// from its own test root.
func newWeb(t *testing.T) (*endpoint, policy.Federation) {
	t.Helper()
	webCA := testca.New(t, "webpki.test")
	ep := newEndpoint(t, webTD, webCA.ServerCert(t), bundleOf(t, webTD, 7, testca.New(t, webTD.Name()).Cert))
	return ep, policy.Federation{
		Name: "web", TrustDomain: webTD, BundleEndpointURL: ep.url(),
		Profile: policy.ProfileHTTPSWeb, CABundle: []*x509.Certificate{webCA.Cert},
	}
}

func TestFetchBothProfiles(t *testing.T) {
	p := newPartner(t)
	web, webFed := newWeb(t)
	h := start(t, p.fed, webFed)
	eventually(t, "both bundles", func() bool {
		return h.bundleIs(p.ep.bundle.Load())() && h.bundleIs(web.bundle.Load())()
	})
	got := h.m.Bundles()
	if len(got) != 2 {
		t.Errorf("bundles for %d trust domains", len(got))
	}
	delete(got, partnerTD) // a copy: the Manager's map is not affected
	if len(h.m.Bundles()) != 2 {
		t.Error("Bundles returned the Manager's own map")
	}
	if n := h.log.count(`"msg":"federation: bundle updated"`); n != 2 {
		t.Errorf("%d update lines", n)
	}
}

func TestBootstrapServedBeforeFirstFetch(t *testing.T) {
	p := newPartner(t)
	_, webFed := newWeb(t)
	m := New(Config{})
	m.Update([]policy.Federation{p.fed, webFed})
	got := m.Bundles()
	if len(got) != 1 || !got[partnerTD].Equal(p.fed.BootstrapBundle) {
		t.Errorf("before Run: %v", got)
	}
}

func TestRotationPickedUp(t *testing.T) {
	p := newPartner(t)
	h := start(t, p.fed)
	eventually(t, "first bundle", h.bundleIs(p.ep.bundle.Load()))

	// The partner adds a new root, then moves its endpoint to it and drops
	// the old one: only the last good bundle (not the bootstrap bundle)
	// can authenticate the endpoint now.
	root2 := testca.New(t, partnerTD.Name())
	b2 := bundleOf(t, partnerTD, 2, p.root.Cert, root2.Cert)
	p.ep.bundle.Store(b2)
	h.clock.Add(DefaultRefresh)
	eventually(t, "bundle with both roots", h.bundleIs(b2))

	b3 := bundleOf(t, partnerTD, 3, root2.Cert)
	p.ep.bundle.Store(b3)
	cert := root2.SVID(t, serverID.String()).TLSCertificate()
	p.ep.cert.Store(&cert)
	p.ep.srv.CloseClientConnections()
	h.clock.Add(DefaultRefresh)
	eventually(t, "bundle with the new root only", h.bundleIs(b3))
}

func TestRefreshHintBounded(t *testing.T) {
	p := newPartner(t)
	b := bundleOf(t, partnerTD, 1, p.root.Cert)
	b.SetRefreshHint(time.Second) // below the minimum: 30s
	p.ep.bundle.Store(b)
	h := start(t, p.fed)
	eventually(t, "first bundle", h.bundleIs(b))
	hits := p.ep.hits.Load()
	h.clock.Add(MinRefresh - time.Second)
	time.Sleep(50 * time.Millisecond) // ten polls
	if n := p.ep.hits.Load(); n != hits {
		t.Fatalf("fetched %d times before the (bounded) refresh hint", n-hits)
	}
	h.clock.Add(time.Second)
	eventually(t, "refresh at 30s", func() bool { return p.ep.hits.Load() > hits })
}

func TestRefreshInterval(t *testing.T) {
	hint := func(d time.Duration) *spiffebundle.Bundle {
		b := spiffebundle.New(partnerTD)
		b.SetRefreshHint(d)
		return b
	}
	tests := []struct {
		name string
		b    *spiffebundle.Bundle
		want time.Duration
	}{
		{"no bundle", nil, DefaultRefresh},
		{"no hint", spiffebundle.New(partnerTD), DefaultRefresh},
		{"hint honoured", hint(10 * time.Minute), 10 * time.Minute},
		{"too short", hint(time.Second), MinRefresh},
		{"zero", hint(0), MinRefresh},
		{"too long", hint(48 * time.Hour), MaxRefresh},
		{"overflowed", hint(-time.Second), MinRefresh},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := refreshInterval(tt.b); got != tt.want {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
	for n, want := range map[int]time.Duration{1: 10 * time.Second, 2: 20 * time.Second, 5: 160 * time.Second, 6: 5 * time.Minute, 60: 5 * time.Minute} {
		if got := retryDelay(n, DefaultRefresh); got != want {
			t.Errorf("retryDelay(%d) = %v, want %v", n, got, want)
		}
	}
}

func TestEndpointFailuresKeepLastGood(t *testing.T) {
	p := newPartner(t)
	good := p.ep.bundle.Load()
	h := start(t, p.fed)
	eventually(t, "first bundle", h.bundleIs(good))
	failures := 0
	fail := func(what string, set func()) {
		t.Helper()
		set()
		failures++
		h.clock.Add(MaxRefresh)
		eventually(t, what+" reported", func() bool {
			return h.log.count("bundle fetch failed; keeping the last good bundle") >= failures
		})
		if !h.bundleIs(good)() {
			t.Fatalf("%s: last good bundle not kept", what)
		}
	}
	fail("503", func() { p.ep.status.Store(503) })
	p.ep.status.Store(0)
	body := func(b []byte) func() { return func() { p.ep.body.Store(&b) } }
	fail("garbage", body([]byte("<html>maintenance</html>")))
	fail("no authorities", body([]byte(`{"keys": []}`)))
	fail("JWT authorities only", body([]byte(`{"keys": [{"use": "jwt-svid", "kid": "k", "kty": "EC", "crv": "P-256",
		"x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}`)))
	fail("oversized", body([]byte(`{"keys": [], "x": "`+strings.Repeat("a", MaxBundleBytes)+`"}`)))
	p.ep.body.Store(nil)
	fail("down", p.ep.srv.Close)
}

func TestWrongEndpointRefused(t *testing.T) {
	p := newPartner(t)
	p.fed.EndpointSPIFFEID = spiffeid.RequireFromPath(partnerTD, "/other")
	web, webFed := newWeb(t)
	webFed.CABundle = []*x509.Certificate{testca.New(t, "other.test").Cert}
	h := start(t, p.fed, webFed)
	eventually(t, "two failures", func() bool {
		return h.log.count("bundle fetch failed; keeping the last good bundle") >= 2
	})
	got := h.m.Bundles()
	if len(got) != 1 || !got[partnerTD].Equal(p.fed.BootstrapBundle) {
		t.Errorf("bundles = %v, want only the bootstrap bundle", got)
	}
	if n := p.ep.hits.Load() + web.hits.Load(); n != 0 {
		t.Errorf("%d requests reached an unauthenticated endpoint", n)
	}
	if n := h.log.count(`unexpected ID \"spiffe://partner.example/postern/server\"`); n == 0 {
		t.Errorf("the refusal does not name the endpoint's ID")
	}
}

func TestUpdate(t *testing.T) {
	p := newPartner(t)
	web, webFed := newWeb(t)
	h := start(t, p.fed, webFed)
	eventually(t, "both bundles", func() bool {
		return h.bundleIs(p.ep.bundle.Load())() && h.bundleIs(web.bundle.Load())()
	})
	hits := p.ep.hits.Load()

	// The same resources again (as after any reload): nothing restarts.
	same := p.fed
	same.BootstrapBundle = p.fed.BootstrapBundle.Clone()
	h.m.Update([]policy.Federation{same, webFed})
	time.Sleep(30 * time.Millisecond)
	if n := p.ep.hits.Load(); n != hits {
		t.Errorf("an unchanged Federation was fetched again (%d)", n-hits)
	}

	// Removed: its bundle is no longer served. Our own trust domain is
	// ignored.
	own := webFed
	own.TrustDomain = spiffeid.RequireTrustDomainFromString("shop.local")
	h.m.Update([]policy.Federation{webFed, own})
	if got := h.m.Bundles(); len(got) != 1 || got[webTD] == nil {
		t.Errorf("after removal: %v", got)
	}

	// Changed: starts afresh from its bootstrap bundle and fetches at once.
	changed := p.fed
	changed.BundleEndpointURL = p.ep.srv.URL + "/bundle?v=2"
	h.m.Update([]policy.Federation{webFed, changed})
	eventually(t, "refetch", h.bundleIs(p.ep.bundle.Load()))
	if n := p.ep.hits.Load(); n != hits+1 {
		t.Errorf("%d fetches after the change, want 1", n-hits)
	}
}

// An endpoint that serves an older bundle (a lagging replica, a restored
// backup) does not bring retired roots back: the newer bundle stays.
func TestOlderBundleRefused(t *testing.T) {
	p := newPartner(t)
	b5 := bundleOf(t, partnerTD, 5, p.root.Cert)
	p.ep.bundle.Store(b5)
	h := start(t, p.fed)
	eventually(t, "bundle 5", h.bundleIs(b5))

	retired := testca.New(t, partnerTD.Name())
	p.ep.bundle.Store(bundleOf(t, partnerTD, 2, p.root.Cert, retired.Cert))
	hits := p.ep.hits.Load()
	h.clock.Add(DefaultRefresh)
	b6 := bundleOf(t, partnerTD, 6, p.root.Cert)
	eventually(t, "bundle 2 fetched", func() bool { return p.ep.hits.Load() > hits })
	time.Sleep(100 * time.Millisecond) // its answer handled
	if !h.bundleIs(b5)() {
		t.Fatal("an older bundle replaced the newer one")
	}
	p.ep.bundle.Store(b6)
	h.clock.Add(time.Hour)
	eventually(t, "bundle 6", h.bundleIs(b6))
}
