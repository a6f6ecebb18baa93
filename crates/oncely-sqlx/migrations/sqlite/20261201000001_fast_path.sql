-- Indexes that hold only what each query walks: the claim reads due ACCEPTED rows, the
-- Reaper leased PROCESSING rows, retention ended rows. A row version writes an entry only
-- into the indexes whose predicate it meets.

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
