//! [`SessionStore`] in Redis, for fleets of stateless instances (`tokens.store = "redis://…"`).
//!
//! Refresh-token rotation and lockout counting are Lua scripts, so each is one atomic
//! step whatever the number of instances. Keys expire with what they hold.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::store::{Attempt, Family, LockScope, Rotation, SessionStore, StoreError, StoreResult};

/// How long a revoked family stays in the revocation index: longer than any access token.
const KEEP_REVOKED: i64 = 2 * 86_400;

/// Session state in Redis.
#[derive(Clone)]
pub struct RedisSessionStore {
    connection: ConnectionManager,
    prefix: String,
    rotate: redis::Script,
    create: redis::Script,
    revoke_user: redis::Script,
    revoke_family: redis::Script,
    reserve: redis::Script,
    record: redis::Script,
    release: redis::Script,
    set_csrf: redis::Script,
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Marks one family revoked (if it exists and is not already) and appends it to the
/// revocation log, a stream: Redis assigns its ids in execution order, so readers follow
/// the log by id and never by anyone's clock. Entries older than `keep` seconds (by the
/// Redis server's clock) are trimmed as new ones arrive.
const REVOKE_ONE: &str = r"
local function revoke(prefix, family, now, keep)
  local family_key = prefix .. 'fam:' .. family
  if redis.call('EXISTS', family_key) == 0 then return false end
  if redis.call('HSETNX', family_key, 'revoked_at', now) == 0 then return false end
  local time = redis.call('TIME')
  redis.call('XADD', prefix .. 'revocations', 'MINID', '~',
    tostring((tonumber(time[1]) - keep) * 1000), '*', 'family', family)
  return true
end
";

const ROTATE: &str = r"
local prefix = ARGV[3]
local now = tonumber(ARGV[1])
local keep = tonumber(ARGV[4])
local family = redis.call('HGET', KEYS[1], 'family')
if not family then return {'invalid'} end
local family_key = prefix .. 'fam:' .. family
local used = redis.call('HGET', KEYS[1], 'used_at')
if used then
  revoke(prefix, family, now, keep)
  return {'reused', family}
end
if tonumber(redis.call('HGET', KEYS[1], 'expires_at')) <= now then return {'invalid'} end
redis.call('HSET', KEYS[1], 'used_at', now)
if redis.call('HGET', family_key, 'revoked_at') then return {'invalid'} end
local family_expires = tonumber(redis.call('HGET', family_key, 'expires_at') or '0')
if family_expires <= now then return {'invalid'} end
-- The login's end is fixed when it starts: a successor never outlives it.
local expires = math.min(tonumber(ARGV[2]), family_expires)
redis.call('HSET', KEYS[2], 'family', family, 'expires_at', expires)
redis.call('EXPIREAT', KEYS[2], expires)
redis.call('EXPIREAT', KEYS[1], expires)
if ARGV[5] ~= '' then redis.call('HSET', family_key, 'csrf_hash', ARGV[5]) end
return {'rotated', family}
";

/// Starts a family; the user's index of families expires with the longest of them.
const CREATE: &str = r"
local expires = tonumber(ARGV[3])
local keep = tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'user_id', ARGV[1], 'created_at', ARGV[2], 'expires_at', expires,
  'csrf_hash', ARGV[4])
redis.call('EXPIREAT', KEYS[1], expires + keep)
redis.call('SADD', KEYS[2], ARGV[6])
local wanted = expires + keep - tonumber(redis.call('TIME')[1])
local ttl = redis.call('TTL', KEYS[2])
if ttl < wanted then redis.call('EXPIRE', KEYS[2], math.max(wanted, 1)) end
redis.call('HSET', KEYS[3], 'family', ARGV[6], 'expires_at', expires)
redis.call('EXPIREAT', KEYS[3], expires)
";

/// Revokes every family of a user except ARGV[3] in one step, dropping index entries
/// whose family has expired away.
const REVOKE_USER: &str = r"
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local keep_id = ARGV[3]
local keep = tonumber(ARGV[4])
local revoked = {}
for _, family in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', prefix .. 'fam:' .. family) == 0 then
    redis.call('SREM', KEYS[1], family)
  elseif family ~= keep_id and revoke(prefix, family, now, keep) then
    table.insert(revoked, family)
  end
