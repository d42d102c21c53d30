package gateway

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// certCheckInterval is how often the certificate files are looked at.
const certCheckInterval = time.Second

// maxPEMBytes bounds the certificate and key files.
const maxPEMBytes = 1 << 20

// certFiles serves a certificate read from PEM files through
// tls.Config.GetCertificate, re-reading them when their size or modification
// time changes (at most every certCheckInterval). A pair that does not load
// keeps the last good certificate. It is safe for concurrent use.
type certFiles struct {
	certFile, keyFile string
	now               func() time.Time

	state atomic.Pointer[certState]
	next  atomic.Int64 // unix nanoseconds of the next look at the files
	mu    sync.Mutex   // serialises reloads
}

type certState struct {
	cert  *tls.Certificate
	stamp string
}

func newCertFiles(certFile, keyFile string, now func() time.Time) (*certFiles, error) {
	c := &certFiles{certFile: certFile, keyFile: keyFile, now: now}
	st, err := c.load()
	if err != nil {
		return nil, err
	}
	c.state.Store(st)
	c.next.Store(now().Add(certCheckInterval).UnixNano())
	return c, nil
}

// GetCertificate returns the current certificate.
func (c *certFiles) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	if c.now().UnixNano() >= c.next.Load() && c.mu.TryLock() {
		c.next.Store(c.now().Add(certCheckInterval).UnixNano())
		if stamp, err := c.stamp(); err == nil && stamp != c.state.Load().stamp {
			if st, err := c.load(); err == nil {
				c.state.Store(st)
			}
		}
		c.mu.Unlock()
	}
	return c.state.Load().cert, nil
}

// notAfter is the current certificate's expiry.
func (c *certFiles) notAfter() time.Time { return c.state.Load().cert.Leaf.NotAfter }

func (c *certFiles) stamp() (string, error) {
	var out string
	for _, f := range []string{c.certFile, c.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		out += fmt.Sprintf("%d/%d;", fi.Size(), fi.ModTime().UnixNano())
	}
	return out, nil
}

func (c *certFiles) load() (*certState, error) {
	stamp, err := c.stamp()
	if err != nil {
		return nil, fmt.Errorf("gateway: tls: %w", err)
	}
	certPEM, err := readBounded(c.certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readBounded(c.keyFile)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("gateway: tls: %s and %s: %w", c.certFile, c.keyFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("gateway: tls: %w", err)
		}
	}
	return &certState{cert: &cert, stamp: stamp}, nil
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gateway: tls: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPEMBytes+1))
	if err != nil {
		return nil, fmt.Errorf("gateway: tls: %w", err)
	}
	if len(b) > maxPEMBytes {
		return nil, fmt.Errorf("gateway: tls: %s is larger than %d bytes", path, maxPEMBytes)
	}
	return b, nil
}

// svidCert serves the gateway's current X.509-SVID as its TLS certificate.
type svidCert struct {
	src  x509svid.Source
	memo atomic.Pointer[svidMemo]
}

type svidMemo struct {
	leaf *x509.Certificate
	cert *tls.Certificate
}

// GetCertificate returns the current SVID as a tls.Certificate.
func (s *svidCert) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	svid, err := s.src.GetX509SVID()
	if err != nil {
		return nil, err
	}
	if svid == nil || len(svid.Certificates) == 0 {
		return nil, errors.New("gateway: no SVID")
	}
	leaf := svid.Certificates[0]
	if m := s.memo.Load(); m != nil && m.leaf == leaf {
		return m.cert, nil
	}
	cert := &tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: leaf}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	s.memo.Store(&svidMemo{leaf: leaf, cert: cert})
	return cert, nil
}
