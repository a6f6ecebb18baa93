-- The simulated gateway's ledger: one row per charge, one charge per idempotency key.
CREATE TABLE charges (
    idem_key       TEXT    PRIMARY KEY,
    fingerprint    TEXT    NOT NULL,   -- SHA-256 of the request body, to spot a reused key
    transaction_id TEXT    NOT NULL UNIQUE,
    approval_code  TEXT    NOT NULL,
    amount         TEXT    NOT NULL,   -- exact decimal
    currency       TEXT    NOT NULL,
    order_id       INTEGER NOT NULL,
    customer_id    INTEGER NOT NULL,
    payment_method TEXT    NOT NULL,
    created_at     INTEGER NOT NULL    -- UTC milliseconds since the epoch
);
