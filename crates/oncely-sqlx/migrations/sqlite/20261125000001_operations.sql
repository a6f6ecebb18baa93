-- oncely's two tables: one row per operation, and the append-only write-ahead log.
--
-- The columns follow the seed's payment_operation (idem_key, state, attempt_count,
-- last_attempt_at, next_retry_at, outcome_data, error_message, created_at, updated_at,
-- completed_at), generalised with tenant, domain, the command payload, its fingerprint and
-- the lease. Times are UTC milliseconds since the Unix epoch (BIGINT on every backend), so
-- comparisons are exact and the schema has one shape on SQLite, PostgreSQL and MySQL.

CREATE TABLE oncely_operations (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant           TEXT    NOT NULL,
    domain           TEXT    NOT NULL,
    idem_key         TEXT    NOT NULL,
    event_type       TEXT    NOT NULL,
    state            TEXT    NOT NULL
        CHECK (state IN ('ACCEPTED', 'PROCESSING', 'COMPLETED', 'FAILED', 'TIMEOUT')),
    payload          TEXT    NOT NULL,           -- the command, JSON
    fingerprint      TEXT    NOT NULL,           -- SHA-256 of the payload, hex
    attempt_count    INTEGER NOT NULL DEFAULT 0, -- attempts started over the whole life
    attempt_floor    INTEGER NOT NULL DEFAULT 0, -- attempts written off by an operator retry
    recorded_attempt INTEGER,                    -- attempt whose outcome is in the log (I3)
    last_attempt_at  INTEGER,
    next_retry_at    INTEGER,                    -- when an ACCEPTED operation is due
    lease_owner      TEXT,                       -- fence (I4), with attempt_count
    lease_until      INTEGER,
    outcome_data     TEXT,                       -- the Ok outcome's data, JSON
    error_code       TEXT,
    error_message    TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    completed_at     INTEGER,
    -- I1: one key, one operation.
    CONSTRAINT uk_oncely_operations_scope UNIQUE (tenant, domain, idem_key)
);

-- The claim: due ACCEPTED operations of a domain, oldest due first.
CREATE INDEX idx_oncely_operations_due ON oncely_operations (domain, state, next_retry_at);
-- The reaper: PROCESSING operations of a domain by lease expiry.
CREATE INDEX idx_oncely_operations_lease ON oncely_operations (domain, state, lease_until);
-- Listings by state, newest first.
CREATE INDEX idx_oncely_operations_state ON oncely_operations (state, id);
CREATE INDEX idx_oncely_operations_created_at ON oncely_operations (created_at);

CREATE TABLE oncely_wal (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    operation_id INTEGER NOT NULL REFERENCES oncely_operations (id) ON DELETE CASCADE,
    kind         TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    lease_owner  TEXT,
    state_after  TEXT    NOT NULL,
    detail       TEXT    NOT NULL,               -- JSON: the outcome, the decision, the reason
    recorded_at  INTEGER NOT NULL
);

CREATE INDEX idx_oncely_wal_operation ON oncely_wal (operation_id, attempt, kind);

-- I6: the log is append-only. (Deleting whole operations with their log, for retention,
-- stays possible.)
CREATE TRIGGER trg_oncely_wal_append_only BEFORE UPDATE ON oncely_wal
BEGIN
    SELECT RAISE(ABORT, 'oncely_wal is append-only');
END;
