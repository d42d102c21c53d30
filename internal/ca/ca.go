package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/store"
)

// Defaults for Config's zero values.
const (
	// DefaultCATTL is the lifetime of a self-signed root. Thirty days keeps
	// roots short-lived while leaving a five-day publication lead for the
	// next root and ten days of overlap after it takes over.
	DefaultCATTL = 30 * 24 * time.Hour
	// DefaultSVIDTTL is the lifetime of an X.509-SVID when none is asked.
	DefaultSVIDTTL = time.Hour
	// DefaultRefreshInterval is how often Run re-reads the store and
	// applies the rotation schedule.
	DefaultRefreshInterval = time.Minute
	// DefaultRefreshHint is the spiffe_refresh_hint when none is given.
	DefaultRefreshHint = 5 * time.Minute
)

// clockSkew is subtracted from NotBefore of every certificate issued, so a
// peer whose clock is up to a minute behind accepts it at once.
const clockSkew = time.Minute

// expiredRetention is how long a record stays in the store after it left the
// bundle, at least; see settle.
const expiredRetention = 24 * time.Hour

// Sealer encrypts private keys at rest (package keys provides one). Seal and
// Open must bind additionalData: a key sealed for one authority id does not
// open under another.
type Sealer interface {
	// ID names the key-encryption key; it is stored beside sealed keys.
	ID() string
	// Seal encrypts plaintext, authenticating additionalData.
	Seal(plaintext, additionalData []byte) ([]byte, error)
	// Open decrypts what Seal produced for the same additionalData.
	Open(sealed, additionalData []byte) ([]byte, error)
}

// Store is the part of store.Store the CA uses.
type Store interface {
	// Authorities returns every stored authority.
	Authorities(ctx context.Context) ([]store.Authority, error)
	// PutAuthority inserts or replaces the authority with a.ID.
	PutAuthority(ctx context.Context, a store.Authority) error
	// DeleteAuthority removes an authority; a missing one is not an error.
	DeleteAuthority(ctx context.Context, id string) error
}

// Config configures a CA. Zero values mean the documented defaults;
// TrustDomain, Store and Sealer are required.
type Config struct {
	// TrustDomain is the trust domain the CA issues for; it refuses any
	// SPIFFE ID outside it.
	TrustDomain spiffeid.TrustDomain
	// Store holds the authorities; replicas share it.
	Store Store
	// Sealer seals the authorities' private keys (PKCS #8) with the
	// authority id bound as additional data.
	Sealer Sealer
	// CATTL is the lifetime of a self-signed root (default 30 days).
	CATTL time.Duration
	// SVIDTTL is the default lifetime of an X.509-SVID (default 1 hour).
	SVIDTTL time.Duration
	// UpstreamCert and UpstreamKey are PEM files of an intermediate CA from
	// the organisation's PKI and its private key (PKCS #8, SEC 1 or
	// PKCS #1, unencrypted). The certificate file may continue with the
	// chain above the intermediate, root last; the top certificate is what
	// the bundle publishes. When set, the CA signs only with this
	// intermediate: it creates no root and rotates nothing; replacing the
	// upstream before it expires is the operator's job. Both or neither.
	UpstreamCert, UpstreamKey string
	// Subject is the subject of self-signed roots (default O=Postern,
	// CN=<trust domain> root). Its serialNumber attribute is set to the
	// root's id when empty, so that roots have distinct subjects.
	Subject pkix.Name
	// RefreshInterval is how often Run re-reads the store and applies the
	// schedule (default 1 minute).
	RefreshInterval time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger receives lifecycle events (default: discard).
	Logger *slog.Logger
}

// CA issues X.509-SVIDs and publishes the trust bundle. Its methods are safe
// for concurrent use; reads (issuance, bundles) take no lock.
type CA struct {
	cfg      Config
	log      *slog.Logger
	upstream string // id of the upstream authority, "" in self-signed mode

	mu    sync.Mutex            // serialises reloads and store writes
	cache map[string]*authority // loaded authorities by id, under mu
	last  []*authority          // last good set, under mu

	st atomic.Pointer[state]

	seqMu   sync.Mutex // guards lastSeq and lastSum
	lastSeq uint64
	lastSum [32]byte
}

