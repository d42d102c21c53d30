package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/nodeapi"
)

// AttestSource is how a sidecar without an agent proves its identity to
// postern server directly: a one-time join token (created for the
// Workload's SPIFFE ID) or a Kubernetes projected service-account token.
type AttestSource struct {
	// Server is the server's URL (the STS issuer), e.g. https://127.0.0.1:8443.
	Server string `json:"server"`
	// Bundle is the PEM file of the trust domain's roots used to trust the
	// server at first contact; the live bundle replaces it afterwards.
	Bundle string `json:"bundle"`
	// JoinTokenFile holds a join token. A join token works once: a
	// restarted sidecar needs a new one, or Kubernetes attestation.
	JoinTokenFile string `json:"joinTokenFile,omitempty"`
	// JoinToken is a join token held in memory, never in a file: `postern
	// sidecar` moves the POSTERN_JOIN_TOKEN environment variable here and
	// removes it from its environment, so that processes it starts do not
	// inherit it. JoinTokenFile, when set, wins.
	JoinToken string `json:"-"`
	// K8sTokenFile is a projected service-account token, re-read at every
	// attestation.
	K8sTokenFile string `json:"k8sTokenFile,omitempty"`
}

// AttestedSource is an x509svid.Source and x509bundle.Source that attests
// to postern server directly, renews its SVID at half-life (with jitter and
// backoff) and refreshes the bundle. When the server is unreachable it keeps
// serving what it holds until that expires. It is safe for concurrent use.
type AttestedSource struct {
	td     spiffeid.TrustDomain
	client *nodeapi.Client
	cfg    AttestSource
	now    func() time.Time
	log    *slog.Logger

	svid   atomic.Pointer[x509svid.SVID]
	bundle atomic.Pointer[x509bundle.Bundle]

	// ctx is cancelled by Close; Run stops with it. Both exist from the
	// start, so a Close before Run starts still stops it.
	ctx       context.Context
	closeOnce sync.Once
	stop      context.CancelFunc
	started   atomic.Bool
	done      chan struct{}
}

// NewAttestedSource attests with the configured token and returns a source
// holding the issued SVID; Run keeps it fresh.
func NewAttestedSource(ctx context.Context, cfg AttestSource, td spiffeid.TrustDomain, log *slog.Logger, now func() time.Time) (*AttestedSource, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	pemBytes, err := os.ReadFile(cfg.Bundle)
	if err != nil {
		return nil, fmt.Errorf("proxy: attest: bundle: %w", err)
	}
	roots, err := x509bundle.Parse(td, pemBytes)
	if err != nil {
		return nil, fmt.Errorf("proxy: attest: bundle %s: %w", cfg.Bundle, err)
	}
	s := &AttestedSource{td: td, cfg: cfg, now: now, log: log, done: make(chan struct{})}
	s.ctx, s.stop = context.WithCancel(context.Background())
	s.bundle.Store(roots)
	s.client, err = nodeapi.NewClient(nodeapi.ClientConfig{
		ServerURL: cfg.Server, Roots: poolOf(roots),
		GetClientCertificate: s.clientCertificate,
		TrustDomain:          td,
	})
	if err != nil {
		return nil, fmt.Errorf("proxy: attest: %w", err)
	}
	if err := s.attest(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func poolOf(b *x509bundle.Bundle) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range b.X509Authorities() {
		p.AddCert(c)
	}
	return p
}

func (s *AttestedSource) attest(ctx context.Context) error {
	method, tok, err := s.credential()
	if err != nil {
		return err
	}
	key, csr, err := newCSR()
	if err != nil {
		return err
	}
	resp, err := s.client.Attest(ctx, method, tok, nodeapi.RoleWorkload, csr)
	if err != nil {
		return fmt.Errorf("proxy: attest: %w", err)
	}
	return s.install(resp, key)
}

func (s *AttestedSource) credential() (method, tok string, err error) {
	switch {
	case s.cfg.K8sTokenFile != "":
		b, err := os.ReadFile(s.cfg.K8sTokenFile)
		if err != nil {
			return "", "", fmt.Errorf("proxy: attest: %w", err)
		}
		return nodeapi.MethodK8sPSAT, strings.TrimSpace(string(b)), nil
	case s.cfg.JoinTokenFile != "":
		b, err := os.ReadFile(s.cfg.JoinTokenFile)
		if err != nil {
			return "", "", fmt.Errorf("proxy: attest: %w", err)
		}
		return nodeapi.MethodJoinToken, strings.TrimSpace(string(b)), nil
	case s.cfg.JoinToken != "":
		return nodeapi.MethodJoinToken, strings.TrimSpace(s.cfg.JoinToken), nil
	}
	return "", "", errors.New("proxy: attest: a join token (joinTokenFile or POSTERN_JOIN_TOKEN) or a k8sTokenFile is required")
}

func newCSR() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, nil, err
	}
	return key, csr, nil
}

// install checks an issued SVID against the key it was requested for and
// the trust bundle before serving it.
func (s *AttestedSource) install(resp *nodeapi.SVIDResponse, key *ecdsa.PrivateKey) error {
	if len(resp.Certificates) == 0 {
		return errors.New("proxy: attest: the server returned no certificate")
	}
	pub, ok := resp.Certificates[0].PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(key.Public()) {
		return errors.New("proxy: attest: the issued certificate is not for our key")
	}
	id, _, err := x509svid.Verify(resp.Certificates, s.bundle.Load(), x509svid.WithTime(s.now()))
	if err != nil {
		return fmt.Errorf("proxy: attest: the issued certificate does not verify: %w", err)
	}
	if cur := s.svid.Load(); cur != nil && cur.ID != id {
		return fmt.Errorf("proxy: attest: renewed as %s, was %s", id, cur.ID)
	}
	s.svid.Store(&x509svid.SVID{ID: id, Certificates: resp.Certificates, PrivateKey: key})
	s.log.Info("proxy: SVID issued", slog.String("spiffe_id", id.String()), slog.Time("expires_at", resp.Certificates[0].NotAfter))
	return nil
}

