package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/testca"
)

const (
	testTD      = "example.org"
	testAgentID = "spiffe://example.org/postern/agent/node1"
	goodToken   = "good-join-token"
)

// clock is a settable test clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now().Truncate(time.Second)} }

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

var errOutage = errors.New("fake: connection refused")

// fakeServer is an in-memory node API: it signs CSRs with a test root on
// the test clock and JWT-SVIDs with an ES256 key.
type fakeServer struct {
	ca     *testca.CA
	jwtKey *ecdsa.PrivateKey
	clock  *clock
	ttl    time.Duration

	mu       sync.Mutex
	entries  []Entry
	down     bool   // every call fails as if the server were unreachable
	wrongID  string // if set, X.509-SVIDs are issued for this ID instead
	x509Reqs int    // X.509-SVIDs requested
	x509Fail int    // X509SVIDs calls that failed
	renews   int
	jwtCalls atomic.Int64

	federated map[string][]byte // federated bundles by trust domain name
	fedErr    error             // if set, FederatedBundles fails
}

func newFakeServer(t testing.TB, c *clock, entries ...Entry) *fakeServer {
	t.Helper()
	return &fakeServer{ca: testca.New(t, testTD), jwtKey: testca.NewKey(t), clock: c, ttl: time.Hour, entries: entries}
}

func (f *fakeServer) setDown(down bool) {
	f.mu.Lock()
	f.down = down
	f.mu.Unlock()
}

func (f *fakeServer) setEntries(e ...Entry) {
	f.mu.Lock()
	f.entries = e
	f.mu.Unlock()
}

func (f *fakeServer) stats() (x509Reqs, x509Fail, renews int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.x509Reqs, f.x509Fail, f.renews
}

func (f *fakeServer) isDown() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.down
}

func (f *fakeServer) sign(csrDER []byte, id string) (*IssuedSVID, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("%w: bad csr", ErrRejected)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: bad csr signature", ErrRejected)
	}
	u, _ := url.Parse(id)
	now := f.clock.Now()
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 100))
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now,
		NotAfter:              now.Add(f.ttl),
		URIs:                  []*url.URL{u},
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, f.ca.Cert, csr.PublicKey, f.ca.Key)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	return &IssuedSVID{SPIFFEID: id, Certificates: []*x509.Certificate{cert}, ExpiresAt: cert.NotAfter}, nil
}

func (f *fakeServer) Attest(_ context.Context, method, token, role string, csr []byte) (*IssuedSVID, error) {
	if f.isDown() {
		return nil, errOutage
	}
	okJoin := method == "join_token" && token == goodToken
	okPSAT := method == "k8s_psat" && token == "psat-token"
	if !(okJoin || okPSAT) || role != "agent" {
		return nil, fmt.Errorf("%w: attestation_failed", ErrRejected)
	}
	return f.sign(csr, testAgentID)
}

func (f *fakeServer) Renew(_ context.Context, csr []byte) (*IssuedSVID, error) {
	f.mu.Lock()
	f.renews++
	f.mu.Unlock()
	if f.isDown() {
		return nil, errOutage
	}
	return f.sign(csr, testAgentID)
}

func (f *fakeServer) Workloads(context.Context) ([]Entry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, errOutage
	}
	return append([]Entry(nil), f.entries...), nil
}

func (f *fakeServer) X509SVIDs(_ context.Context, reqs []SVIDRequest) ([]IssuedSVID, error) {
	f.mu.Lock()
	f.x509Reqs += len(reqs)
	down, wrong := f.down, f.wrongID
	known := map[string]bool{}
	for _, e := range f.entries {
		known[e.SPIFFEID] = true
	}
	if down {
		f.x509Fail++
	}
	f.mu.Unlock()
	if down {
		return nil, errOutage
	}
	if len(reqs) > maxBatch {
		return nil, fmt.Errorf("%w: too many", ErrRejected)
	}
	var out []IssuedSVID
	for _, r := range reqs {
		if !known[r.SPIFFEID] {
			return nil, fmt.Errorf("%w: forbidden: %s", ErrRejected, r.SPIFFEID)
		}
		id := r.SPIFFEID
		if wrong != "" {
			id = wrong
		}
		s, err := f.sign(r.CSR, id)
		if err != nil {
			return nil, err
		}
		s.SPIFFEID = r.SPIFFEID
		out = append(out, *s)
	}
	return out, nil
}

