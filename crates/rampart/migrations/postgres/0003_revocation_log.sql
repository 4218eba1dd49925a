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
