//! Trading accounts: a user's connections to brokers, their keys sealed.

use super::SqlStore;
use crate::chain::NewAuditEntry;
use crate::store::sql::{ACCOUNT_COLUMNS, with_id};
use crate::store::{AccountPatch, StoreError, StoreResult, TradingAccount};

pub(super) async fn create_account(
    store: &SqlStore,
    account: TradingAccount,
    max: i64,
    audit: NewAuditEntry,
) -> StoreResult<TradingAccount> {
    let mut tx = store.begin_audited().await?;
    let owned: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trading_accounts WHERE user_id = $1")
        .bind(account.user_id)
        .fetch_one(&mut *tx)
        .await?;
    if owned >= max {
        return Err(StoreError::Conflict(format!(
            "a user can have at most {max} trading accounts; delete one first"
        )));
    }
    let created: TradingAccount = sqlx::query_as(sqlx::AssertSqlSafe(format!(
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
    .await?;
    let audit = with_id(audit, "account_id", created.id);
    store.insert_audit(&mut tx, &audit).await?;
    tx.commit().await?;
    Ok(created)
}

pub(super) async fn accounts_of(
    store: &SqlStore,
    user_id: i64,
) -> StoreResult<Vec<TradingAccount>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM trading_accounts WHERE user_id = $1 ORDER BY id"
    )))
    .bind(user_id)
    .fetch_all(&store.pool)
    .await?)
}

pub(super) async fn account(
    store: &SqlStore,
    user_id: i64,
    id: i64,
) -> StoreResult<Option<TradingAccount>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {ACCOUNT_COLUMNS} FROM trading_accounts WHERE id = $1 AND user_id = $2"
    )))
    .bind(id)
    .bind(user_id)
    .fetch_optional(&store.pool)
    .await?)
}

pub(super) async fn update_account(
    store: &SqlStore,
    user_id: i64,
    id: i64,
    patch: AccountPatch,
    audit: NewAuditEntry,
) -> StoreResult<TradingAccount> {
    let mut tx = store.begin_audited().await?;
    let (sealed, masked) = patch.api_key.unzip();
    let updated: Option<TradingAccount> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
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
    .await?;
    let updated = updated.ok_or(StoreError::NotFound)?;
    store.insert_audit(&mut tx, &audit).await?;
    tx.commit().await?;
    Ok(updated)
}

pub(super) async fn delete_account(
    store: &SqlStore,
    user_id: i64,
    id: i64,
    audit: NewAuditEntry,
) -> StoreResult<()> {
    let mut tx = store.begin_audited().await?;
    let deleted = sqlx::query("DELETE FROM trading_accounts WHERE id = $1 AND user_id = $2")
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
