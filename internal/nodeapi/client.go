package nodeapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/policy"
)

// maxResponseBytes bounds what the client reads from the server.
const maxResponseBytes = 4 << 20

// ClientConfig configures a Client.
type ClientConfig struct {
	// ServerURL is the server's base URL (the STS issuer URL), e.g.
	// https://127.0.0.1:8443. Required; https only.
	ServerURL string
	// Roots are trusted for the server's certificate (bundle.pem at
	// bootstrap, then the live bundle; see SetRoots). Required unless
	// HTTPClient is set.
	Roots *x509.CertPool
	// GetClientCertificate returns the caller's current X.509-SVID; nil, or
	// a nil certificate, means none (before attestation). It is called for
	// every new connection, so a renewed SVID is used without a restart.
	GetClientCertificate func(*tls.CertificateRequestInfo) (*tls.Certificate, error)
	// HTTPClient replaces the client built from Roots and
	// GetClientCertificate (tests).
	HTTPClient *http.Client
	// TrustDomain, when set, is the trust domain the server's SPIFFE ID
	// must be in, besides its path being ServerPath.
	TrustDomain spiffeid.TrustDomain
}

// Client calls the node API. It is safe for concurrent use.
type Client struct {
	base   string
	cfg    ClientConfig
	custom bool
	hc     atomic.Pointer[http.Client]
}

// SVIDResponse is an issued X.509-SVID.
type SVIDResponse struct {
	// SPIFFEID is the identity the server attested or renewed.
	SPIFFEID string
	// Certificates are the leaf, then intermediates up to (not including)
	// a root of the bundle.
	Certificates []*x509.Certificate
	// ExpiresAt is the leaf's NotAfter.
	ExpiresAt time.Time
}

// WorkloadEntry is a Workload the calling agent may obtain SVIDs for.
type WorkloadEntry struct {
	SPIFFEID  string
	Selectors []policy.AttestationSelector
	DNSNames  []string
	// TTL is the lifetime of its X.509-SVIDs.
	TTL time.Duration
}

// X509SVIDRequest asks for one Workload's X.509-SVID.
type X509SVIDRequest struct {
	SPIFFEID string
	// CSR is a DER PKCS #10 request signed by the workload's key; its
	// subject and SANs are ignored.
	CSR []byte
}

// NewClient validates cfg and returns a Client.
func NewClient(cfg ClientConfig) (*Client, error) {
	u, err := url.Parse(cfg.ServerURL)
	if err != nil || u.Scheme != "https" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("nodeapi: client: server URL %q must be an https:// URL", cfg.ServerURL)
	}
	c := &Client{cfg: cfg, base: u.Scheme + "://" + u.Host + trimSlash(u.EscapedPath())}
	if cfg.HTTPClient != nil {
		c.custom = true
		c.hc.Store(cfg.HTTPClient)
		return c, nil
	}
	if cfg.Roots == nil {
		return nil, errors.New("nodeapi: client: roots are required")
	}
	c.hc.Store(c.newHTTPClient(cfg.Roots))
	return c, nil
}

func trimSlash(p string) string {
	for len(p) > 0 && p[len(p)-1] == '/' {
		p = p[:len(p)-1]
	}
	return p
}

func (c *Client) newHTTPClient(roots *x509.CertPool) *http.Client {
	get := c.cfg.GetClientCertificate
	tc := &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    roots,
		// Beyond the chain and the host name, the server must be the
		// server: a workload's SVID can carry any DNS name, but no
		// Workload may take an ID under /postern/. Join tokens and
		// Kubernetes tokens go to nobody else.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("nodeapi: the server presented no certificate")
			}
			id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
			if err != nil || id.Path() != ServerPath {
				return fmt.Errorf("nodeapi: the server's certificate is not the postern server's (want a SPIFFE ID ending in %s)", ServerPath)
			}
			if td := c.cfg.TrustDomain; !td.IsZero() && id.TrustDomain() != td {
				return fmt.Errorf("nodeapi: the server's certificate is for trust domain %s, not %s", id.TrustDomain(), td)
			}
			return nil
		},
		GetClientCertificate: func(info *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if get == nil {
				return &tls.Certificate{}, nil
			}
			cert, err := get(info)
			if err != nil {
				return nil, err
			}
			if cert == nil {
				return &tls.Certificate{}, nil // no certificate
			}
			return cert, nil
		},
	}
	return &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:       tc,
			ForceAttemptHTTP2:     true,
			TLSHandshakeTimeout:   10 * time.Second,
			ResponseHeaderTimeout: 20 * time.Second,
			IdleConnTimeout:       90 * time.Second,
			MaxIdleConnsPerHost:   4,
		},
		// The node API never redirects; following one could send an SVID
		// request elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// SetRoots replaces the roots trusted for the server's certificate (after a
