package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Selector is one attestation property of a local process or one
// requirement of a Workload entry, e.g. {Type: "unix", Value: "uid:1000"}.
type Selector struct {
	Type  string
	Value string
}

// Entry is a Workload the server lets this agent serve.
type Entry struct {
	// SPIFFEID is the workload's SPIFFE ID.
	SPIFFEID string
	// Selectors must all be among a caller's selectors for the caller to
	// get this identity; an entry without selectors is never matched.
	Selectors []Selector
	// DNSNames are put in the X.509-SVID by the server (informational here).
	DNSNames []string
	// TTL is the SVID lifetime the server will use (informational here).
	TTL time.Duration
}

// IssuedSVID is an X.509-SVID signed by the server: the leaf first, then any
// intermediates.
type IssuedSVID struct {
	SPIFFEID     string
	Certificates []*x509.Certificate
	ExpiresAt    time.Time
}

// SVIDRequest asks the server for the X.509-SVID of one Workload entry.
type SVIDRequest struct {
	SPIFFEID string
	CSR      []byte // DER PKCS#10
}

// ErrRejected marks a refusal by the server (bad input, attestation failed,
// not allowed): retrying the same request cannot succeed. Server
// implementations wrap it; any other error is treated as transient.
var ErrRejected = errors.New("agent: rejected by server")

// Server is the node API of `postern server` as the agent uses it
// (implemented by internal/nodeapi's client; fakes in tests). Calls other
// than Attest authenticate with the agent's current SVID, which the
// implementation obtains from the agent (see Config.Server).
type Server interface {
	Attest(ctx context.Context, method, token, role string, csrDER []byte) (*IssuedSVID, error)
	Renew(ctx context.Context, csrDER []byte) (*IssuedSVID, error)
	Workloads(ctx context.Context) ([]Entry, error)
	X509SVIDs(ctx context.Context, reqs []SVIDRequest) ([]IssuedSVID, error)
	JWTSVID(ctx context.Context, spiffeID string, audience []string) (token string, expiresAt time.Time, err error)
	Bundle(ctx context.Context) ([]byte, error)
	// FederatedBundles returns the SPIFFE bundle (JSON) of every federated
	// trust domain by trust domain name.
	FederatedBundles(ctx context.Context) (map[string][]byte, error)
}

// PeerAttestor returns the selectors of the process at the other end of a
// unix socket connection (its SO_PEERCRED credentials).
type PeerAttestor interface {
	Attest(conn *net.UnixConn) ([]Selector, error)
}

// Credentials gives a Server implementation the agent's trust state: the
// client certificate to present and the roots that authenticate the server.
// Both change at run time (SVID renewal, bundle rotation).
type Credentials interface {
	// ClientCertificate returns the agent's current SVID (an empty
	// certificate before attestation).
	ClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	// Roots returns the current X.509 authorities of the trust domain.
	Roots() *x509.CertPool
}

// Config configures an Agent. Zero values mean defaults.
type Config struct {
	// ServerURL is the base URL of `postern server` (its STS issuer URL),
	// e.g. https://127.0.0.1:8443. Required unless Server is set.
	ServerURL string
	// BundleFile is a PEM file of the trust domain's root certificates
	// (`postern ca bundle`, /bundle.pem): the bootstrap trust for the
	// server's certificate, replaced by the live bundle once fetched.
	BundleFile string
	// JoinToken is a one-time join token naming an agent SPIFFE ID.
	JoinToken string
	// K8sTokenFile is the path of a projected service-account token (read
	// at every attestation, since the kubelet rotates it). Exactly one of
	// JoinToken and K8sTokenFile is required.
	K8sTokenFile string
	// SocketPath is the unix socket of the Workload API. Its directory must
	// exist and be controlled by the operator; the socket is created with
	// mode 0777 and a stale socket left there is removed.
	SocketPath string

	// Server overrides the node API client (tests). When nil, a
	// internal/nodeapi client for ServerURL is used. NewServer, if set,
	// builds it from the agent's live credentials instead.
	Server Server
	// NewServer builds the node API client from the agent's credentials;
	// used when Server is nil.
	NewServer func(creds Credentials) (Server, error)
	// PeerAttestor attests callers of the socket; default: unix peer
	// credentials (internal/attest).
	PeerAttestor PeerAttestor

	// Now is the clock; default time.Now.
	Now func() time.Time
	// Logger receives operational logs; default: discarded.
	Logger *slog.Logger
	// RenewJitter is the largest random amount by which a renewal happens
	// before half-life; default a twentieth of the SVID lifetime.
	RenewJitter time.Duration
	// RetryInitial and RetryMax bound the exponential backoff after server
	// errors; defaults 1s and 1m.
	RetryInitial, RetryMax time.Duration
	// WorkloadsInterval is how often the Workload entries are refreshed;
	// default 30s.
	WorkloadsInterval time.Duration
	// BundleInterval is how often the trust bundle is refreshed; default 30s.
	BundleInterval time.Duration
	// PollInterval is how often deadlines (renewals, refreshes, expiries)
	// are checked against Now; default 1s.
	PollInterval time.Duration
	// RequestTimeout bounds each call to the server; default 30s.
	RequestTimeout time.Duration
	// MaxJWTCache bounds the number of cached JWT-SVIDs; default 4096.
	MaxJWTCache int
}

