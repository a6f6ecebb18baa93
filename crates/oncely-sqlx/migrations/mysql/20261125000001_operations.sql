-- oncely's two tables on MySQL / MariaDB (>= 10.6 for SKIP LOCKED): the same shape as on
-- SQLite and PostgreSQL. Times are UTC milliseconds since the Unix epoch (BIGINT). Names are
-- ascii_bin: keys are case-sensitive, as on the other backends.

CREATE TABLE oncely_operations (
    id               BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    tenant           VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    domain           VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    idem_key         VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    event_type       VARCHAR(128) NOT NULL,
    state            VARCHAR(16)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL
        CHECK (state IN ('ACCEPTED', 'PROCESSING', 'COMPLETED', 'FAILED', 'TIMEOUT')),
    payload          JSON         NOT NULL,
    fingerprint      CHAR(64)     CHARACTER SET ascii NOT NULL,
    attempt_count    BIGINT       NOT NULL DEFAULT 0,
    attempt_floor    BIGINT       NOT NULL DEFAULT 0,
    recorded_attempt BIGINT       NULL,
    last_attempt_at  BIGINT       NULL,
    next_retry_at    BIGINT       NULL,
    lease_owner      VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    lease_until      BIGINT       NULL,
    outcome_data     JSON         NULL,
    error_code       VARCHAR(128) NULL,
    error_message    TEXT         NULL,
    created_at       BIGINT       NOT NULL,
    updated_at       BIGINT       NOT NULL,
    completed_at     BIGINT       NULL,
    -- I1: one key, one operation.
    CONSTRAINT uk_oncely_operations_scope UNIQUE (tenant, domain, idem_key),
    INDEX idx_oncely_operations_due (domain, state, next_retry_at),
    INDEX idx_oncely_operations_lease (domain, state, lease_until),
    INDEX idx_oncely_operations_state (state, id),
    INDEX idx_oncely_operations_created_at (created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE oncely_wal (
    seq          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    operation_id BIGINT       NOT NULL,
    kind         VARCHAR(32)  CHARACTER SET ascii NOT NULL,
    attempt      BIGINT       NOT NULL,
    lease_owner  VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL,
    state_after  VARCHAR(16)  CHARACTER SET ascii NOT NULL,
    detail       JSON         NOT NULL,
    recorded_at  BIGINT       NOT NULL,
    INDEX idx_oncely_wal_operation (operation_id, attempt, kind),
    CONSTRAINT fk_oncely_wal_operation FOREIGN KEY (operation_id)
        REFERENCES oncely_operations (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

-- I6: the log is append-only.
CREATE TRIGGER trg_oncely_wal_append_only BEFORE UPDATE ON oncely_wal
    FOR EACH ROW SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'oncely_wal is append-only';