// CA rotation). Open connections are closed. It fails for a Client built
// with ClientConfig.HTTPClient.
func (c *Client) SetRoots(roots *x509.CertPool) error {
	if c.custom {
		return errors.New("nodeapi: client: SetRoots needs a client built from Roots, not HTTPClient")
	}
	if roots == nil {
		return errors.New("nodeapi: client: roots are required")
	}
	old := c.hc.Swap(c.newHTTPClient(roots))
	old.CloseIdleConnections()
	return nil
}

// CloseIdleConnections closes idle connections, so that the next request
// presents the client certificate GetClientCertificate returns then.
func (c *Client) CloseIdleConnections() { c.hc.Load().CloseIdleConnections() }

// Attest proves an identity with a join token or a Kubernetes PSAT (method
// MethodJoinToken or MethodK8sPSAT, role RoleAgent or RoleWorkload) and
// returns an X.509-SVID for the key that signed csrDER. Idle connections
// are closed afterwards, so that later calls present the new SVID.
func (c *Client) Attest(ctx context.Context, method, token, role string, csrDER []byte) (*SVIDResponse, error) {
	var out svidBody
	err := c.do(ctx, http.MethodPost, PathAttest, attestRequest{Method: method, Token: token, Role: role, CSR: csrDER}, &out)
	if err != nil {
		return nil, err
	}
	c.CloseIdleConnections()
	return decodeSVID(out)
}

// Renew returns a new X.509-SVID for the identity of the caller's current
// SVID (presented by mutual TLS). Idle connections are closed afterwards.
func (c *Client) Renew(ctx context.Context, csrDER []byte) (*SVIDResponse, error) {
	var out svidBody
	if err := c.do(ctx, http.MethodPost, PathRenew, renewRequest{CSR: csrDER}, &out); err != nil {
		return nil, err
	}
	c.CloseIdleConnections()
	return decodeSVID(out)
}

// Workloads returns the Workloads the calling agent may obtain SVIDs for.
func (c *Client) Workloads(ctx context.Context) ([]WorkloadEntry, error) {
	var out workloadsResponse
	if err := c.do(ctx, http.MethodGet, PathWorkloads, nil, &out); err != nil {
		return nil, err
	}
	res := make([]WorkloadEntry, 0, len(out.Workloads))
	for _, w := range out.Workloads {
		if _, err := spiffeid.FromString(w.SPIFFEID); err != nil {
			return nil, fmt.Errorf("nodeapi: workloads: bad spiffe_id: %w", err)
		}
		if w.TTLSeconds < 0 {
			return nil, fmt.Errorf("nodeapi: workloads: negative ttl_seconds for %s", w.SPIFFEID)
		}
		res = append(res, WorkloadEntry{
			SPIFFEID: w.SPIFFEID, Selectors: w.Selectors, DNSNames: w.DNSNames,
			TTL: time.Duration(w.TTLSeconds) * time.Second,
		})
	}
	return res, nil
}

// X509SVIDs returns an X.509-SVID for each request, in order. The calling
// agent must be allowed by every Workload named, or the call fails as a
// whole.
func (c *Client) X509SVIDs(ctx context.Context, reqs []X509SVIDRequest) ([]SVIDResponse, error) {
	in := x509SVIDsRequest{Requests: make([]x509SVIDItem, 0, len(reqs))}
	for _, r := range reqs {
		in.Requests = append(in.Requests, x509SVIDItem{SPIFFEID: r.SPIFFEID, CSR: r.CSR})
	}
	var out x509SVIDsResponse
	if err := c.do(ctx, http.MethodPost, PathX509SVIDs, in, &out); err != nil {
		return nil, err
	}
	if len(out.SVIDs) != len(reqs) {
		return nil, fmt.Errorf("nodeapi: x509svids: asked for %d SVIDs, got %d", len(reqs), len(out.SVIDs))
	}
	res := make([]SVIDResponse, 0, len(out.SVIDs))
	for i, b := range out.SVIDs {
		s, err := decodeSVID(b)
		if err != nil {
			return nil, err
		}
		if s.SPIFFEID != reqs[i].SPIFFEID {
			return nil, fmt.Errorf("nodeapi: x509svids: asked for %s, got %s", reqs[i].SPIFFEID, s.SPIFFEID)
		}
		res = append(res, *s)
	}
	return res, nil
}