func (c *Config) setDefaults() {
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.RetryInitial <= 0 {
		c.RetryInitial = time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = time.Minute
	}
	if c.RetryMax < c.RetryInitial {
		c.RetryMax = c.RetryInitial
	}
	if c.WorkloadsInterval <= 0 {
		c.WorkloadsInterval = 30 * time.Second
	}
	if c.BundleInterval <= 0 {
		c.BundleInterval = 30 * time.Second
	}
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 30 * time.Second
	}
	if c.MaxJWTCache <= 0 {
		c.MaxJWTCache = 4096
	}
}

// Limits on inputs the agent reads.
const (
	maxBundleFile   = 1 << 20
	maxK8sTokenFile = 64 << 10
	maxRequestBytes = 64 << 10
	maxBatch        = 64
)

// Agent is the node agent. Create it with New, then Run it.
type Agent struct {
	cfg      Config
	server   Server
	attestor PeerAttestor
	td       spiffeid.TrustDomain // known after attestation
	ready    chan struct{}

	agentCert atomic.Pointer[tls.Certificate]
	roots     atomic.Pointer[x509.CertPool]

	mu         sync.Mutex
	agent      renewState
	agentID    spiffeid.ID
	entries    map[string]*entryState
	entriesGen uint64
	wl         renewState // workload entries refresh
	bundle     bundleState
	bundleRun  renewState
	subs       map[*subscriber]struct{}
	jwts       map[string]*jwtEntry
}

// renewState is the schedule of one periodic task.
type renewState struct {
	next     time.Time
	failures int
	done     bool // succeeded at least once
}

// New validates cfg and returns an agent; nothing is contacted before Run.
func New(cfg Config) (*Agent, error) {
	cfg.setDefaults()
	if cfg.SocketPath == "" {
		return nil, errors.New("agent: socket path is required")
	}
	if (cfg.JoinToken == "") == (cfg.K8sTokenFile == "") {
		return nil, errors.New("agent: exactly one of join token and Kubernetes token file is required")
	}
	if cfg.Server == nil && cfg.NewServer == nil && cfg.ServerURL == "" {
		return nil, errors.New("agent: server URL is required")
	}
	a := &Agent{
		cfg:     cfg,
		ready:   make(chan struct{}),
		entries: make(map[string]*entryState),
		subs:    make(map[*subscriber]struct{}),
		jwts:    make(map[string]*jwtEntry),
	}
	if cfg.BundleFile != "" {
		certs, err := readBundleFile(cfg.BundleFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		for _, c := range certs {
			pool.AddCert(c)
		}
		a.roots.Store(pool)
		a.bundle.bootstrap = certs
	} else if cfg.Server == nil {
		return nil, errors.New("agent: bundle file is required")
	}
	a.attestor = cfg.PeerAttestor
	if a.attestor == nil {
		a.attestor = defaultPeerAttestor()
	}
	switch {
	case cfg.Server != nil:
		a.server = cfg.Server
	case cfg.NewServer != nil:
		s, err := cfg.NewServer(a)
		if err != nil {
			return nil, err
		}
		a.server = s
	default:
		s, err := newNodeServer(cfg.ServerURL, a)
		if err != nil {
			return nil, err
		}
		a.server = s
	}
	return a, nil
}

// ClientCertificate returns the agent's current SVID for mutual TLS with the
// server (an empty certificate before attestation). It implements
// Credentials.
func (a *Agent) ClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	if c := a.agentCert.Load(); c != nil {
		return c, nil
	}
	return &tls.Certificate{}, nil
}

