-- An operator's cancel: the terminal state CANCELLED, and when a cancel was requested of an
-- operation whose attempt was running (it ends CANCELLED unless that attempt succeeds).
ALTER TABLE oncely_operations
    MODIFY state VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL
        CHECK (state IN ('ACCEPTED', 'PROCESSING', 'COMPLETED', 'FAILED', 'TIMEOUT', 'CANCELLED')),
    ADD COLUMN cancel_requested_at BIGINT NULL;
