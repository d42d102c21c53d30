package agent

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// maxEntries bounds the Workload entries the agent holds.
const maxEntries = 10000

// servable reports whether this agent can ever attest a caller for an entry
// with these selectors: some selectors, all unix ones.
func servable(sel []Selector) bool {
	if len(sel) == 0 {
		return false
	}
	for _, s := range sel {
		if s.Type != "unix" {
			return false
		}
	}
	return true
}

// entryState is one Workload entry and the SVID held for it.
type entryState struct {
	id   spiffeid.ID
	sel  []Selector
	dns  []string
	svid *svidState
	run  renewState
}

// svidState is an X.509-SVID with its private key, pre-encoded for the
// Workload API.
type svidState struct {
	chainDER []byte // leaf then intermediates, concatenated DER
	keyDER   []byte // PKCS#8
	notAfter time.Time
	gen      uint64
}

// bundleState is the trust domain's bundle as served to workloads.
type bundleState struct {
	bootstrap []*x509.Certificate
	x509      []*x509.Certificate
	x509DER   []byte // concatenated DER
	jwt       *jwtbundle.Bundle
	jwtJSON   []byte
	fed       map[spiffeid.TrustDomain]*fedBundle // federated trust domains
	gen       uint64                              // bumped on any change
}

// jwtEntry is a cached JWT-SVID.
type jwtEntry struct {
	token     string
	expiresAt time.Time
	refreshAt time.Time
}

// subscriber is an attached stream waiting for changes.
type subscriber struct{ ch chan struct{} }

func randDuration(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(max) + 1))
}

func (a *Agent) subscribe() *subscriber {
	s := &subscriber{ch: make(chan struct{}, 1)}
	a.mu.Lock()
	a.subs[s] = struct{}{}
	a.mu.Unlock()
	return s
}

func (a *Agent) unsubscribe(s *subscriber) {
	a.mu.Lock()
	delete(a.subs, s)
	a.mu.Unlock()
}

// broadcastLocked wakes every attached stream; each recomputes its view and
// sends only if it changed. a.mu must be held.
func (a *Agent) broadcastLocked() {
	for s := range a.subs {
		select {
		case s.ch <- struct{}{}:
		default:
		}
	}
}

// tick runs every periodic task that is due.
func (a *Agent) tick(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	now := a.cfg.Now()
	a.mu.Lock()
	agentDue := !now.Before(a.agent.next)
	bundleDue := !now.Before(a.bundleRun.next)
	wlDue := !now.Before(a.wl.next)
	a.mu.Unlock()

	if agentDue {
		if err := a.renewAgent(ctx); err != nil {
			a.failed(&a.agent, "agent SVID renewal", err)
		}
	}
	if bundleDue {
		if err := a.refreshBundle(ctx); err != nil {
			a.failed(&a.bundleRun, "bundle refresh", err)
		}
	}
	if wlDue {
		if err := a.refreshWorkloads(ctx); err != nil {
			a.failed(&a.wl, "workload entries refresh", err)
		}
	}
	a.refreshSVIDs(ctx)
	a.expire()
}

// failed schedules the retry of a task after a failure.
func (a *Agent) failed(rs *renewState, what string, err error) {
	a.mu.Lock()
	rs.failures++
	d := a.backoff(rs.failures)
	rs.next = a.cfg.Now().Add(d)
	a.mu.Unlock()
	if errors.Is(err, ErrRejected) {
		// Refused, not unreachable: retrying will not help unless an
		// operator acts (a new join token after an eviction, say).
		a.cfg.Logger.Error("agent: "+what+" refused by the server; retrying, but this agent may need to attest again (postern server agents lists the registered agents)", "error", err.Error(), "retry_in", d)
		return
	}
	a.cfg.Logger.Warn("agent: "+what+" failed; retrying", "error", err.Error(), "retry_in", d)
}

