package ca

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Key uses in a SPIFFE bundle.
const (
	useX509SVID = "x509-svid"
	useJWTSVID  = "jwt-svid"
)

// maxJWTKeys bounds the JWT keys put into a SPIFFE bundle.
const maxJWTKeys = 64

var _ x509bundle.Source = (*CA)(nil)

// X509Authorities returns the roots in the bundle: the current one first,
// then the next (if prepared) and the retired ones that have not expired.
// The certificates are shared; callers must not modify them.
func (c *CA) X509Authorities() []*x509.Certificate {
	return slices.Clone(c.st.Load().published)
}

// X509Bundle returns the trust domain's X.509 bundle (a copy).
func (c *CA) X509Bundle() *x509bundle.Bundle {
	return c.st.Load().bundle.Clone()
}

// GetX509BundleForTrustDomain makes the CA an x509bundle.Source for its own
// trust domain, so TLS configurations follow rotations.
func (c *CA) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td != c.cfg.TrustDomain {
		return nil, fmt.Errorf("ca: no X.509 bundle for trust domain %q", td)
	}
	return c.X509Bundle(), nil
}

// BundlePEM returns the bundle's roots as concatenated PEM CERTIFICATE
// blocks, for files such as <dataDir>/bundle.pem (curl --cacert).
func (c *CA) BundlePEM() []byte {
	return slices.Clone(c.st.Load().pem)
}

// spiffeBundleDoc is the SPIFFE bundle format: a JWK set with two members.
type spiffeBundleDoc struct {
	Keys           []jose.JSONWebKey `json:"keys"`
	SequenceNumber uint64            `json:"spiffe_sequence"`
	RefreshHint    int64             `json:"spiffe_refresh_hint"`
}

// SPIFFEBundle returns the trust domain's bundle in the SPIFFE bundle format
// for federation: each root as an "x509-svid" key with x5c, each of jwtKeys
// (which must have a key id; private halves are dropped) as a "jwt-svid"
// key, spiffe_refresh_hint in seconds (refreshHint <= 0 means
// DefaultRefreshHint) and spiffe_sequence.
//
// spiffe_sequence is derived from the authorities' timestamps (the Unix
// second of the latest addition to or removal from the X.509 roots), so
// replicas agree and restarts never make it go back; when the content changes
// without such an event (a JWT key rotation, two changes within a second),
// it is also raised past the last value this process served.
func (c *CA) SPIFFEBundle(jwtKeys []jose.JSONWebKey, refreshHint time.Duration) ([]byte, error) {
	if refreshHint <= 0 {
		refreshHint = DefaultRefreshHint
	}
	if len(jwtKeys) > maxJWTKeys {
		return nil, fmt.Errorf("ca: spiffe bundle: more than %d JWT keys", maxJWTKeys)
	}
	st := c.st.Load()
	doc := spiffeBundleDoc{
		Keys:        make([]jose.JSONWebKey, 0, len(st.published)+len(jwtKeys)),
		RefreshHint: int64((refreshHint + time.Second - 1) / time.Second),
	}
	for _, root := range st.published {
		doc.Keys = append(doc.Keys, jose.JSONWebKey{
			Key:          root.PublicKey,
			Certificates: []*x509.Certificate{root},
			Use:          useX509SVID,
		})
	}
	for i, k := range jwtKeys {
		if k.KeyID == "" {
			return nil, fmt.Errorf("ca: spiffe bundle: JWT key %d has no key id", i)
		}
		if !k.IsPublic() {
			k = k.Public()
		}
		if !k.Valid() {
			return nil, fmt.Errorf("ca: spiffe bundle: JWT key %q is not a valid public key", k.KeyID)
		}
		doc.Keys = append(doc.Keys, jose.JSONWebKey{Key: k.Key, KeyID: k.KeyID, Algorithm: k.Algorithm, Use: useJWTSVID})
	}
	keysJSON, err := json.Marshal(doc.Keys)
	if err != nil {
		return nil, fmt.Errorf("ca: spiffe bundle: %w", err)
	}
	doc.SequenceNumber = c.sequence(st.seq, sha256.Sum256(keysJSON))
	out, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("ca: spiffe bundle: %w", err)
	}
	return out, nil
}

// sequence returns the spiffe_sequence for content with digest sum.
func (c *CA) sequence(derived uint64, sum [32]byte) uint64 {
	c.seqMu.Lock()
	defer c.seqMu.Unlock()
	seq := max(derived, c.lastSeq)
	if c.lastSeq != 0 && sum != c.lastSum && seq == c.lastSeq {
		seq++
	}
	c.lastSeq, c.lastSum = seq, sum
	return seq
}

// BundleHandler serves the SPIFFE bundle (GET or HEAD) with the JWT keys
// that jwtKeys returns at each request; nil means none. Mount it on an HTTPS
// server: federation relies on the transport's authentication.
func (c *CA) BundleHandler(jwtKeys func() []jose.JSONWebKey, refreshHint time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		var keys []jose.JSONWebKey
		if jwtKeys != nil {
			keys = jwtKeys()
		}
		b, err := c.SPIFFEBundle(keys, refreshHint)
		if err != nil {
			c.log.Error("ca: serve spiffe bundle", "error", err)
			http.Error(w, "bundle unavailable", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Length", strconv.Itoa(len(b)))
		if r.Method == http.MethodGet {
			_, _ = w.Write(b)
		}
	})
}
