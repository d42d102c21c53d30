package keys

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"

	"postern.dev/postern/internal/store"
)

const (
	defaultRotationPeriod   = 24 * time.Hour
	defaultLeadTime         = time.Hour
	defaultMaxTokenLifetime = 24 * time.Hour
	// clockSkew is added to MaxTokenLifetime before a retired key leaves
	// the key set, for verifiers whose clocks run late.
	clockSkew = 5 * time.Minute
	// refreshEvery is how often Run re-reads the store.
	refreshEvery = 30 * time.Second
)

// Store is the part of store.Store the Manager needs.
type Store interface {
	// SigningKeys returns every stored signing key.
	SigningKeys(ctx context.Context) ([]store.SigningKey, error)
	// PutSigningKey inserts or replaces the key with k.ID.
	PutSigningKey(ctx context.Context, k store.SigningKey) error
	// DeleteSigningKey removes a key; a missing key is not an error.
	DeleteSigningKey(ctx context.Context, id string) error
	// RetireSigningKey sets a stored key's retirement and expiry unless
	// it has an expiry already or is gone (revoked by another replica).
	RetireSigningKey(ctx context.Context, id string, retireAt, expireAt time.Time) (bool, error)
}

var _ Store = store.Store(nil)

// Config configures a Manager. Zero values mean the defaults.
type Config struct {
	// Store holds the sealed keys; required.
	Store Store
	// KEK seals and opens private keys; required.
	KEK *KEK
	// Algorithm of the keys the Manager creates: "ES256" (default) or
	// "EdDSA". Keys already stored keep their algorithm.
	Algorithm string
	// RotationPeriod is how long a key signs; default 24h.
	RotationPeriod time.Duration
	// LeadTime is the least time a key is published before it signs, and the
	// JWKS max-age; default 1h. It may not exceed RotationPeriod.
	LeadTime time.Duration
	// MaxTokenLifetime is the longest lifetime of any token signed with these
	// keys; a retired key stays published this long plus 5 minutes; default
	// 24h.
	MaxTokenLifetime time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives key lifecycle events (kids, never key material); nil
	// discards.
	Logger *slog.Logger
}

// Manager keeps the signing keys: it creates, activates, retires and deletes
// them on schedule and serves the current key and the published key set from
// an immutable state behind an atomic pointer. It is safe for concurrent use.
type Manager struct {
	store     Store
	kek       *KEK
	alg       jose.SignatureAlgorithm
	period    time.Duration
	lead      time.Duration
	retention time.Duration
	now       func() time.Time
	log       *slog.Logger

	state atomic.Pointer[state]

	mu    sync.Mutex         // serializes store reads/writes and guards cache
	cache map[string]*cached // parsed keys by kid
}

// state is one immutable snapshot of the keys.
type state struct {
	current   *Key
	byKID     map[string]jose.JSONWebKey
	set       []jose.JSONWebKey
	jwks      []byte
	nextEvent time.Time
}

// cached is a parsed record: its public half, and its private half once a
// record needed it (current and next keys only).
type cached struct {
	public []byte
	jwk    jose.JSONWebKey
	key    *Key
}

