package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"postern.dev/postern/internal/nodeapi"
	"postern.dev/postern/internal/policy"
)

// nodeServer adapts internal/nodeapi's client to Server: it marks the
// server's refusals (4xx) with ErrRejected and follows the agent's
// credentials (new SVID: new connections; new bundle: new roots).
type nodeServer struct{ c *nodeapi.Client }

var (
	_ Server      = nodeServer{}
	_ credsFollow = nodeServer{}
)

// credsFollow is implemented by Servers that must hear about the agent's
// new SVID or roots.
type credsFollow interface {
	CloseIdleConnections()
	SetRoots(*x509.CertPool) error
}

// newNodeServer returns the node API client for url, presenting the agent's
// current SVID and trusting its current roots.
func newNodeServer(url string, creds Credentials) (Server, error) {
	c, err := nodeapi.NewClient(nodeapi.ClientConfig{
		ServerURL:            url,
		Roots:                creds.Roots(),
		GetClientCertificate: creds.ClientCertificate,
	})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	return nodeServer{c: c}, nil
}

func mark(err error) error {
	var e *nodeapi.Error
	if errors.As(err, &e) && e.Status >= 400 && e.Status < 500 && e.Status != 429 {
		return fmt.Errorf("%w: %w", ErrRejected, err)
	}
	return err
}

func fromSVID(s *nodeapi.SVIDResponse) IssuedSVID {
	return IssuedSVID{SPIFFEID: s.SPIFFEID, Certificates: s.Certificates, ExpiresAt: s.ExpiresAt}
}

func (n nodeServer) Attest(ctx context.Context, method, token, role string, csr []byte) (*IssuedSVID, error) {
	s, err := n.c.Attest(ctx, method, token, role, csr)
	if err != nil {
		return nil, mark(err)
	}
	r := fromSVID(s)
	return &r, nil
}

func (n nodeServer) Renew(ctx context.Context, csr []byte) (*IssuedSVID, error) {
	s, err := n.c.Renew(ctx, csr)
	if err != nil {
		return nil, mark(err)
	}
	r := fromSVID(s)
	return &r, nil
}

func (n nodeServer) Workloads(ctx context.Context) ([]Entry, error) {
	ws, err := n.c.Workloads(ctx)
	if err != nil {
		return nil, mark(err)
	}
	out := make([]Entry, len(ws))
	for i, w := range ws {
		out[i] = Entry{SPIFFEID: w.SPIFFEID, Selectors: fromPolicy(w.Selectors), DNSNames: w.DNSNames, TTL: w.TTL}
	}
	return out, nil
}

func fromPolicy(sel []policy.AttestationSelector) []Selector {
	out := make([]Selector, len(sel))
	for i, s := range sel {
		out[i] = Selector{Type: s.Type, Value: s.Value}
	}
	return out
}

func (n nodeServer) X509SVIDs(ctx context.Context, reqs []SVIDRequest) ([]IssuedSVID, error) {
	in := make([]nodeapi.X509SVIDRequest, len(reqs))
	for i, r := range reqs {
		in[i] = nodeapi.X509SVIDRequest{SPIFFEID: r.SPIFFEID, CSR: r.CSR}
	}
	ss, err := n.c.X509SVIDs(ctx, in)
	if err != nil {
		return nil, mark(err)
	}
	out := make([]IssuedSVID, len(ss))
	for i := range ss {
		out[i] = fromSVID(&ss[i])
	}
	return out, nil
}

func (n nodeServer) JWTSVID(ctx context.Context, id string, aud []string) (string, time.Time, error) {
	tok, exp, err := n.c.JWTSVID(ctx, id, aud)
	return tok, exp, mark(err)
}

func (n nodeServer) Bundle(ctx context.Context) ([]byte, error) {
	b, err := n.c.Bundle(ctx)
	return b, mark(err)
}

func (n nodeServer) FederatedBundles(ctx context.Context) (map[string][]byte, error) {
	b, err := n.c.FederatedBundles(ctx)
	return b, mark(err)
}

// CloseIdleConnections makes the next request present the agent's new SVID.
func (n nodeServer) CloseIdleConnections() { n.c.CloseIdleConnections() }

// SetRoots trusts the trust domain's new roots for the server's certificate.
func (n nodeServer) SetRoots(p *x509.CertPool) error { return n.c.SetRoots(p) }
