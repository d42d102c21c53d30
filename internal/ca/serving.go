package ca

import (
	"crypto/tls"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// ServingCertificateSource keeps a serving certificate from
// CA.ServingCertificate fresh: GetCertificate renews it once half of its
// lifetime has passed, so a tls.Config never holds a stale copy.
type ServingCertificateSource struct {
	ca       *CA
	dnsNames []string
	ips      []net.IP
	ttl      time.Duration

	cur atomic.Pointer[tls.Certificate]
	mu  sync.Mutex // one renewal at a time
}

// ServingCertificateSource returns a source of serving certificates for the
// given names and lifetime (see ServingCertificate). It issues the first
// certificate at once so configuration errors surface here.
func (c *CA) ServingCertificateSource(dnsNames []string, ips []net.IP, ttl time.Duration) (*ServingCertificateSource, error) {
	s := &ServingCertificateSource{ca: c, dnsNames: slices.Clone(dnsNames), ips: slices.Clone(ips), ttl: ttl}
	tc, err := c.ServingCertificate(s.dnsNames, s.ips, ttl)
	if err != nil {
		return nil, err
	}
	s.cur.Store(tc)
	return s, nil
}

// GetCertificate is for tls.Config.GetCertificate. If renewal fails while
// the current certificate is still valid, that one is served.
func (s *ServingCertificateSource) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	now := s.ca.now()
	tc := s.cur.Load()
	if !s.stale(tc, now) {
		return tc, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if tc = s.cur.Load(); !s.stale(tc, now) {
		return tc, nil
	}
	fresh, err := s.ca.ServingCertificate(s.dnsNames, s.ips, s.ttl)
	if err != nil {
		if now.Before(tc.Leaf.NotAfter) {
			s.ca.log.Warn("ca: renew serving certificate", "error", err)
			return tc, nil
		}
		return nil, err
	}
	s.cur.Store(fresh)
	return fresh, nil
}

func (s *ServingCertificateSource) stale(tc *tls.Certificate, now time.Time) bool {
	nb, na := tc.Leaf.NotBefore.Add(clockSkew), tc.Leaf.NotAfter
	return !now.Before(nb.Add(na.Sub(nb) / 2))
}
