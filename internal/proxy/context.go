package proxy

import (
	"crypto/rand"
	"encoding/base64"
	"sync"
	"time"
)

// HeaderContext is the header that carries the opaque user context from an
// inbound request, through the application, to its outbound calls: the
// application forwards it and never sees a token.
const HeaderContext = "X-Postern-Context"

// ContextStore maps opaque context ids, handed to the application inbound,
// back to the verified token they stand for, until the token expires. It is
// bounded: when full, expired entries go first, then random ones. It is
// safe for concurrent use.
type ContextStore struct {
	mu      sync.Mutex
	max     int
	now     func() time.Time
	entries map[string]contextEntry
}

type contextEntry struct {
	token string
	exp   time.Time
}

// NewContextStore returns a store holding at most max contexts (default
// 100,000) and reading time from now (default time.Now).
func NewContextStore(max int, now func() time.Time) *ContextStore {
	if max <= 0 {
		max = 100_000
	}
	if now == nil {
		now = time.Now
	}
	return &ContextStore{max: max, now: now, entries: map[string]contextEntry{}}
}

// Put records token until exp and returns a new opaque id for it: 128
// random bits, base64url, unguessable, so a context id is only as good as
// having been handed it.
func (s *ContextStore) Put(token string, exp time.Time) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	id := base64.RawURLEncoding.EncodeToString(b[:])
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.entries) >= s.max {
		s.evictLocked()
	}
	s.entries[id] = contextEntry{token: token, exp: exp}
	return id
}

// Get returns the token for id while it has not expired.
func (s *ContextStore) Get(id string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.entries[id]
	if !ok {
		return "", false
	}
	if !s.now().Before(e.exp) {
		delete(s.entries, id)
		return "", false
	}
	return e.token, true
}

// Len returns the number of contexts held.
func (s *ContextStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.entries)
}

// evictLocked drops expired entries and, if that frees nothing, a tenth
// of the entries chosen at random (map order): an evicted context only costs
// its caller a 401 and a retry with the token itself.
func (s *ContextStore) evictLocked() {
	now := s.now()
	for id, e := range s.entries {
		if !now.Before(e.exp) {
			delete(s.entries, id)
		}
	}
	for id := range s.entries {
		if len(s.entries) < s.max-s.max/10 {
			return
		}
		delete(s.entries, id)
	}
}