// refreshBundle fetches the trust domain's SPIFFE bundle, then the
// federated bundles (a failure there keeps the ones held and is only
// logged).
func (a *Agent) refreshBundle(ctx context.Context) error {
	a.mu.Lock()
	td := a.td
	a.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	raw, err := a.server.Bundle(rctx)
	if err != nil {
		return fmt.Errorf("agent: bundle: %w", err)
	}
	if len(raw) > maxBundleFile {
		return errors.New("agent: bundle: too large")
	}
	b, err := spiffebundle.Parse(td, raw)
	if err != nil {
		return fmt.Errorf("agent: bundle: %w", err)
	}
	if len(b.X509Authorities()) == 0 {
		return errors.New("agent: bundle: no X.509 authorities")
	}
	// A bundle without the authority of the agent's own SVID would lock
	// it out (the server's certificate and renewal chain to the same
	// roots): keep the last one until a renewed SVID chains to the new one.
	if c := a.agentCert.Load(); c != nil && c.Leaf != nil {
		chain := []*x509.Certificate{c.Leaf}
		for _, der := range c.Certificate[1:] {
			if ic, err := x509.ParseCertificate(der); err == nil {
				chain = append(chain, ic)
			}
		}
		at := c.Leaf.NotBefore.Add(time.Second)
		if _, _, err := x509svid.Verify(chain, b.X509Bundle(), x509svid.WithTime(at)); err != nil {
			return fmt.Errorf("agent: bundle: it does not hold the authority of this agent's SVID; keeping the last one: %w", err)
		}
	}
	a.setBundle(b.X509Authorities(), b.JWTBundle())
	if err := a.refreshFederated(ctx); err != nil {
		a.cfg.Logger.Warn("agent: federated bundles refresh failed; keeping the ones held", "error", err.Error())
	}
	a.mu.Lock()
	a.bundleRun = renewState{next: a.cfg.Now().Add(a.cfg.BundleInterval), done: true}
	a.mu.Unlock()
	return nil
}

