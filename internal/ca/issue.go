package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Bounds on what a request may carry.
const (
	maxDNSNames   = 64
	maxDNSNameLen = 253
)

// ServerPath is the path of the control plane's own SPIFFE ID,
// spiffe://<trust domain>/postern/server.
const ServerPath = "/postern/server"

// X509SVIDRequest asks for an X.509-SVID for an attested identity.
type X509SVIDRequest struct {
	// ID is the attested SPIFFE ID; it must be in the CA's trust domain.
	ID spiffeid.ID
	// PublicKey is the workload's key (RSA 2048 to 8192 bits, ECDSA P-256,
	// P-384 or P-521, or Ed25519).
	PublicKey crypto.PublicKey
	// TTL is the lifetime asked; zero or negative means Config.SVIDTTL. It
	// is cut short at the signing authority's expiry.
	TTL time.Duration
	// DNSNames are extra DNS SANs, only when the Workload declares them.
	DNSNames []string
	// Delegated marks an SVID issued to a node agent for one of its
	// workloads (subject OU DelegatedOU): the node API renews only SVIDs
	// their holder attested for directly; delegated ones come back
	// through an agent, which is authorized again each time.
	Delegated bool
	// Reattest marks an SVID whose holder must attest again instead of
	// renewing it (subject OU ReattestOU): one obtained with a Kubernetes
	// token, so that each new SVID is checked against the Workload's
	// selectors, or the agent allow list, as they are then.
	Reattest bool
}

// DelegatedOU is the subject organizational unit of delegated SVIDs.
const DelegatedOU = "postern-delegated"

// ReattestOU is the subject organizational unit of SVIDs that are not
// renewed: their holder attests again.
const ReattestOU = "postern-reattest"

// MustReattest reports whether leaf's holder must attest again rather than
// renew it.
func MustReattest(leaf *x509.Certificate) bool {
	return slices.Contains(leaf.Subject.OrganizationalUnit, ReattestOU)
}

// IsDelegated reports whether leaf was issued to an agent for a workload.
func IsDelegated(leaf *x509.Certificate) bool {
	return slices.Contains(leaf.Subject.OrganizationalUnit, DelegatedOU)
}

// X509SVID is an issued X.509-SVID.
type X509SVID struct {
	// Certificates is the leaf first, then the intermediates up to, not
	// including, the bundle's root.
	Certificates []*x509.Certificate
	// NotAfter is the leaf's expiry.
	NotAfter time.Time
}

// leafRequest is what the signing path needs.
type leafRequest struct {
	subject  pkix.Name
	id       spiffeid.ID
	pub      crypto.PublicKey
	ttl      time.Duration
	dnsNames []string
	ips      []net.IP
}

// IssueX509SVID signs an X.509-SVID for req.ID and req.PublicKey with the
// current authority: exactly one URI SAN (the SPIFFE ID), DNS SANs only as
// asked, key usage digitalSignature (plus keyEncipherment for RSA keys),
// extended key usage serverAuth and clientAuth, not a CA; NotBefore one
// minute in the past, NotAfter at now+TTL or the authority's expiry,
// whichever is first.
func (c *CA) IssueX509SVID(ctx context.Context, req X509SVIDRequest) (*X509SVID, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("ca: issue: %w", err)
	}
	if req.ID.IsZero() {
		return nil, errors.New("ca: issue: empty SPIFFE ID")
	}
	if req.ID.TrustDomain() != c.cfg.TrustDomain {
		return nil, fmt.Errorf("ca: issue: SPIFFE ID %q is not in trust domain %q", req.ID, c.cfg.TrustDomain)
	}
	if err := checkPublicKey(req.PublicKey); err != nil {
		return nil, fmt.Errorf("ca: issue: %w", err)
	}
	if err := checkDNSNames(req.DNSNames); err != nil {
		return nil, fmt.Errorf("ca: issue: %w", err)
	}
	subject := pkix.Name{Organization: []string{"SPIFFE"}}
	if req.Delegated {
		subject.OrganizationalUnit = append(subject.OrganizationalUnit, DelegatedOU)
	}
	if req.Reattest {
		subject.OrganizationalUnit = append(subject.OrganizationalUnit, ReattestOU)
	}
	certs, err := c.sign(leafRequest{
		subject:  subject,
		id:       req.ID,
		pub:      req.PublicKey,
		ttl:      req.TTL,
		dnsNames: req.DNSNames,
	})
	if err != nil {
		return nil, fmt.Errorf("ca: issue: %w", err)
	}
	return &X509SVID{Certificates: certs, NotAfter: certs[0].NotAfter}, nil
}

