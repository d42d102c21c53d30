package agent

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"postern.dev/postern/internal/testca"
)

var partnerTD = spiffeid.RequireTrustDomainFromString("partner.example")

// logCounter is a log sink that counts the lines containing a string.
type logCounter struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logCounter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logCounter) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.b.String(), sub)
}

func (l *logCounter) use(c *Config) { c.Logger = slog.New(slog.NewTextHandler(l, nil)) }

const fedFailed = "federated bundles refresh failed"

// partnerBundle returns a federated bundle's JSON with root and, if key is
// set, a JWT authority "pk1".
func partnerBundle(t testing.TB, root *x509.Certificate, key crypto.PublicKey) []byte {
	t.Helper()
	b := spiffebundle.FromX509Authorities(partnerTD, []*x509.Certificate{root})
	if key != nil {
		if err := b.AddJWTAuthority("pk1", key); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// signJWT returns a JWT-SVID for sub and aud signed by key under kid.
func signJWT(t testing.TB, key crypto.Signer, kid, sub, aud string) string {
	t.Helper()
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: key},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", kid))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	payload, _ := json.Marshal(map[string]any{"sub": sub, "aud": []string{aud}, "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()})
	jws, err := sig.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestFederatedBundles(t *testing.T) {
	fs := newFakeServer(t, newClock(), webEntry())
	root := testca.New(t, partnerTD.Name())
	jwtKey := testca.NewKey(t)
	impostor := testca.New(t, testTD) // a "federated" bundle for our own trust domain
	fs.setFederated(map[string][]byte{
		"partner.example": partnerBundle(t, root.Cert, jwtKey.Public()),
		testTD:            partnerBundle(t, impostor.Cert, nil),
	}, nil)
	att := &fakeAttestor{}
	att.set(unix("uid:1000"))
	logs := &logCounter{}
	h := startAgent(t, fs, att, logs.use)
	ctx := ctxTimeout(t, 20*time.Second)

	// A watching client (X509Source: FetchX509SVID's federated_bundles).
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(h.addr)))
	if err != nil {
		t.Fatalf("NewX509Source: %v", err)
	}
	defer src.Close()
	hasRoot := func(td spiffeid.TrustDomain, c *x509.Certificate) bool {
		b, err := src.GetX509BundleForTrustDomain(td)
		return err == nil && b.HasX509Authority(c)
	}
	if !hasRoot(partnerTD, root.Cert) {
		t.Fatal("the federated bundle did not reach the watching client")
	}
	own, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(testTD))
	if err != nil || !own.HasX509Authority(fs.ca.Cert) || own.HasX509Authority(impostor.Cert) {
		t.Fatalf("our own bundle was replaced by a federated one: %v", err)
	}

	c := newClient(t, h)
	xb, err := c.FetchX509Bundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := xb.GetX509BundleForTrustDomain(partnerTD); err != nil || !b.HasX509Authority(root.Cert) || xb.Len() != 2 {
		t.Errorf("FetchX509Bundles: %d bundles, %v", xb.Len(), err)
	}
	jb, err := c.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := jb.GetJWTBundleForTrustDomain(partnerTD); err != nil || !b.HasJWTAuthority("pk1") {
		t.Errorf("FetchJWTBundles: %v", err)
	}

	// A JWT-SVID from the federated trust domain validates; one signed by
	// an unknown key does not.
	sub := "spiffe://partner.example/ns/x/sa/y"
	v, err := c.ValidateJWTSVID(ctx, signJWT(t, jwtKey, "pk1", sub, "api"), "api")
	if err != nil || v.ID.String() != sub {
		t.Fatalf("ValidateJWTSVID: %v", err)
	}
	if _, err := c.ValidateJWTSVID(ctx, signJWT(t, testca.NewKey(t), "pk1", sub, "api"), "api"); err == nil {
		t.Error("a token signed by an unknown key validated")
	}
	if _, err := c.ValidateJWTSVID(ctx, signJWT(t, jwtKey, "pk1", "spiffe://elsewhere.example/a", "api"), "api"); err == nil {
		t.Error("a token of an unknown trust domain validated")
	}

	// The partner rotates: the watching client gets the new root without
	// reconnecting.
	root2 := testca.New(t, partnerTD.Name())
	fs.setFederated(map[string][]byte{"partner.example": partnerBundle(t, root2.Cert, nil)}, nil)
	h.clock.Add(31 * time.Second)
	eventually(t, "rotated federated bundle", func() bool { return hasRoot(partnerTD, root2.Cert) && !hasRoot(partnerTD, root.Cert) })
	jb, err = c.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jb.GetJWTBundleForTrustDomain(partnerTD); err == nil {
		t.Error("a federated bundle without JWT authorities is served as a JWT bundle")
	}

	// The server cannot answer: the bundles held are kept.
	fs.setFederated(nil, fmt.Errorf("%w: broken", errOutage))
	h.clock.Add(31 * time.Second)
	eventually(t, "failed refresh", func() bool { return logs.count(fedFailed) == 1 })
	if !hasRoot(partnerTD, root2.Cert) {
		t.Error("a failed refresh dropped the federated bundle")
	}

	// No more federation: the bundle goes away.
	fs.setFederated(map[string][]byte{}, nil)
	h.clock.Add(31 * time.Second)
	eventually(t, "federated bundle removed", func() bool {
		_, err := src.GetX509BundleForTrustDomain(partnerTD)
		return err != nil
	})
}

func TestFederatedBundlesRefused(t *testing.T) {
	fs := newFakeServer(t, newClock(), webEntry())
	root := testca.New(t, partnerTD.Name())
	good := partnerBundle(t, root.Cert, nil)
	fs.setFederated(map[string][]byte{"partner.example": good}, nil)
	att := &fakeAttestor{}
	att.set(unix("uid:1000"))
	logs := &logCounter{}
	h := startAgent(t, fs, att, logs.use)
	raw := workload.NewSpiffeWorkloadAPIClient(rawConn(t, h))
	bundles := func() map[string][]byte {
		t.Helper()
		ctx := ctxTimeout(t, 10*time.Second)
		stream, err := raw.FetchX509Bundles(withHeader(ctx), &workload.X509BundlesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return resp.Bundles
	}
	if got := bundles(); len(got) != 2 || string(got["spiffe://partner.example"]) != string(root.Cert.Raw) {
		t.Fatalf("bundles %v", got)
	}
	for i, bad := range []map[string][]byte{
		{"spiffe://partner.example": good},
		{"partner.example": []byte(`{"keys": 1}`)},
		{"partner.example": good, "Bad..Name": good},
		{"partner.example": append([]byte(`{"keys": [], "x": "`), make([]byte, maxBundleFile)...)},
		{"partner.example": []byte(`{"keys": []}`)}, // trusts nothing
	} {
		fs.setFederated(bad, nil)
		h.clock.Add(31 * time.Second)
		eventually(t, "refused refresh", func() bool { return logs.count(fedFailed) == i+1 })
		if got := bundles(); len(got) != 2 || string(got["spiffe://partner.example"]) != string(root.Cert.Raw) {
			t.Fatalf("after a bad answer %v: %v", bad, got)
		}
	}
}
