-- Node agents the server attested, with the serials of their two newest
-- X.509-SVIDs: evicting an agent, or attesting it again, ends the
-- certificates issued to it before.
CREATE TABLE agents (
    spiffe_id   TEXT    NOT NULL PRIMARY KEY,
    method      TEXT    NOT NULL,
    attested_at INTEGER,
    serial      TEXT    NOT NULL,
    prev_serial TEXT    NOT NULL DEFAULT '',
    expires_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX agents_expires_at ON agents (expires_at);
