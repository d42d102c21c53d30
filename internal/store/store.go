// Package store persists the control plane's state: signing keys, CA
// authorities, revocations, used assertion ids, client secrets and join
// tokens. One Store interface has two implementations: SQLite (embedded, the
// default, no cgo) and PostgreSQL (for replicas that share state). Both apply
// embedded SQL migrations on Open.
//
// The store is never on the hot path of a token exchange: callers hold what
// they need in memory and refresh it from here. Secret material arrives here
// already sealed (see package keys); the store never sees a plaintext key.
package store

import (
	"context"
	"errors"
	"time"
)

// ErrNotFound is returned when a record asked for by key does not exist, or
// (for join tokens) has expired or was already used.
var ErrNotFound = errors.New("store: not found")

// ErrReplay is returned by UseJTI when the (issuer, jti) pair was used before.
var ErrReplay = errors.New("store: identifier already used")

// Store is the persistence the control plane needs. Implementations are safe
// for concurrent use.
type Store interface {
	// SigningKeys returns every stored signing key, oldest first.
	SigningKeys(ctx context.Context) ([]SigningKey, error)
	// PutSigningKey inserts or replaces the key with k.ID.
	PutSigningKey(ctx context.Context, k SigningKey) error
	// DeleteSigningKey removes the key; deleting a missing key is not an error.
	DeleteSigningKey(ctx context.Context, id string) error
	// RetireSigningKey sets the key's RetireAt and ExpireAt only if it is
	// stored and has no ExpireAt yet, and reports whether it did: a key
	// another replica has revoked (deleted) or retired stays as it is.
	RetireSigningKey(ctx context.Context, id string, retireAt, expireAt time.Time) (bool, error)

	// Authorities returns every stored CA authority, oldest first.
	Authorities(ctx context.Context) ([]Authority, error)
	// PutAuthority inserts or replaces the authority with a.ID.
	PutAuthority(ctx context.Context, a Authority) error
	// DeleteAuthority removes the authority; a missing one is not an error.
	DeleteAuthority(ctx context.Context, id string) error

	// Revocations returns the revocations that have not expired at now.
	Revocations(ctx context.Context, now time.Time) ([]Revocation, error)
	// PutRevocation records a revocation; recording one twice is not an error.
	PutRevocation(ctx context.Context, r Revocation) error

	// UseJTI records that issuer used jti, remembered until exp. It returns
	// ErrReplay when the pair was recorded before and has not been purged.
	// It is atomic across replicas sharing the store.
	UseJTI(ctx context.Context, issuer, jti string, exp time.Time) error

	// ClientSecrets returns every stored client secret hash.
	ClientSecrets(ctx context.Context) ([]ClientSecret, error)
	// PutClientSecret inserts or replaces the secret of s.ClientID.
	PutClientSecret(ctx context.Context, s ClientSecret) error
	// DeleteClientSecret removes the secret; a missing one is not an error.
	DeleteClientSecret(ctx context.Context, clientID string) error

	// PutJoinToken stores a new join token; its Hash must be unique.
	PutJoinToken(ctx context.Context, t JoinToken) error
	// ConsumeJoinToken atomically marks the token with hash used and returns
	// it. It returns ErrNotFound when no such token exists, it expired
	// before now, or it was consumed before: a join token works once.
	ConsumeJoinToken(ctx context.Context, hash string, now time.Time) (JoinToken, error)

	// Agents returns every attested node agent, ordered by SPIFFEID.
	Agents(ctx context.Context) ([]Agent, error)
	// Agent returns the agent with id, or ErrNotFound.
	Agent(ctx context.Context, id string) (Agent, error)
	// PutAgent inserts or replaces the agent with a.SPIFFEID: a new
	// attestation supersedes every certificate issued before it.
	PutAgent(ctx context.Context, a Agent) error
	// RenewAgent records that the agent id renewed the SVID with serial
	// old (its current or previous one) into one with serial new, expiring
	// at expiresAt. It reports false, changing nothing, when the agent is
	// not stored or old is neither of its serials. It is atomic across
	// replicas sharing the store.
	RenewAgent(ctx context.Context, id, old, new string, expiresAt time.Time) (bool, error)
	// ConfirmAgent records that the agent id has used its current serial:
	// its previous serial stops being accepted (a copy of an older
	// certificate cannot renew after the newer one was used).
	ConfirmAgent(ctx context.Context, id, serial string) error
	// DeleteAgent removes (evicts) the agent; a missing one is not an error.
	DeleteAgent(ctx context.Context, id string) error

	// Purge deletes revocations, used JTIs, join tokens and agents whose
	// SVIDs expired before now.
	Purge(ctx context.Context, now time.Time) error

	// Close releases the store's resources.
	Close() error
}

// SigningKey is a JWT signing key as stored. The private key is sealed by the
// key-encryption key before it reaches the store.
type SigningKey struct {
	ID         string    // key id, the JWK "kid"
	Algorithm  string    // JOSE algorithm, "ES256" or "EdDSA"
	Public     []byte    // public key, PKIX DER
	Sealed     []byte    // private key, PKCS#8 DER sealed with AES-GCM
	KEKID      string    // id of the key-encryption key that sealed it
	CreatedAt  time.Time // when it was generated (and published)
	ActivateAt time.Time // when it starts signing
	RetireAt   time.Time // when it stopped signing (zero while it is current or next)
	ExpireAt   time.Time // when it leaves the key set (zero until retired)
}

// Authority is a CA signing certificate with its sealed private key.
type Authority struct {
	ID         string    // stable id (hex of the subject key id)
	CertDER    []byte    // the CA certificate
	ChainDER   [][]byte  // for an upstream intermediate: the certificates above it, root last
	Sealed     []byte    // private key, PKCS#8 DER sealed with AES-GCM
	KEKID      string    // id of the key-encryption key that sealed it
	CreatedAt  time.Time // when it was created or imported
	ActivateAt time.Time // when it starts signing
	RetireAt   time.Time // when it stopped signing (zero while current or next)
	ExpireAt   time.Time // when it leaves the bundle (zero until retired)
}

// Revocation revokes one token (Kind "jti") or a whole token family (Kind
// "sid": every token descending from the same first issuance).
type Revocation struct {
	Kind      string    // "jti" or "sid"
	ID        string    // the jti or sid value
	ExpiresAt time.Time // after this no token it covers can be valid
	CreatedAt time.Time
}

// ClientSecret is the keyed hash of a client secret issued by the server.
type ClientSecret struct {
	ClientID  string
	Hash      []byte // HMAC-SHA256 of the secret under the server's hashing key
	CreatedAt time.Time
	ExpiresAt time.Time // zero: does not expire
}

// Agent is a node agent the server attested. Its certificates are
// accepted only while it is stored and only with one of its two newest
// serials, so evicting it, or attesting it again, ends every certificate
// issued to it before.
type Agent struct {
	SPIFFEID   string
	Method     string // the attestation method: join_token or k8s_psat
	AttestedAt time.Time
	Serial     string    // hex serial of its newest X.509-SVID
	PrevSerial string    // the one before, for a renewal whose answer was lost
	ExpiresAt  time.Time // expiry of the newest X.509-SVID
}

// JoinToken is a single-use attestation token, stored as a hash.
type JoinToken struct {
	Hash      string // hex SHA-256 of the token
	SPIFFEID  string // the identity it attests
	CreatedAt time.Time
	ExpiresAt time.Time
	UsedAt    time.Time // zero until consumed
}
