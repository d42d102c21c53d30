// Package testca builds certificate authorities, X.509-SVIDs and signing keys
// on the fly for tests. Nothing it makes is meant to leave a test.
package testca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// CA is a self-signed test root for one trust domain.
type CA struct {
	TrustDomain spiffeid.TrustDomain
	Cert        *x509.Certificate
	Key         *ecdsa.PrivateKey
}

// New returns a new root CA for td.
func New(tb testing.TB, td string) *CA {
	tb.Helper()
	trust := spiffeid.RequireTrustDomainFromString(td)
	key := NewKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{Organization: []string{"testca"}, CommonName: td + " test root"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{trust.ID().URL()},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatalf("testca: create root: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("testca: parse root: %v", err)
	}
	return &CA{TrustDomain: trust, Cert: cert, Key: key}
}

// NewKey returns a fresh P-256 key.
func NewKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatalf("testca: generate key: %v", err)
	}
	return k
}

func serial(tb testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		tb.Fatalf("testca: serial: %v", err)
	}
	return n
}

// SVID is an X.509-SVID with its key.
type SVID struct {
	ID   spiffeid.ID
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
}

// TLSCertificate returns the SVID as a tls.Certificate.
func (s *SVID) TLSCertificate() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{s.Cert.Raw}, PrivateKey: s.Key, Leaf: s.Cert}
}

// CertPEM and KeyPEM encode the SVID for files.
func (s *SVID) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Cert.Raw})
}

// KeyPEM encodes the private key as PKCS#8 PEM.
func (s *SVID) KeyPEM() []byte {
	der, _ := x509.MarshalPKCS8PrivateKey(s.Key)
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// SVID issues an X.509-SVID for id (a full SPIFFE ID string) valid for an
// hour, usable for client and server authentication.
func (ca *CA) SVID(tb testing.TB, id string) *SVID {
	tb.Helper()
	sid := spiffeid.RequireFromString(id)
	key := NewKey(tb)
	return &SVID{ID: sid, Key: key, Cert: ca.sign(tb, key.Public(), &x509.Certificate{
		URIs: []*url.URL{sid.URL()},
	})}
}

// ServerCert issues a serving certificate for 127.0.0.1 and localhost.
func (ca *CA) ServerCert(tb testing.TB) tls.Certificate {
	tb.Helper()
	key := NewKey(tb)
	cert := ca.sign(tb, key.Public(), &x509.Certificate{
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	})
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

// ServerSVID issues a serving certificate for 127.0.0.1 and localhost that
// is also the X.509-SVID of id (a postern server's is
// spiffe://<td>/postern/server).
func (ca *CA) ServerSVID(tb testing.TB, id string) tls.Certificate {
	tb.Helper()
	key := NewKey(tb)
	cert := ca.sign(tb, key.Public(), &x509.Certificate{
		URIs:        []*url.URL{spiffeid.RequireFromString(id).URL()},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
	})
	return tls.Certificate{Certificate: [][]byte{cert.Raw}, PrivateKey: key, Leaf: cert}
}

func (ca *CA) sign(tb testing.TB, pub crypto.PublicKey, tmpl *x509.Certificate) *x509.Certificate {
	tb.Helper()
	tmpl.SerialNumber = serial(tb)
	tmpl.NotBefore = time.Now().Add(-time.Minute)
	tmpl.NotAfter = time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		tb.Fatalf("testca: sign: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatalf("testca: parse: %v", err)
	}
	return cert
}

// Pool returns a cert pool holding the root.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// RootPEM encodes the root certificate.
func (ca *CA) RootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Cert.Raw})
}
