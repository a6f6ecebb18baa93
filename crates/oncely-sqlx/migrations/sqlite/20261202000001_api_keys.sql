-- API keys: the tenant and roles of every request come from its key. Only a hash of the
-- secret is kept. Times are UTC milliseconds since the Unix epoch.
CREATE TABLE oncely_api_keys (
    id           TEXT    PRIMARY KEY,   -- the public part of the token
    tenant       TEXT    NOT NULL,
    name         TEXT,
    roles        TEXT    NOT NULL,      -- comma-separated: submit,read,operate
    secret_hash  TEXT    NOT NULL,      -- SHA-256 of the secret, hex
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    expires_at   INTEGER,
    revoked_at   INTEGER
);
