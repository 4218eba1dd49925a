-- The keyed audit chain. Rows are hashed with HMAC-SHA256 under `audit.chain_key` from
-- now on; this table holds what the chain is checked against, each record sealed with
-- the same key (its `mac` is filled when the gateway first opens the database with it):
--   head          the last row's id and hash, rewritten with every append;
--   legacy_start  the first row when the chain was keyed, and the hash it links to;
--   legacy_end    the last row hashed with plain SHA-256 (the switch-over).
CREATE TABLE audit_chain (
    name   TEXT   PRIMARY KEY,
    row_id BIGINT NOT NULL,
    hash   TEXT   NOT NULL,
    mac    TEXT
);

INSERT INTO audit_chain (name, row_id, hash)
SELECT 'legacy_start', id, prev_hash FROM audit_log ORDER BY id LIMIT 1;

INSERT INTO audit_chain (name, row_id, hash)
SELECT 'legacy_end', id, hash FROM audit_log ORDER BY id DESC LIMIT 1;
