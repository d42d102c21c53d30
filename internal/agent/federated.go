package agent

import (
	"context"
	"fmt"
	"maps"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// maxFederated bounds the federated trust domains the agent holds.
const maxFederated = 1024

// fedBundle is a federated trust domain's bundle, pre-encoded for the
// Workload API.
type fedBundle struct {
	bundle  *spiffebundle.Bundle
	x509DER []byte // concatenated DER; empty without X.509 authorities
	jwtJSON []byte // JWKS; nil without JWT authorities
}

// refreshFederated fetches the federated bundles. On failure the ones held
// are kept (and served) and the error is returned for the log.
func (a *Agent) refreshFederated(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	raw, err := a.server.FederatedBundles(rctx)
	if err != nil {
		return fmt.Errorf("agent: federated bundles: %w", err)
	}
	if len(raw) > maxFederated {
		return fmt.Errorf("agent: federated bundles: more than %d trust domains", maxFederated)
	}
	a.mu.Lock()
	own := a.td
	a.mu.Unlock()
	next := make(map[spiffeid.TrustDomain]*fedBundle, len(raw))
	for name, data := range raw {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil || td.Name() != name {
			return fmt.Errorf("agent: federated bundles: %q is not a trust domain name", truncate(name, 256))
		}
		if td == own {
			// Our own trust domain's bundle comes only from /bundle.
			a.cfg.Logger.Warn("agent: ignoring a federated bundle for our own trust domain", "trust_domain", name)
			continue
		}
		if len(data) > maxBundleFile {
			return fmt.Errorf("agent: federated bundle of %s: too large", name)
		}
		b, err := spiffebundle.Parse(td, data)
		if err != nil {
			return fmt.Errorf("agent: federated bundle of %s: %w", name, err)
		}
		if b.Empty() {
			// Never trade the bundle held for one that trusts nothing
			// (the server refuses such bundles too).
			return fmt.Errorf("agent: federated bundle of %s has no authorities", name)
		}
		fb, err := encodeFederated(b)
		if err != nil {
			return err
		}
		next[td] = fb
	}
	a.setFederated(next)
	return nil
}

func encodeFederated(b *spiffebundle.Bundle) (*fedBundle, error) {
	fb := &fedBundle{bundle: b}
	for _, c := range b.X509Authorities() {
		fb.x509DER = append(fb.x509DER, c.Raw...)
	}
	if len(b.JWTAuthorities()) > 0 {
		js, err := b.JWTBundle().Marshal()
		if err != nil {
			return nil, fmt.Errorf("agent: encode the JWT bundle of %s: %w", b.TrustDomain().Name(), err)
		}
		fb.jwtJSON = js
	}
	return fb, nil
}

// setFederated installs the federated bundles, waking streams if they
// changed.
func (a *Agent) setFederated(next map[spiffeid.TrustDomain]*fedBundle) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if maps.EqualFunc(a.bundle.fed, next, func(x, y *fedBundle) bool { return x.bundle.Equal(y.bundle) }) {
		return
	}
	a.bundle.fed = next
	a.bundle.gen++
	a.cfg.Logger.Info("agent: federated bundles updated", "trust_domains", len(next))
	a.broadcastLocked()
}

// federatedX509Locked returns the federated X.509 bundles by trust domain
// SPIFFE ID (spiffe://td), as the Workload API keys them. a.mu must be held.
func (a *Agent) federatedX509Locked() map[string][]byte {
	if len(a.bundle.fed) == 0 {
		return nil
	}
	out := make(map[string][]byte, len(a.bundle.fed))
	for td, fb := range a.bundle.fed {
		if len(fb.x509DER) > 0 {
			out[td.IDString()] = fb.x509DER
		}
	}
	return out
}

// jwtBundlesLocked returns our own JWT bundle and every federated one with
// JWT authorities, as a source for validation. a.mu must be held and
// a.bundle.jwt set.
func (a *Agent) jwtBundlesLocked() *jwtbundle.Set {
	s := jwtbundle.NewSet(a.bundle.jwt)
	for _, fb := range a.bundle.fed {
		if fb.jwtJSON != nil {
			s.Add(fb.bundle.JWTBundle())
		}
	}
	return s
}