// state is the immutable snapshot that readers use.
type state struct {
	auths     []*authority // every loaded authority, by activation time
	published []*x509.Certificate
	bundle    *x509bundle.Bundle
	pem       []byte
	seq       uint64 // spiffe_sequence derived from the authorities
}

// New validates cfg, loads the authorities from the store and, in
// self-signed mode, creates the first root when none can sign; with an
// upstream it imports the files. It does not start Run.
func New(ctx context.Context, cfg Config) (*CA, error) {
	switch {
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("ca: config: trust domain is required")
	case cfg.Store == nil:
		return nil, errors.New("ca: config: store is required")
	case cfg.Sealer == nil:
		return nil, errors.New("ca: config: sealer is required")
	case (cfg.UpstreamCert == "") != (cfg.UpstreamKey == ""):
		return nil, errors.New("ca: config: upstream certificate and key go together")
	case cfg.CATTL < 0 || cfg.SVIDTTL < 0 || cfg.RefreshInterval < 0:
		return nil, errors.New("ca: config: negative duration")
	}
	if cfg.CATTL == 0 {
		cfg.CATTL = DefaultCATTL
	}
	if cfg.CATTL < 6*clockSkew {
		return nil, fmt.Errorf("ca: config: CA TTL %s is too short", cfg.CATTL)
	}
	if cfg.SVIDTTL == 0 {
		cfg.SVIDTTL = DefaultSVIDTTL
	}
	if cfg.RefreshInterval == 0 {
		cfg.RefreshInterval = DefaultRefreshInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &CA{cfg: cfg, log: log, cache: make(map[string]*authority)}

	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	auths, err := c.reload(ctx, now)
	if err != nil {
		return nil, err
	}
	if cfg.UpstreamCert != "" {
		up, err := c.importUpstream(now)
		if err != nil {
			return nil, err
		}
		c.upstream = up.rec.ID
		i := slices.IndexFunc(auths, func(a *authority) bool { return a.rec.ID == up.rec.ID })
		switch {
		case i < 0:
			if err := c.cfg.Store.PutAuthority(ctx, up.rec); err != nil {
				return nil, fmt.Errorf("ca: store upstream authority: %w", err)
			}
			auths = append(auths, up)
			c.log.Info("ca: imported upstream authority", slog.String("authority", up.rec.ID), slog.Time("not_after", up.notAfter))
		case !auths[i].rec.RetireAt.IsZero():
			// Imported again after it had been retired: it signs again.
			rec := auths[i].rec
			rec.ActivateAt, rec.RetireAt, rec.ExpireAt = now.UTC().Truncate(time.Second), time.Time{}, time.Time{}
			if err := c.cfg.Store.PutAuthority(ctx, rec); err != nil {
				return nil, fmt.Errorf("ca: store upstream authority: %w", err)
			}
			auths[i] = auths[i].withRecord(rec)
		}
	} else if c.pick(auths, now) == nil {
		root, err := c.newRoot(now, now)
		if err != nil {
			return nil, err
		}
		if err := c.cfg.Store.PutAuthority(ctx, root.rec); err != nil {
			return nil, fmt.Errorf("ca: store root: %w", err)
		}
		auths = append(auths, root)
		c.log.Info("ca: created root", slog.String("authority", root.rec.ID), slog.Time("not_after", root.notAfter))
	}
	auths, err = c.settle(ctx, auths, now)
	c.commit(auths, now)
	if err != nil {
		c.log.Warn("ca: settle authorities", slog.Any("error", err))
	}
	if c.pick(auths, now) == nil {
		return nil, fmt.Errorf("ca: %w", ErrNoAuthority)
	}
	if c.upstream != "" {
		if err := c.probe(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// ErrNoAuthority is returned when no authority can sign at this instant (an
// expired upstream, or a store that could not take a new root).
// It is wrapped with the operation's prefix ("ca: issue: ...").
var ErrNoAuthority = errors.New("no authority can sign")

func (c *CA) now() time.Time { return c.cfg.Now() }

// probe issues a throwaway SVID and verifies it against the bundle, so an
// upstream whose constraints (name constraints, path length) exclude the
// trust domain's SVIDs is refused at start rather than by every peer.
func (c *CA) probe() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("ca: probe: %w", err)
	}
	id, err := spiffeid.FromPath(c.cfg.TrustDomain, ServerPath)
	if err != nil {
		return fmt.Errorf("ca: probe: %w", err)
	}
	svid, err := c.IssueX509SVID(context.Background(), X509SVIDRequest{ID: id, PublicKey: key.Public(), TTL: time.Minute})
	if err != nil {
		return fmt.Errorf("ca: probe: %w", err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, c.X509Bundle(), x509svid.WithTime(c.now())); err != nil {
		return fmt.Errorf("ca: upstream authority cannot issue SVIDs for %s: %w", c.cfg.TrustDomain, err)
	}
	return nil
}

// reload reads and loads every stored authority. On error nothing changes.
// Caller holds mu.
func (c *CA) reload(ctx context.Context, now time.Time) ([]*authority, error) {
	recs, err := c.cfg.Store.Authorities(ctx)
	if err != nil {
		return nil, fmt.Errorf("ca: read authorities: %w", err)
	}
	auths := make([]*authority, 0, len(recs))
	seen := make(map[string]bool, len(recs))
	for _, rec := range recs {
		if seen[rec.ID] {
			continue
		}
		seen[rec.ID] = true
		a, err := c.load(rec, now)
		if err != nil {
			return nil, err
		}
		auths = append(auths, a)
	}
	for id := range c.cache {
		if !seen[id] {
			delete(c.cache, id)
		}
	}
	return auths, nil
}

// mayEverSign reports whether a may sign in the configured mode.
func (c *CA) mayEverSign(a *authority) bool {
	if a.signer == nil {
		return false
	}
	if c.upstream != "" {
		return a.rec.ID == c.upstream
	}
	return a.selfRoot
}

// signs reports whether a may sign at now.
func (c *CA) signs(a *authority, now time.Time) bool {
	return c.mayEverSign(a) &&
		!now.Before(a.rec.ActivateAt) &&
		(a.rec.RetireAt.IsZero() || now.Before(a.rec.RetireAt)) &&
		!now.Before(a.cert.NotBefore) && now.Before(a.notAfter)
}

// pick returns the authority that signs at now: the latest activated one
// (ties: the larger id), or nil.
func (c *CA) pick(auths []*authority, now time.Time) *authority {
	var best *authority
	for _, a := range auths {
		if !c.signs(a, now) {
			continue
		}
		if best == nil || a.rec.ActivateAt.After(best.rec.ActivateAt) ||
			(a.rec.ActivateAt.Equal(best.rec.ActivateAt) && a.rec.ID > best.rec.ID) {
			best = a
		}
	}
	return best
}

// next returns the prepared, not yet active root, if any.
func (c *CA) next(auths []*authority, now time.Time) *authority {
	var best *authority
	for _, a := range auths {
		if c.mayEverSign(a) && a.rec.RetireAt.IsZero() && now.Before(a.rec.ActivateAt) && a.rec.ActivateAt.Before(a.notAfter) &&
			(best == nil || a.rec.ActivateAt.Before(best.rec.ActivateAt)) {
			best = a
		}
	}
	return best
}

// settle marks authorities that no longer sign as retired (published until
// their NotAfter, which bounds every SVID they signed) and deletes records
// that left the bundle more than expiredRetention ago, but only once a later
// event keeps the derived spiffe_sequence from going back. Caller holds mu.
func (c *CA) settle(ctx context.Context, auths []*authority, now time.Time) ([]*authority, error) {
	var errs []error
	cur := c.pick(auths, now)
	out := make([]*authority, 0, len(auths))
	for _, a := range auths {
		if a != cur && cur != nil && a.rec.RetireAt.IsZero() && !now.Before(a.rec.ActivateAt) {
			rec := a.rec
			rec.RetireAt = now.UTC().Truncate(time.Second)
			if cur.rec.ActivateAt.After(rec.ActivateAt) && cur.rec.ActivateAt.Before(rec.RetireAt) {
				rec.RetireAt = cur.rec.ActivateAt
			}
			rec.ExpireAt = a.notAfter.UTC().Truncate(time.Second)
			if err := c.cfg.Store.PutAuthority(ctx, rec); err != nil {
				errs = append(errs, fmt.Errorf("ca: retire authority %s: %w", rec.ID, err))
			} else {
				a = a.withRecord(rec)
				c.log.Info("ca: retired authority", slog.String("authority", rec.ID), slog.Time("published_until", rec.ExpireAt))
			}
		}
		out = append(out, a)
	}
	kept := out[:0]
	for _, a := range out {
		end := a.publishEnd()
		if now.Before(end.Add(expiredRetention)) || !latestEventExcept(out, a, now).After(end) {
			kept = append(kept, a)
			continue
		}
		if err := c.cfg.Store.DeleteAuthority(ctx, a.rec.ID); err != nil {
			errs = append(errs, fmt.Errorf("ca: delete authority %s: %w", a.rec.ID, err))
			kept = append(kept, a)
			continue
		}
		c.log.Info("ca: deleted expired authority", slog.String("authority", a.rec.ID))
	}
	return kept, errors.Join(errs...)
}

// event is the latest instant at which a's presence changed the bundle.
func event(a *authority, now time.Time) time.Time {
	t := a.rec.CreatedAt
	if end := a.publishEnd(); !now.Before(end) && end.After(t) {
		t = end
	}
	return t
}

func latestEvent(auths []*authority, now time.Time) time.Time {
	return latestEventExcept(auths, nil, now)
}

func latestEventExcept(auths []*authority, skip *authority, now time.Time) time.Time {
	var t time.Time
	for _, a := range auths {
		if a != skip {
			if e := event(a, now); e.After(t) {
				t = e
			}
		}
	}
	return t
}

// commit publishes a new snapshot built from auths. Caller holds mu.
func (c *CA) commit(auths []*authority, now time.Time) {
	auths = slices.Clone(auths)
	slices.SortFunc(auths, func(a, b *authority) int {
		if n := a.rec.ActivateAt.Compare(b.rec.ActivateAt); n != 0 {
			return n
		}
		return strings.Compare(a.rec.ID, b.rec.ID)
	})
	c.last = auths
	st := &state{auths: auths}
	// Order: the current signer, then the others newest first.
	order := make([]*authority, 0, len(auths))
	if cur := c.pick(auths, now); cur != nil {
		order = append(order, cur)
	}
	for i := len(auths) - 1; i >= 0; i-- {
		if len(order) == 0 || auths[i] != order[0] {
			order = append(order, auths[i])
		}
	}
	var pemBuf []byte
	for _, a := range order {
		if !now.Before(a.publishEnd()) {
			continue
		}
		if slices.ContainsFunc(st.published, func(x *x509.Certificate) bool { return x.Equal(a.anchor) }) {
			continue
		}
		st.published = append(st.published, a.anchor)
		pemBuf = append(pemBuf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: a.anchor.Raw})...)
	}
	st.pem = pemBuf
	st.bundle = x509bundle.FromX509Authorities(c.cfg.TrustDomain, st.published)
	if t := latestEvent(auths, now); t.Unix() > 0 {
		st.seq = uint64(t.Unix())
	}
	c.st.Store(st)
}

// Refresh re-reads the authorities from the store (another replica may have
// rotated). On error the last good set stays in force, and expired roots
// still leave the bundle.
func (c *CA) Refresh(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	auths, err := c.reload(ctx, now)
	if err != nil {
		c.commit(c.last, now)
		return err
	}
	c.commit(auths, now)
	return nil
}

// Rotate forces a root rotation: the prepared next root, or a new one when
// none is prepared, signs from now on; the old root is retired and stays in
// the bundle until its NotAfter. Relying parties that have not fetched the
// bundle since the new root was created do not trust its SVIDs until they
// do; the scheduled rotation in Run avoids that. With an upstream authority
// Rotate fails: that authority is managed outside Postern.
func (c *CA) Rotate(ctx context.Context) error {
	if c.upstream != "" {
		return errors.New("ca: rotate: the upstream authority is managed outside postern; replace its files and restart")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	auths, err := c.reload(ctx, now)
	if err != nil {
		return fmt.Errorf("ca: rotate: %w", err)
	}
	old := c.pick(auths, now)
	var nextID string
	if nx := c.next(auths, now); nx != nil {
		rec := nx.rec
		rec.ActivateAt = now.UTC().Truncate(time.Second)
		if err := c.cfg.Store.PutAuthority(ctx, rec); err != nil {
			return fmt.Errorf("ca: rotate: activate next root: %w", err)
		}
		i := slices.Index(auths, nx)
		auths[i] = nx.withRecord(rec)
		nextID = rec.ID
	} else {
		root, err := c.newRoot(now, now)
		if err != nil {
			return fmt.Errorf("ca: rotate: %w", err)
		}
		if err := c.cfg.Store.PutAuthority(ctx, root.rec); err != nil {
			return fmt.Errorf("ca: rotate: store root: %w", err)
		}
		auths = append(auths, root)
		nextID = root.rec.ID
	}
	if old != nil && old.rec.ID != nextID {
		rec := old.rec
		rec.RetireAt = now.UTC().Truncate(time.Second)
		rec.ExpireAt = old.notAfter.UTC().Truncate(time.Second)
		if err := c.cfg.Store.PutAuthority(ctx, rec); err != nil {
			return fmt.Errorf("ca: rotate: retire root: %w", err)
		}
		auths[slices.Index(auths, old)] = old.withRecord(rec)
	}
	c.log.Info("ca: rotated", slog.String("authority", nextID))
	auths, err = c.settle(ctx, auths, now)
	c.commit(auths, now)
	if err != nil {
		return fmt.Errorf("ca: rotate: %w", err)
	}
	return nil
}

// maintain applies the rotation schedule once: in self-signed mode it
// prepares the next root at half of the current root's life, to sign from
// two thirds of it (or, if that moment passed, after a sixth of a life or
// half of what is left, whichever is sooner), creates a root at once when
// none can sign, retires and deletes as settle does, and republishes.
func (c *CA) maintain(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	auths, err := c.reload(ctx, now)
	if err != nil {
		c.commit(c.last, now)
		return err
	}
	cur := c.pick(auths, now)
	var errs []error
	switch {
	case c.upstream != "":
		switch {
		case cur == nil:
			c.log.Error("ca: the upstream authority cannot sign (expired?); import a new one")
		case cur.notAfter.Sub(now) < cur.notAfter.Sub(cur.cert.NotBefore)/6:
			c.log.Warn("ca: the upstream authority expires soon; import a new one", slog.String("authority", cur.rec.ID), slog.Time("not_after", cur.notAfter))
		}
	case cur == nil:
		root, err := c.newRoot(now, now)
		if err == nil {
			err = c.cfg.Store.PutAuthority(ctx, root.rec)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("ca: create root: %w", err))
			break
		}
		auths = append(auths, root)
		c.log.Warn("ca: no root could sign; created one active at once", slog.String("authority", root.rec.ID))
	case c.next(auths, now) == nil:
		nb, na := cur.cert.NotBefore, cur.notAfter
		life := na.Sub(nb)
		if now.Before(nb.Add(life / 2)) {
			break
		}
		act := nb.Add(life * 2 / 3)
		if !now.Before(act) {
			act = now.Add(min(life/6, na.Sub(now)/2))
		}
		root, err := c.newRoot(now, act)
		if err == nil {
			err = c.cfg.Store.PutAuthority(ctx, root.rec)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("ca: prepare next root: %w", err))
			break
		}
		auths = append(auths, root)
		c.log.Info("ca: prepared next root", slog.String("authority", root.rec.ID), slog.Time("activate_at", root.rec.ActivateAt))
	}
	auths, err = c.settle(ctx, auths, now)
	c.commit(auths, now)
	return errors.Join(append(errs, err)...)
}

// Run applies the rotation schedule and re-reads the store every
// Config.RefreshInterval until ctx is done. Errors are logged; the last good
// state stays in force.
func (c *CA) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.RefreshInterval)
	defer t.Stop()
	for {
		if err := c.maintain(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("ca: maintenance", slog.Any("error", err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
