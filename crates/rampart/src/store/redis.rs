//! [`SessionStore`] in Redis, for fleets of stateless instances (`tokens.store = "redis://…"`).
//!
//! Refresh-token rotation and lockout counting are Lua scripts, so each is one atomic
//! step whatever the number of instances. Keys expire with what they hold.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::store::{Family, LockScope, Rotation, SessionStore, StoreError, StoreResult};

/// How long a revoked family stays in the revocation index: longer than any access token.
const KEEP_REVOKED: i64 = 2 * 86_400;

/// Session state in Redis.
#[derive(Clone)]
pub struct RedisSessionStore {
    connection: ConnectionManager,
    prefix: String,
    rotate: redis::Script,
    fail: redis::Script,
}

impl std::fmt::Debug for RedisSessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSessionStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

const ROTATE: &str = r"
local prefix = ARGV[3]
local now = tonumber(ARGV[1])
local family = redis.call('HGET', KEYS[1], 'family')
if not family then return {'invalid'} end
local family_key = prefix .. 'fam:' .. family
local used = redis.call('HGET', KEYS[1], 'used_at')
if used then
  if not redis.call('HGET', family_key, 'revoked_at') then
    redis.call('HSET', family_key, 'revoked_at', now)
    redis.call('ZADD', prefix .. 'revoked', now, family)
  end
  return {'reused', family}
end
if tonumber(redis.call('HGET', KEYS[1], 'expires_at')) <= now then return {'invalid'} end
redis.call('HSET', KEYS[1], 'used_at', now)
if redis.call('HGET', family_key, 'revoked_at') then return {'invalid'} end
local expires = tonumber(ARGV[2])
redis.call('HSET', KEYS[2], 'family', family, 'expires_at', expires)
redis.call('EXPIREAT', KEYS[2], expires)
redis.call('EXPIREAT', KEYS[1], expires)
redis.call('HSET', family_key, 'expires_at', expires)
redis.call('EXPIREAT', family_key, expires + tonumber(ARGV[4]))
return {'rotated', family}
";

const FAIL: &str = r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local max = tonumber(ARGV[3])
local start = tonumber(redis.call('HGET', KEYS[1], 'start') or '0')
local failures = tonumber(redis.call('HGET', KEYS[1], 'failures') or '0')
if start <= now - window then
  failures = 0
  start = now
end
failures = failures + 1
redis.call('HSET', KEYS[1], 'start', start, 'failures', failures)
local locked = 0
if failures >= max then
  redis.call('HSET', KEYS[1], 'locked_until', now + window)
  locked = 1
end
redis.call('EXPIRE', KEYS[1], window * 2 + 60)
return locked
";

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
        Ok(Self {
            connection,
            prefix: prefix.into(),
            rotate: redis::Script::new(ROTATE),
            fail: redis::Script::new(FAIL),
        })
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

    async fn mark_revoked(&self, id: &str, now: i64) -> StoreResult<bool> {
        let mut connection = self.connection.clone();
        let family_key = self.family_key(id);
        let fresh: bool = connection
            .hset_nx(&family_key, "revoked_at", now)
            .await
            .map_err(unavailable)?;
        if fresh {
            let _: () = connection
                .zadd(self.key(&["revoked"]), id, now)
                .await
                .map_err(unavailable)?;
        }
        Ok(fresh)
    }
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn create_family(&self, family: &Family, token_hash: &str) -> StoreResult<()> {
        let mut connection = self.connection.clone();
        let family_key = self.family_key(&family.id);
        let token_key = self.key(&["rt", token_hash]);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset_multiple(
                &family_key,
                &[
                    ("user_id", family.user_id.to_string()),
                    ("created_at", family.created_at.to_string()),
                    ("expires_at", family.expires_at.to_string()),
                    ("csrf_hash", family.csrf_hash.clone().unwrap_or_default()),
                ],
            )
            .expire_at(&family_key, family.expires_at + KEEP_REVOKED)
            .sadd(self.key(&["user", &family.user_id.to_string()]), &family.id)
            .hset_multiple(
                &token_key,
                &[
                    ("family", family.id.clone()),
                    ("expires_at", family.expires_at.to_string()),
                ],
            )
            .expire_at(&token_key, family.expires_at);
        let _: () = pipe
            .query_async(&mut connection)
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
        let ids: Vec<String> = connection
            .smembers(self.key(&["user", &user_id.to_string()]))
            .await
            .map_err(unavailable)?;
        let mut families = Vec::new();
        for id in ids {
            if let Some(family) = self.family(&id).await?
                && family.revoked_at.is_none()
                && family.expires_at > now
            {
                families.push(family);
            }
        }
        families.sort_by_key(|family| family.created_at);
        Ok(families)
    }

    async fn revoke_family(&self, id: &str, now: i64) -> StoreResult<()> {
        if self.family(id).await?.is_some() {
            self.mark_revoked(id, now).await?;
        }
        Ok(())
    }

    async fn revoke_user(
        &self,
        user_id: i64,
        keep: Option<&str>,
        now: i64,
    ) -> StoreResult<Vec<String>> {
        let mut connection = self.connection.clone();
        let ids: Vec<String> = connection
            .smembers(self.key(&["user", &user_id.to_string()]))
            .await
            .map_err(unavailable)?;
        let mut revoked = Vec::new();
        for id in ids {
            if Some(id.as_str()) == keep {
                continue;
            }
            if self.family(&id).await?.is_some() && self.mark_revoked(&id, now).await? {
                revoked.push(id);
            }
        }
        Ok(revoked)
    }

    async fn revoked_since(&self, since: i64) -> StoreResult<Vec<(String, i64)>> {
        let mut connection = self.connection.clone();
        let key = self.key(&["revoked"]);
        let _: () = connection
            .zrembyscore(&key, "-inf", since - KEEP_REVOKED)
            .await
            .map_err(unavailable)?;
        let entries: Vec<(String, f64)> = connection
            .zrangebyscore_withscores(&key, since, "+inf")
            .await
            .map_err(unavailable)?;
        #[allow(clippy::cast_possible_truncation)]
        Ok(entries
            .into_iter()
            .map(|(id, at)| (id, at as i64))
            .collect())
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
            .fail
            .key(self.key(&["lock", scope.as_str(), key]))
            .arg(now)
            .arg(window)
            .arg(max_failures)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok((locked == 1).then_some(window))
    }

    async fn lockout(&self, scope: LockScope, key: &str, now: i64) -> StoreResult<Option<i64>> {
        let mut connection = self.connection.clone();
        let until: Option<i64> = connection
            .hget(self.key(&["lock", scope.as_str(), key]), "locked_until")
            .await
            .map_err(unavailable)?;
        Ok(until.filter(|until| *until > now).map(|until| until - now))
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
