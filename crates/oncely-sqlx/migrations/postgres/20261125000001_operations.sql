-- oncely's two tables on PostgreSQL: the same shape as on SQLite and MySQL.
-- Times are UTC milliseconds since the Unix epoch (BIGINT); JSON is JSONB.

CREATE TABLE oncely_operations (
    id               BIGSERIAL    PRIMARY KEY,
    tenant           VARCHAR(64)  NOT NULL,
    domain           VARCHAR(64)  NOT NULL,
    idem_key         VARCHAR(255) NOT NULL,
    event_type       VARCHAR(128) NOT NULL,
    state            VARCHAR(16)  NOT NULL
        CHECK (state IN ('ACCEPTED', 'PROCESSING', 'COMPLETED', 'FAILED', 'TIMEOUT')),
    payload          JSONB        NOT NULL,
    fingerprint      CHAR(64)     NOT NULL,
    attempt_count    INTEGER      NOT NULL DEFAULT 0,
    attempt_floor    INTEGER      NOT NULL DEFAULT 0,
    recorded_attempt INTEGER,
    last_attempt_at  BIGINT,
    next_retry_at    BIGINT,
    lease_owner      VARCHAR(128),
    lease_until      BIGINT,
    outcome_data     JSONB,
    error_code       VARCHAR(128),
    error_message    TEXT,
    created_at       BIGINT       NOT NULL,
    updated_at       BIGINT       NOT NULL,
    completed_at     BIGINT,
    -- I1: one key, one operation.
    CONSTRAINT uk_oncely_operations_scope UNIQUE (tenant, domain, idem_key)
);

CREATE INDEX idx_oncely_operations_due ON oncely_operations (domain, state, next_retry_at);
CREATE INDEX idx_oncely_operations_lease ON oncely_operations (domain, state, lease_until);
CREATE INDEX idx_oncely_operations_state ON oncely_operations (state, id);
CREATE INDEX idx_oncely_operations_created_at ON oncely_operations (created_at);

CREATE TABLE oncely_wal (
    seq          BIGSERIAL    PRIMARY KEY,
    operation_id BIGINT       NOT NULL REFERENCES oncely_operations (id) ON DELETE CASCADE,
    kind         VARCHAR(32)  NOT NULL,
    attempt      INTEGER      NOT NULL,
    lease_owner  VARCHAR(128),
    state_after  VARCHAR(16)  NOT NULL,
    detail       JSONB        NOT NULL,
    recorded_at  BIGINT       NOT NULL
);

CREATE INDEX idx_oncely_wal_operation ON oncely_wal (operation_id, attempt, kind);

-- I6: the log is append-only.
CREATE FUNCTION oncely_wal_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'oncely_wal is append-only';
END;
$$;

CREATE TRIGGER trg_oncely_wal_append_only BEFORE UPDATE ON oncely_wal
    FOR EACH ROW EXECUTE FUNCTION oncely_wal_append_only();
