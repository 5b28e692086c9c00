-- Driftsstatus: incidents with their updates, and planned maintenance and
-- releases, written by `udstil status` and shown on the status page.
CREATE TABLE status_incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    component TEXT NOT NULL,
    impact TEXT NOT NULL CHECK (impact IN ('degraded', 'outage')),
    title TEXT NOT NULL,
    opened_at TEXT NOT NULL,
    resolved_at TEXT
);
CREATE TABLE status_updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id BIGINT NOT NULL REFERENCES status_incidents (id),
    at TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('investigating', 'identified', 'monitoring', 'resolved')),
    message TEXT NOT NULL
);
CREATE TABLE status_maintenance (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('maintenance', 'release')),
    title TEXT NOT NULL,
    component TEXT,
    starts_at TEXT NOT NULL,
    ends_at TEXT NOT NULL,
    description TEXT NOT NULL
);
