-- API keys for programs and users' trading accounts (broker connections).
--
-- Secrets are never stored in the clear: an API key only as the SHA-256 of the key (it is
-- 256 bits of randomness, so a plain hash is enough), its signing secret and a broker's
-- API key sealed by the key ring (`v1:<key id>:<base64url>`), bound to their row through
-- `prefix` and `uid`, which are chosen before the row is written.
CREATE TABLE api_keys (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     BIGINT  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name        TEXT    NOT NULL,
    prefix      TEXT    NOT NULL UNIQUE,
    key_hash    TEXT    NOT NULL,
    secret      TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    expires_at  BIGINT
);
CREATE INDEX api_keys_user ON api_keys (user_id);

CREATE TABLE trading_accounts (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    uid            TEXT    NOT NULL UNIQUE,
    user_id        BIGINT  NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name           TEXT    NOT NULL,
    broker         TEXT    NOT NULL,
    host_url       TEXT    NOT NULL,
    api_key        TEXT    NOT NULL,
    api_key_masked TEXT    NOT NULL,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL
);
CREATE INDEX trading_accounts_user ON trading_accounts (user_id);
