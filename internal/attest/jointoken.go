package attest

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/store"
)

// ErrAttestation is wrapped by every refusal of this package. Its text is
// the only message to show the caller: it never says whether a join token
// was unknown, used or expired. The full error (the wrapped cause) is for
// logs; it never contains a token.
var ErrAttestation = errors.New("attest: attestation failed")

// Join token lifetimes.
const (
	DefaultJoinTokenTTL = 10 * time.Minute
	MinJoinTokenTTL     = time.Minute
	MaxJoinTokenTTL     = 24 * time.Hour
)

const (
	joinTokenBytes = 32
	// joinTokenLen is the length of joinTokenBytes in unpadded base64url.
	joinTokenLen = (joinTokenBytes*8 + 5) / 6
)

var (
	// errJoinTokenRejected is the one cause for a well-formed token the
	// store does not hand out: the store itself cannot tell unknown, used
	// and expired apart (its lookup is by hash, and consumption is one
	// atomic update).
	errJoinTokenRejected  = errors.New("join token unknown, used or expired")
	errJoinTokenMalformed = errors.New("join token malformed")
)

// refuse wraps cause as an attestation refusal.
func refuse(cause error) error { return fmt.Errorf("%w: %w", ErrAttestation, cause) }

// JoinTokenStore is the part of store.Store that join tokens need.
type JoinTokenStore interface {
	PutJoinToken(ctx context.Context, t store.JoinToken) error
	ConsumeJoinToken(ctx context.Context, hash string, now time.Time) (store.JoinToken, error)
}

// CreateJoinToken creates a single-use join token for id that expires ttl
// after now, stores its hash and returns the token: 32 random bytes in
// unpadded base64url (43 characters). A zero ttl means DefaultJoinTokenTTL;
// otherwise ttl must be between MinJoinTokenTTL and MaxJoinTokenTTL. A zero
// now means time.Now(). The token itself is never stored; show it once.
func CreateJoinToken(ctx context.Context, st JoinTokenStore, id spiffeid.ID, ttl time.Duration, now time.Time) (string, error) {
	if id.IsZero() {
		return "", errors.New("attest: join token needs a SPIFFE ID")
	}
	if ttl == 0 {
		ttl = DefaultJoinTokenTTL
	}
	if ttl < MinJoinTokenTTL || ttl > MaxJoinTokenTTL {
		return "", fmt.Errorf("attest: join token ttl %s is outside %s..%s", ttl, MinJoinTokenTTL, MaxJoinTokenTTL)
	}
	if now.IsZero() {
		now = time.Now()
	}
	b := make([]byte, joinTokenBytes)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("attest: join token: %w", err)
	}
	tok := base64.RawURLEncoding.EncodeToString(b)
	err := st.PutJoinToken(ctx, store.JoinToken{
		Hash:      hashJoinToken(tok),
		SPIFFEID:  id.String(),
		CreatedAt: now,
		ExpiresAt: now.Add(ttl),
	})
	if err != nil {
		return "", fmt.Errorf("attest: store join token: %w", err)
	}
	return tok, nil
}

// ConsumeJoinToken redeems token at now and returns the SPIFFE ID it was
// created for. It works once: the store marks the token used atomically, so
// of concurrent calls with one token exactly one succeeds. A refusal wraps
// ErrAttestation; a store failure does not (it is not a verdict on the
// caller). A zero now means time.Now().
func ConsumeJoinToken(ctx context.Context, st JoinTokenStore, token string, now time.Time) (spiffeid.ID, error) {
	token = strings.TrimSpace(token)
	if len(token) != joinTokenLen {
		return spiffeid.ID{}, refuse(errJoinTokenMalformed)
	}
	if b, err := base64.RawURLEncoding.Strict().DecodeString(token); err != nil || len(b) != joinTokenBytes {
		return spiffeid.ID{}, refuse(errJoinTokenMalformed)
	}
	if now.IsZero() {
		now = time.Now()
	}
	t, err := st.ConsumeJoinToken(ctx, hashJoinToken(token), now)
	if errors.Is(err, store.ErrNotFound) {
		return spiffeid.ID{}, refuse(errJoinTokenRejected)
	}
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("attest: consume join token: %w", err)
	}
	// The store already refuses expired tokens; checking again costs
	// nothing and keeps a lax store implementation from failing open.
	if !now.Before(t.ExpiresAt) {
		return spiffeid.ID{}, refuse(errJoinTokenRejected)
	}
	id, err := spiffeid.FromString(t.SPIFFEID)
	if err != nil {
		return spiffeid.ID{}, refuse(fmt.Errorf("join token names an invalid SPIFFE ID: %w", err))
	}
	return id, nil
}

// hashJoinToken is the form a join token is stored and looked up in: the
// hex SHA-256 of its text. A plain hash suffices for 256 random bits.
func hashJoinToken(tok string) string {
	sum := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(sum[:])
}