// GetX509SVID returns the current SVID.
func (s *AttestedSource) GetX509SVID() (*x509svid.SVID, error) {
	sv := s.svid.Load()
	if sv == nil || !s.now().Before(sv.Certificates[0].NotAfter) {
		return nil, errors.New("proxy: attest: no valid SVID")
	}
	return sv, nil
}

// GetX509BundleForTrustDomain returns the trust domain's bundle.
func (s *AttestedSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != s.td {
		return nil, fmt.Errorf("proxy: attest: no bundle for trust domain %q", td)
	}
	return s.bundle.Load(), nil
}

func (s *AttestedSource) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	sv := s.svid.Load()
	if sv == nil || !s.now().Before(sv.Certificates[0].NotAfter) {
		// First contact, or an expired SVID, which the server would
		// refuse in the handshake: no certificate, so the server answers
		// 401 and a Kubernetes token can attest again.
		return &tls.Certificate{}, nil
	}
	return svidCertificate(sv), nil
}

// Run renews the SVID at half-life and refreshes the bundle every five
// minutes until ctx is done or Close is called.
func (s *AttestedSource) Run(ctx context.Context) {
	if !s.started.CompareAndSwap(false, true) {
		return // one Run per source
	}
	defer close(s.done)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.ctx, cancel)
	defer stop()
	backoff := time.Second
	bundleAt := s.now()
	for {
		// At least a second between renewals: an SVID whose half-life is
		// already past when issued (a very short lifetime, an authority
		// about to expire) must not make this a loop of requests.
		wait := max(s.untilRenewal(), time.Second)
		if d := bundleAt.Sub(s.now()); d < wait {
			wait = max(d, 0)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if !s.now().Before(bundleAt) {
			if err := s.refreshBundle(ctx); err != nil {
				s.log.Warn("proxy: bundle refresh failed; keeping the last good bundle", slog.String("error", err.Error()))
			}
			bundleAt = s.now().Add(5 * time.Minute)
		}
		if s.untilRenewal() > 0 {
			continue
		}
		if err := s.renew(ctx); err != nil {
			s.log.Warn("proxy: SVID renewal failed; retrying", slog.String("error", err.Error()), slog.Duration("retry_in", backoff))
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, time.Minute)
			continue
		}
		backoff = time.Second
	}
}

// untilRenewal is the time left before half of the SVID's life, less up to
// a tenth of it as jitter (chosen once per certificate).
func (s *AttestedSource) untilRenewal() time.Duration {
	sv := s.svid.Load()
	leaf := sv.Certificates[0]
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	jitter := time.Duration(uint64(leaf.SerialNumber.Int64()) % uint64(max(life/10, 1)))
	return leaf.NotBefore.Add(life/2 - jitter).Sub(s.now())
}

func (s *AttestedSource) renew(ctx context.Context) error {
	key, csr, err := newCSR()
	if err != nil {
		return err
	}
	if s.cfg.K8sTokenFile != "" {
		// The server does not renew SVIDs attested with a Kubernetes
		// token: it checks the current token (and the Workload's
		// selectors) again for each one.
		return s.attest(ctx)
	}
	resp, err := s.client.Renew(ctx, csr)
	if err != nil {
		return err
	}
	return s.install(resp, key)
}

func (s *AttestedSource) refreshBundle(ctx context.Context) error {
	raw, err := s.client.Bundle(ctx)
	if err != nil {
		return err
	}
	b, err := spiffebundle.Parse(s.td, raw)
	if err != nil {
		return err
	}
	xb := b.X509Bundle()
	if len(xb.X509Authorities()) == 0 {
		return errors.New("the bundle has no X.509 authorities")
	}
	// A bundle without the authority of the SVID this sidecar holds would
	// lock it out (the server's certificate, and renewal, chain to the
	// same roots): keep the last one until a renewed SVID chains to it.
	// Checked at the leaf's start of validity, so an expired SVID does not
	// block every update.
	if err := holdsAuthorityOf(xb, s.svid.Load()); err != nil {
		return err
	}
	s.bundle.Store(xb)
	return s.client.SetRoots(poolOf(xb))
}

// Close stops Run.
func (s *AttestedSource) Close() error {
	s.closeOnce.Do(func() {
		s.stop()
		if !s.started.CompareAndSwap(false, true) {
			<-s.done // Run is running: wait for it
		}
		// Else Run has not started, and never will: it finds started set.
	})
	return nil
}

func svidCertificate(sv *x509svid.SVID) *tls.Certificate {
	c := &tls.Certificate{PrivateKey: sv.PrivateKey, Leaf: sv.Certificates[0]}
	for _, x := range sv.Certificates {
		c.Certificate = append(c.Certificate, x.Raw)
	}
	return c
}

// holdsAuthorityOf reports an error when bundle cannot verify sv's chain
// (checked at the leaf's start of validity, so that an expired SVID does
// not block every bundle update). A nil sv passes.
func holdsAuthorityOf(bundle *x509bundle.Bundle, sv *x509svid.SVID) error {
	if sv == nil || len(sv.Certificates) == 0 {
		return nil
	}
	at := sv.Certificates[0].NotBefore.Add(time.Second)
	if _, _, err := x509svid.Verify(sv.Certificates, bundle, x509svid.WithTime(at)); err != nil {
		return fmt.Errorf("the new bundle does not hold the authority of this sidecar's SVID; keeping the last one: %w", err)
	}
	return nil
}
