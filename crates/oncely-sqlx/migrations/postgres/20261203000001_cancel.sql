-- An operator's cancel: the terminal state CANCELLED, and when a cancel was requested of an
-- operation whose attempt was running (it ends CANCELLED unless that attempt succeeds).
ALTER TABLE oncely_operations DROP CONSTRAINT oncely_operations_state_check;
ALTER TABLE oncely_operations ADD CONSTRAINT oncely_operations_state_check
    CHECK (state IN ('ACCEPTED', 'PROCESSING', 'COMPLETED', 'FAILED', 'TIMEOUT', 'CANCELLED'));
ALTER TABLE oncely_operations ADD COLUMN cancel_requested_at BIGINT;
