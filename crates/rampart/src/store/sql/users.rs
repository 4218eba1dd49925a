//! Users: the first-admin claim, password changes, and the rule that the last active
//! admin stays one.

use super::{Db, FOR_UPDATE, SqlStore};
use crate::chain::NewAuditEntry;
use crate::store::sql::USER_COLUMNS;
use crate::store::{NewUser, StoreError, StoreResult, User, UserPatch};

async fn user_in(tx: &mut sqlx::Transaction<'_, Db>, id: i64) -> sqlx::Result<Option<User>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut **tx)
    .await
}

/// Locks the active admins and counts them.
async fn active_admins(tx: &mut sqlx::Transaction<'_, Db>) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT id FROM users WHERE role = 'admin' AND disabled = FALSE{FOR_UPDATE}"
    )))
    .fetch_all(&mut **tx)
    .await
}

pub(super) async fn create_user(
    store: &SqlStore,
    user: NewUser,
    mut audit: NewAuditEntry,
) -> StoreResult<User> {
    let mut tx = store.begin_audited().await?;
    let claimed =
        sqlx::query("INSERT INTO bootstrap (name) VALUES ('first_admin') ON CONFLICT DO NOTHING")
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
    let role = if claimed || user.force_admin {
        "admin".to_owned()
    } else {
        user.role.clone()
    };
    let inserted: sqlx::Result<User> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
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
    let created = inserted.map_err(|error| match StoreError::from(error) {
        StoreError::Conflict(_) => {
            StoreError::Conflict("username or email is already taken".into())
        }
        other => other,
    })?;
    audit.user_id = Some(created.id);
    if let serde_json::Value::Object(details) = &mut audit.details {
        details.insert("role".into(), serde_json::Value::String(role));
    }
    store.insert_audit(&mut tx, &audit).await?;
    tx.commit().await?;
    Ok(created)
}

pub(super) async fn user_by_id(store: &SqlStore, id: i64) -> StoreResult<Option<User>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&store.pool)
    .await?)
}

pub(super) async fn user_by_username(
    store: &SqlStore,
    username: &str,
) -> StoreResult<Option<User>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE username_lower = $1"
    )))
    .bind(username.to_lowercase())
    .fetch_optional(&store.pool)
    .await?)
}

pub(super) async fn list_users(
    store: &SqlStore,
    limit: i64,
    offset: i64,
) -> StoreResult<(Vec<User>, i64)> {
    let users = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users ORDER BY id LIMIT $1 OFFSET $2"
    )))
    .bind(limit)
    .bind(offset)
    .fetch_all(&store.pool)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&store.pool)
        .await?;
    Ok((users, total))
}

pub(super) async fn upgrade_password_hash(
    store: &SqlStore,
    id: i64,
    old: &str,
    new: &str,
) -> StoreResult<()> {
    // Only replaces the hash that was verified, so a password change racing with a login
    // is never undone.
    sqlx::query("UPDATE users SET password_hash = $1 WHERE id = $2 AND password_hash = $3")
        .bind(new)
        .bind(id)
        .bind(old)
        .execute(&store.pool)
        .await?;
    Ok(())
}

pub(super) async fn change_password(
    store: &SqlStore,
    id: i64,
    hash: &str,
    audit: NewAuditEntry,
    revoke_api_keys: Option<NewAuditEntry>,
) -> StoreResult<Vec<i64>> {
    let mut tx = store.begin_audited().await?;
    let changed = sqlx::query("UPDATE users SET password_hash = $1, updated_at = $2 WHERE id = $3")
        .bind(hash)
        .bind(audit.at)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if changed == 0 {
        return Err(StoreError::NotFound);
    }
    store.insert_audit(&mut tx, &audit).await?;
    let revoked = match revoke_api_keys {
        Some(entry) => store.delete_keys_in(&mut tx, id, entry).await?,
        None => Vec::new(),
    };
    tx.commit().await?;
    Ok(revoked)
}

pub(super) async fn update_user(
    store: &SqlStore,
    id: i64,
    patch: UserPatch,
    audit: Vec<NewAuditEntry>,
) -> StoreResult<User> {
    let mut tx = store.begin_audited().await?;
    let admins = active_admins(&mut tx).await?;
    let user = user_in(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
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
    .await?;
    for entry in &audit {
        store.insert_audit(&mut tx, entry).await?;
    }
    let updated = user_in(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
    tx.commit().await?;
    Ok(updated)
}

pub(super) async fn delete_user(
    store: &SqlStore,
    id: i64,
    audit: NewAuditEntry,
) -> StoreResult<()> {
    let mut tx = store.begin_audited().await?;
    let admins = active_admins(&mut tx).await?;
    let user = user_in(&mut tx, id).await?.ok_or(StoreError::NotFound)?;
    if user.role == "admin"
        && !user.disabled
        && admins.iter().filter(|admin| **admin != id).count() == 0
    {
        return Err(StoreError::Conflict(
            "the last admin cannot be deleted".into(),
        ));
    }
    for statement in crate::store::USER_OWNED_TABLES {
        sqlx::query(*statement).bind(id).execute(&mut *tx).await?;
    }
    sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE audit_log SET ip_address = NULL, user_agent = NULL, pii_salt = NULL \
         WHERE user_id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    store.insert_audit(&mut tx, &audit).await?;
    tx.commit().await?;
    Ok(())
}
