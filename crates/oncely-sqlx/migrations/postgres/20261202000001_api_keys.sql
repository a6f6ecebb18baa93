-- API keys: the tenant and roles of every request come from its key. Only a hash of the
-- secret is kept. Times are UTC milliseconds since the Unix epoch.
CREATE TABLE oncely_api_keys (
    id           VARCHAR(32)  PRIMARY KEY,   -- the public part of the token
    tenant       VARCHAR(64)  NOT NULL,
    name         VARCHAR(400),
    roles        VARCHAR(64)  NOT NULL,      -- comma-separated: submit,read,operate
    secret_hash  CHAR(64)     NOT NULL,      -- SHA-256 of the secret, hex
    created_at   BIGINT       NOT NULL,
    last_used_at BIGINT,
    expires_at   BIGINT,
    revoked_at   BIGINT
);
