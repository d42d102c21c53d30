-- Postern store schema, version 1 (SQLite).
-- Times are Unix nanoseconds (UTC) in INTEGER columns; NULL is the zero time.
-- Byte fields are BLOBs; NULL is an empty value.

CREATE TABLE signing_keys (
    id          TEXT    NOT NULL PRIMARY KEY,
    algorithm   TEXT    NOT NULL,
    public_der  BLOB,
    sealed      BLOB,
    kek_id      TEXT    NOT NULL,
    created_at  INTEGER,
    activate_at INTEGER,
    retire_at   INTEGER,
    expire_at   INTEGER
) STRICT;

CREATE TABLE authorities (
    id          TEXT    NOT NULL PRIMARY KEY,
    cert_der    BLOB,
    chain_der   BLOB,
    sealed      BLOB,
    kek_id      TEXT    NOT NULL,
    created_at  INTEGER,
    activate_at INTEGER,
    retire_at   INTEGER,
    expire_at   INTEGER
) STRICT;

CREATE TABLE revocations (
    kind       TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    expires_at INTEGER,
    created_at INTEGER,
    PRIMARY KEY (kind, id)
) STRICT, WITHOUT ROWID;

CREATE INDEX revocations_expires_at ON revocations (expires_at);

CREATE TABLE used_jtis (
    issuer     TEXT    NOT NULL,
    jti        TEXT    NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (issuer, jti)
) STRICT, WITHOUT ROWID;

CREATE INDEX used_jtis_expires_at ON used_jtis (expires_at);

CREATE TABLE client_secrets (
    client_id  TEXT    NOT NULL PRIMARY KEY,
    hash       BLOB,
    created_at INTEGER,
    expires_at INTEGER
) STRICT;

CREATE TABLE join_tokens (
    hash       TEXT    NOT NULL PRIMARY KEY,
    spiffe_id  TEXT    NOT NULL,
    created_at INTEGER,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
) STRICT;

CREATE INDEX join_tokens_expires_at ON join_tokens (expires_at);
