-- Revocations in log order, so that every instance can follow them by id instead of by
-- the revoking instance's clock. Filled by a trigger: every way of revoking a family
-- (logout, reuse, password change, admin action) is logged in the same transaction.
-- Ids from the sequence can become visible out of order (a later id commits first); the
-- reader re-reads a window of recent ids to pick up late commits (tokens.rs).
CREATE TABLE revocations (
    id         BIGSERIAL PRIMARY KEY,
    family_id  TEXT      NOT NULL,
    revoked_at BIGINT    NOT NULL
);
CREATE INDEX revocations_revoked_at ON revocations (revoked_at);

CREATE FUNCTION log_revocation() RETURNS trigger AS $$
BEGIN
    INSERT INTO revocations (family_id, revoked_at) VALUES (NEW.id, NEW.revoked_at);
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER token_families_log_revocation
AFTER UPDATE OF revoked_at ON token_families
FOR EACH ROW WHEN (NEW.revoked_at IS NOT NULL AND OLD.revoked_at IS NULL)
EXECUTE FUNCTION log_revocation();

-- Families revoked before this log existed: logged once, in the order they were revoked,
-- so that instances following the log learn of them too.
INSERT INTO revocations (family_id, revoked_at)
SELECT id, revoked_at FROM token_families WHERE revoked_at IS NOT NULL
ORDER BY revoked_at, id;

-- Lockout counters: attempts in flight apart from confirmed failures, so that a success
-- hands back only its own attempt. Account counters are now keyed on a digest of the
-- username; the old rows (keyed on the name itself) are dropped.
ALTER TABLE login_failures ADD COLUMN pending BIGINT NOT NULL DEFAULT 0;
DELETE FROM login_failures WHERE scope = 'account';
