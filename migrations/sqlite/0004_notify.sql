-- The notification outbox: one row per recipient and event, kept until the
-- recipient answers, so nothing is lost while it is down or across a
-- restart. Times are UTC RFC 3339 text with milliseconds (they sort as text).
CREATE TABLE notify_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL,
    event TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    delivered_at TEXT,
    last_error TEXT
);
CREATE INDEX notify_outbox_due ON notify_outbox (delivered_at, next_attempt_at);
