-- An operator's cancel: the terminal state CANCELLED, and when a cancel was requested of an
-- operation whose attempt was running (it ends CANCELLED unless that attempt succeeds).
--
-- SQLite cannot change a CHECK constraint in place: both tables are rebuilt. The log loses
-- its foreign key, as on PostgreSQL and MySQL (retention deletes an operation's log itself,
-- in the same transaction); dropping it first keeps the old key's ON DELETE CASCADE from
-- emptying the log when the old operations table is dropped. The AUTOINCREMENT counters are
-- carried over, so no id is ever handed out twice.

CREATE TEMP TABLE oncely_sequences AS
    SELECT name, seq FROM sqlite_sequence WHERE name IN ('oncely_operations', 'oncely_wal');

CREATE TABLE oncely_operations_new (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant              TEXT    NOT NULL,
    domain              TEXT    NOT NULL,
    idem_key            TEXT    NOT NULL,
    event_type          TEXT    NOT NULL,
    state               TEXT    NOT NULL CHECK (state IN
        ('ACCEPTED', 'PROCESSING', 'COMPLETED', 'FAILED', 'TIMEOUT', 'CANCELLED')),
    payload             TEXT    NOT NULL,
    fingerprint         TEXT    NOT NULL,
    attempt_count       INTEGER NOT NULL DEFAULT 0,
    attempt_floor       INTEGER NOT NULL DEFAULT 0,
    recorded_attempt    INTEGER,
    last_attempt_at     INTEGER,
    next_retry_at       INTEGER,
    lease_owner         TEXT,
    lease_until         INTEGER,
    outcome_data        TEXT,
    error_code          TEXT,
    error_message       TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    completed_at        INTEGER,
    cancel_requested_at INTEGER,
    CONSTRAINT uk_oncely_operations_scope UNIQUE (tenant, domain, idem_key)
);
INSERT INTO oncely_operations_new (id, tenant, domain, idem_key, event_type, state, payload,
    fingerprint, attempt_count, attempt_floor, recorded_attempt, last_attempt_at,
    next_retry_at, lease_owner, lease_until, outcome_data, error_code, error_message,
    created_at, updated_at, completed_at)
SELECT id, tenant, domain, idem_key, event_type, state, payload, fingerprint, attempt_count,
    attempt_floor, recorded_attempt, last_attempt_at, next_retry_at, lease_owner, lease_until,
    outcome_data, error_code, error_message, created_at, updated_at, completed_at
FROM oncely_operations;

CREATE TABLE oncely_wal_new (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    operation_id INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    attempt      INTEGER NOT NULL,
    lease_owner  TEXT,
    state_after  TEXT    NOT NULL,
    detail       TEXT    NOT NULL,
    recorded_at  INTEGER NOT NULL
);
INSERT INTO oncely_wal_new (seq, operation_id, kind, attempt, lease_owner, state_after, detail,
    recorded_at)
SELECT seq, operation_id, kind, attempt, lease_owner, state_after, detail, recorded_at
FROM oncely_wal;

DROP TABLE oncely_wal;
DROP TABLE oncely_operations;
ALTER TABLE oncely_operations_new RENAME TO oncely_operations;
ALTER TABLE oncely_wal_new RENAME TO oncely_wal;

UPDATE sqlite_sequence
    SET seq = MAX(seq, (SELECT s.seq FROM oncely_sequences s WHERE s.name = sqlite_sequence.name))
    WHERE name IN (SELECT name FROM oncely_sequences);
INSERT INTO sqlite_sequence (name, seq)
    SELECT name, seq FROM oncely_sequences
    WHERE name NOT IN (SELECT name FROM sqlite_sequence);
DROP TABLE oncely_sequences;

CREATE INDEX idx_oncely_operations_due ON oncely_operations (domain, next_retry_at, id)
    WHERE state = 'ACCEPTED';
CREATE INDEX idx_oncely_operations_leased ON oncely_operations (domain, lease_until)
    WHERE state = 'PROCESSING';
CREATE INDEX idx_oncely_operations_ended ON oncely_operations (domain, completed_at, id)
    WHERE completed_at IS NOT NULL;
CREATE INDEX idx_oncely_operations_failed ON oncely_operations (state, id)
    WHERE state IN ('FAILED', 'TIMEOUT');

CREATE INDEX idx_oncely_wal_operation ON oncely_wal (operation_id, attempt, kind);

-- I6: the log is append-only.
CREATE TRIGGER trg_oncely_wal_append_only BEFORE UPDATE ON oncely_wal
BEGIN
    SELECT RAISE(ABORT, 'oncely_wal is append-only');
END;
