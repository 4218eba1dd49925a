//! [`Store`] and [`SessionStore`] over SQL, for SQLite and PostgreSQL.
//!
//! Both backends run the same statements (SQLite accepts PostgreSQL's `$N` placeholders,
//! `RETURNING` and `ON CONFLICT`); the few differences — row locks and the lock that
//! serialises the audit chain — are constants per backend (`sqlite.rs`, `postgres.rs`).
//! Each backend has its own migration folder.
//!
//! The statements live in one file per seam — `audit`, `users`, `credentials` (API keys
//! and sealed values), `accounts`, `sessions` — written once against the names `Db`,
//! `SqlStore` and those constants. Each backend module compiles every seam file against
//! its own definitions of them, so one text serves both databases with full type checks.
//! `records` holds the [`Store`] implementation, which hands each operation to its seam.
//!
//! [`Store`]: crate::store::Store
//! [`SessionStore`]: crate::store::SessionStore

mod postgres;
mod sqlite;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::chain::NewAuditEntry;
use crate::store::{SealedKind, StoreError};

/// Every database error becomes a [`StoreError`] here, and only here: a broken uniqueness
/// rule is a conflict, a lost connection or exhausted pool is unavailability, the rest is
/// an error.
impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::Database(ref database) if database.is_unique_violation() => {
                Self::Conflict("already exists".into())
            }
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(error.into()),
            other => Self::Other(other.into()),
        }
    }
}

const USER_COLUMNS: &str = "id, username, email, password_hash, role, tier, disabled, created_at";

const FAMILY_COLUMNS: &str = "id, user_id, created_at, expires_at, revoked_at, csrf_hash";

const API_KEY_COLUMNS: &str = "id, user_id, name, prefix, key_hash, secret, created_at, expires_at";

const ACCOUNT_COLUMNS: &str = "id, uid, user_id, name, broker, host_url, api_key, \
                               api_key_masked, created_at, updated_at";

const AUDIT_COLUMNS: &str = "id, at, user_id, action, details, ip_address, user_agent, \
                             request_id, pii_salt, pii_digest, prev_hash, hash";

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
