-- Users, sessions, lockouts and the audit trail.
CREATE TABLE users (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    username       TEXT    NOT NULL,
    username_lower TEXT    NOT NULL UNIQUE,
    email          TEXT    NOT NULL,
    email_lower    TEXT    NOT NULL UNIQUE,
    password_hash  TEXT    NOT NULL,
    role           TEXT    NOT NULL,
    tier           TEXT    NOT NULL DEFAULT 'standard',
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at     BIGINT  NOT NULL,
    updated_at     BIGINT  NOT NULL
);

-- One row, 'first_admin', claimed by whoever creates the first user: the claim is a
-- primary-key insert, so two concurrent first registrations cannot both win.
CREATE TABLE bootstrap (
    name TEXT PRIMARY KEY
);

CREATE TABLE token_families (
    id         TEXT    PRIMARY KEY,
    user_id    BIGINT  NOT NULL,
    created_at BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL,
    revoked_at BIGINT,
    csrf_hash  TEXT
);
CREATE INDEX token_families_user ON token_families (user_id);
CREATE INDEX token_families_revoked ON token_families (revoked_at);

CREATE TABLE refresh_tokens (
    token_hash TEXT   PRIMARY KEY,
    family_id  TEXT   NOT NULL REFERENCES token_families (id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE login_failures (
    scope        TEXT   NOT NULL,
    key          TEXT   NOT NULL,
    failures     BIGINT NOT NULL,
    window_start BIGINT NOT NULL,
    locked_until BIGINT,
    PRIMARY KEY (scope, key)
);

CREATE TABLE nonces (
    nonce      TEXT   PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX nonces_expiry ON nonces (expires_at);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT  NOT NULL,
    user_id     BIGINT,
    action      TEXT    NOT NULL,
    details     TEXT    NOT NULL,
    ip_address  TEXT,
    user_agent  TEXT,
    request_id  TEXT    NOT NULL,
    pii_salt    TEXT,
    pii_digest  TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL
);
CREATE INDEX audit_log_user_at ON audit_log (user_id, at);
CREATE INDEX audit_log_action_at ON audit_log (action, at);
