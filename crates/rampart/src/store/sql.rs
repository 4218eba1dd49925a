//! [`Store`] and [`SessionStore`] over SQL, for SQLite and PostgreSQL.
//!
//! Both backends run the same statements (SQLite accepts PostgreSQL's `$N` placeholders,
//! `RETURNING` and `ON CONFLICT`); the few differences — row locks and the lock that
//! serialises the audit chain — are constants per backend. Each backend has its own
//! migration folder.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use std::sync::Arc;

use crate::chain::{self as audit, AuditRecord, ChainKey, GENESIS, NewAuditEntry};
use crate::store::{
    AccountPatch, ApiKey, Attempt, AuditFilter, AuditItem, ChainRecord, Counter, Family, LockScope,
    NewUser, Rotation, SealedKind, SealedValue, SessionStore, Store, StoreError, StoreResult,
    TradingAccount, User, UserPatch,
};

/// The embedded store: one SQLite file (or memory), one connection.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    audit_key: Option<Arc<ChainKey>>,
}

/// The production store: a PostgreSQL connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    audit_key: Option<Arc<ChainKey>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` and applies migrations.
    ///
    /// # Errors
    /// The file cannot be opened or a migration fails.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        if let Some(parent) = options.get_filename().parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        // One connection: SQLite serialises writers anyway, and one connection makes every
        // transaction (audit chain, first-admin claim) serial without busy retries.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(Self {
            pool,
            audit_key: None,
        })
    }
}

impl PostgresStore {
    /// Connects to `url` and applies migrations.
    ///
    /// # Errors
    /// The server cannot be reached or a migration fails.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(Self {
            pool,
            audit_key: None,
        })
    }
}

fn classify(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::Database(ref database) if database.is_unique_violation() => {
            StoreError::Conflict("already exists".into())
        }
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error.into()),
        other => StoreError::Other(other.into()),
    }
}

type Row<T> = Result<T, sqlx::Error>;

const USER_COLUMNS: &str = "id, username, email, password_hash, role, tier, disabled, created_at";

fn user_from(
    (id, username, email, password_hash, role, tier, disabled, created_at): (
        i64,
        String,
        String,
        String,
        String,
        String,
        bool,
        i64,
    ),
) -> User {
    User {
        id,
        username,
        email,
        password_hash,
        role,
        tier,
        disabled,
        created_at,
    }
}

type UserTuple = (i64, String, String, String, String, String, bool, i64);
type FamilyTuple = (String, i64, i64, i64, Option<i64>, Option<String>);
type AuditTuple = (
    i64,
    i64,
    Option<i64>,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    String,
    String,
    String,
);

fn family_from(
    (id, user_id, created_at, expires_at, revoked_at, csrf_hash): FamilyTuple,
) -> Family {
    Family {
        id,
        user_id,
        created_at,
        expires_at,
        revoked_at,
        csrf_hash,
    }
}

fn audit_from(row: AuditTuple) -> AuditRecord {
    let (
        id,
        at,
        user_id,
        action,
        details,
        ip_address,
        user_agent,
        request_id,
        pii_salt,
        pii_digest,
        prev_hash,
        hash,
    ) = row;
    AuditRecord {
        id,
        at,
        user_id,
        action,
        details,
        ip_address,
        user_agent,
        request_id,
        pii_salt,
        pii_digest,
        prev_hash,
        hash,
    }
}

const API_KEY_COLUMNS: &str = "id, user_id, name, prefix, key_hash, secret, created_at, expires_at";

type ApiKeyTuple = (i64, i64, String, String, String, String, i64, Option<i64>);

fn api_key_from(
    (id, user_id, name, prefix, key_hash, secret, created_at, expires_at): ApiKeyTuple,
) -> ApiKey {
    ApiKey {
        id,
        user_id,
        name,
        prefix,
        key_hash,
        secret,
        created_at,
        expires_at,
    }
}

const ACCOUNT_COLUMNS: &str = "id, uid, user_id, name, broker, host_url, api_key, \
                               api_key_masked, created_at, updated_at";

type AccountTuple = (
    i64,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
);

fn account_from(row: AccountTuple) -> TradingAccount {
    let (id, uid, user_id, name, broker, host_url, api_key, api_key_masked, created_at, updated_at) =
        row;
    TradingAccount {
        id,
        uid,
        user_id,
        name,
        broker,
        host_url,
        api_key,
        api_key_masked,
        created_at,
        updated_at,
    }
}

/// Table, binding column and sealed column of each kind of sealed value.
fn sealed_columns(kind: SealedKind) -> (&'static str, &'static str, &'static str) {
    match kind {
        SealedKind::ApiKeySecret => ("api_keys", "prefix", "secret"),
        SealedKind::AccountKey => ("trading_accounts", "uid", "api_key"),
    }
}

/// The column a sealed value's host binding is read from, as SQL.
fn sealed_host_column(kind: SealedKind) -> &'static str {
    match kind {
        SealedKind::ApiKeySecret => "CAST(NULL AS TEXT)",
        SealedKind::AccountKey => "host_url",
    }
}

const KEY_MISMATCH: &str = "the audit chain's head is not sealed with this audit.chain_key: \
    the key is not the one the chain was written with (a secrets.toml from another \
    directory, or a changed RAMPART_AUDIT__CHAIN_KEY), or the head was tampered with; \
    nothing was written. Use the chain's key, and run `rampart audit verify`";

const HEAD_MISSING: &str = "the audit chain's head record is missing although the chain \
    was keyed (rows or records sealed with a key exist): the trail was tampered with; \
    nothing was written. Run `rampart audit verify` and restore from a backup";