end
return revoked
";

const REVOKE_FAMILY: &str = r"
if revoke(ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])) then return 1 end
return 0
";

/// Loads a lockout counter ([`crate::store::Counter`]): the same fields and transitions as
/// the SQL store's row.
const COUNTER: &str = r"
local function load(key)
  local fields = redis.call('HMGET', key, 'start', 'failures', 'pending', 'locked_until')
  return tonumber(fields[1] or '0'), tonumber(fields[2] or '0'), tonumber(fields[3] or '0'),
    tonumber(fields[4] or '0')
end
";

/// `Counter::reserve`: returns {allowed, seconds}; a refused attempt changes nothing.
const RESERVE: &str = r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local start, failures, pending, locked = load(KEYS[1])
if redis.call('EXISTS', KEYS[1]) == 0 then start = now end
if locked > now then return {0, locked - now} end
if start <= now - window then
  start, failures, pending, locked = now, 0, 0, 0
  redis.call('HDEL', KEYS[1], 'locked_until')
end
redis.call('HSET', KEYS[1], 'start', start, 'failures', failures, 'pending', pending)
redis.call('EXPIRE', KEYS[1], window * 2 + 60)
if failures + pending >= max then
  return {0, math.max(start + window - now, 1)}
end
redis.call('HSET', KEYS[1], 'pending', pending + 1)
return {1, 0}
";

/// `Counter::fail`: returns 1 when this failure started a lockout.
const RECORD: &str = r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local start, failures, pending, locked = load(KEYS[1])
if redis.call('EXISTS', KEYS[1]) == 0 then start = now end
failures = failures + 1
redis.call('HSET', KEYS[1], 'start', start, 'failures', failures,
  'pending', math.max(pending - 1, 0))
local started = 0
if failures >= max and locked <= now then
  redis.call('HSET', KEYS[1], 'locked_until', now + window)
  locked = now + window
  started = 1
end
redis.call('EXPIRE', KEYS[1], window * 2 + 60)
return started
";

/// `Counter::release`: hands back one reservation; ARGV[1] = '1' clears the failures too.
const RELEASE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local _, _, pending = load(KEYS[1])
redis.call('HSET', KEYS[1], 'pending', math.max(pending - 1, 0))
if ARGV[1] == '1' then redis.call('HSET', KEYS[1], 'failures', 0) end
return 0
";

/// Copies the revocation index of earlier versions (a sorted set scored by revocation
/// time) into the log once, oldest first, then drops it: running it again finds nothing.
const MIGRATE_REVOKED: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local since = tonumber(redis.call('TIME')[1]) - tonumber(ARGV[1])
local copied = 0
for _, family in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf')) do
  redis.call('XADD', KEYS[2], '*', 'family', family)
  copied = copied + 1
end
redis.call('DEL', KEYS[1])
return copied
";

/// Sets a live family's CSRF hash: 1 when set.
const SET_CSRF: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HEXISTS', KEYS[1], 'revoked_at') == 1 then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'expires_at') or '0') <= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'csrf_hash', ARGV[1])
return 1
";

/// A stream id (`<ms>-<seq>`) as numbers, for comparing.
fn stream_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn unavailable(error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(error.into())
}

