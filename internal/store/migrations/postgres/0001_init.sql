-- Postern store schema, version 1 (PostgreSQL).
-- Times are Unix nanoseconds (UTC) in BIGINT columns; NULL is the zero time.
-- Byte fields are BYTEA; NULL is an empty value. Text compares and sorts
-- byte-wise (COLLATE "C"), as in SQLite, whatever the database's locale.

CREATE TABLE signing_keys (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    algorithm   TEXT COLLATE "C" NOT NULL,
    public_der  BYTEA,
    sealed      BYTEA,
    kek_id      TEXT COLLATE "C" NOT NULL,
    created_at  BIGINT,
    activate_at BIGINT,
    retire_at   BIGINT,
    expire_at   BIGINT
);

CREATE TABLE authorities (
    id          TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    cert_der    BYTEA,
    chain_der   BYTEA,
    sealed      BYTEA,
    kek_id      TEXT COLLATE "C" NOT NULL,
    created_at  BIGINT,
    activate_at BIGINT,
    retire_at   BIGINT,
    expire_at   BIGINT
);

CREATE TABLE revocations (
    kind       TEXT COLLATE "C" NOT NULL,
    id         TEXT COLLATE "C" NOT NULL,
    expires_at BIGINT,
    created_at BIGINT,
    PRIMARY KEY (kind, id)
);

CREATE INDEX revocations_expires_at ON revocations (expires_at);

CREATE TABLE used_jtis (
    issuer     TEXT COLLATE "C" NOT NULL,
    jti        TEXT COLLATE "C" NOT NULL,
    expires_at BIGINT,
    PRIMARY KEY (issuer, jti)
);

CREATE INDEX used_jtis_expires_at ON used_jtis (expires_at);

CREATE TABLE client_secrets (
    client_id  TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    hash       BYTEA,
    created_at BIGINT,
    expires_at BIGINT
);

CREATE TABLE join_tokens (
    hash       TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    spiffe_id  TEXT COLLATE "C" NOT NULL,
    created_at BIGINT,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);

CREATE INDEX join_tokens_expires_at ON join_tokens (expires_at);