/// Adds the new row's id to an audit entry's details.
fn with_id(mut audit: NewAuditEntry, field: &str, id: i64) -> NewAuditEntry {
    if let serde_json::Value::Object(details) = &mut audit.details {
        details.insert(field.into(), serde_json::Value::from(id));
    }
    audit
}

const AUDIT_COLUMNS: &str = "id, at, user_id, action, details, ip_address, user_agent, \
                             request_id, pii_salt, pii_digest, prev_hash, hash";

/// Implements both traits for one backend. `$lock_audit` serialises audit appends (the
/// chain needs the previous hash); `$for_update` locks selected rows where the backend can.
macro_rules! sql_store {
    (
        $store:ty,
        $db:ty,
        lock_audit = $lock_audit:expr,
        for_update = $for_update:expr,
        log_head = $log_head:expr,
        snapshot = $snapshot:expr
    ) => {
        impl $store {
            /// Keys the audit chain with `key`.
            ///
            /// A chain with a head must have it sealed by `key`: otherwise the key is not
            /// the one the chain was written with (or the head was tampered with), and
            /// opening fails rather than append links no one can verify. A chain without
            /// a head is keyed now, once, under the audit lock: the switch-over is read
            /// from `audit_log` itself (not from the unsealed records migration 0004 left)
            /// and sealed together with a head at the legacy end, or at row 0 for an empty
            /// trail. A record is never sealed just because its seal is missing.
            ///
            /// # Errors
            /// The database fails, the key does not match, or the head was removed from a
            /// chain that was already keyed.
            pub async fn with_audit_key(mut self, key: ChainKey) -> anyhow::Result<Self> {
                let mut tx = self.pool.begin().await?;
                Self::lock_audit(&mut tx).await?;
                let records: Vec<(String, i64, String, Option<String>)> =
                    sqlx::query_as("SELECT name, row_id, hash, mac FROM audit_chain")
                        .fetch_all(&mut *tx)
                        .await?;
                let records: Vec<ChainRecord> = records
                    .into_iter()
                    .map(|(name, row_id, hash, mac)| ChainRecord {
                        name,
                        row_id,
                        hash,
                        mac,
                    })
                    .collect();
                if let Some(head) = records.iter().find(|record| record.name == audit::HEAD) {
                    anyhow::ensure!(key.record_is_sealed(head), KEY_MISMATCH);
                    tx.rollback().await?;
                    self.audit_key = Some(Arc::new(key));
                    return Ok(self);
                }
                anyhow::ensure!(
                    records.iter().all(|record| record.mac.is_none()),
                    HEAD_MISSING
                );
                let last: Option<AuditTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY id DESC LIMIT 1"
                )))
                .fetch_optional(&mut *tx)
                .await?;
                sqlx::query("DELETE FROM audit_chain").execute(&mut *tx).await?;
                let mut sealed = Vec::new();
                match last.map(audit_from) {
                    None => sealed.push((audit::HEAD, 0, GENESIS.to_owned())),
                    Some(last) => {
                        // Rows from before the key are plain SHA-256; a keyed last row
                        // means the chain was keyed and its head removed.
                        let plain = audit::row_hash(
                            &last.prev_hash,
                            last.at,
                            last.user_id,
                            &last.action,
                            &last.details,
                            &last.request_id,
                            &last.pii_digest,
                        );
                        anyhow::ensure!(plain == last.hash, HEAD_MISSING);
                        let (first_id, first_prev): (i64, String) = sqlx::query_as(
                            "SELECT id, prev_hash FROM audit_log ORDER BY id LIMIT 1",
                        )
                        .fetch_one(&mut *tx)
                        .await?;
                        sealed.push((audit::LEGACY_START, first_id, first_prev));
                        sealed.push((audit::LEGACY_END, last.id, last.hash.clone()));
                        sealed.push((audit::HEAD, last.id, last.hash));
                        tracing::warn!(
                            legacy_end = last.id,
                            "keyed the audit chain: earlier rows stay checked with plain SHA-256"
                        );
                    }
                }
                for (name, row_id, hash) in sealed {
                    sqlx::query(
                        "INSERT INTO audit_chain (name, row_id, hash, mac) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(name)
                    .bind(row_id)
                    .bind(&hash)
                    .bind(key.seal_record(name, row_id, &hash))
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                self.audit_key = Some(Arc::new(key));
                Ok(self)
            }

            async fn lock_audit(tx: &mut sqlx::Transaction<'_, $db>) -> Row<()> {
                if let Some(lock) = $lock_audit {
                    sqlx::query(lock).execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// A transaction that holds the audit lock from its start. Every transaction
            /// that touches `audit_log` begins so: taking the lock after row locks on
            /// `audit_log` deadlocks against a purge, which holds the lock and deletes.
            async fn begin_audited(&self) -> StoreResult<sqlx::Transaction<'static, $db>> {
                let mut tx = self.pool.begin().await.map_err(classify)?;
                Self::lock_audit(&mut tx).await.map_err(classify)?;
                Ok(tx)
            }

            /// The sealed head's row id and hash, which the next row links to. A head that
            /// is missing or not sealed with the key is not extended: a forged head would
            /// otherwise be sealed by the next append.
            async fn chain_tip(
                tx: &mut sqlx::Transaction<'_, $db>,
                key: &ChainKey,
            ) -> Row<(i64, String)> {
                let head: Option<(i64, String, Option<String>)> = sqlx::query_as(
                    "SELECT row_id, hash, mac FROM audit_chain WHERE name = 'head'",
                )
                .fetch_optional(&mut **tx)
                .await?;
                match head {
                    Some((row_id, hash, mac))
                        if key.record_is_sealed(&ChainRecord {
                            name: audit::HEAD.to_owned(),
                            row_id,
                            hash: hash.clone(),
                            mac: mac.clone(),
                        }) =>
                    {
                        Ok((row_id, hash))
                    }
                    _ => Err(sqlx::Error::Protocol(
                        "the audit chain's head is missing or not sealed with the chain key; \
                         nothing is appended (run `rampart audit verify`)"
                            .into(),
                    )),
                }
            }

            /// Appends `entry` in `tx`, which began with [`Self::begin_audited`].
            async fn insert_audit(
                &self,
                tx: &mut sqlx::Transaction<'_, $db>,
                entry: &NewAuditEntry,
            ) -> Row<()> {
                let key = self.audit_key.as_deref().ok_or_else(|| {
                    sqlx::Error::Configuration("the audit chain key is not set".into())
                })?;
                let (_, prev) = Self::chain_tip(tx, key).await?;
                let sealed = audit::seal(entry, &prev, key);
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO audit_log (at, user_id, action, details, ip_address, \
                     user_agent, request_id, pii_salt, pii_digest, prev_hash, hash) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
                )
                .bind(entry.at)
                .bind(entry.user_id)
                .bind(entry.action)
                .bind(&sealed.details)
                .bind(entry.ip_address.as_deref())
                .bind(entry.user_agent.as_deref())
                .bind(&entry.request_id)
                .bind(&sealed.pii_salt)
                .bind(&sealed.pii_digest)
                .bind(&prev)
                .bind(&sealed.hash)
                .fetch_one(&mut **tx)
                .await?;
                // The head moves with the row, in the same transaction.
                sqlx::query(
                    "INSERT INTO audit_chain (name, row_id, hash, mac) VALUES ('head', $1, $2, $3) \
                     ON CONFLICT (name) DO UPDATE SET row_id = excluded.row_id, \
                     hash = excluded.hash, mac = excluded.mac",
                )
                .bind(id)
                .bind(&sealed.hash)
                .bind(key.seal_record(audit::HEAD, id, &sealed.hash))
                .execute(&mut **tx)
                .await?;
                Ok(())
            }

            async fn user_in(
                tx: &mut sqlx::Transaction<'_, $db>,
                id: i64,
            ) -> Row<Option<User>> {
                let row: Option<UserTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?;
                Ok(row.map(user_from))
            }

            /// Deletes every API key of a user in one statement, audited (with the ids)
            /// unless there was none.
            async fn delete_keys_in(
                &self,
                tx: &mut sqlx::Transaction<'_, $db>,
                user_id: i64,
                mut audit: NewAuditEntry,
            ) -> Row<Vec<i64>> {
                let mut ids: Vec<i64> =
                    sqlx::query_scalar("DELETE FROM api_keys WHERE user_id = $1 RETURNING id")
                        .bind(user_id)
                        .fetch_all(&mut **tx)
                        .await?;
                ids.sort_unstable();
                if !ids.is_empty() {
                    if let serde_json::Value::Object(details) = &mut audit.details {
                        details.insert("api_key_ids".into(), serde_json::json!(ids));
                    }
                    self.insert_audit(tx, &audit).await?;
                }
                Ok(ids)
            }

            /// Applies one [`Counter`] transition to a key's row, locked for the transaction
            /// (PostgreSQL: the row lock; SQLite: the single connection).
            async fn with_counter<T>(
                &self,
                scope: LockScope,
                key: &str,
                now: i64,
                step: impl FnOnce(&mut Counter) -> T + Send,
            ) -> StoreResult<T> {
                let mut tx = self.pool.begin().await.map_err(classify)?;
                sqlx::query(
                    "INSERT INTO login_failures \
                     (scope, key, failures, pending, window_start, locked_until) \
                     VALUES ($1, $2, 0, 0, $3, NULL) ON CONFLICT (scope, key) DO NOTHING",
                )
                .bind(scope.as_str())
                .bind(key)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
                let (failures, pending, window_start, locked_until): (i64, i64, i64, Option<i64>) =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT failures, pending, window_start, locked_until \
                         FROM login_failures WHERE scope = $1 AND key = $2{}",
                        $for_update
                    )))
                    .bind(scope.as_str())
                    .bind(key)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(classify)?;
                let mut counter = Counter {
                    failures,
                    pending,
                    window_start,
                    locked_until,
                };
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
                .await
                .map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                Ok(outcome)
            }

            /// Locks the active admins and counts them.
            async fn active_admins(tx: &mut sqlx::Transaction<'_, $db>) -> Row<Vec<i64>> {
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT id FROM users WHERE role = 'admin' AND disabled = FALSE{}",
                    $for_update
                )))
                .fetch_all(&mut **tx)
                .await
            }
        }

        #[async_trait]
        impl Store for $store {
            async fn ping(&self) -> StoreResult<()> {
                sqlx::query("SELECT 1")
                    .execute(&self.pool)
                    .await
                    .map_err(classify)?;
                Ok(())
            }

            async fn create_user(
                &self,
                user: NewUser,
                mut audit: NewAuditEntry,
            ) -> StoreResult<User> {
                let mut tx = self.begin_audited().await?;
                let claimed = sqlx::query(
                    "INSERT INTO bootstrap (name) VALUES ('first_admin') ON CONFLICT DO NOTHING",
                )
                .execute(&mut *tx)
                .await
                .map_err(classify)?
                .rows_affected()
                    == 1;
                let role = if claimed || user.force_admin {
                    "admin".to_owned()
                } else {
                    user.role.clone()
                };
                let inserted: Row<UserTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO users (username, username_lower, email, email_lower, \
                     password_hash, role, tier, disabled, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, 'standard', FALSE, $7, $7) \
                     RETURNING {USER_COLUMNS}"
                )))
                .bind(&user.username)
                .bind(user.username.to_lowercase())
                .bind(&user.email)
                .bind(user.email.to_lowercase())
                .bind(&user.password_hash)
                .bind(&role)
                .bind(user.created_at)
                .fetch_one(&mut *tx)
                .await;
                let created = match inserted {
                    Ok(row) => user_from(row),
                    Err(error) => {
                        return Err(match classify(error) {
                            StoreError::Conflict(_) => {
                                StoreError::Conflict("username or email is already taken".into())
                            }
                            other => other,
                        });
                    }
                };
                audit.user_id = Some(created.id);
                if let serde_json::Value::Object(details) = &mut audit.details {
                    details.insert("role".into(), serde_json::Value::String(role));
                }
                self.insert_audit(&mut tx, &audit).await.map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                Ok(created)
            }

            async fn user_by_id(&self, id: i64) -> StoreResult<Option<User>> {
                let row: Option<UserTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
                )))
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(classify)?;
                Ok(row.map(user_from))
            }

            async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>> {
                let row: Option<UserTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {USER_COLUMNS} FROM users WHERE username_lower = $1"
                )))
                .bind(username.to_lowercase())
                .fetch_optional(&self.pool)
                .await
                .map_err(classify)?;
                Ok(row.map(user_from))
            }

            async fn list_users(&self, limit: i64, offset: i64) -> StoreResult<(Vec<User>, i64)> {
                let rows: Vec<UserTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {USER_COLUMNS} FROM users ORDER BY id LIMIT $1 OFFSET $2"
                )))
                .bind(limit)
                .bind(offset)
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
                let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(classify)?;
                Ok((rows.into_iter().map(user_from).collect(), total))
            }

            async fn upgrade_password_hash(&self, id: i64, old: &str, new: &str) -> StoreResult<()> {
                // Only replaces the hash that was verified, so a password change racing
                // with a login is never undone.
                sqlx::query(
                    "UPDATE users SET password_hash = $1 WHERE id = $2 AND password_hash = $3",
                )
                .bind(new)
                .bind(id)
                .bind(old)
                .execute(&self.pool)
                .await
                .map_err(classify)?;
                Ok(())
            }

            async fn change_password(
                &self,
                id: i64,
                hash: &str,
                audit: NewAuditEntry,
                revoke_api_keys: Option<NewAuditEntry>,
            ) -> StoreResult<Vec<i64>> {
                let mut tx = self.begin_audited().await?;
                let changed = sqlx::query(
                    "UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3",
                )
                .bind(hash)
                .bind(audit.at)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(classify)?
                .rows_affected();
                if changed == 0 {
                    return Err(StoreError::NotFound);
                }
                self.insert_audit(&mut tx, &audit).await.map_err(classify)?;
                let revoked = match revoke_api_keys {
                    Some(entry) => self.delete_keys_in(&mut tx, id, entry)
                        .await
                        .map_err(classify)?,
                    None => Vec::new(),
                };
                tx.commit().await.map_err(classify)?;
                Ok(revoked)
            }

            async fn delete_api_keys_of(
                &self,
                user_id: i64,
                audit: NewAuditEntry,
            ) -> StoreResult<Vec<i64>> {
                let mut tx = self.begin_audited().await?;
                let revoked = self.delete_keys_in(&mut tx, user_id, audit)
                    .await
                    .map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                Ok(revoked)
            }

            async fn update_user(
                &self,
                id: i64,
                patch: UserPatch,
                audit: Vec<NewAuditEntry>,
            ) -> StoreResult<User> {
                let mut tx = self.begin_audited().await?;
                let admins = Self::active_admins(&mut tx).await.map_err(classify)?;
                let user = Self::user_in(&mut tx, id)
                    .await
                    .map_err(classify)?
                    .ok_or(StoreError::NotFound)?;
                let loses_admin = user.role == "admin"
                    && !user.disabled
                    && (patch.role.as_deref().is_some_and(|role| role != "admin")
                        || patch.disabled == Some(true));
                if loses_admin && admins.iter().filter(|admin| **admin != id).count() == 0 {
                    return Err(StoreError::Conflict(
                        "the last admin cannot be demoted or disabled".into(),
                    ));
                }
                let now = audit.first().map_or(0, |entry| entry.at);
                sqlx::query(
                    "UPDATE users SET role = COALESCE($1, role), tier = COALESCE($2, tier), \
                     disabled = COALESCE($3, disabled), updated_at = $4 WHERE id = $5",
                )
                .bind(patch.role.as_deref())
                .bind(patch.tier.as_deref())
                .bind(patch.disabled)
                .bind(now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
                for entry in &audit {
                    self.insert_audit(&mut tx, entry).await.map_err(classify)?;
                }
                let updated = Self::user_in(&mut tx, id)
                    .await
                    .map_err(classify)?
                    .ok_or(StoreError::NotFound)?;
                tx.commit().await.map_err(classify)?;
                Ok(updated)
            }

            async fn delete_user(&self, id: i64, audit: NewAuditEntry) -> StoreResult<()> {
                let mut tx = self.begin_audited().await?;
                let admins = Self::active_admins(&mut tx).await.map_err(classify)?;
                let user = Self::user_in(&mut tx, id)
                    .await
                    .map_err(classify)?
                    .ok_or(StoreError::NotFound)?;
                if user.role == "admin"
                    && !user.disabled
                    && admins.iter().filter(|admin| **admin != id).count() == 0
                {
                    return Err(StoreError::Conflict("the last admin cannot be deleted".into()));
                }
                for statement in crate::store::USER_OWNED_TABLES {
                    sqlx::query(*statement)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?;
                }
                sqlx::query("DELETE FROM users WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                sqlx::query(
                    "UPDATE audit_log SET ip_address = NULL, user_agent = NULL, pii_salt = NULL \
                     WHERE user_id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
                self.insert_audit(&mut tx, &audit).await.map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                Ok(())
            }

            async fn append_audit(&self, entry: NewAuditEntry) -> StoreResult<()> {
                let mut tx = self.begin_audited().await?;
                self.insert_audit(&mut tx, &entry).await.map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                Ok(())
            }

            async fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
                let rows: Vec<AuditTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log \
                     WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR action = $2) \
                     AND ($3 IS NULL OR at >= $3) AND ($4 IS NULL OR at < $4) \
                     AND ($5 IS NULL OR id < $5) ORDER BY id DESC LIMIT $6"
                )))
                .bind(filter.user_id)
                .bind(filter.action.as_deref())
                .bind(filter.since)
                .bind(filter.until)
                .bind(filter.before_id)
                .bind(filter.limit)
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
                Ok(rows.into_iter().map(audit_from).collect())
            }

            async fn audit_page(&self, after_id: i64, limit: i64) -> StoreResult<Vec<AuditRecord>> {
                let rows: Vec<AuditTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2"
                )))
                .bind(after_id)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
                Ok(rows.into_iter().map(audit_from).collect())
            }

            async fn purge_audit(&self, before: i64, mut audit: NewAuditEntry) -> StoreResult<u64> {
                let mut tx = self.begin_audited().await?;
                // Only a prefix of the chain goes: every row before the first one that is
                // not older than `before`. A row older than that which follows a newer one
                // (clocks of several instances) waits for a later purge.
                let removed = sqlx::query(
                    "DELETE FROM audit_log WHERE id < COALESCE(\
                     (SELECT MIN(id) FROM audit_log WHERE at >= $1), \
                     (SELECT MAX(id) + 1 FROM audit_log))",
                )
                    .bind(before)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?
                    .rows_affected();
                // The hash the purge cut at: what the first kept row links to, or, with
                // nothing kept, what this entry will link to.
                let first_kept: Option<String> =
                    sqlx::query_scalar("SELECT prev_hash FROM audit_log ORDER BY id LIMIT 1")
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(classify)?;
                let anchor = match first_kept {
                    Some(anchor) => anchor,
                    None => {
                        let key = self.audit_key.as_deref().ok_or_else(|| {
                            StoreError::Other(anyhow::anyhow!("the audit chain key is not set"))
                        })?;
                        Self::chain_tip(&mut tx, key).await.map_err(classify)?.1
                    }
                };
                if let serde_json::Value::Object(details) = &mut audit.details {
                    details.insert("removed".into(), removed.into());
                    details.insert("anchor".into(), anchor.into());
                }
                self.insert_audit(&mut tx, &audit).await.map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                Ok(removed)
            }

            async fn audit_chain(&self) -> StoreResult<Vec<ChainRecord>> {
                let rows: Vec<(String, i64, String, Option<String>)> =
                    sqlx::query_as("SELECT name, row_id, hash, mac FROM audit_chain ORDER BY name")
                        .fetch_all(&self.pool)
                        .await
                        .map_err(classify)?;
                Ok(rows
                    .into_iter()
                    .map(|(name, row_id, hash, mac)| ChainRecord {
                        name,
                        row_id,
                        hash,
                        mac,
                    })
                    .collect())
            }

            async fn audit_snapshot(
                &self,
                visit: &mut (dyn FnMut(AuditItem) -> bool + Send),
            ) -> StoreResult<()> {
                // One transaction: a repeatable-read snapshot on PostgreSQL, a read
                // transaction (one WAL snapshot) on SQLite. The head is read first and rows
                // after it are not walked, so appends meanwhile do not look like a cut end.
                let mut tx = self.pool.begin().await.map_err(classify)?;
                if let Some(statement) = $snapshot {
                    sqlx::query(statement)
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?;
                }
                let records: Vec<(String, i64, String, Option<String>)> =
                    sqlx::query_as("SELECT name, row_id, hash, mac FROM audit_chain ORDER BY name")
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(classify)?;
                let records: Vec<ChainRecord> = records
                    .into_iter()
                    .map(|(name, row_id, hash, mac)| ChainRecord {
                        name,
                        row_id,
                        hash,
                        mac,
                    })
                    .collect();
                let until = records
                    .iter()
                    .find(|record| record.name == audit::HEAD)
                    .map_or(i64::MAX, |head| head.row_id);
                if !visit(AuditItem::Chain(records)) {
                    return Ok(());
                }
                let mut after = i64::MIN;
                loop {
                    let page: Vec<AuditTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE id > $1 AND id <= $2 \
                         ORDER BY id LIMIT 1000"
                    )))
                    .bind(after)
                    .bind(until)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(classify)?;
                    if page.is_empty() {
                        return Ok(());
                    }
                    for row in page {
                        let record = audit_from(row);
                        after = record.id;
                        if !visit(AuditItem::Row(record)) {
                            return Ok(());
                        }
                    }
                }
            }

            async fn create_api_key(
                &self,
                key: ApiKey,
                max: i64,
                audit: NewAuditEntry,
            ) -> StoreResult<ApiKey> {
                let mut tx = self.begin_audited().await?;
                let owned: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE user_id = $1")
                        .bind(key.user_id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(classify)?;
                if owned >= max {
                    return Err(StoreError::Conflict(format!(
                        "a user can have at most {max} API keys; delete one first"
                    )));
                }
                let row: ApiKeyTuple = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO api_keys (user_id, name, prefix, key_hash, secret, created_at, \
                     expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {API_KEY_COLUMNS}"
                )))
                .bind(key.user_id)
                .bind(&key.name)
                .bind(&key.prefix)
                .bind(&key.key_hash)
                .bind(&key.secret)
                .bind(key.created_at)
                .bind(key.expires_at)
                .fetch_one(&mut *tx)
                .await
                .map_err(classify)?;
                let created = api_key_from(row);
                let audit = with_id(audit, "api_key_id", created.id);
                self.insert_audit(&mut tx, &audit).await.map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                Ok(created)
            }

            async fn api_keys_of(&self, user_id: i64) -> StoreResult<Vec<ApiKey>> {
                let rows: Vec<ApiKeyTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY id"
                )))
                .bind(user_id)
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
                Ok(rows.into_iter().map(api_key_from).collect())
            }

            async fn api_key_by_prefix(&self, prefix: &str) -> StoreResult<Option<ApiKey>> {
                let row: Option<ApiKeyTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE prefix = $1"
                )))
                .bind(prefix)
                .fetch_optional(&self.pool)
                .await
                .map_err(classify)?;
                Ok(row.map(api_key_from))
            }

            async fn credential_change_head(&self) -> StoreResult<i64> {
                let head: Option<i64> =
                    sqlx::query_scalar("SELECT MAX(id) FROM credential_changes")
                        .fetch_one(&self.pool)
                        .await
                        .map_err(classify)?;
                Ok(head.unwrap_or(0))
            }

            async fn credential_changes_after(
                &self,
                after: i64,
                limit: i64,
            ) -> StoreResult<Vec<(i64, i64)>> {
                sqlx::query_as(
                    "SELECT id, user_id FROM credential_changes WHERE id > $1 \
                     ORDER BY id LIMIT $2",
                )
                .bind(after)
                .bind(limit)
                .fetch_all(&self.pool)
                .await
                .map_err(classify)
            }

            async fn delete_api_key(
                &self,
                user_id: i64,
                id: i64,
                audit: NewAuditEntry,
            ) -> StoreResult<()> {
                let mut tx = self.begin_audited().await?;
                let deleted = sqlx::query("DELETE FROM api_keys WHERE id = $1 AND user_id = $2")
                    .bind(id)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?
                    .rows_affected();
                if deleted == 0 {
                    return Err(StoreError::NotFound);
                }
                self.insert_audit(&mut tx, &audit).await.map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                Ok(())
            }

            async fn create_account(
                &self,
                account: TradingAccount,
                max: i64,
                audit: NewAuditEntry,
            ) -> StoreResult<TradingAccount> {
                let mut tx = self.begin_audited().await?;
                let owned: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM trading_accounts WHERE user_id = $1")
                        .bind(account.user_id)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(classify)?;
                if owned >= max {
                    return Err(StoreError::Conflict(format!(
                        "a user can have at most {max} trading accounts; delete one first"
                    )));
                }
                let row: AccountTuple = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO trading_accounts (uid, user_id, name, broker, host_url, api_key, \
                     api_key_masked, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING {ACCOUNT_COLUMNS}"
                )))
                .bind(&account.uid)
                .bind(account.user_id)
                .bind(&account.name)
                .bind(&account.broker)
                .bind(&account.host_url)
                .bind(&account.api_key)
                .bind(&account.api_key_masked)
                .bind(account.created_at)
                .fetch_one(&mut *tx)
                .await
                .map_err(classify)?;
                let created = account_from(row);
                let audit = with_id(audit, "account_id", created.id);
                self.insert_audit(&mut tx, &audit).await.map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                Ok(created)
            }

            async fn accounts_of(&self, user_id: i64) -> StoreResult<Vec<TradingAccount>> {
                let rows: Vec<AccountTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {ACCOUNT_COLUMNS} FROM trading_accounts WHERE user_id = $1 ORDER BY id"
                )))
                .bind(user_id)
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
                Ok(rows.into_iter().map(account_from).collect())
            }

            async fn account(&self, user_id: i64, id: i64) -> StoreResult<Option<TradingAccount>> {
                let row: Option<AccountTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT {ACCOUNT_COLUMNS} FROM trading_accounts WHERE id = $1 AND user_id = $2"
                )))
                .bind(id)
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(classify)?;
                Ok(row.map(account_from))
            }

            async fn update_account(
                &self,
                user_id: i64,
                id: i64,
                patch: AccountPatch,
                audit: NewAuditEntry,
            ) -> StoreResult<TradingAccount> {
                let mut tx = self.begin_audited().await?;
                let (sealed, masked) = patch.api_key.unzip();
                let row: Option<AccountTuple> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "UPDATE trading_accounts SET name = COALESCE($1, name), \
                     broker = COALESCE($2, broker), host_url = COALESCE($3, host_url), \
                     api_key = COALESCE($4, api_key), \
                     api_key_masked = COALESCE($5, api_key_masked), updated_at = $6 \
                     WHERE id = $7 AND user_id = $8 RETURNING {ACCOUNT_COLUMNS}"
                )))
                .bind(patch.name.as_deref())
                .bind(patch.broker.as_deref())
                .bind(patch.host_url.as_deref())
                .bind(sealed.as_deref())
                .bind(masked.as_deref())
                .bind(audit.at)
                .bind(id)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?;
                let updated = row.map(account_from).ok_or(StoreError::NotFound)?;
                self.insert_audit(&mut tx, &audit).await.map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                Ok(updated)
            }

            async fn delete_account(
                &self,
                user_id: i64,
                id: i64,
                audit: NewAuditEntry,
            ) -> StoreResult<()> {
                let mut tx = self.begin_audited().await?;
                let deleted =
                    sqlx::query("DELETE FROM trading_accounts WHERE id = $1 AND user_id = $2")
                        .bind(id)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?
                        .rows_affected();
                if deleted == 0 {
                    return Err(StoreError::NotFound);
                }
                self.insert_audit(&mut tx, &audit).await.map_err(classify)?;
                tx.commit().await.map_err(classify)?;
                Ok(())
            }

            async fn sealed_values(
                &self,
                kind: SealedKind,
                after_id: i64,
                limit: i64,
            ) -> StoreResult<Vec<SealedValue>> {
                let (table, binding, column) = sealed_columns(kind);
                let host = sealed_host_column(kind);
                let rows: Vec<(i64, String, String, Option<String>)> =
                    sqlx::query_as(sqlx::AssertSqlSafe(format!(
                        "SELECT id, {binding}, {column}, {host} FROM {table} WHERE id > $1 \
                         ORDER BY id LIMIT $2"
                    )))
                    .bind(after_id)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(classify)?;
                Ok(rows
                    .into_iter()
                    .map(|(id, binding, sealed, host_url)| SealedValue {
                        id,
                        binding,
                        sealed,
                        host_url,
                    })
                    .collect())
            }

            async fn reseal(
                &self,
                kind: SealedKind,
                id: i64,
                old: &str,
                new: &str,
            ) -> StoreResult<bool> {
                let (table, _, column) = sealed_columns(kind);
                let changed = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {table} SET {column} = $1 WHERE id = $2 AND {column} = $3"
                )))
                .bind(new)
                .bind(id)
                .bind(old)
                .execute(&self.pool)
                .await
                .map_err(classify)?
                .rows_affected();
                Ok(changed == 1)
            }

            async fn tamper_sealed_for_test(
                &self,
                kind: SealedKind,
                id: i64,
                value: &str,
            ) -> StoreResult<()> {
                let (table, _, column) = sealed_columns(kind);
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {table} SET {column} = $1 WHERE id = $2"
                )))
                .bind(value)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(classify)?;
                Ok(())
            }

            async fn tamper_audit_for_test(&self, id: i64, details: &str) -> StoreResult<()> {
                sqlx::query("UPDATE audit_log SET details = $1 WHERE id = $2")
                    .bind(details)
                    .bind(id)
                    .execute(&self.pool)
                    .await
                    .map_err(classify)?;
                Ok(())
            }
        }

        #[async_trait]
        impl SessionStore for $store {
            async fn create_family(&self, family: &Family, token_hash: &str) -> StoreResult<()> {
                let mut tx = self.pool.begin().await.map_err(classify)?;
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
                .await
                .map_err(classify)?;
                sqlx::query(
                    "INSERT INTO refresh_tokens (token_hash, family_id, expires_at, used_at) \
                     VALUES ($1, $2, $3, NULL)",
                )
                .bind(token_hash)
                .bind(&family.id)
                .bind(family.expires_at)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
                tx.commit().await.map_err(classify)?;
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
                let mut tx = self.pool.begin().await.map_err(classify)?;
                // The conditional update is the atomic step: of many concurrent
                // presentations of one token, exactly one sees `used_at IS NULL`.
                let claimed: Option<String> = sqlx::query_scalar(
                    "UPDATE refresh_tokens SET used_at = $1 \
                     WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 \
                     RETURNING family_id",
                )
                .bind(now)
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?;
                let family_of = |id: String| {
                    sqlx::query_as::<_, FamilyTuple>(
                        "SELECT id, user_id, created_at, expires_at, revoked_at, csrf_hash \
                         FROM token_families WHERE id = $1",
                    )
                    .bind(id)
                };
                if let Some(family_id) = claimed {
                    let Some(family) = family_of(family_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(classify)?
                        .map(family_from)
                    else {
                        return Ok(Rotation::Invalid);
                    };
                    if family.revoked_at.is_some() || family.expires_at <= now {
                        tx.commit().await.map_err(classify)?;
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
                    .await
                    .map_err(classify)?;
                    if let Some(csrf_hash) = csrf_hash {
                        sqlx::query("UPDATE token_families SET csrf_hash = $1 WHERE id = $2")
                            .bind(csrf_hash)
                            .bind(&family.id)
                            .execute(&mut *tx)
                            .await
                            .map_err(classify)?;
                    }
                    tx.commit().await.map_err(classify)?;
                    return Ok(Rotation::Rotated(Family {
                        csrf_hash: csrf_hash.map(str::to_owned).or(family.csrf_hash.clone()),
                        ..family
                    }));
                }
                let used: Option<(String, Option<i64>)> = sqlx::query_as(
                    "SELECT family_id, used_at FROM refresh_tokens WHERE token_hash = $1",
                )
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await
                .map_err(classify)?;
                let Some((family_id, Some(_))) = used else {
                    return Ok(Rotation::Invalid);
                };
                sqlx::query(
                    "UPDATE token_families SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(&family_id)
                .execute(&mut *tx)
                .await
                .map_err(classify)?;
                let family = family_of(family_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(classify)?
                    .map(family_from);
                tx.commit().await.map_err(classify)?;
                Ok(family.map_or(Rotation::Invalid, Rotation::Reused))
            }

            async fn set_csrf_hash(
                &self,
                family_id: &str,
                csrf_hash: &str,
                now: i64,
            ) -> StoreResult<bool> {
                let updated = sqlx::query(
                    "UPDATE token_families SET csrf_hash = $1 \
                     WHERE id = $2 AND revoked_at IS NULL AND expires_at > $3",
                )
                .bind(csrf_hash)
                .bind(family_id)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(classify)?
                .rows_affected();
                Ok(updated == 1)
            }

            async fn family(&self, id: &str) -> StoreResult<Option<Family>> {
                let row: Option<FamilyTuple> = sqlx::query_as(
                    "SELECT id, user_id, created_at, expires_at, revoked_at, csrf_hash \
                     FROM token_families WHERE id = $1",
                )
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(classify)?;
                Ok(row.map(family_from))
            }

            async fn active_families(&self, user_id: i64, now: i64) -> StoreResult<Vec<Family>> {
                let rows: Vec<FamilyTuple> = sqlx::query_as(
                    "SELECT id, user_id, created_at, expires_at, revoked_at, csrf_hash \
                     FROM token_families WHERE user_id = $1 AND revoked_at IS NULL \
                     AND expires_at > $2 ORDER BY created_at",
                )
                .bind(user_id)
                .bind(now)
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
                Ok(rows.into_iter().map(family_from).collect())
            }

            async fn revoke_family(&self, id: &str, now: i64) -> StoreResult<()> {
                sqlx::query(
                    "UPDATE token_families SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(classify)?;
                Ok(())
            }

            async fn revoke_user(
                &self,
                user_id: i64,
                keep: Option<&str>,
                now: i64,
            ) -> StoreResult<Vec<String>> {
                let revoked: Vec<String> = sqlx::query_scalar(
                    "UPDATE token_families SET revoked_at = $1 \
                     WHERE user_id = $2 AND revoked_at IS NULL AND ($3 IS NULL OR id <> $3) \
                     RETURNING id",
                )
                .bind(now)
                .bind(user_id)
                .bind(keep)
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
                Ok(revoked)
            }

            async fn revocations_after(
                &self,
                cursor: &str,
            ) -> StoreResult<(Vec<String>, String)> {
                // Rows come from a trigger on `token_families.revoked_at` (migration 0003),
                // so every way of revoking is logged in the revoking transaction.
                let after: i64 = cursor.parse().unwrap_or(0);
                let rows: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT id, family_id FROM revocations WHERE id > $1 ORDER BY id LIMIT 10000",
                )
                .bind(after)
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
                let last = rows.last().map_or(after, |(id, _)| *id);
                Ok((
                    rows.into_iter().map(|(_, family)| family).collect(),
                    last.to_string(),
                ))
            }

            async fn revocation_log_rewound(&self, cursor: &str) -> StoreResult<bool> {
                let Ok(cursor) = cursor.parse::<i64>() else {
                    return Ok(false);
                };
                // The id sequence, not the rows: the sweep deletes old rows, a restore
                // winds the sequence back too.
                let head: Option<i64> = sqlx::query_scalar($log_head)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(classify)?;
                Ok(head.unwrap_or(0) < cursor)
            }

            async fn delete_user_sessions(&self, user_id: i64) -> StoreResult<()> {
                // Revoked first so that other instances' caches learn of it, then deleted
                // by the expiry sweep; the tokens themselves go now.
                sqlx::query(
                    "DELETE FROM refresh_tokens WHERE family_id IN \
                     (SELECT id FROM token_families WHERE user_id = $1)",
                )
                .bind(user_id)
                .execute(&self.pool)
                .await
                .map_err(classify)?;
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
                .await
                .map_err(classify)?;
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
                    .await
                    .map_err(classify)?;
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
                .await
                .map_err(classify)?
                .rows_affected();
                Ok(claimed == 1)
            }

            async fn ping(&self) -> StoreResult<()> {
                Store::ping(self).await
            }
        }

        impl $store {
            /// Deletes expired refresh tokens, families, nonces and stale lockout rows.
            ///
            /// # Errors
            /// The database fails.
            pub async fn sweep(&self, now: i64, keep_revoked_for: i64) -> StoreResult<()> {
                for (statement, cutoff) in [
                    ("DELETE FROM refresh_tokens WHERE expires_at < $1", now),
                    (
                        "DELETE FROM token_families WHERE expires_at < $1 \
                         OR revoked_at < $1",
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
                        .await
                        .map_err(classify)?;
                }
                Ok(())
            }
        }
    };
}

sql_store!(
    SqliteStore,
    sqlx::Sqlite,
    lock_audit = None::<&str>,
    for_update = "",
    log_head = "SELECT CAST(seq AS BIGINT) FROM sqlite_sequence WHERE name = 'revocations'",
    snapshot = None::<&str>
);
sql_store!(
    PostgresStore,
    sqlx::Postgres,
    lock_audit = Some("SELECT pg_advisory_xact_lock(7260001)"),
    for_update = " FOR UPDATE",
    log_head = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM revocations_id_seq",
    snapshot = Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
);