// setBundle installs the authorities, waking streams if they changed.
func (a *Agent) setBundle(x509s []*x509.Certificate, jwt *jwtbundle.Bundle) {
	var der []byte
	for _, c := range x509s {
		der = append(der, c.Raw...)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.bundle.jwt != nil && bytes.Equal(der, a.bundle.x509DER) && a.bundle.jwt.Equal(jwt) {
		return
	}
	js, err := jwt.Marshal()
	if err != nil {
		a.cfg.Logger.Error("agent: encode JWT bundle", "error", err.Error())
		return
	}
	a.bundle.x509, a.bundle.x509DER, a.bundle.jwt, a.bundle.jwtJSON = x509s, der, jwt, js
	a.bundle.gen++
	pool := x509.NewCertPool()
	for _, c := range x509s {
		pool.AddCert(c)
	}
	a.roots.Store(pool)
	if f, ok := a.server.(credsFollow); ok {
		if err := f.SetRoots(pool); err != nil {
			a.cfg.Logger.Error("agent: could not update the server's roots", "error", err.Error())
		}
	}
	a.broadcastLocked()
}

// refreshWorkloads fetches the Workload entries this agent may serve.
func (a *Agent) refreshWorkloads(ctx context.Context) error {
	rctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	list, err := a.server.Workloads(rctx)
	if err != nil {
		return fmt.Errorf("agent: workloads: %w", err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	td := a.td
	next := make(map[string]*entryState, len(list))
	changed := false
	for _, e := range list {
		id, err := spiffeid.FromString(e.SPIFFEID)
		if err != nil || id.TrustDomain() != td {
			a.cfg.Logger.Warn("agent: ignoring workload entry with an invalid SPIFFE ID", "spiffe_id", truncate(e.SPIFFEID, 256))
			continue
		}
		if p := id.Path(); p == "/postern" || strings.HasPrefix(p, "/postern/") {
			// The server's and agents' identities are never a workload's:
			// a local process holding /postern/server could pose as the
			// server to other nodes. The server never lists them; a
			// server that did is not followed.
			a.cfg.Logger.Warn("agent: ignoring workload entry with a reserved SPIFFE ID", "spiffe_id", id.String())
			continue
		}
		if !servable(e.Selectors) {
			// No local process can ever match it (no selectors, or some
			// this agent cannot attest): holding an SVID for it would
			// only put a key for another identity on this node.
			continue
		}
		if _, dup := next[id.String()]; dup || len(next) >= maxEntries {
			continue
		}
		old := a.entries[id.String()]
		if old == nil {
			old = &entryState{id: id}
			changed = true
		}
		if !slices.Equal(old.sel, e.Selectors) {
			old.sel = slices.Clone(e.Selectors)
			changed = true
		}
		if !slices.Equal(old.dns, e.DNSNames) {
			if old.dns != nil || len(e.DNSNames) > 0 {
				old.run = renewState{} // reissue with the new names
			}
			old.dns = slices.Clone(e.DNSNames)
		}
		next[id.String()] = old
	}
	if len(next) != len(a.entries) {
		changed = true
	}
	a.entries = next
	a.wl = renewState{next: a.cfg.Now().Add(a.cfg.WorkloadsInterval), done: true}
	if changed {
		a.entriesGen++
		a.broadcastLocked()
	}
	return nil
}

// refreshSVIDs obtains SVIDs for entries that have none or whose SVID is
// past its renewal time, in batches.
func (a *Agent) refreshSVIDs(ctx context.Context) {
	now := a.cfg.Now()
	a.mu.Lock()
	var due []string
	for id, e := range a.entries {
		if !now.Before(e.run.next) {
			due = append(due, id)
		}
	}
	a.mu.Unlock()
	sort.Strings(due)
	for len(due) > 0 {
		n := min(len(due), maxBatch)
		a.issue(ctx, due[:n], true)
		due = due[n:]
	}
}

// issue asks the server for the SVIDs of ids. When the server refuses a
// batch (it names one ID it will not issue), each ID is retried alone so the
// others are not held back.
func (a *Agent) issue(ctx context.Context, ids []string, split bool) {
	keys := make([]*ecdsa.PrivateKey, len(ids))
	reqs := make([]SVIDRequest, len(ids))
	for i, id := range ids {
		key, csr, err := newKeyAndCSR()
		if err != nil {
			a.cfg.Logger.Error("agent: key generation failed", "error", err.Error())
			return
		}
		keys[i], reqs[i] = key, SVIDRequest{SPIFFEID: id, CSR: csr}
	}
	rctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	resps, err := a.server.X509SVIDs(rctx, reqs)
	if err != nil {
		if split && len(ids) > 1 && errors.Is(err, ErrRejected) {
			for _, id := range ids {
				a.issue(ctx, []string{id}, false)
			}
			return
		}
		for _, id := range ids {
			a.entryFailed(id, err)
		}
		return
	}
	byID := make(map[string]*IssuedSVID, len(resps))
	for i := range resps {
		byID[resps[i].SPIFFEID] = &resps[i]
	}
	for i, id := range ids {
		r := byID[id]
		if r == nil {
			a.entryFailed(id, errors.New("agent: server returned no SVID"))
			continue
		}
		if _, err := a.checkSVID(r, keys[i], id); err != nil {
			a.entryFailed(id, err)
			continue
		}
		if err := a.installSVID(id, r, keys[i]); err != nil {
			a.entryFailed(id, err)
		}
	}
}

func (a *Agent) entryFailed(id string, err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.entries[id]
	if e == nil {
		return
	}
	e.run.failures++
	d := a.backoff(e.run.failures)
	e.run.next = a.cfg.Now().Add(d)
	a.cfg.Logger.Warn("agent: X.509-SVID issuance failed; retrying", "spiffe_id", id, "error", err.Error(), "retry_in", d)
}

func (a *Agent) installSVID(id string, r *IssuedSVID, key *ecdsa.PrivateKey) error {
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("agent: encode key: %w", err)
	}
	var chain []byte
	for _, c := range r.Certificates {
		chain = append(chain, c.Raw...)
	}
	leaf := r.Certificates[0]
	a.mu.Lock()
	defer a.mu.Unlock()
	e := a.entries[id]
	if e == nil {
		return nil // removed meanwhile
	}
	a.entriesGen++
	e.svid = &svidState{chainDER: chain, keyDER: keyDER, notAfter: leaf.NotAfter, gen: a.entriesGen}
	e.run = renewState{next: a.renewAt(leaf), done: true}
	a.cfg.Logger.Info("agent: X.509-SVID issued", "spiffe_id", id, "expires_at", leaf.NotAfter)
	a.broadcastLocked()
	return nil
}

// expire drops SVIDs past their expiry, so that no expired certificate is
// served while the server is unreachable.
func (a *Agent) expire() {
	now := a.cfg.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	changed := false
	for id, e := range a.entries {
		if e.svid != nil && !now.Before(e.svid.notAfter) {
			e.svid = nil
			changed = true
			a.cfg.Logger.Warn("agent: X.509-SVID expired before it could be renewed", "spiffe_id", id)
		}
	}
	for k, j := range a.jwts {
		if !now.Before(j.expiresAt) {
			delete(a.jwts, k)
		}
	}
	if changed {
		a.entriesGen++
		a.broadcastLocked()
	}
}

// selectorSet is a caller's selectors as a set.
type selectorSet map[Selector]struct{}

func newSelectorSet(sel []Selector) selectorSet {
	s := make(selectorSet, len(sel))
	for _, x := range sel {
		s[x] = struct{}{}
	}
	return s
}

// matches reports whether every selector of an entry is among the caller's;
// an entry with no selectors is never matched.
func (s selectorSet) matches(required []Selector) bool {
	if len(required) == 0 {
		return false
	}
	for _, r := range required {
		if _, ok := s[r]; !ok {
			return false
		}
	}
	return true
}

// matchingLocked returns the entries the caller matches, sorted by ID.
func (a *Agent) matchingLocked(s selectorSet) []*entryState {
	var out []*entryState
	for _, e := range a.entries {
		if s.matches(e.sel) {
			out = append(out, e)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id.String() < out[j].id.String() })
	return out
}

// jwtKey is the cache key of a JWT-SVID: its ID and audience set.
func jwtKey(id string, aud []string) string {
	a := slices.Clone(aud)
	sort.Strings(a)
	a = slices.Compact(a)
	return id + "\x00" + strings.Join(a, "\x00")
}

// jwtSVID returns a JWT-SVID for id and aud, from the cache until half its
// lifetime, and (while the server cannot be reached) until it expires.
func (a *Agent) jwtSVID(ctx context.Context, id string, aud []string) (string, error) {
	key := jwtKey(id, aud)
	now := a.cfg.Now()
	a.mu.Lock()
	cached := a.jwts[key]
	a.mu.Unlock()
	if cached != nil && now.Before(cached.refreshAt) {
		return cached.token, nil
	}
	rctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	tok, exp, err := a.server.JWTSVID(rctx, id, aud)
	if err != nil {
		if cached != nil && now.Before(cached.expiresAt) && !errors.Is(err, ErrRejected) {
			a.cfg.Logger.Warn("agent: JWT-SVID refresh failed; serving the cached one", "spiffe_id", id, "error", err.Error())
			return cached.token, nil
		}
		return "", fmt.Errorf("agent: JWT-SVID: %w", err)
	}
	// The server's token is checked as any relying party would, before it
	// is cached or served: signed by this trust domain, for exactly the
	// identity and audiences asked, and not expired (by its own exp).
	a.mu.Lock()
	own := a.bundle.jwt
	a.mu.Unlock()
	if own == nil {
		return "", errors.New("agent: JWT-SVID: no JWT bundle yet to check the server's token with")
	}
	svid, err := jwtsvid.ParseAndValidate(tok, jwtbundle.NewSet(own), aud)
	switch {
	case err != nil:
		return "", fmt.Errorf("agent: JWT-SVID: the server's token does not validate: %w", err)
	case svid.ID.String() != id:
		return "", fmt.Errorf("agent: JWT-SVID: the server returned a token for %s, not %s", svid.ID, id)
	case !sameSet(svid.Audience, aud):
		return "", fmt.Errorf("agent: JWT-SVID: the server returned a token for audiences %q, not %q", svid.Audience, aud)
	}
	if svid.Expiry.Before(exp) {
		exp = svid.Expiry
	}
	now = a.cfg.Now()
	if !now.Before(exp) {
		return "", errors.New("agent: JWT-SVID: server returned an expired token")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.jwts) >= a.cfg.MaxJWTCache {
		for k, j := range a.jwts {
			if !now.Before(j.refreshAt) || len(a.jwts) >= a.cfg.MaxJWTCache {
				delete(a.jwts, k)
			}
		}
	}
	a.jwts[key] = &jwtEntry{token: tok, expiresAt: exp, refreshAt: now.Add(exp.Sub(now) / 2)}
	return tok, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// sameSet reports whether a and b hold the same strings, in any order.
func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := make(map[string]int, len(a))
	for _, s := range a {
		seen[s]++
	}
	for _, s := range b {
		if seen[s] == 0 {
			return false
		}
		seen[s]--
	}
	return true
}
