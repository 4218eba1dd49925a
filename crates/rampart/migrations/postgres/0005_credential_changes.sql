-- Changes to what an API key grants, in log order, so that every instance can drop the
-- keys it holds in memory for the user concerned (authentication/key_cache.rs) within a
-- poll. Filled by triggers, so every way of deleting a key or changing its owner (API,
-- operator console, a hand-written statement) is logged in the changing transaction.
-- Ids from the sequence can become visible out of order; the reader re-reads a window of
-- recent ids, as for revocations.
CREATE TABLE credential_changes (
    id         BIGSERIAL PRIMARY KEY,
    user_id    BIGINT    NOT NULL,
    changed_at BIGINT    NOT NULL
);
CREATE INDEX credential_changes_changed_at ON credential_changes (changed_at);

CREATE FUNCTION log_api_key_change() RETURNS trigger AS $$
BEGIN
    INSERT INTO credential_changes (user_id, changed_at)
    VALUES (OLD.user_id, extract(epoch FROM now())::BIGINT);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE FUNCTION log_user_credential_change() RETURNS trigger AS $$
BEGIN
    INSERT INTO credential_changes (user_id, changed_at)
    VALUES (OLD.id, extract(epoch FROM now())::BIGINT);
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER api_keys_log_change
AFTER UPDATE OR DELETE ON api_keys
FOR EACH ROW EXECUTE FUNCTION log_api_key_change();

CREATE TRIGGER users_log_credential_change
AFTER UPDATE ON users
FOR EACH ROW WHEN (OLD.role IS DISTINCT FROM NEW.role OR OLD.tier IS DISTINCT FROM NEW.tier
    OR OLD.disabled IS DISTINCT FROM NEW.disabled OR OLD.username IS DISTINCT FROM NEW.username)
EXECUTE FUNCTION log_user_credential_change();

CREATE TRIGGER users_log_delete
AFTER DELETE ON users
FOR EACH ROW EXECUTE FUNCTION log_user_credential_change();
