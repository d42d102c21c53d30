package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// errDuplicateJoinToken is returned by PutJoinToken when a token with the same
// hash exists. Callers have no reason to branch on it (join tokens are random),
// so it is not exported.
var errDuplicateJoinToken = errors.New("a join token with this hash already exists")

// sqlStore implements Store over database/sql for both SQLite and PostgreSQL.
// The SQL is written once, with $N placeholders, in the subset both engines
// share (ON CONFLICT, RETURNING, NULLS FIRST).
//
// Writes go to w and reads to r. For SQLite w holds a single connection, so
// the process has one writer and never meets SQLITE_BUSY from itself, while r
// holds several read-only connections that WAL mode lets read concurrently.
// For PostgreSQL w and r are the same pool.
type sqlStore struct {
	w *sql.DB
	r *sql.DB
}

var _ Store = (*sqlStore)(nil)

// Close closes both pools.
func (s *sqlStore) Close() error {
	if s.r == s.w {
		if err := s.w.Close(); err != nil {
			return fmt.Errorf("store: close: %w", err)
		}
		return nil
	}
	if err := errors.Join(s.r.Close(), s.w.Close()); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// args collects validated query arguments; the first failure sticks.
type args struct {
	v   []any
	err error
}

func (a *args) text(field, s string, required bool) {
	if a.err == nil {
		a.err = checkText(field, s, required)
		a.v = append(a.v, s)
	}
}

func (a *args) bytes(field string, b []byte) {
	if a.err == nil {
		var v any
		v, a.err = bytesArg(field, b)
		a.v = append(a.v, v)
	}
}

func (a *args) time(field string, t time.Time) {
	if a.err == nil {
		var v any
		v, a.err = timeArg(field, t)
		a.v = append(a.v, v)
	}
}

func (a *args) chain(field string, chain [][]byte) {
	if a.err == nil {
		b, err := encodeChain(chain)
		if err != nil {
			a.err = fmt.Errorf("%s: %w", field, err)
			return
		}
		var v any
		if b != nil {
			v = b
		}
		a.v = append(a.v, v)
	}
}

// exec runs a statement on the writer and returns the number of rows it
// affected.
func (s *sqlStore) exec(ctx context.Context, query string, a *args) (int64, error) {
	if a.err != nil {
		return 0, a.err
	}
	res, err := s.w.ExecContext(ctx, query, a.v...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// ---- signing keys ----

const signingKeyCols = `id, algorithm, public_der, sealed, kek_id, created_at, activate_at, retire_at, expire_at`

// SigningKeys returns every stored signing key, oldest first (by CreatedAt,
// then ID; a zero CreatedAt sorts first).
func (s *sqlStore) SigningKeys(ctx context.Context) ([]SigningKey, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+signingKeyCols+` FROM signing_keys ORDER BY created_at ASC NULLS FIRST, id`)
	if err != nil {
		return nil, fmt.Errorf("store: list signing keys: %w", err)
	}
	defer rows.Close()
	var out []SigningKey
	for rows.Next() {
		var k SigningKey
		var created, activate, retire, expire sql.NullInt64
		if err := rows.Scan(&k.ID, &k.Algorithm, &k.Public, &k.Sealed, &k.KEKID, &created, &activate, &retire, &expire); err != nil {
			return nil, fmt.Errorf("store: list signing keys: %w", err)
		}
		k.Public, k.Sealed = scanBytes(k.Public), scanBytes(k.Sealed)
		k.CreatedAt, k.ActivateAt, k.RetireAt, k.ExpireAt = scanTime(created), scanTime(activate), scanTime(retire), scanTime(expire)
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list signing keys: %w", err)
	}
	return out, nil
}

// PutSigningKey inserts or replaces the key with k.ID. ID and Algorithm are
// required.
func (s *sqlStore) PutSigningKey(ctx context.Context, k SigningKey) error {
	var a args
	a.text("id", k.ID, true)
	a.text("algorithm", k.Algorithm, true)
	a.bytes("public key", k.Public)
	a.bytes("sealed key", k.Sealed)
	a.text("kek id", k.KEKID, false)
	a.time("created at", k.CreatedAt)
	a.time("activate at", k.ActivateAt)
	a.time("retire at", k.RetireAt)
	a.time("expire at", k.ExpireAt)
	_, err := s.exec(ctx, `INSERT INTO signing_keys (`+signingKeyCols+`)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (id) DO UPDATE SET
  algorithm = excluded.algorithm, public_der = excluded.public_der, sealed = excluded.sealed,
  kek_id = excluded.kek_id, created_at = excluded.created_at, activate_at = excluded.activate_at,
  retire_at = excluded.retire_at, expire_at = excluded.expire_at`, &a)
	if err != nil {
		return fmt.Errorf("store: put signing key: %w", err)
	}
	return nil
}

// RetireSigningKey sets retire_at and expire_at of a stored key that has
// no expire_at yet; a conditional UPDATE, so a replica that read the key
// before another revoked it cannot bring it back.
func (s *sqlStore) RetireSigningKey(ctx context.Context, id string, retireAt, expireAt time.Time) (bool, error) {
	var a args
	a.text("id", id, true)
	a.time("retire at", retireAt)
	a.time("expire at", expireAt)
	if retireAt.IsZero() || expireAt.IsZero() {
		return false, errors.New("store: retire signing key: both times are required")
	}
	n, err := s.exec(ctx, `UPDATE signing_keys SET retire_at = $2, expire_at = $3 WHERE id = $1 AND expire_at IS NULL`, &a)
	if err != nil {
		return false, fmt.Errorf("store: retire signing key: %w", err)
	}
	return n == 1, nil
}

// DeleteSigningKey removes the key; deleting a missing key is not an error.
func (s *sqlStore) DeleteSigningKey(ctx context.Context, id string) error {
	var a args
	a.text("id", id, false)
	if _, err := s.exec(ctx, `DELETE FROM signing_keys WHERE id = $1`, &a); err != nil {
		return fmt.Errorf("store: delete signing key: %w", err)
	}
	return nil
}

// ---- authorities ----

const authorityCols = `id, cert_der, chain_der, sealed, kek_id, created_at, activate_at, retire_at, expire_at`

// Authorities returns every stored CA authority, oldest first (by CreatedAt,
// then ID; a zero CreatedAt sorts first).
func (s *sqlStore) Authorities(ctx context.Context) ([]Authority, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+authorityCols+` FROM authorities ORDER BY created_at ASC NULLS FIRST, id`)
	if err != nil {
		return nil, fmt.Errorf("store: list authorities: %w", err)
	}
	defer rows.Close()
	var out []Authority
	for rows.Next() {
		var au Authority
		var chain []byte
		var created, activate, retire, expire sql.NullInt64
		if err := rows.Scan(&au.ID, &au.CertDER, &chain, &au.Sealed, &au.KEKID, &created, &activate, &retire, &expire); err != nil {
			return nil, fmt.Errorf("store: list authorities: %w", err)
		}
		if au.ChainDER, err = decodeChain(chain); err != nil {
			return nil, fmt.Errorf("store: list authorities: %w", err)
		}
		au.CertDER, au.Sealed = scanBytes(au.CertDER), scanBytes(au.Sealed)
		au.CreatedAt, au.ActivateAt, au.RetireAt, au.ExpireAt = scanTime(created), scanTime(activate), scanTime(retire), scanTime(expire)
		out = append(out, au)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list authorities: %w", err)
	}
	return out, nil
}

// PutAuthority inserts or replaces the authority with a.ID. ID is required;
// ChainDER holds at most 16 certificates, none of them empty.
func (s *sqlStore) PutAuthority(ctx context.Context, au Authority) error {
	var a args
	a.text("id", au.ID, true)
	a.bytes("certificate", au.CertDER)
	a.chain("chain", au.ChainDER)
	a.bytes("sealed key", au.Sealed)
	a.text("kek id", au.KEKID, false)
	a.time("created at", au.CreatedAt)
	a.time("activate at", au.ActivateAt)
	a.time("retire at", au.RetireAt)
	a.time("expire at", au.ExpireAt)
	_, err := s.exec(ctx, `INSERT INTO authorities (`+authorityCols+`)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (id) DO UPDATE SET
  cert_der = excluded.cert_der, chain_der = excluded.chain_der, sealed = excluded.sealed,
  kek_id = excluded.kek_id, created_at = excluded.created_at, activate_at = excluded.activate_at,
  retire_at = excluded.retire_at, expire_at = excluded.expire_at`, &a)
	if err != nil {
		return fmt.Errorf("store: put authority: %w", err)
	}
	return nil
}

// DeleteAuthority removes the authority; a missing one is not an error.
func (s *sqlStore) DeleteAuthority(ctx context.Context, id string) error {
	var a args
	a.text("id", id, false)
	if _, err := s.exec(ctx, `DELETE FROM authorities WHERE id = $1`, &a); err != nil {
		return fmt.Errorf("store: delete authority: %w", err)
	}
	return nil
}

// ---- revocations ----

// Revocations returns the revocations that have not expired at now (ExpiresAt
// after now, or zero), ordered by Kind then ID.
func (s *sqlStore) Revocations(ctx context.Context, now time.Time) ([]Revocation, error) {
	n, err := nowArg(now)
	if err != nil {
		return nil, fmt.Errorf("store: list revocations: %w", err)
	}
	rows, err := s.r.QueryContext(ctx, `SELECT kind, id, expires_at, created_at FROM revocations
WHERE expires_at IS NULL OR expires_at > $1 ORDER BY kind, id`, n)
	if err != nil {
		return nil, fmt.Errorf("store: list revocations: %w", err)
	}
	defer rows.Close()
	var out []Revocation
	for rows.Next() {
		var r Revocation
		var expires, created sql.NullInt64
		if err := rows.Scan(&r.Kind, &r.ID, &expires, &created); err != nil {
			return nil, fmt.Errorf("store: list revocations: %w", err)
		}
		r.ExpiresAt, r.CreatedAt = scanTime(expires), scanTime(created)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list revocations: %w", err)
	}
	return out, nil
}

// PutRevocation records a revocation; recording one twice is not an error.
// Kind must be "jti" or "sid". A zero ExpiresAt means the revocation never
// expires (and is never purged). Recording an existing (Kind, ID) again
// extends its expiry to the later of the two and keeps its CreatedAt: a
// revocation is never shortened.
func (s *sqlStore) PutRevocation(ctx context.Context, r Revocation) error {
	var a args
	if r.Kind != "jti" && r.Kind != "sid" {
		a.err = errors.New(`kind is neither "jti" nor "sid"`)
	}
	a.text("kind", r.Kind, true)
	a.text("id", r.ID, true)
	a.time("expires at", r.ExpiresAt)
	a.time("created at", r.CreatedAt)
	_, err := s.exec(ctx, `INSERT INTO revocations (kind, id, expires_at, created_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (kind, id) DO UPDATE SET expires_at = CASE
  WHEN revocations.expires_at IS NULL OR excluded.expires_at IS NULL THEN NULL
  WHEN excluded.expires_at > revocations.expires_at THEN excluded.expires_at
  ELSE revocations.expires_at END`, &a)
	if err != nil {
		return fmt.Errorf("store: put revocation: %w", err)
	}
	return nil
}

// ---- used JTIs ----

// UseJTI records that issuer used jti, remembered until exp, with one
// atomic INSERT ... ON CONFLICT DO NOTHING: of any number of concurrent calls
// for the same pair, across replicas, exactly one returns nil and the others
// ErrReplay.
//
// A pair stays recorded until Purge removes it, even past exp: until then a
// second use is a replay. That never rejects a valid assertion, since an
// assertion is no longer valid after its exp. A zero exp is remembered
// forever. Issuer and jti are required and at most 2048 bytes each.
func (s *sqlStore) UseJTI(ctx context.Context, issuer, jti string, exp time.Time) error {
	var a args
	a.text("issuer", issuer, true)
	a.text("jti", jti, true)
	a.time("exp", exp)
	n, err := s.exec(ctx, `INSERT INTO used_jtis (issuer, jti, expires_at) VALUES ($1, $2, $3)
ON CONFLICT (issuer, jti) DO NOTHING`, &a)
	if err != nil {
		return fmt.Errorf("store: use jti: %w", err)
	}
	if n == 0 {
		return ErrReplay
	}
	return nil
}

// ---- client secrets ----

// ClientSecrets returns every stored client secret hash, ordered by ClientID.
func (s *sqlStore) ClientSecrets(ctx context.Context) ([]ClientSecret, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT client_id, hash, created_at, expires_at FROM client_secrets ORDER BY client_id`)
	if err != nil {
		return nil, fmt.Errorf("store: list client secrets: %w", err)
	}
	defer rows.Close()
	var out []ClientSecret
	for rows.Next() {
		var c ClientSecret
		var created, expires sql.NullInt64
		if err := rows.Scan(&c.ClientID, &c.Hash, &created, &expires); err != nil {
			return nil, fmt.Errorf("store: list client secrets: %w", err)
		}
		c.Hash = scanBytes(c.Hash)
		c.CreatedAt, c.ExpiresAt = scanTime(created), scanTime(expires)
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list client secrets: %w", err)
	}
	return out, nil
}

// PutClientSecret inserts or replaces the secret of s.ClientID. ClientID and
// Hash are required.
func (s *sqlStore) PutClientSecret(ctx context.Context, c ClientSecret) error {
	var a args
	a.text("client id", c.ClientID, true)
	if len(c.Hash) == 0 && a.err == nil {
		a.err = errors.New("hash is empty")
	}
	a.bytes("hash", c.Hash)
	a.time("created at", c.CreatedAt)
	a.time("expires at", c.ExpiresAt)
	_, err := s.exec(ctx, `INSERT INTO client_secrets (client_id, hash, created_at, expires_at) VALUES ($1, $2, $3, $4)
ON CONFLICT (client_id) DO UPDATE SET
  hash = excluded.hash, created_at = excluded.created_at, expires_at = excluded.expires_at`, &a)
	if err != nil {
		return fmt.Errorf("store: put client secret: %w", err)
	}
	return nil
}

// DeleteClientSecret removes the secret; a missing one is not an error.
func (s *sqlStore) DeleteClientSecret(ctx context.Context, clientID string) error {
	var a args
	a.text("client id", clientID, false)
	if _, err := s.exec(ctx, `DELETE FROM client_secrets WHERE client_id = $1`, &a); err != nil {
		return fmt.Errorf("store: delete client secret: %w", err)
	}
	return nil
}

// ---- join tokens ----

// PutJoinToken stores a new join token. Hash, SPIFFEID and ExpiresAt are
// required; a token whose hash is already stored (used or not, until purged)
// is refused.
func (s *sqlStore) PutJoinToken(ctx context.Context, t JoinToken) error {
	var a args
	a.text("hash", t.Hash, true)
	a.text("spiffe id", t.SPIFFEID, true)
	a.time("created at", t.CreatedAt)
	if t.ExpiresAt.IsZero() && a.err == nil {
		a.err = errors.New("expires at is zero")
	}
	a.time("expires at", t.ExpiresAt)
	a.time("used at", t.UsedAt)
	n, err := s.exec(ctx, `INSERT INTO join_tokens (hash, spiffe_id, created_at, expires_at, used_at) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (hash) DO NOTHING`, &a)
	if err == nil && n == 0 {
		err = errDuplicateJoinToken
	}
	if err != nil {
		return fmt.Errorf("store: put join token: %w", err)
	}
	return nil
}

// ConsumeJoinToken atomically marks the token with hash used at now and
// returns it, with one UPDATE ... WHERE used_at IS NULL AND expires_at > now
// RETURNING: of any number of concurrent calls, across replicas, at most one
// succeeds. It returns ErrNotFound when no such token exists, it expired at
// or before now, or it was consumed before. now must not be zero.
func (s *sqlStore) ConsumeJoinToken(ctx context.Context, hash string, now time.Time) (JoinToken, error) {
	n, err := nowArg(now)
	if err != nil {
		return JoinToken{}, fmt.Errorf("store: consume join token: %w", err)
	}
	if checkText("hash", hash, true) != nil {
		return JoinToken{}, ErrNotFound // PutJoinToken never stores such a hash
	}
	var t JoinToken
	var created, expires, used sql.NullInt64
	err = s.w.QueryRowContext(ctx, `UPDATE join_tokens SET used_at = $1
WHERE hash = $2 AND used_at IS NULL AND expires_at > $1
RETURNING hash, spiffe_id, created_at, expires_at, used_at`, n, hash).Scan(&t.Hash, &t.SPIFFEID, &created, &expires, &used)
	if errors.Is(err, sql.ErrNoRows) {
		return JoinToken{}, ErrNotFound
	}
	if err != nil {
		return JoinToken{}, fmt.Errorf("store: consume join token: %w", err)
	}
	t.CreatedAt, t.ExpiresAt, t.UsedAt = scanTime(created), scanTime(expires), scanTime(used)
	return t, nil
}

// ---- agents ----

const agentColumns = `spiffe_id, method, attested_at, serial, prev_serial, expires_at`

func scanAgent(sc interface{ Scan(...any) error }) (Agent, error) {
	var a Agent
	var attested, expires sql.NullInt64
	if err := sc.Scan(&a.SPIFFEID, &a.Method, &attested, &a.Serial, &a.PrevSerial, &expires); err != nil {
		return Agent{}, err
	}
	a.AttestedAt, a.ExpiresAt = scanTime(attested), scanTime(expires)
	return a, nil
}

// Agents returns every attested node agent, ordered by SPIFFEID.
func (s *sqlStore) Agents(ctx context.Context) ([]Agent, error) {
	rows, err := s.r.QueryContext(ctx, `SELECT `+agentColumns+` FROM agents ORDER BY spiffe_id`)
	if err != nil {
		return nil, fmt.Errorf("store: list agents: %w", err)
	}
	defer rows.Close()
	var out []Agent
	for rows.Next() {
		a, err := scanAgent(rows)
		if err != nil {
			return nil, fmt.Errorf("store: list agents: %w", err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: list agents: %w", err)
	}
	return out, nil
}

// Agent returns the agent with id, or ErrNotFound. It reads from the
// writer, so that a renewal just recorded by this replica is seen.
func (s *sqlStore) Agent(ctx context.Context, id string) (Agent, error) {
	if checkText("spiffe id", id, true) != nil {
		return Agent{}, ErrNotFound // PutAgent never stores such an id
	}
	a, err := scanAgent(s.w.QueryRowContext(ctx, `SELECT `+agentColumns+` FROM agents WHERE spiffe_id = $1`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Agent{}, ErrNotFound
	}
	if err != nil {
		return Agent{}, fmt.Errorf("store: get agent: %w", err)
	}
	return a, nil
}

// PutAgent inserts or replaces the agent with a.SPIFFEID. SPIFFEID, Method,
// Serial and ExpiresAt are required.
func (s *sqlStore) PutAgent(ctx context.Context, ag Agent) error {
	var a args
	a.text("spiffe id", ag.SPIFFEID, true)
	a.text("method", ag.Method, true)
	a.time("attested at", ag.AttestedAt)
	a.text("serial", ag.Serial, true)
	a.text("previous serial", ag.PrevSerial, false)
	if ag.ExpiresAt.IsZero() && a.err == nil {
		a.err = errors.New("expires at is zero")
	}
	a.time("expires at", ag.ExpiresAt)
	_, err := s.exec(ctx, `INSERT INTO agents (`+agentColumns+`) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (spiffe_id) DO UPDATE SET
  method = excluded.method, attested_at = excluded.attested_at, serial = excluded.serial,
  prev_serial = excluded.prev_serial, expires_at = excluded.expires_at`, &a)
	if err != nil {
		return fmt.Errorf("store: put agent: %w", err)
	}
	return nil
}

// RenewAgent rotates the agent's serials in one conditional UPDATE: only a
// stored agent, only from one of its two serials.
func (s *sqlStore) RenewAgent(ctx context.Context, id, old, new string, expiresAt time.Time) (bool, error) {
	var a args
	a.text("spiffe id", id, true)
	a.text("old serial", old, true)
	a.text("new serial", new, true)
	if expiresAt.IsZero() && a.err == nil {
		a.err = errors.New("expires at is zero")
	}
	a.time("expires at", expiresAt)
	n, err := s.exec(ctx, `UPDATE agents SET prev_serial = $2, serial = $3, expires_at = $4
WHERE spiffe_id = $1 AND (serial = $2 OR (prev_serial = $2 AND prev_serial <> ''))`, &a)
	if err != nil {
		return false, fmt.Errorf("store: renew agent: %w", err)
	}
	return n == 1, nil
}

// ConfirmAgent clears the agent's previous serial once its current one
// (serial) is in use; a stale serial changes nothing.
func (s *sqlStore) ConfirmAgent(ctx context.Context, id, serial string) error {
	var a args
	a.text("spiffe id", id, true)
	a.text("serial", serial, true)
	if _, err := s.exec(ctx, `UPDATE agents SET prev_serial = '' WHERE spiffe_id = $1 AND serial = $2 AND prev_serial <> ''`, &a); err != nil {
		return fmt.Errorf("store: confirm agent: %w", err)
	}
	return nil
}

// DeleteAgent removes the agent; a missing one is not an error.
func (s *sqlStore) DeleteAgent(ctx context.Context, id string) error {
	var a args
	a.text("spiffe id", id, false)
	if _, err := s.exec(ctx, `DELETE FROM agents WHERE spiffe_id = $1`, &a); err != nil {
		return fmt.Errorf("store: delete agent: %w", err)
	}
	return nil
}

// ---- purge ----

// Purge deletes, in one transaction, the revocations, used JTIs, join
// tokens and agents whose expiry is before now. Records with a zero expiry are kept.
// now must not be zero.
func (s *sqlStore) Purge(ctx context.Context, now time.Time) (err error) {
	n, err := nowArg(now)
	if err != nil {
		return fmt.Errorf("store: purge: %w", err)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: purge: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	for _, q := range []string{
		`DELETE FROM revocations WHERE expires_at < $1`,
		`DELETE FROM used_jtis WHERE expires_at < $1`,
		`DELETE FROM join_tokens WHERE expires_at < $1`,
		`DELETE FROM agents WHERE expires_at < $1`,
	} {
		if _, err := tx.ExecContext(ctx, q, n); err != nil {
			return fmt.Errorf("store: purge: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: purge: %w", err)
	}
	return nil
}
