package ca

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
)

type parsedBundle struct {
	b    *spiffebundle.Bundle
	seq  uint64
	hint int64
	uses []string
}

func parseBundle(t testing.TB, raw []byte) parsedBundle {
	t.Helper()
	b, err := spiffebundle.Parse(testTD, raw)
	if err != nil {
		t.Fatalf("spiffebundle.Parse: %v\n%s", err, raw)
	}
	var doc struct {
		Keys []struct {
			Use string `json:"use"`
		} `json:"keys"`
		Seq  *uint64 `json:"spiffe_sequence"`
		Hint *int64  `json:"spiffe_refresh_hint"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Seq == nil || doc.Hint == nil {
		t.Fatalf("bundle lacks spiffe_sequence or spiffe_refresh_hint: %s", raw)
	}
	p := parsedBundle{b: b, seq: *doc.Seq, hint: *doc.Hint}
	for _, k := range doc.Keys {
		p.uses = append(p.uses, k.Use)
	}
	return p
}

func TestSPIFFEBundle(t *testing.T) {
	e := newEnv(t)
	jwtPriv := p256(t)
	jwtKey := jose.JSONWebKey{Key: jwtPriv, KeyID: "k1", Algorithm: "ES256", Use: "sig"}
	raw, err := e.ca.SPIFFEBundle([]jose.JSONWebKey{jwtKey}, 90*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	p := parseBundle(t, raw)
	if !slices.EqualFunc(p.b.X509Authorities(), e.ca.X509Authorities(), (*x509.Certificate).Equal) {
		t.Error("x509 authorities differ")
	}
	if pub, ok := p.b.FindJWTAuthority("k1"); !ok || !jwtPriv.PublicKey.Equal(pub) {
		t.Error("JWT authority k1 missing or wrong")
	}
	if !slices.Equal(p.uses, []string{"x509-svid", "jwt-svid"}) {
		t.Errorf("uses = %v", p.uses)
	}
	if p.hint != 90 || p.seq != uint64(t0.Unix()) {
		t.Errorf("hint %d seq %d, want 90 and %d", p.hint, p.seq, t0.Unix())
	}
	if bytes.Contains(raw, []byte(`"d":`)) {
		t.Error("private key material in the bundle")
	}

	// Unchanged content: same sequence. JWT key change: higher.
	again := parseBundle(t, must(e.ca.SPIFFEBundle([]jose.JSONWebKey{jwtKey}, 0)))
	if again.seq != p.seq || again.hint != int64(DefaultRefreshHint/time.Second) {
		t.Errorf("unchanged: seq %d hint %d", again.seq, again.hint)
	}
	noJWT := parseBundle(t, must(e.ca.SPIFFEBundle(nil, 0)))
	if noJWT.seq <= p.seq {
		t.Errorf("JWT key change: seq %d not above %d", noJWT.seq, p.seq)
	}
	// Rotation: higher, derived from the new root's creation.
	e.clock.Add(time.Hour)
	if err := e.ca.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	rot := parseBundle(t, must(e.ca.SPIFFEBundle(nil, 0)))
	if rot.seq != uint64(t0.Add(time.Hour).Unix()) || len(rot.b.X509Authorities()) != 2 {
		t.Errorf("after rotate: seq %d, %d roots", rot.seq, len(rot.b.X509Authorities()))
	}
	// A replica derives the same sequence.
	if rep := parseBundle(t, must(e.replica(t).SPIFFEBundle(nil, 0))); rep.seq != rot.seq {
		t.Errorf("replica seq %d, want %d", rep.seq, rot.seq)
	}

	for name, keys := range map[string][]jose.JSONWebKey{
		"no kid": {{Key: p256(t).Public()}},
	} {
		if _, err := e.ca.SPIFFEBundle(keys, 0); err == nil || err.Error() != "ca: spiffe bundle: JWT key 0 has no key id" {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

func TestBundlePEM(t *testing.T) {
	e := newEnv(t)
	e.clock.Add(time.Second)
	if err := e.ca.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	var got []*x509.Certificate
	for rest := e.ca.BundlePEM(); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, c)
	}
	if len(got) != 2 || !slices.EqualFunc(got, e.ca.X509Authorities(), (*x509.Certificate).Equal) {
		t.Fatalf("PEM has %d certificates, not the bundle", len(got))
	}
}

func TestBundleHandler(t *testing.T) {
	e := newEnv(t)
	h := e.ca.BundleHandler(func() []jose.JSONWebKey {
		return []jose.JSONWebKey{{Key: p256(t).Public(), KeyID: "k1"}}
	}, time.Minute)
	tests := []struct {
		method   string
		wantCode int
	}{
		{http.MethodGet, http.StatusOK},
		{http.MethodHead, http.StatusOK},
		{http.MethodPost, http.StatusMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.method, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(tt.method, "/bundle", nil))
			if rec.Code != tt.wantCode {
				t.Fatalf("code %d, want %d", rec.Code, tt.wantCode)
			}
			if tt.method == http.MethodGet {
				if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type %q", ct)
				}
				p := parseBundle(t, rec.Body.Bytes())
				if len(p.b.JWTAuthorities()) != 1 || p.hint != 60 {
					t.Errorf("bundle: %d jwt keys, hint %d", len(p.b.JWTAuthorities()), p.hint)
				}
			}
		})
	}
}

func TestServingCertificate(t *testing.T) {
	e := newEnv(t)
	tc, err := e.ca.ServingCertificate([]string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}, 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf := tc.Leaf
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://example.org/postern/server" {
		t.Fatalf("URIs %v", leaf.URIs)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(e.ca.BundlePEM())
	for _, name := range []string{"localhost", "127.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, CurrentTime: t0, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
			t.Errorf("verify for %s: %v", name, err)
		}
	}
	if len(tc.Certificate) != 1 || tc.PrivateKey == nil {
		t.Fatalf("tls.Certificate: %d certs", len(tc.Certificate))
	}

	// A real handshake on loopback, client trusting BundlePEM.
	src, err := e.ca.ServingCertificateSource([]string{"localhost"}, []net.IP{net.ParseIP("127.0.0.1")}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: src.GetCertificate, MinVersion: tls.VersionTLS13})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_ = c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: "localhost", Time: e.clock.Now})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	conn.Close()

	// Renewal at half-life.
	first, _ := src.GetCertificate(nil)
	e.clock.Add(29 * time.Minute)
	if again, _ := src.GetCertificate(nil); again != first {
		t.Error("renewed before half-life")
	}
	e.clock.Add(2 * time.Minute)
	if again, _ := src.GetCertificate(nil); again == first || !again.Leaf.NotAfter.Equal(e.clock.Now().Add(time.Hour)) {
		t.Error("not renewed after half-life")
	}
	if _, err := e.ca.ServingCertificate([]string{"bad name"}, nil, 0); err == nil || err.Error() != `ca: serving certificate: invalid DNS name "bad name"` {
		t.Errorf("bad name: err = %v", err)
	}
}
