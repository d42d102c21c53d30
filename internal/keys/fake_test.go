package keys

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"postern.dev/postern/internal/store"
)

// fakeStore is an in-memory Store shared by managers playing replicas.
type fakeStore struct {
	mu      sync.Mutex
	keys    map[string]store.SigningKey
	err     error                // returned by every call while set
	delErr  error                // returned by DeleteSigningKey while set
	readErr func() error         // called by SigningKeys; its error is returned
	stale   [][]store.SigningKey // snapshots SigningKeys returns first, oldest first
	writes  int
	deletes int
}

var _ Store = (*fakeStore)(nil)

func newFakeStore() *fakeStore { return &fakeStore{keys: map[string]store.SigningKey{}} }

func (s *fakeStore) SigningKeys(context.Context) ([]store.SigningKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	if s.readErr != nil {
		if err := s.readErr(); err != nil {
			return nil, err
		}
	}
	if len(s.stale) > 0 {
		out := s.stale[0]
		s.stale = s.stale[1:]
		return out, nil
	}
	return s.snapshotLocked(), nil
}

func (s *fakeStore) snapshotLocked() []store.SigningKey {
	out := make([]store.SigningKey, 0, len(s.keys))
	for _, k := range s.keys {
		k.Public, k.Sealed = bytes.Clone(k.Public), bytes.Clone(k.Sealed)
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b store.SigningKey) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return out
}

func (s *fakeStore) PutSigningKey(_ context.Context, k store.SigningKey) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	k.Public, k.Sealed = bytes.Clone(k.Public), bytes.Clone(k.Sealed)
	s.keys[k.ID] = k
	s.writes++
	return nil
}

func (s *fakeStore) RetireSigningKey(_ context.Context, id string, retireAt, expireAt time.Time) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return false, s.err
	}
	k, ok := s.keys[id]
	if !ok || !k.ExpireAt.IsZero() {
		return false, nil
	}
	k.RetireAt, k.ExpireAt = retireAt, expireAt
	s.keys[id] = k
	s.writes++
	return true, nil
}

func (s *fakeStore) DeleteSigningKey(_ context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return s.err
	}
	if s.delErr != nil {
		return s.delErr
	}
	delete(s.keys, id)
	s.deletes++
	return nil
}

func (s *fakeStore) get(id string) (store.SigningKey, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[id]
	return k, ok
}

func (s *fakeStore) set(k store.SigningKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.keys[k.ID] = k
}

func (s *fakeStore) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.keys)
}

func (s *fakeStore) setErr(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

func (s *fakeStore) ops() (writes, deletes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes, s.deletes
}

// fakeClock is a settable clock.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// testConfig is a Config over st and clk with a fresh KEK.
func testConfig(t testing.TB, st Store, clk *fakeClock) Config {
	t.Helper()
	return Config{Store: st, KEK: newTestKEK(t), Now: clk.Now}
}

func newTestManager(t testing.TB, cfg Config) *Manager {
	t.Helper()
	m, err := NewManager(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}
