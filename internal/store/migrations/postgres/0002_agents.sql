-- Node agents the server attested, with the serials of their two newest
-- X.509-SVIDs: evicting an agent, or attesting it again, ends the
-- certificates issued to it before.
CREATE TABLE agents (
    spiffe_id   TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    method      TEXT COLLATE "C" NOT NULL,
    attested_at BIGINT,
    serial      TEXT COLLATE "C" NOT NULL,
    prev_serial TEXT COLLATE "C" NOT NULL DEFAULT '',
    expires_at  BIGINT NOT NULL
);

CREATE INDEX agents_expires_at ON agents (expires_at);