impl RedisSessionStore {
    /// Connects to `url`; keys are written under `prefix` (e.g. `rampart:`).
    ///
    /// # Errors
    /// The URL is malformed or the server cannot be reached.
    pub async fn connect(url: &str, prefix: impl Into<String>) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_with_config(client, config).await?;
        let store = Self {
            connection,
            prefix: prefix.into(),
            rotate: redis::Script::new(&format!("{REVOKE_ONE}{ROTATE}")),
            create: redis::Script::new(CREATE),
            revoke_user: redis::Script::new(&format!("{REVOKE_ONE}{REVOKE_USER}")),
            revoke_family: redis::Script::new(&format!("{REVOKE_ONE}{REVOKE_FAMILY}")),
            reserve: redis::Script::new(&format!("{COUNTER}{RESERVE}")),
            record: redis::Script::new(&format!("{COUNTER}{RECORD}")),
            release: redis::Script::new(&format!("{COUNTER}{RELEASE}")),
            set_csrf: redis::Script::new(SET_CSRF),
        };
        store.migrate_revoked().await?;
        Ok(store)
    }

    /// Earlier versions kept revocations in a sorted set; its recent entries join the log
    /// (once: the set is dropped in the same step) so that no instance forgets them.
    async fn migrate_revoked(&self) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        let copied: i64 = redis::Script::new(MIGRATE_REVOKED)
            .key(self.key(&["revoked"]))
            .key(self.key(&["revocations"]))
            .arg(KEEP_REVOKED)
            .invoke_async(&mut connection)
            .await?;
        if copied > 0 {
            tracing::info!(
                copied,
                "revocations of the earlier index copied into the log"
            );
        }
        Ok(())
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for (index, part) in parts.iter().enumerate() {
            if index > 0 {
                key.push(':');
            }
            key.push_str(part);
        }
        key
    }

    fn family_key(&self, id: &str) -> String {
        self.key(&["fam", id])
    }

    fn family_from(id: &str, fields: &HashMap<String, String>) -> Option<Family> {
        let number = |name: &str| fields.get(name).and_then(|value| value.parse::<i64>().ok());
        Some(Family {
            id: id.to_owned(),
            user_id: number("user_id")?,
            created_at: number("created_at")?,
            expires_at: number("expires_at")?,
            revoked_at: number("revoked_at"),
            csrf_hash: fields.get("csrf_hash").filter(|h| !h.is_empty()).cloned(),
        })
    }
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create_family(&self, family: &Family, token_hash: &str) -> StoreResult<()> {
        let mut connection = self.connection.clone();
        let _: () = self
            .create
            .key(self.family_key(&family.id))
            .key(self.key(&["user", &family.user_id.to_string()]))
            .key(self.key(&["rt", token_hash]))
            .arg(family.user_id)
            .arg(family.created_at)
            .arg(family.expires_at)
            .arg(family.csrf_hash.as_deref().unwrap_or_default())
            .arg(KEEP_REVOKED)
            .arg(&family.id)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn rotate(
        &self,
        token_hash: &str,
        next_hash: &str,
        now: i64,
        expires_at: i64,
        csrf_hash: Option<&str>,
    ) -> StoreResult<Rotation> {
        let mut connection = self.connection.clone();
        let outcome: Vec<String> = self
            .rotate
            .key(self.key(&["rt", token_hash]))
            .key(self.key(&["rt", next_hash]))
            .arg(now)
            .arg(expires_at)
            .arg(&self.prefix)
            .arg(KEEP_REVOKED)
            .arg(csrf_hash.unwrap_or_default())
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let (Some(kind), Some(family_id)) = (outcome.first(), outcome.get(1)) else {
            return Ok(Rotation::Invalid);
        };
        let Some(family) = self.family(family_id).await? else {
            return Ok(Rotation::Invalid);
        };
        Ok(match kind.as_str() {
            "rotated" => Rotation::Rotated(family),
            "reused" => Rotation::Reused(family),
            _ => Rotation::Invalid,
        })
    }

    async fn set_csrf_hash(&self, family_id: &str, csrf_hash: &str, now: i64) -> StoreResult<bool> {
        let mut connection = self.connection.clone();
        // Only a live family: a bare HSET would resurrect an expired one without TTL.
        let set: i64 = self
            .set_csrf
            .key(self.family_key(family_id))
            .arg(csrf_hash)
            .arg(now)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(set == 1)
    }

    async fn family(&self, id: &str) -> StoreResult<Option<Family>> {
        let mut connection = self.connection.clone();
        let fields: HashMap<String, String> = connection
            .hgetall(self.family_key(id))
            .await
            .map_err(unavailable)?;
        Ok(Self::family_from(id, &fields))
    }

    async fn active_families(&self, user_id: i64, now: i64) -> StoreResult<Vec<Family>> {
        let mut connection = self.connection.clone();
        let index = self.key(&["user", &user_id.to_string()]);
        let ids: Vec<String> = connection.smembers(&index).await.map_err(unavailable)?;
        let mut families = Vec::new();
        for id in ids {
            match self.family(&id).await? {
                Some(family) if family.revoked_at.is_none() && family.expires_at > now => {
                    families.push(family);
                }
                Some(_) => {}
                None => {
                    let _: () = connection.srem(&index, &id).await.map_err(unavailable)?;
                }
            }
        }
        families.sort_by_key(|family| family.created_at);
        Ok(families)
    }

    async fn revoke_family(&self, id: &str, now: i64) -> StoreResult<()> {
        let mut connection = self.connection.clone();
        let _: i64 = self
            .revoke_family
            .arg(&self.prefix)
            .arg(id)
            .arg(now)
            .arg(KEEP_REVOKED)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn revoke_user(
        &self,
        user_id: i64,
        keep: Option<&str>,
        now: i64,
    ) -> StoreResult<Vec<String>> {
        let mut connection = self.connection.clone();
        self.revoke_user
            .key(self.key(&["user", &user_id.to_string()]))
            .arg(&self.prefix)
            .arg(now)
            .arg(keep.unwrap_or_default())
            .arg(KEEP_REVOKED)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)
    }

    async fn revocations_after(&self, cursor: &str) -> StoreResult<(Vec<String>, String)> {
        let mut connection = self.connection.clone();
        let start = if cursor.is_empty() {
            "-".to_owned()
        } else {
            format!("({cursor}")
        };
        let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(self.key(&["revocations"]))
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let last = entries
            .last()
            .map_or_else(|| cursor.to_owned(), |(id, _)| id.clone());
        Ok((
            entries
                .into_iter()
                .filter_map(|(_, mut fields)| fields.remove("family"))
                .collect(),
            last,
        ))
    }

    async fn revocation_log_rewound(&self, cursor: &str) -> StoreResult<bool> {
        let Some(cursor) = stream_id(cursor) else {
            return Ok(false);
        };
        let mut connection = self.connection.clone();
        // The newest entry: trimming keeps it (it is the one just added), so only a lost or
        // deleted stream moves it back.
        let last: Vec<(String, HashMap<String, String>)> = redis::cmd("XREVRANGE")
            .arg(self.key(&["revocations"]))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let head = last
            .first()
            .and_then(|(id, _)| stream_id(id))
            .unwrap_or((0, 0));
        Ok(head < cursor)
    }

    async fn delete_user_sessions(&self, user_id: i64) -> StoreResult<()> {
        // Families stay (revoked) until they expire so that every instance's revocation
        // cache sees them; the user's index goes.
        let mut connection = self.connection.clone();
        let _: () = connection
            .del(self.key(&["user", &user_id.to_string()]))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn reserve_attempt(
        &self,
        scope: LockScope,
        key: &str,
        max_failures: u32,
        window: i64,
        now: i64,
    ) -> StoreResult<Attempt> {
        let mut connection = self.connection.clone();
        let (allowed, seconds): (i64, i64) = self
            .reserve
            .key(self.key(&["lock", scope.as_str(), key]))
            .arg(now)
            .arg(window)
            .arg(max_failures)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(if allowed == 1 {
            Attempt::Allowed
        } else {
            Attempt::Locked(seconds.max(1))
        })
    }

    async fn release_attempt(
        &self,
        scope: LockScope,
        key: &str,
        forget_failures: bool,
    ) -> StoreResult<()> {
        let mut connection = self.connection.clone();
        let _: i64 = self
            .release
            .key(self.key(&["lock", scope.as_str(), key]))
            .arg(if forget_failures { "1" } else { "0" })
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn record_failure(
        &self,
        scope: LockScope,
        key: &str,
        max_failures: u32,
        window: i64,
        now: i64,
    ) -> StoreResult<Option<i64>> {
        let mut connection = self.connection.clone();
        let locked: i64 = self
            .record
            .key(self.key(&["lock", scope.as_str(), key]))
            .arg(now)
            .arg(window)
            .arg(max_failures)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok((locked == 1).then_some(window))
    }

    async fn clear_failures(&self, scope: LockScope, key: &str) -> StoreResult<()> {
        let mut connection = self.connection.clone();
        let _: () = connection
            .del(self.key(&["lock", scope.as_str(), key]))
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    async fn claim_nonce(&self, nonce: &str, _now: i64, ttl: i64) -> StoreResult<bool> {
        let mut connection = self.connection.clone();
        let claimed: Option<String> = redis::cmd("SET")
            .arg(self.key(&["nonce", nonce]))
            .arg(1)
            .arg("NX")
            .arg("EX")
            .arg(ttl.max(1))
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(claimed.is_some())
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }
}
