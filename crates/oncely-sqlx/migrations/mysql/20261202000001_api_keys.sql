-- API keys: the tenant and roles of every request come from its key. Only a hash of the
-- secret is kept. Times are UTC milliseconds since the Unix epoch.
CREATE TABLE oncely_api_keys (
    id           VARCHAR(32)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    tenant       VARCHAR(64)  CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    name         VARCHAR(400) NULL,
    roles        VARCHAR(64)  CHARACTER SET ascii NOT NULL,
    secret_hash  CHAR(64)     CHARACTER SET ascii NOT NULL,
    created_at   BIGINT       NOT NULL,
    last_used_at BIGINT       NULL,
    expires_at   BIGINT       NULL,
    revoked_at   BIGINT       NULL
);