func (f *fakeServer) JWTSVID(_ context.Context, id string, aud []string) (string, time.Time, error) {
	f.jwtCalls.Add(1)
	if f.isDown() {
		return "", time.Time{}, errOutage
	}
	sig, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: f.jwtKey},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", "k1"))
	if err != nil {
		return "", time.Time{}, err
	}
	now := time.Now()
	payload, _ := json.Marshal(map[string]any{
		"iss": "https://sts.example.org", "sub": id, "aud": aud,
		"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(), "n": f.jwtCalls.Load(),
	})
	jws, err := sig.Sign(payload)
	if err != nil {
		return "", time.Time{}, err
	}
	tok, err := jws.CompactSerialize()
	return tok, f.clock.Now().Add(5 * time.Minute), err
}

func (f *fakeServer) Bundle(context.Context) ([]byte, error) {
	if f.isDown() {
		return nil, errOutage
	}
	b := spiffebundle.New(spiffeid.RequireTrustDomainFromString(testTD))
	b.AddX509Authority(f.ca.Cert)
	if err := b.AddJWTAuthority("k1", f.jwtKey.Public()); err != nil {
		return nil, err
	}
	return b.Marshal()
}

func (f *fakeServer) setFederated(b map[string][]byte, err error) {
	f.mu.Lock()
	f.federated, f.fedErr = b, err
	f.mu.Unlock()
}

func (f *fakeServer) FederatedBundles(context.Context) (map[string][]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return nil, errOutage
	}
	if f.fedErr != nil {
		return nil, f.fedErr
	}
	return f.federated, nil
}

// fakeAttestor gives each new connection the selectors set last, or the
// next ones from a queue, or an error.
type fakeAttestor struct {
	mu    sync.Mutex
	sel   []Selector
	queue [][]Selector
	err   error
}

func (f *fakeAttestor) set(sel ...Selector) {
	f.mu.Lock()
	f.sel, f.err = sel, nil
	f.mu.Unlock()
}

func (f *fakeAttestor) Attest(*net.UnixConn) ([]Selector, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	if len(f.queue) > 0 {
		s := f.queue[0]
		f.queue = f.queue[1:]
		return s, nil
	}
	return f.sel, nil
}

func unix(v string) Selector { return Selector{Type: "unix", Value: v} }

// socketDir returns a short directory for unix sockets (paths are limited
// to about 100 bytes, too little for some t.TempDir names).
func socketDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "pagent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type harness struct {
	agent  *Agent
	server *fakeServer
	att    *fakeAttestor
	clock  *clock
	socket string
	addr   string
	done   chan error
}

// startAgent runs an agent over fs and waits until it serves.
func startAgent(t testing.TB, fs *fakeServer, att *fakeAttestor, mutate ...func(*Config)) *harness {
	t.Helper()
	dir := socketDir(t)
	bundle := filepath.Join(dir, "bundle.pem")
	if err := os.WriteFile(bundle, fs.ca.RootPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		BundleFile:   bundle,
		JoinToken:    goodToken,
		SocketPath:   filepath.Join(dir, "agent.sock"),
		Server:       fs,
		PeerAttestor: att,
		Now:          fs.clock.Now,
		PollInterval: 5 * time.Millisecond,
		RetryInitial: 20 * time.Millisecond,
		RetryMax:     100 * time.Millisecond,
	}
	for _, m := range mutate {
		m(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{agent: a, server: fs, att: att, clock: fs.clock, socket: cfg.SocketPath, addr: "unix://" + cfg.SocketPath, done: make(chan error, 1)}
	go func() { h.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-h.done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return")
		}
	})
	select {
	case <-a.Ready():
	case err := <-h.done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("agent not ready")
	}
	return h
}

// eventually polls cond until it holds or 10s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