// Roots returns the trust domain's current X.509 authorities. It implements
// Credentials.
func (a *Agent) Roots() *x509.CertPool { return a.roots.Load() }

// Ready is closed once the Workload API socket is listening.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// SPIFFEID returns the agent's own SPIFFE ID (zero before attestation).
func (a *Agent) SPIFFEID() spiffeid.ID {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.agentID
}

// Run attests the agent, serves the Workload API on the socket and keeps
// every SVID and bundle fresh until ctx is done. It returns an error if the
// server refuses the attestation or the socket cannot be served.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.attestLoop(ctx); err != nil {
		return err
	}
	a.mu.Lock()
	td, boot := a.td, a.bundle.bootstrap
	a.mu.Unlock()
	if len(boot) > 0 {
		a.setBundle(boot, jwtbundle.New(td))
	}
	lis, err := listenSocket(a.cfg.SocketPath)
	if err != nil {
		return err
	}
	defer os.Remove(a.cfg.SocketPath)
	// Prime the cache before accepting callers (they queue meanwhile), so a
	// caller is not refused only because the entries are not loaded yet.
	a.tick(ctx)
	srv := a.newGRPCServer()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(lis) }()
	a.cfg.Logger.Info("agent: serving the Workload API", "socket", a.cfg.SocketPath, "spiffe_id", a.SPIFFEID().String())
	close(a.ready)

	t := time.NewTicker(a.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			a.stopServer(srv)
			return nil
		case err := <-serveErr:
			return fmt.Errorf("agent: serve: %w", err)
		case <-t.C:
			a.tick(ctx)
		}
	}
}