// NewManager loads the keys from cfg.Store and brings the schedule up to date:
// on first start it creates a key that signs at once and a next key that
// activates one RotationPeriod later.
func NewManager(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.Store == nil {
		return nil, errors.New("keys: config has no store")
	}
	if cfg.KEK == nil {
		return nil, errors.New("keys: config has no key-encryption key")
	}
	m := &Manager{
		store:     cfg.Store,
		kek:       cfg.KEK,
		alg:       jose.SignatureAlgorithm(cfg.Algorithm),
		period:    orDefault(cfg.RotationPeriod, defaultRotationPeriod),
		lead:      orDefault(cfg.LeadTime, defaultLeadTime),
		retention: orDefault(cfg.MaxTokenLifetime, defaultMaxTokenLifetime) + clockSkew,
		now:       cfg.Now,
		log:       cfg.Logger,
		cache:     map[string]*cached{},
	}
	switch m.alg {
	case "":
		m.alg = jose.ES256
	case jose.ES256, jose.EdDSA:
	default:
		return nil, fmt.Errorf("keys: unsupported algorithm %q (want ES256 or EdDSA)", cfg.Algorithm)
	}
	if cfg.RotationPeriod < 0 || cfg.LeadTime < 0 || cfg.MaxTokenLifetime < 0 {
		return nil, errors.New("keys: negative duration in config")
	}
	if m.lead > m.period {
		return nil, fmt.Errorf("keys: lead time %v exceeds rotation period %v", m.lead, m.period)
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if err := m.tick(ctx); err != nil {
		return nil, err
	}
	return m, nil
}

// orDefault returns d, or def when d is zero.
func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// Current returns the key to sign with now. It never returns nil and never
// locks. It changes when Run (or Rotate, or Refresh) advances the state, at
// the latest a timer's latency after the next key's activation time: a late
// switch is safe, the old key stays published.
func (m *Manager) Current() *Key { return m.state.Load().current }

// PublicKey returns the published key with the given kid: the current key,
// the next one, or a retired key whose tokens may still be valid. It never
// locks.
func (m *Manager) PublicKey(kid string) (jose.JSONWebKey, bool) {
	k, ok := m.state.Load().byKID[kid]
	return k, ok
}

// KeySet returns the published public keys, each with kid, alg and use "sig",
// the current key first.
func (m *Manager) KeySet() jose.JSONWebKeySet {
	return jose.JSONWebKeySet{Keys: slices.Clone(m.state.Load().set)}
}

// JWKS returns KeySet marshaled as JSON, computed once per change of keys. The
// slice is shared: callers must not modify it.
func (m *Manager) JWKS() []byte { return m.state.Load().jwks }

// MaxAge is the Cache-Control max-age for JWKS responses: the lead time, so a
// verifier's cached key set always holds a key before it signs.
func (m *Manager) MaxAge() time.Duration { return m.lead }

// Rotate rotates now: the next key becomes the current key at once and a new
// next key is created. The previous key stays published until its tokens
// have expired, unless revokeOld is set (a suspected compromise): then a
// freshly generated key signs from now on, and every other key — the
// previous one, the retired ones, and the next one, whose private half every
// replica already held — leaves the key set, and the store, at once (other
// replicas drop them at their next refresh). Keys promoted this way may not
// have been published for LeadTime: verifiers that cached the key set
// earlier refetch on an unknown kid.
func (m *Manager) Rotate(ctx context.Context, revokeOld bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	recs, err := m.store.SigningKeys(ctx)
	if err != nil {
		return fmt.Errorf("keys: rotate: reading signing keys: %w", err)
	}
	now := m.now()
	v := classify(recs, now, m.retention)
	w := &writer{m: m, ctx: ctx}

	var promoted store.SigningKey
	if v.next != nil && !revokeOld {
		promoted = *v.next
		promoted.ActivateAt = now
	} else if _, promoted, err = generate(m.kek, m.alg, now, now); err != nil {
		return err
	}
	if !w.put(promoted, "rotate: storing") {
		return errors.Join(w.errs...)
	}
	if _, next, err := generate(m.kek, m.alg, now, now.Add(max(m.period, m.lead))); err != nil {
		w.errs = append(w.errs, err)
	} else {
		w.put(next, "rotate: storing")
	}
	if old := v.current; old != nil {
		if revokeOld {
			w.revoke(*old, now)
		} else {
			o := *old
			o.RetireAt, o.ExpireAt = now, now.Add(m.retention)
			// Conditional, as in tick: a key another Rotate has revoked
			// meanwhile must not be written back.
			w.retire(o)
		}
	}
	if revokeOld {
		for _, r := range v.retired {
			w.revoke(r.rec, now)
		}
		if v.next != nil {
			w.revoke(*v.next, now)
		}
	}
	for _, r := range v.extra {
		w.del(r.ID)
	}
	w.reload(recs, now)
	m.log.Info("keys: rotated signing keys", "kid", promoted.ID, "revoke_old", revokeOld)
	return errors.Join(w.errs...)
}

// Refresh re-reads the store and adopts what other replicas created, rotated
// or deleted. On error it keeps the last good state and returns the error.
func (m *Manager) Refresh(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	recs, err := m.store.SigningKeys(ctx)
	if err != nil {
		return fmt.Errorf("keys: reading signing keys: %w", err)
	}
	return m.install(recs, m.now())
}

// Run advances the schedule on time until ctx is done: it activates the next
// key when its time comes, creates a new next key, persists retirements,
// deletes expired keys, and re-reads the store every 30 seconds. Failures
// are logged and retried with backoff; the last good state stays in use.
func (m *Manager) Run(ctx context.Context) {
	failures := 0
	for {
		t := time.NewTimer(m.wait(failures))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if err := m.tick(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			m.log.Warn("keys: advancing signing keys failed; keeping the last good keys", "error", err, "failures", failures)
			continue
		}
		failures = 0
	}
}

// wait is how long Run sleeps before its next tick.
func (m *Manager) wait(failures int) time.Duration {
	d := refreshEvery
	if ev := m.state.Load().nextEvent; !ev.IsZero() {
		d = min(d, max(ev.Sub(m.now()), 0))
	}
	if failures > 0 {
		d = max(d, min(time.Second<<min(failures-1, 5), refreshEvery))
	}
	return d
}

// tick re-reads the store and advances the schedule to now: it persists the
// retirement of keys that stopped signing, deletes expired keys and surplus
// next keys, makes sure there is a current and a next key, and installs the
// resulting state. It is idempotent: rerunning it at the same instant writes
// nothing.
func (m *Manager) tick(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	recs, err := m.store.SigningKeys(ctx)
	if err != nil {
		return fmt.Errorf("keys: reading signing keys: %w", err)
	}
	now := m.now()
	v := classify(recs, now, m.retention)
	w := &writer{m: m, ctx: ctx}
	for _, r := range v.retired {
		if r.rec.RetireAt.IsZero() || r.rec.ExpireAt.IsZero() {
			rec := r.rec
			rec.RetireAt, rec.ExpireAt = r.retireAt, r.expireAt
			w.retire(rec)
		}
	}
	for _, r := range slices.Concat(v.expired, v.extra) {
		w.del(r.ID)
	}
	if v.current == nil {
		var rec store.SigningKey
		if v.next != nil {
			rec = *v.next
			rec.ActivateAt = now
			v.next = nil
		} else if _, rec, err = generate(m.kek, m.alg, now, now); err != nil {
			return errors.Join(append(w.errs, err)...)
		}
		if !w.put(rec, "storing") {
			return errors.Join(w.errs...)
		}
		v.current = &rec
	}
	if v.next == nil {
		at := v.current.ActivateAt.Add(m.period)
		if earliest := now.Add(m.lead); at.Before(earliest) {
			at = earliest
		}
		_, rec, err := generate(m.kek, m.alg, now, at)
		if err != nil {
			w.errs = append(w.errs, err)
		} else if w.put(rec, "storing") {
			m.log.Info("keys: published next signing key", "kid", rec.ID, "alg", rec.Algorithm, "activate_at", at)
		}
	}
	if !w.tried {
		if err := m.install(recs, now); err != nil {
			w.errs = append(w.errs, err)
		}
	} else {
		w.reload(recs, now)
	}
	return errors.Join(w.errs...)
}

// writer writes to the store for tick and Rotate, collects errors, and
// remembers the writes that succeeded so that the state follows them even if
// re-reading the store fails.
type writer struct {
	m     *Manager
	ctx   context.Context
	tried bool                         // a write was attempted
	wrote map[string]*store.SigningKey // successful writes; nil value: deleted
	errs  []error
}

func (w *writer) record(id string, rec *store.SigningKey) {
	w.tried = true
	if w.wrote == nil {
		w.wrote = map[string]*store.SigningKey{}
	}
	w.wrote[id] = rec
}

// put stores rec; what says why, for the error.
func (w *writer) put(rec store.SigningKey, what string) bool {
	if err := w.m.store.PutSigningKey(w.ctx, rec); err != nil {
		w.errs = append(w.errs, fmt.Errorf("keys: %s key %s: %w", what, rec.ID, err))
		w.tried = true
		return false
	}
	w.record(rec.ID, &rec)
	return true
}

// retire records a key's retirement, conditionally: what this replica read
// may be older than a revocation by another, which must win.
func (w *writer) retire(rec store.SigningKey) {
	ok, err := w.m.store.RetireSigningKey(w.ctx, rec.ID, rec.RetireAt, rec.ExpireAt)
	w.tried = true
	switch {
	case err != nil:
		w.errs = append(w.errs, fmt.Errorf("keys: retiring key %s: %w", rec.ID, err))
	case ok:
		w.record(rec.ID, &rec)
	}
	// !ok: revoked or retired meanwhile; reload shows what the store holds.
}

// del deletes a key.
func (w *writer) del(id string) {
	if err := w.m.store.DeleteSigningKey(w.ctx, id); err != nil {
		w.errs = append(w.errs, fmt.Errorf("keys: deleting key %s: %w", id, err))
		w.tried = true
		return
	}
	w.record(id, nil)
	w.m.log.Info("keys: deleted signing key", "kid", id)
}

// revoke takes a key out of the key set at once: it marks it expired, so
// that it leaves every replica's key set even if the delete that follows
// fails, then deletes it.
func (w *writer) revoke(rec store.SigningKey, now time.Time) {
	if rec.RetireAt.IsZero() || rec.RetireAt.After(now) {
		rec.RetireAt = now
	}
	rec.ExpireAt = now
	w.put(rec, "revoking")
	w.del(rec.ID)
}

// reload re-reads the store after writes and installs what it holds; if the
// read fails it installs what was read before with the successful writes
// applied.
func (w *writer) reload(before []store.SigningKey, now time.Time) {
	recs, err := w.m.store.SigningKeys(w.ctx)
	if err != nil {
		w.errs = append(w.errs, fmt.Errorf("keys: re-reading signing keys: %w", err))
		recs = w.applied(before)
	}
	if err := w.m.install(recs, now); err != nil {
		w.errs = append(w.errs, err)
	}
}

// applied returns recs with the successful writes applied.
func (w *writer) applied(recs []store.SigningKey) []store.SigningKey {
	out := make([]store.SigningKey, 0, len(recs)+len(w.wrote))
	for _, r := range recs {
		if _, ok := w.wrote[r.ID]; !ok {
			out = append(out, r)
		}
	}
	for _, r := range w.wrote {
		if r != nil {
			out = append(out, *r)
		}
	}
	return out
}

// install builds the state recs mean at now and swaps it in. On error the
// previous state stays. Callers hold m.mu.
func (m *Manager) install(recs []store.SigningKey, now time.Time) error {
	v := classify(recs, now, m.retention)
	if v.current == nil {
		return errors.New("keys: the store holds no signing key that may sign now")
	}
	fresh := make(map[string]*cached, len(recs))
	get := func(rec store.SigningKey, private bool) (*cached, error) {
		if c, ok := fresh[rec.ID]; ok && (c.key != nil || !private) {
			return c, nil
		}
		c, ok := m.cache[rec.ID]
		if !ok || !bytes.Equal(c.public, rec.Public) || (private && c.key == nil) {
			c = &cached{public: rec.Public}
			if private {
				k, err := unseal(m.kek, rec)
				if err != nil {
					return nil, err
				}
				c.key = k
				c.jwk = publicJWK(k.ID, k.Algorithm, k.Public)
			} else {
				// A key that only verifies is published only if its sealed
				// half opens under the KEK and matches it, as for the keys
				// that sign: write access to the store alone must not be
				// enough to add a key every verifier trusts. The private
				// half is dropped at once.
				k, err := unseal(m.kek, rec)
				if err != nil {
					return nil, err
				}
				c.jwk = publicJWK(k.ID, k.Algorithm, k.Public)
			}
		}
		fresh[rec.ID] = c
		return c, nil
	}

	cur, err := get(*v.current, true)
	if err != nil {
		return err
	}
	set := []jose.JSONWebKey{cur.jwk}
	if v.next != nil {
		c, err := get(*v.next, true)
		if err != nil {
			return err
		}
		set = append(set, c.jwk)
	}
	others := slices.Clone(v.extra)
	for _, r := range v.retired {
		others = append(others, r.rec)
	}
	for _, rec := range others {
		c, err := get(rec, false)
		if err != nil {
			m.log.Warn("keys: not publishing an unreadable signing key", "kid", rec.ID, "error", err)
			continue
		}
		set = append(set, c.jwk)
	}
	jwks, err := json.Marshal(jose.JSONWebKeySet{Keys: set})
	if err != nil {
		return fmt.Errorf("keys: marshaling key set: %w", err)
	}
	st := &state{
		current:   cur.key,
		byKID:     make(map[string]jose.JSONWebKey, len(set)),
		set:       set,
		jwks:      jwks,
		nextEvent: v.nextEvent(),
	}
	for _, k := range set {
		st.byKID[k.KeyID] = k
	}
	prev := m.state.Swap(st)
	m.cache = fresh
	if prev == nil || prev.current.ID != cur.key.ID {
		m.log.Info("keys: signing with key", "kid", cur.key.ID, "alg", string(cur.key.Algorithm))
	}
	return nil
}