// SignCSR parses and checks csrDER (see ParseCSR) and issues an X.509-SVID
// for id with the CSR's public key. The CSR's subject and SANs are ignored.
func (c *CA) SignCSR(ctx context.Context, csrDER []byte, id spiffeid.ID, ttl time.Duration, dnsNames []string) (*X509SVID, error) {
	csr, err := ParseCSR(csrDER)
	if err != nil {
		return nil, err
	}
	return c.IssueX509SVID(ctx, X509SVIDRequest{ID: id, PublicKey: csr.PublicKey, TTL: ttl, DNSNames: dnsNames})
}

// ServingCertificate issues the control plane's own TLS certificate: a new
// ECDSA P-256 key, the SPIFFE ID spiffe://<td>/postern/server as URI SAN,
// the given DNS and IP SANs, serverAuth and clientAuth. ttl <= 0 means
// Config.SVIDTTL; the caller renews it (see ServingCertificateSource). The
// result carries the chain up to, not including, the bundle's root, and Leaf.
func (c *CA) ServingCertificate(dnsNames []string, ips []net.IP, ttl time.Duration) (*tls.Certificate, error) {
	if err := checkDNSNames(dnsNames); err != nil {
		return nil, fmt.Errorf("ca: serving certificate: %w", err)
	}
	if len(ips) > maxDNSNames {
		return nil, fmt.Errorf("ca: serving certificate: more than %d IP addresses", maxDNSNames)
	}
	id, err := spiffeid.FromPath(c.cfg.TrustDomain, ServerPath)
	if err != nil {
		return nil, fmt.Errorf("ca: serving certificate: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("ca: serving certificate: generate key: %w", err)
	}
	subject := pkix.Name{Organization: []string{"SPIFFE"}}
	if len(dnsNames) > 0 {
		subject.CommonName = dnsNames[0]
	}
	certs, err := c.sign(leafRequest{subject: subject, id: id, pub: key.Public(), ttl: ttl, dnsNames: dnsNames, ips: ips})
	if err != nil {
		return nil, fmt.Errorf("ca: serving certificate: %w", err)
	}
	tc := &tls.Certificate{PrivateKey: key, Leaf: certs[0]}
	for _, x := range certs {
		tc.Certificate = append(tc.Certificate, x.Raw)
	}
	return tc, nil
}

// sign builds and signs a leaf with the authority current at this instant.
func (c *CA) sign(r leafRequest) ([]*x509.Certificate, error) {
	st := c.st.Load()
	now := c.now()
	a := c.pick(st.auths, now)
	if a == nil {
		return nil, ErrNoAuthority
	}
	ttl := r.ttl
	if ttl <= 0 {
		ttl = c.cfg.SVIDTTL
	}
	notBefore := now.Add(-clockSkew)
	if notBefore.Before(a.cert.NotBefore) {
		notBefore = a.cert.NotBefore
	}
	notAfter := now.Add(ttl)
	if notAfter.After(a.notAfter) {
		notAfter = a.notAfter
	}
	skid, err := subjectKeyID(r.pub)
	if err != nil {
		return nil, fmt.Errorf("key id: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("serial: %w", err)
	}
	ku := x509.KeyUsageDigitalSignature
	if _, ok := r.pub.(*rsa.PublicKey); ok {
		ku |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               r.subject,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              ku,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
		SubjectKeyId:          skid,
		URIs:                  []*url.URL{r.id.URL()},
		DNSNames:              r.dnsNames,
		IPAddresses:           r.ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, r.pub, a.signer)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse issued certificate: %w", err)
	}
	certs := make([]*x509.Certificate, 0, 1+len(a.svidCA))
	return append(append(certs, leaf), a.svidCA...), nil
}

// checkDNSNames accepts host names of letters, digits, '-' and '.', with at
// most a leading "*." wildcard label.
func checkDNSNames(names []string) error {
	if len(names) > maxDNSNames {
		return fmt.Errorf("more than %d DNS names", maxDNSNames)
	}
	for _, n := range names {
		if !validDNSName(n) {
			return fmt.Errorf("invalid DNS name %q", truncate(n, 64))
		}
	}
	return nil
}

func validDNSName(n string) bool {
	if n == "" || len(n) > maxDNSNameLen {
		return false
	}
	n = strings.TrimPrefix(n, "*.")
	for label := range strings.SplitSeq(n, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			b := label[i]
			if !(b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '-') {
				return false
			}
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
