//! Session state in the database: refresh-token families, the revocation log, lockout
//! counters and request nonces.

use async_trait::async_trait;

use super::{FOR_UPDATE, LOG_HEAD, SqlStore};
use crate::store::sql::FAMILY_COLUMNS;
use crate::store::{Attempt, Counter, Family, LockScope, Rotation, SessionStore, StoreResult};

/// A row of the revocation log.
#[derive(sqlx::FromRow)]
struct Revocation {
    id: i64,
    family_id: String,
}

/// A refresh token as far as reuse detection needs it.
#[derive(sqlx::FromRow)]
struct PresentedToken {
    family_id: String,
    used_at: Option<i64>,
}

impl SqlStore {
    /// Applies one [`Counter`] transition to a key's row, locked for the transaction
    /// (PostgreSQL: the row lock; SQLite: the single connection).
    async fn with_counter<T>(
        &self,
        scope: LockScope,
        key: &str,
        now: i64,
        step: impl FnOnce(&mut Counter) -> T + Send,
    ) -> StoreResult<T> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO login_failures \
             (scope, key, failures, pending, window_start, locked_until) \
             VALUES ($1, $2, 0, 0, $3, NULL) ON CONFLICT (scope, key) DO NOTHING",
        )
        .bind(scope.as_str())
        .bind(key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let mut counter: Counter = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT failures, pending, window_start, locked_until \
             FROM login_failures WHERE scope = $1 AND key = $2{FOR_UPDATE}"
        )))
        .bind(scope.as_str())
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
        let outcome = step(&mut counter);
        sqlx::query(
            "UPDATE login_failures SET failures = $3, pending = $4, window_start = $5, \
             locked_until = $6 WHERE scope = $1 AND key = $2",
        )
        .bind(scope.as_str())
        .bind(key)
        .bind(counter.failures)
        .bind(counter.pending)
        .bind(counter.window_start)
        .bind(counter.locked_until)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Deletes expired refresh tokens, families, nonces and stale lockout rows.
    ///
    /// # Errors
    /// The database fails.
    pub async fn sweep(&self, now: i64, keep_revoked_for: i64) -> StoreResult<()> {
        for (statement, cutoff) in [
            ("DELETE FROM refresh_tokens WHERE expires_at < $1", now),
            (
                "DELETE FROM token_families WHERE expires_at < $1 OR revoked_at < $1",
                now - keep_revoked_for,
            ),
            ("DELETE FROM nonces WHERE expires_at < $1", now),
            (
                "DELETE FROM revocations WHERE revoked_at < $1",
                now - keep_revoked_for,
            ),
            // Long after every instance has followed them.
            (
                "DELETE FROM credential_changes WHERE changed_at < $1",
                now - keep_revoked_for,
            ),
            (
                "DELETE FROM login_failures WHERE \
                 (locked_until IS NULL OR locked_until < $1) AND window_start < $1 - 86400",
                now,
            ),
        ] {
            sqlx::query(statement)
                .bind(cutoff)
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl SessionStore for SqlStore {
    async fn create_family(&self, family: &Family, token_hash: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO token_families (id, user_id, created_at, expires_at, \
             revoked_at, csrf_hash) VALUES ($1, $2, $3, $4, NULL, $5)",
        )
        .bind(&family.id)
        .bind(family.user_id)
        .bind(family.created_at)
        .bind(family.expires_at)
        .bind(family.csrf_hash.as_deref())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, expires_at, used_at) \
             VALUES ($1, $2, $3, NULL)",
        )
        .bind(token_hash)
        .bind(&family.id)
        .bind(family.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
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
        let mut tx = self.pool.begin().await?;
        // The conditional update is the atomic step: of many concurrent presentations of
        // one token, exactly one sees `used_at IS NULL`.
        let claimed: Option<String> = sqlx::query_scalar(
            "UPDATE refresh_tokens SET used_at = $1 \
             WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 \
             RETURNING family_id",
        )
        .bind(now)
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let family_of = |id: String| {
            sqlx::query_as::<_, Family>(sqlx::AssertSqlSafe(format!(
                "SELECT {FAMILY_COLUMNS} FROM token_families WHERE id = $1"
            )))
            .bind(id)
        };
        if let Some(family_id) = claimed {
            let Some(family) = family_of(family_id).fetch_optional(&mut *tx).await? else {
                return Ok(Rotation::Invalid);
            };
            if family.revoked_at.is_some() || family.expires_at <= now {
                tx.commit().await?;
                return Ok(Rotation::Invalid);
            }
            // The login's end is fixed when it starts: a successor never outlives it.
            let expires_at = expires_at.min(family.expires_at);
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, family_id, expires_at, used_at) \
                 VALUES ($1, $2, $3, NULL)",
            )
            .bind(next_hash)
            .bind(&family.id)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
            if let Some(csrf_hash) = csrf_hash {
                sqlx::query("UPDATE token_families SET csrf_hash = $1 WHERE id = $2")
                    .bind(csrf_hash)
                    .bind(&family.id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            return Ok(Rotation::Rotated(Family {
                csrf_hash: csrf_hash.map(str::to_owned).or(family.csrf_hash.clone()),
                ..family
            }));
        }
        let presented: Option<PresentedToken> =
            sqlx::query_as("SELECT family_id, used_at FROM refresh_tokens WHERE token_hash = $1")
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(PresentedToken {
            family_id,
            used_at: Some(_),
        }) = presented
        else {
            return Ok(Rotation::Invalid);
        };
        sqlx::query(
            "UPDATE token_families SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(&family_id)
        .execute(&mut *tx)
        .await?;
        let family = family_of(family_id).fetch_optional(&mut *tx).await?;
        tx.commit().await?;
        Ok(family.map_or(Rotation::Invalid, Rotation::Reused))
    }

    async fn set_csrf_hash(&self, family_id: &str, csrf_hash: &str, now: i64) -> StoreResult<bool> {
        let updated = sqlx::query(
            "UPDATE token_families SET csrf_hash = $1 \
             WHERE id = $2 AND revoked_at IS NULL AND expires_at > $3",
        )
        .bind(csrf_hash)
        .bind(family_id)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    async fn family(&self, id: &str) -> StoreResult<Option<Family>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {FAMILY_COLUMNS} FROM token_families WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn active_families(&self, user_id: i64, now: i64) -> StoreResult<Vec<Family>> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {FAMILY_COLUMNS} FROM token_families WHERE user_id = $1 \
             AND revoked_at IS NULL AND expires_at > $2 ORDER BY created_at"
        )))
        .bind(user_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn revoke_family(&self, id: &str, now: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE token_families SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn revoke_user(
        &self,
        user_id: i64,
        keep: Option<&str>,
        now: i64,
    ) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "UPDATE token_families SET revoked_at = $1 \
             WHERE user_id = $2 AND revoked_at IS NULL AND ($3 IS NULL OR id <> $3) \
             RETURNING id",
        )
        .bind(now)
        .bind(user_id)
        .bind(keep)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn revocations_after(&self, cursor: &str) -> StoreResult<(Vec<String>, String)> {
        // Rows come from a trigger on `token_families.revoked_at` (migration 0003), so
        // every way of revoking is logged in the revoking transaction.
        let after: i64 = cursor.parse().unwrap_or(0);
        let rows: Vec<Revocation> = sqlx::query_as(
            "SELECT id, family_id FROM revocations WHERE id > $1 ORDER BY id LIMIT 10000",
        )
        .bind(after)
        .fetch_all(&self.pool)
        .await?;
        let last = rows.last().map_or(after, |row| row.id);
        Ok((
            rows.into_iter().map(|row| row.family_id).collect(),
            last.to_string(),
        ))
    }

    async fn revocation_log_rewound(&self, cursor: &str) -> StoreResult<bool> {
        let Ok(cursor) = cursor.parse::<i64>() else {
            return Ok(false);
        };
        // The id sequence, not the rows: the sweep deletes old rows, a restore winds the
        // sequence back too.
        let head: Option<i64> = sqlx::query_scalar(LOG_HEAD)
            .fetch_optional(&self.pool)
            .await?;
        Ok(head.unwrap_or(0) < cursor)
    }

    async fn delete_user_sessions(&self, user_id: i64) -> StoreResult<()> {
        // Revoked first so that other instances' caches learn of it, then deleted by the
        // expiry sweep; the tokens themselves go now.
        sqlx::query(
            "DELETE FROM refresh_tokens WHERE family_id IN \
             (SELECT id FROM token_families WHERE user_id = $1)",
        )
        .bind(user_id)
        .execute(&self.pool)
        .await?;
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
        self.with_counter(scope, key, now, |counter| {
            counter.reserve(now, window, max_failures)
        })
        .await
    }

    async fn release_attempt(
        &self,
        scope: LockScope,
        key: &str,
        forget_failures: bool,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE login_failures SET \
               pending = CASE WHEN pending > 0 THEN pending - 1 ELSE 0 END, \
               failures = CASE WHEN $3 THEN 0 ELSE failures END \
             WHERE scope = $1 AND key = $2",
        )
        .bind(scope.as_str())
        .bind(key)
        .bind(forget_failures)
        .execute(&self.pool)
        .await?;
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
        self.with_counter(scope, key, now, |counter| {
            counter.fail(now, window, max_failures)
        })
        .await
    }

    async fn clear_failures(&self, scope: LockScope, key: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM login_failures WHERE scope = $1 AND key = $2")
            .bind(scope.as_str())
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn claim_nonce(&self, nonce: &str, now: i64, ttl: i64) -> StoreResult<bool> {
        let claimed = sqlx::query(
            "INSERT INTO nonces (nonce, expires_at) VALUES ($1, $2) \
             ON CONFLICT (nonce) DO UPDATE SET expires_at = excluded.expires_at \
             WHERE nonces.expires_at <= $3",
        )
        .bind(nonce)
        .bind(now + ttl)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(claimed == 1)
    }

    async fn ping(&self) -> StoreResult<()> {
        crate::store::Store::ping(self).await
    }
}
