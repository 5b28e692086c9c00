-- Notifications raised by a watch (an agreement about to end, a supplier
-- behind) are sent once per key, across restarts and replicas.
CREATE TABLE notify_sent (
    key TEXT PRIMARY KEY,
    at TEXT NOT NULL
);
