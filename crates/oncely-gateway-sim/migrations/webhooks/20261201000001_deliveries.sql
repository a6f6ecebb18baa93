-- The simulated webhook receiver's ledger: one row per webhook-id, however often it came.
CREATE TABLE deliveries (
    webhook_id  TEXT    PRIMARY KEY,
    fingerprint TEXT    NOT NULL,   -- SHA-256 of the body, to spot an id reused for another event
    event_type  TEXT    NOT NULL,
    data        TEXT    NOT NULL,   -- the event's data, JSON
    received    INTEGER NOT NULL,   -- how many times it arrived with a valid signature
    first_at    INTEGER NOT NULL,   -- UTC milliseconds since the epoch
    last_at     INTEGER NOT NULL
);

-- Requests refused after they arrived: a bad or missing signature, a body that is not an
-- event, an id reused for another event. An audit expects none.
CREATE TABLE rejections (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    webhook_id TEXT,
    reason     TEXT    NOT NULL,
    at         INTEGER NOT NULL
);