// JWTSVID returns a JWT-SVID for the Workload id, for the given audiences.
func (c *Client) JWTSVID(ctx context.Context, id string, audience []string) (string, time.Time, error) {
	var out jwtSVIDResponse
	if err := c.do(ctx, http.MethodPost, PathJWTSVID, jwtSVIDRequest{SPIFFEID: id, Audience: audience}, &out); err != nil {
		return "", time.Time{}, err
	}
	exp, err := time.Parse(time.RFC3339, out.ExpiresAt)
	if err != nil || out.Token == "" {
		return "", time.Time{}, errors.New("nodeapi: jwtsvid: malformed response")
	}
	return out.Token, exp, nil
}

// Bundle returns the trust domain's SPIFFE bundle (JSON; parse it with
// go-spiffe's spiffebundle.Parse).
func (c *Client) Bundle(ctx context.Context) ([]byte, error) {
	return c.get(ctx, "/bundle")
}

// maxFederatedBundles bounds the trust domains of a federated-bundles answer.
const maxFederatedBundles = 1024

// FederatedBundles returns the SPIFFE bundle (JSON; parse it with
// spiffebundle.Parse) of every federated trust domain, by trust domain name.
// The calling agent must present its SVID.
func (c *Client) FederatedBundles(ctx context.Context) (map[string][]byte, error) {
	var out federatedBundlesResponse
	if err := c.do(ctx, http.MethodGet, PathFederatedBundles, nil, &out); err != nil {
		return nil, err
	}
	if len(out.Bundles) > maxFederatedBundles {
		return nil, fmt.Errorf("nodeapi: federated-bundles: more than %d trust domains", maxFederatedBundles)
	}
	res := make(map[string][]byte, len(out.Bundles))
	for name, raw := range out.Bundles {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil || td.Name() != name {
			return nil, fmt.Errorf("nodeapi: federated-bundles: %q is not a trust domain name", clip(name, 128))
		}
		if len(raw) == 0 || raw[0] != '{' {
			return nil, fmt.Errorf("nodeapi: federated-bundles: the bundle of %s is not a JSON object", name)
		}
		res[name] = raw
	}
	return res, nil
}

// decodeSVID parses a response SVID and checks that the leaf carries the
// SPIFFE ID the response names.
func decodeSVID(b svidBody) (*SVIDResponse, error) {
	if len(b.X509SVID) == 0 {
		return nil, errors.New("nodeapi: response holds no certificate")
	}
	s := &SVIDResponse{SPIFFEID: b.SPIFFEID}
	for _, der := range b.X509SVID {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("nodeapi: response certificate: %w", err)
		}
		s.Certificates = append(s.Certificates, cert)
	}
	id, err := x509svid.IDFromCert(s.Certificates[0])
	if err != nil {
		return nil, fmt.Errorf("nodeapi: response certificate: %w", err)
	}
	if id.String() != b.SPIFFEID {
		return nil, fmt.Errorf("nodeapi: response names %q but its certificate %s", b.SPIFFEID, id)
	}
	if s.ExpiresAt, err = time.Parse(time.RFC3339, b.ExpiresAt); err != nil {
		return nil, fmt.Errorf("nodeapi: response expires_at: %w", err)
	}
	return s, nil
}

// do sends in as JSON (nil: no body) and decodes a 2xx answer into out.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("nodeapi: encode request: %w", err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return fmt.Errorf("nodeapi: %w", err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	data, err := c.send(req)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("nodeapi: %s: malformed response: %w", path, err)
	}
	return nil
}

func (c *Client) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, fmt.Errorf("nodeapi: %w", err)
	}
	return c.send(req)
}

// send performs req and returns the body of a 2xx answer, or *Error.
func (c *Client) send(req *http.Request) ([]byte, error) {
	resp, err := c.hc.Load().Do(req)
	if err != nil {
		return nil, fmt.Errorf("nodeapi: %s %s: %w", req.Method, req.URL.Path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return nil, fmt.Errorf("nodeapi: %s %s: read response: %w", req.Method, req.URL.Path, err)
	}
	if len(data) > maxResponseBytes {
		return nil, fmt.Errorf("nodeapi: %s %s: response larger than %d bytes", req.Method, req.URL.Path, maxResponseBytes)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := &Error{Status: resp.StatusCode}
		var eb errorBody
		if json.Unmarshal(data, &eb) == nil && eb.Error != "" {
			e.Code, e.Description = eb.Error, clip(eb.Description, 1024)
		} else {
			e.Description = http.StatusText(resp.StatusCode)
		}
		return nil, e
	}
	return data, nil
}
