-- Revocations in commit order, so that every instance can follow them by id instead of by
-- the revoking instance's clock. Filled by a trigger: every way of revoking a family
-- (logout, reuse, password change, admin action) is logged in the same transaction.
CREATE TABLE revocations (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    family_id  TEXT    NOT NULL,
    revoked_at BIGINT  NOT NULL
);
CREATE INDEX revocations_revoked_at ON revocations (revoked_at);

CREATE TRIGGER token_families_log_revocation
AFTER UPDATE OF revoked_at ON token_families
WHEN NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL
BEGIN
    INSERT INTO revocations (family_id, revoked_at) VALUES (NEW.id, NEW.revoked_at);
END;
