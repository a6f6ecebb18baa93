-- Two row versions per operation (the insert, claimed on accept, and the settle) instead of
-- four, and indexes that hold only what each query walks: the claim reads due ACCEPTED rows,
-- the Reaper leased PROCESSING rows, retention ended rows. A row version writes an entry
-- only into the indexes whose predicate it meets, and none of them fills with the dead
-- versions of the others. Counters become BIGINT, like every other integer column.

ALTER TABLE oncely_operations
    ALTER COLUMN attempt_count TYPE BIGINT,
    ALTER COLUMN attempt_floor TYPE BIGINT,
    ALTER COLUMN recorded_attempt TYPE BIGINT;
-- The log's detail is written four times per operation and read by people: JSON (kept as
-- text, checked on the way in) costs less to write than JSONB (parsed into a tree).
ALTER TABLE oncely_wal
    ALTER COLUMN attempt TYPE BIGINT,
    ALTER COLUMN detail TYPE JSON USING detail::json;

DROP INDEX idx_oncely_operations_due;
DROP INDEX idx_oncely_operations_lease;
DROP INDEX idx_oncely_operations_state;
DROP INDEX idx_oncely_operations_created_at;

-- The claim: due ACCEPTED operations of a domain, oldest due first.
CREATE INDEX idx_oncely_operations_due ON oncely_operations (domain, next_retry_at, id)
    WHERE state = 'ACCEPTED';
-- The Reaper and the Finalizer: PROCESSING operations of a domain by lease end.
CREATE INDEX idx_oncely_operations_leased ON oncely_operations (domain, lease_until)
    WHERE state = 'PROCESSING';
-- Retention: ended operations of a domain, oldest first.
CREATE INDEX idx_oncely_operations_ended ON oncely_operations (domain, completed_at, id)
    WHERE completed_at IS NOT NULL;
-- Operators' listings of what went wrong, newest first.
CREATE INDEX idx_oncely_operations_failed ON oncely_operations (state, id)
    WHERE state IN ('FAILED', 'TIMEOUT');

-- Room on each page for the settle's row version, and vacuum and analyze after 2 % of the
-- table changes rather than 20 %: the table is a queue, its live part small and hot.
ALTER TABLE oncely_operations SET (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_insert_scale_factor = 0.02
);
-- The log is append-only: vacuum it for its visibility map, analyze it as it grows.
ALTER TABLE oncely_wal SET (
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05
);

-- The log's foreign key checked every entry with a query of its own, planned once per
-- connection: on a table that was small when that plan was made, a sequential scan per
-- entry, for ever. Retention deletes an operation's log itself, in the same transaction.
ALTER TABLE oncely_wal DROP CONSTRAINT oncely_wal_operation_id_fkey;
