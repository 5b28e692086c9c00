-- The audit trail: append-only and hash-chained. Each row's hash covers its
-- id, every field and the previous row's hash, so `udstil audit verify` finds
-- a row that was edited, inserted or removed. Times are UTC RFC 3339 text.
CREATE TABLE audit (
    id BIGINT PRIMARY KEY,
    at TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    supplier TEXT,
    authority TEXT,
    area TEXT,
    load_id TEXT,
    file TEXT,
    address TEXT,
    key_fingerprint TEXT,
    bytes BIGINT,
    detail TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_at ON audit (at);
CREATE INDEX audit_load ON audit (authority, area, load_id);

-- Where the chain starts after retention removed its oldest rows.
CREATE TABLE audit_anchor (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    last_removed_id BIGINT NOT NULL,
    last_removed_hash TEXT NOT NULL
);

-- Per published load and authority, the persons (CPR numbers as a keyed
-- HMAC-SHA256, never in clear) its files hold.
CREATE TABLE audit_loads (
    load_ref BIGSERIAL PRIMARY KEY,
    authority TEXT NOT NULL,
    area TEXT NOT NULL,
    load_id TEXT NOT NULL,
    complete BOOLEAN NOT NULL DEFAULT FALSE,
    indexed_at TEXT NOT NULL,
    removed_at TEXT,
    UNIQUE (authority, area, load_id)
);

CREATE TABLE audit_persons (
    person BYTEA NOT NULL,
    load_ref BIGINT NOT NULL REFERENCES audit_loads (load_ref) ON DELETE CASCADE,
    PRIMARY KEY (person, load_ref)
);
CREATE INDEX audit_persons_ref ON audit_persons (load_ref);
