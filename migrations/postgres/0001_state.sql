-- The platform's own state. The published tree is the truth for what was
-- published; these tables record runs, failures and watermarks for operators.
CREATE TABLE loads (
    id BIGSERIAL PRIMARY KEY,
    area TEXT NOT NULL,
    version INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('full', 'delta')),
    trigger TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'published', 'failed', 'interrupted')),
    load_id TEXT,
    authorities INTEGER,
    watermark_from BIGINT,
    watermark_to BIGINT,
    rows_read BIGINT,
    rows_written BIGINT,
    bytes BIGINT,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    error TEXT
);
CREATE INDEX loads_area ON loads (area, id);

CREATE TABLE watermarks (
    area TEXT NOT NULL,
    version INTEGER NOT NULL,
    watermark BIGINT NOT NULL,
    load_id TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (area, version)
);
