package attest

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/store"
)

var (
	testTD = spiffeid.RequireTrustDomainFromString("example.org")
	t0     = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
)

// fakeJoinStore is an in-memory JoinTokenStore whose ConsumeJoinToken is
// atomic, like the real store's single UPDATE ... RETURNING.
type fakeJoinStore struct {
	mu     sync.Mutex
	tokens map[string]store.JoinToken
	fail   error // returned by every call when set
	// lax makes ConsumeJoinToken skip its own expiry check, to show that
	// ConsumeJoinToken does not rely on it.
	lax bool
}

func newFakeJoinStore() *fakeJoinStore {
	return &fakeJoinStore{tokens: make(map[string]store.JoinToken)}
}

func (s *fakeJoinStore) PutJoinToken(_ context.Context, t store.JoinToken) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return s.fail
	}
	if _, ok := s.tokens[t.Hash]; ok {
		return errors.New("duplicate")
	}
	s.tokens[t.Hash] = t
	return nil
}

func (s *fakeJoinStore) ConsumeJoinToken(_ context.Context, hash string, now time.Time) (store.JoinToken, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail != nil {
		return store.JoinToken{}, s.fail
	}
	t, ok := s.tokens[hash]
	if !ok || !t.UsedAt.IsZero() || (!s.lax && !now.Before(t.ExpiresAt)) {
		return store.JoinToken{}, store.ErrNotFound
	}
	t.UsedAt = now
	s.tokens[hash] = t
	return t, nil
}

// only returns the single stored token.
func (s *fakeJoinStore) only() store.JoinToken {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.tokens {
		return t
	}
	return store.JoinToken{}
}