// attestLoop performs node attestation, retrying transient failures with
// backoff; a refusal ends it.
func (a *Agent) attestLoop(ctx context.Context) error {
	failures := 0
	for {
		err := a.attest(ctx)
		if err == nil {
			return nil
		}
		if errors.Is(err, ErrRejected) {
			return err
		}
		failures++
		d := a.backoff(failures)
		a.cfg.Logger.Warn("agent: node attestation failed; retrying", "error", err.Error(), "retry_in", d)
		if err := sleep(ctx, d); err != nil {
			return fmt.Errorf("agent: node attestation: %w", err)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// attest performs node attestation once.
func (a *Agent) attest(ctx context.Context) error {
	method, token := "join_token", a.cfg.JoinToken
	if a.cfg.K8sTokenFile != "" {
		b, err := readBounded(a.cfg.K8sTokenFile, maxK8sTokenFile)
		if err != nil {
			return fmt.Errorf("agent: kubernetes token: %w", err)
		}
		method, token = "k8s_psat", string(trimSpace(b))
	}
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	svid, err := a.server.Attest(rctx, method, token, "agent", csr)
	if err != nil {
		return fmt.Errorf("agent: node attestation: %w", err)
	}
	return a.installAgentSVID(svid, key, true)
}

// renewAgent renews the agent's own SVID (or re-attests with a fresh
// Kubernetes token once it has expired).
func (a *Agent) renewAgent(ctx context.Context) error {
	if a.cfg.K8sTokenFile != "" {
		// The server does not renew SVIDs attested with a Kubernetes
		// token: the current token (and the agent allow list) are checked
		// again for each one.
		return a.attest(ctx)
	}
	key, csr, err := newKeyAndCSR()
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	svid, err := a.server.Renew(rctx, csr)
	if err != nil {
		return fmt.Errorf("agent: renew: %w", err)
	}
	return a.installAgentSVID(svid, key, false)
}

func (a *Agent) installAgentSVID(svid *IssuedSVID, key *ecdsa.PrivateKey, first bool) error {
	id, err := a.checkSVID(svid, key, "")
	if err != nil {
		return err
	}
	if !isAgentID(id) {
		return fmt.Errorf("agent: server issued %q, which is not an agent identity", id)
	}
	a.mu.Lock()
	prev := a.agentID
	a.mu.Unlock()
	if !first && id != prev {
		return fmt.Errorf("agent: renewal returned %q, want %q", id, prev)
	}
	leaf := svid.Certificates[0]
	chain := make([][]byte, len(svid.Certificates))
	for i, c := range svid.Certificates {
		chain[i] = c.Raw
	}
	a.agentCert.Store(&tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf})
	if f, ok := a.server.(credsFollow); ok {
		f.CloseIdleConnections()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.agentID = id
	a.td = id.TrustDomain()
	a.agent = renewState{next: a.renewAt(leaf), done: true}
	if first {
		a.cfg.Logger.Info("agent: attested", "spiffe_id", id.String(), "expires_at", leaf.NotAfter)
	}
	return nil
}

func isAgentID(id spiffeid.ID) bool {
	p := id.Path()
	return len(p) > len("/postern/agent/") && p[:len("/postern/agent/")] == "/postern/agent/"
}

// checkSVID verifies that an SVID from the server carries key, names want
// (if not empty), is a valid X.509-SVID and chains to the current roots
// (when known). It never lets a certificate for the wrong identity through.
func (a *Agent) checkSVID(svid *IssuedSVID, key *ecdsa.PrivateKey, want string) (spiffeid.ID, error) {
	if svid == nil || len(svid.Certificates) == 0 {
		return spiffeid.ID{}, errors.New("agent: server returned no certificate")
	}
	leaf := svid.Certificates[0]
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(&key.PublicKey) {
		return spiffeid.ID{}, errors.New("agent: server returned a certificate for another key")
	}
	if len(leaf.URIs) != 1 || leaf.IsCA {
		return spiffeid.ID{}, errors.New("agent: server returned a certificate that is not an X.509-SVID")
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("agent: server returned a certificate with an invalid SPIFFE ID: %w", err)
	}
	if want != "" && id.String() != want {
		return spiffeid.ID{}, fmt.Errorf("agent: server returned %q for %q", id, want)
	}
	if roots := a.roots.Load(); roots != nil {
		inter := x509.NewCertPool()
		for _, c := range svid.Certificates[1:] {
			inter.AddCert(c)
		}
		if _, err := leaf.Verify(x509.VerifyOptions{
			Roots: roots, Intermediates: inter, CurrentTime: a.cfg.Now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		}); err != nil {
			return spiffeid.ID{}, fmt.Errorf("agent: server returned a certificate that does not chain to the bundle: %w", err)
		}
	}
	return id, nil
}

// renewAt is the half-life of cert minus a random jitter.
func (a *Agent) renewAt(cert *x509.Certificate) time.Time {
	life := cert.NotAfter.Sub(cert.NotBefore)
	if life <= 0 {
		return cert.NotAfter
	}
	j := a.cfg.RenewJitter
	if j <= 0 || j > life/2 {
		j = life / 20
	}
	return cert.NotBefore.Add(life / 2).Add(-randDuration(j))
}

// backoff is the delay after the n-th consecutive failure: exponential from
// RetryInitial, capped at RetryMax, with up to 20% random jitter.
func (a *Agent) backoff(n int) time.Duration {
	d := a.cfg.RetryInitial
	for i := 1; i < n && d < a.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, a.cfg.RetryMax)
	return d + randDuration(d/5)
}

func newKeyAndCSR() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: generate key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("agent: create CSR: %w", err)
	}
	return key, csr, nil
}

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, limit)
	}
	return b, nil
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	for len(b) > 0 && (b[0] == '\n' || b[0] == '\r' || b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	return b
}

func readBundleFile(path string) ([]*x509.Certificate, error) {
	b, err := readBounded(path, maxBundleFile)
	if err != nil {
		return nil, fmt.Errorf("agent: bundle file: %w", err)
	}
	certs, err := parseBundlePEM(b)
	if err != nil {
		return nil, fmt.Errorf("agent: bundle file %s: %w", path, err)
	}
	return certs, nil
}

// parseBundlePEM parses PEM CERTIFICATE blocks that are CA certificates; any
// other block or a non-CA certificate is an error, as is an empty file.
func parseBundlePEM(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, b = pem.Decode(b)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q", block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %w", len(certs)+1, err)
		}
		if !c.IsCA {
			return nil, fmt.Errorf("certificate %d is not a CA certificate", len(certs)+1)
		}
		certs = append(certs, c)
		if len(certs) > 64 {
			return nil, errors.New("more than 64 certificates")
		}
	}
	if len(trimSpace(b)) != 0 {
		return nil, errors.New("trailing data after the last certificate")
	}
	if len(certs) == 0 {
		return nil, errors.New("no certificates")
	}
	return certs, nil
}
