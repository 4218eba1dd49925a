//! API keys, the log of credential changes other instances follow, and the sealed values
//! `rampart keys rotate` walks.

use super::{Db, SqlStore};
use crate::chain::NewAuditEntry;
use crate::store::sql::{API_KEY_COLUMNS, sealed_columns, sealed_host_column, with_id};
use crate::store::{ApiKey, SealedKind, SealedValue, StoreError, StoreResult};

impl SqlStore {
    /// Deletes every API key of a user in one statement, audited (with the ids) unless
    /// there was none.
    pub(super) async fn delete_keys_in(
        &self,
        tx: &mut sqlx::Transaction<'_, Db>,
        user_id: i64,
        mut audit: NewAuditEntry,
    ) -> sqlx::Result<Vec<i64>> {
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
}

pub(super) async fn create_api_key(
    store: &SqlStore,
    key: ApiKey,
    max: i64,
    audit: NewAuditEntry,
) -> StoreResult<ApiKey> {
    let mut tx = store.begin_audited().await?;
    let owned: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE user_id = $1")
        .bind(key.user_id)
        .fetch_one(&mut *tx)
        .await?;
    if owned >= max {
        return Err(StoreError::Conflict(format!(
            "a user can have at most {max} API keys; delete one first"
        )));
    }
    let created: ApiKey = sqlx::query_as(sqlx::AssertSqlSafe(format!(
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
    .await?;
    let audit = with_id(audit, "api_key_id", created.id);
    store.insert_audit(&mut tx, &audit).await?;
    tx.commit().await?;
    Ok(created)
}

pub(super) async fn api_keys_of(store: &SqlStore, user_id: i64) -> StoreResult<Vec<ApiKey>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY id"
    )))
    .bind(user_id)
    .fetch_all(&store.pool)
    .await?)
}

pub(super) async fn api_key_by_prefix(
    store: &SqlStore,
    prefix: &str,
) -> StoreResult<Option<ApiKey>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE prefix = $1"
    )))
    .bind(prefix)
    .fetch_optional(&store.pool)
    .await?)
}

pub(super) async fn credential_change_head(store: &SqlStore) -> StoreResult<i64> {
    let head: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM credential_changes")
        .fetch_one(&store.pool)
        .await?;
    Ok(head.unwrap_or(0))
}

pub(super) async fn credential_changes_after(
    store: &SqlStore,
    after: i64,
    limit: i64,
) -> StoreResult<Vec<(i64, i64)>> {
    Ok(sqlx::query_as(
        "SELECT id, user_id FROM credential_changes WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(&store.pool)
    .await?)
}

pub(super) async fn delete_api_key(
    store: &SqlStore,
    user_id: i64,
    id: i64,
    audit: NewAuditEntry,
) -> StoreResult<()> {
    let mut tx = store.begin_audited().await?;
    let deleted = sqlx::query("DELETE FROM api_keys WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if deleted == 0 {
        return Err(StoreError::NotFound);
    }
    store.insert_audit(&mut tx, &audit).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn delete_api_keys_of(
    store: &SqlStore,
    user_id: i64,
    audit: NewAuditEntry,
) -> StoreResult<Vec<i64>> {
    let mut tx = store.begin_audited().await?;
    let revoked = store.delete_keys_in(&mut tx, user_id, audit).await?;
    tx.commit().await?;
    Ok(revoked)
}

pub(super) async fn sealed_values(
    store: &SqlStore,
    kind: SealedKind,
    after_id: i64,
    limit: i64,
) -> StoreResult<Vec<SealedValue>> {
    let (table, binding, column) = sealed_columns(kind);
    let host = sealed_host_column(kind);
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, {binding} AS binding, {column} AS sealed, {host} AS host_url \
         FROM {table} WHERE id > $1 ORDER BY id LIMIT $2"
    )))
    .bind(after_id)
    .bind(limit)
    .fetch_all(&store.pool)
    .await?)
}

pub(super) async fn reseal(
    store: &SqlStore,
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
    .execute(&store.pool)
    .await?
    .rows_affected();
    Ok(changed == 1)
}

/// Overwrites one sealed value without checks; only for rotation tests.
#[cfg(any(test, feature = "test-util"))]
pub(super) async fn tamper_sealed_for_test(
    store: &SqlStore,
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
    .execute(&store.pool)
    .await?;
    Ok(())
}
