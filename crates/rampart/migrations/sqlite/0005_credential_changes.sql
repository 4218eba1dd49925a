-- Changes to what an API key grants, in commit order, so that every instance can drop the
-- keys it holds in memory for the user concerned (authentication/key_cache.rs) within a
-- poll. Filled by triggers, so every way of deleting a key or changing its owner (API,
-- operator console, a hand-written statement) is logged in the changing transaction.
CREATE TABLE credential_changes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    BIGINT  NOT NULL,
    changed_at BIGINT  NOT NULL
);
CREATE INDEX credential_changes_changed_at ON credential_changes (changed_at);

CREATE TRIGGER api_keys_log_delete
AFTER DELETE ON api_keys
BEGIN
    INSERT INTO credential_changes (user_id, changed_at)
    VALUES (OLD.user_id, CAST(strftime('%s', 'now') AS BIGINT));
END;

CREATE TRIGGER api_keys_log_update
AFTER UPDATE ON api_keys
BEGIN
    INSERT INTO credential_changes (user_id, changed_at)
    VALUES (OLD.user_id, CAST(strftime('%s', 'now') AS BIGINT));
END;

CREATE TRIGGER users_log_credential_change
AFTER UPDATE ON users
WHEN OLD.role IS NOT NEW.role OR OLD.tier IS NOT NEW.tier
  OR OLD.disabled IS NOT NEW.disabled OR OLD.username IS NOT NEW.username
BEGIN
    INSERT INTO credential_changes (user_id, changed_at)
    VALUES (OLD.id, CAST(strftime('%s', 'now') AS BIGINT));
END;

CREATE TRIGGER users_log_delete
AFTER DELETE ON users
BEGIN
    INSERT INTO credential_changes (user_id, changed_at)
    VALUES (OLD.id, CAST(strftime('%s', 'now') AS BIGINT));
END;
