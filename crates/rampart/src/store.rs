//! The storage boundary: what the gateway keeps, and the two places it can keep it.
//!
//! [`Store`] holds durable records (users, audit trail, API keys, trading accounts);
//! [`SessionStore`] holds short-lived security state (refresh-token families, lockout
//! counters, nonces). The SQL implementation in [`sql`] serves both for SQLite and
//! PostgreSQL; [`redis`] serves [`SessionStore`] for fleets. Nothing above this module
//! knows which one it talks to.

pub mod redis;
pub mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use serde::Serialize;

use crate::audit::{AuditRecord, NewAuditEntry};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule or invariant was broken; the text is safe to show.
    #[error("{0}")]
    Conflict(String),
    /// The record does not exist.
    #[error("not found")]
    NotFound,
    /// The store could not be reached.
    #[error("store unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// Anything else.
    #[error("store error")]
    Other(#[source] anyhow::Error),
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// A user account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Numeric id.
    pub id: i64,
    /// As registered; unique case-insensitively.
    pub username: String,
    /// As registered; unique case-insensitively.
    pub email: String,
    /// PHC string (argon2id) or an imported legacy hash.
    pub password_hash: String,
    /// Role name.
    pub role: String,
    /// Rate-limit tier: `standard` or `premium`.
    pub tier: String,
    /// Disabled users cannot log in.
    pub disabled: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// A user to create.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Username.
    pub username: String,
    /// Email.
    pub email: String,
    /// Hash of the password.
    pub password_hash: String,
    /// Role unless this is the very first user, who becomes `admin`.
    pub role: String,
    /// Always `admin`, whether first or not (operator console only).
    pub force_admin: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// A change to a user made by an admin.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// New role.
    pub role: Option<String>,
    /// New tier.
    pub tier: Option<String>,
    /// Disable or enable.
    pub disabled: Option<bool>,
}

/// A login session: every refresh token descending from one login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Family {
    /// Random id, also the `sid` claim of its access tokens.
    pub id: String,
    /// Owner.
    pub user_id: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// When the family's newest refresh token expires (unix seconds).
    pub expires_at: i64,
    /// Unix seconds, when revoked.
    pub revoked_at: Option<i64>,
    /// SHA-256 of the CSRF token, for cookie sessions.
    #[serde(skip)]
    pub csrf_hash: Option<String>,
}

/// The outcome of presenting a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was current; it is now used and the new one replaces it.
    Rotated(Family),
    /// The token had already been rotated: the family is now revoked.
    Reused(Family),
    /// Unknown, expired or revoked.
    Invalid,
}

/// Which counter a failed login counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockScope {
    /// Per client IP.
    Ip,
    /// Per account (lower-cased username).
    Account,
}

impl LockScope {
    /// Short name used in keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Account => "account",
        }
    }
}

/// Filters for listing the audit log.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Only this user's entries.
    pub user_id: Option<i64>,
    /// Only this action.
    pub action: Option<String>,
    /// Entries at or after (unix seconds).
    pub since: Option<i64>,
    /// Entries before (unix seconds).
    pub until: Option<i64>,
    /// Entries with an id below this (cursor, newest first).
    pub before_id: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

/// An API key as stored: the key only as a hash, the signing secret sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Numeric id.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// The owner's label for it.
    pub name: String,
    /// The public part of the key that finds the row (`rk_<prefix>_…`).
    pub prefix: String,
    /// Lowercase hex SHA-256 of the whole key.
    pub key_hash: String,
    /// The signing secret, sealed by the key ring and bound to `prefix`.
    pub secret: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
}

/// A user's connection to a broker; the broker's API key is sealed by the key ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TradingAccount {
    /// Numeric id.
    pub id: i64,
    /// Random id chosen before the row is written; binds the sealed key to the row.
    pub uid: String,
    /// Owner.
    pub user_id: i64,
    /// The owner's label for it.
    pub name: String,
    /// Broker name.
    pub broker: String,
    /// The broker host's base URL, as the owner wrote it.
    pub host_url: String,
    /// The broker API key, sealed and bound to `uid`.
    pub api_key: String,
    /// The key as shown: `abcd...wxyz`, or `***` for short keys.
    pub api_key_masked: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// A change to a trading account; `None` keeps a field.
#[derive(Debug, Clone, Default)]
pub struct AccountPatch {
    /// New name.
    pub name: Option<String>,
    /// New broker.
    pub broker: Option<String>,
    /// New host URL (already checked).
    pub host_url: Option<String>,
    /// New sealed key and its mask.
    pub api_key: Option<(String, String)>,
}

/// Which kind of sealed value, for `rampart keys rotate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealedKind {
    /// `api_keys.secret`, bound to `prefix`.
    ApiKeySecret,
    /// `trading_accounts.api_key`, bound to `uid`.
    AccountKey,
}

impl SealedKind {
    /// Every kind, in the order rotation walks them.
    pub const ALL: [Self; 2] = [Self::ApiKeySecret, Self::AccountKey];

    /// The name used in reports and audit details.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKeySecret => "api_key_secrets",
            Self::AccountKey => "account_keys",
        }
    }
}

/// One record of `audit_chain`: a row id and hash the audit chain is checked against,
/// sealed with the chain key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRecord {
    /// `head`, `legacy_start` or `legacy_end`.
    pub name: String,
    /// The row it names.
    pub row_id: i64,
    /// That row's hash (for `legacy_start`, the hash the row links to).
    pub hash: String,
    /// HMAC of the above under the chain key; a record without one is not trusted.
    pub mac: Option<String>,
}

/// What [`Store::audit_snapshot`] hands to its visitor.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one at a time, never stored
pub enum AuditItem {
    /// The chain records, before any row.
    Chain(Vec<ChainRecord>),
    /// One row, in id order.
    Row(AuditRecord),
}

/// One sealed value and what it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedValue {
    /// Row id.
    pub id: i64,
    /// The row's binding (`prefix` or `uid`).
    pub binding: String,
    /// The broker host a trading account's key is bound to; `None` for other kinds.
    pub host_url: Option<String>,
    /// The stored ciphertext.
    pub sealed: String,
}

/// Durable records.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Checks the database answers.
    async fn ping(&self) -> StoreResult<()>;

    /// Creates a user; the first user ever becomes `admin`, race-free.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the username or email is taken.
    async fn create_user(&self, user: NewUser, audit: NewAuditEntry) -> StoreResult<User>;
    /// A user by id.
    async fn user_by_id(&self, id: i64) -> StoreResult<Option<User>>;
    /// A user by username, case-insensitively.
    async fn user_by_username(&self, username: &str) -> StoreResult<Option<User>>;
    /// A page of users, by id, and the total count.
    async fn list_users(&self, limit: i64, offset: i64) -> StoreResult<(Vec<User>, i64)>;
    /// Replaces a password hash without an audit entry (transparent rehash on login).
    async fn upgrade_password_hash(&self, id: i64, old: &str, new: &str) -> StoreResult<()>;
    /// Replaces a password hash, with its audit entry.
    async fn change_password(&self, id: i64, hash: &str, audit: NewAuditEntry) -> StoreResult<()>;
    /// Applies an admin's change; refuses to demote or disable the last active admin.
    async fn update_user(
        &self,
        id: i64,
        patch: UserPatch,
        audit: Vec<NewAuditEntry>,
    ) -> StoreResult<User>;
    /// Deletes a user and everything they own, pseudonymises their audit entries;
    /// refuses to delete the last active admin.
    async fn delete_user(&self, id: i64, audit: NewAuditEntry) -> StoreResult<()>;

    /// Appends an audit entry on its own.
    async fn append_audit(&self, entry: NewAuditEntry) -> StoreResult<()>;
    /// Audit entries, newest first.
    async fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>>;
    /// Audit entries in id order after `after_id`, for verification and export.
    async fn audit_page(&self, after_id: i64, limit: i64) -> StoreResult<Vec<AuditRecord>>;
    /// Deletes audit entries older than `before` (unix seconds) and, in the same
    /// transaction, appends `audit` (an `audit_purged` entry) with the count and the hash
    /// the purge cut at (`removed`, `anchor`); returns how many were deleted.
    async fn purge_audit(&self, before: i64, audit: NewAuditEntry) -> StoreResult<u64>;
    /// The audit chain's records (head and switch-over).
    async fn audit_chain(&self) -> StoreResult<Vec<ChainRecord>>;
    /// Reads the trail as of one moment, for verification: first the chain records, then
    /// every row up to the head's row id in id order (all rows if there is no head), each
    /// handed to `visit` until it returns `false`. Rows appended meanwhile are not seen.
    async fn audit_snapshot(
        &self,
        visit: &mut (dyn FnMut(AuditItem) -> bool + Send),
    ) -> StoreResult<()>;
    /// Stores an API key unless the owner already has `max` keys; its id joins the audit
    /// details as `api_key_id`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] at the limit or for a repeated prefix.
    async fn create_api_key(
        &self,
        key: ApiKey,
        max: i64,
        audit: NewAuditEntry,
    ) -> StoreResult<ApiKey>;
    /// Every API key of a user, oldest first.
    async fn api_keys_of(&self, user_id: i64) -> StoreResult<Vec<ApiKey>>;
    /// The API key with this prefix.
    async fn api_key_by_prefix(&self, prefix: &str) -> StoreResult<Option<ApiKey>>;
    /// Deletes a user's API key.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the user has no key with this id.
    async fn delete_api_key(&self, user_id: i64, id: i64, audit: NewAuditEntry) -> StoreResult<()>;

    /// Stores a trading account unless the owner already has `max`; its id joins the audit
    /// details as `account_id`.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] at the limit.
    async fn create_account(
        &self,
        account: TradingAccount,
        max: i64,
        audit: NewAuditEntry,
    ) -> StoreResult<TradingAccount>;
    /// Every trading account of a user, oldest first.
    async fn accounts_of(&self, user_id: i64) -> StoreResult<Vec<TradingAccount>>;
    /// A user's trading account; another user's is `None`.
    async fn account(&self, user_id: i64, id: i64) -> StoreResult<Option<TradingAccount>>;
    /// Changes a user's trading account.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the user has no account with this id.
    async fn update_account(
        &self,
        user_id: i64,
        id: i64,
        patch: AccountPatch,
        audit: NewAuditEntry,
    ) -> StoreResult<TradingAccount>;
    /// Deletes a user's trading account.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the user has no account with this id.
    async fn delete_account(&self, user_id: i64, id: i64, audit: NewAuditEntry) -> StoreResult<()>;

    /// Sealed values of one kind with ids above `after_id`, in id order.
    async fn sealed_values(
        &self,
        kind: SealedKind,
        after_id: i64,
        limit: i64,
    ) -> StoreResult<Vec<SealedValue>>;
    /// Replaces a sealed value only if it still is `old`; `false` when it changed meanwhile.
    async fn reseal(&self, kind: SealedKind, id: i64, old: &str, new: &str) -> StoreResult<bool>;
    /// Overwrites one sealed value without checks; only for rotation tests.
    #[doc(hidden)]
    async fn tamper_sealed_for_test(
        &self,
        kind: SealedKind,
        id: i64,
        value: &str,
    ) -> StoreResult<()>;

    /// Overwrites one audit row's details; only for tamper-detection tests.
    #[doc(hidden)]
    async fn tamper_audit_for_test(&self, id: i64, details: &str) -> StoreResult<()>;
}

/// Short-lived security state.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Starts a family with its first refresh token (stored as a hash).
    async fn create_family(&self, family: &Family, token_hash: &str) -> StoreResult<()>;
    /// Uses a refresh token once: marks it used and stores its successor atomically.
    /// A token that was already used revokes its whole family.
    async fn rotate(
        &self,
        token_hash: &str,
        next_hash: &str,
        now: i64,
        expires_at: i64,
    ) -> StoreResult<Rotation>;
    /// A family by id.
    async fn family(&self, id: &str) -> StoreResult<Option<Family>>;
    /// Every family of a user that is neither revoked nor expired.
    async fn active_families(&self, user_id: i64, now: i64) -> StoreResult<Vec<Family>>;
    /// Revokes one family.
    async fn revoke_family(&self, id: &str, now: i64) -> StoreResult<()>;
    /// Revokes every family of a user except `keep`; returns the revoked ids.
    async fn revoke_user(
        &self,
        user_id: i64,
        keep: Option<&str>,
        now: i64,
    ) -> StoreResult<Vec<String>>;
    /// Families revoked at or after `since` (unix seconds), for the revocation cache.
    async fn revoked_since(&self, since: i64) -> StoreResult<Vec<(String, i64)>>;
    /// Deletes every family and token of a user.
    async fn delete_user_sessions(&self, user_id: i64) -> StoreResult<()>;

    /// Counts a failed login; returns how long the key is locked out, if it now is.
    async fn record_failure(
        &self,
        scope: LockScope,
        key: &str,
        max_failures: u32,
        window: i64,
        now: i64,
    ) -> StoreResult<Option<i64>>;
    /// Seconds left of a lockout, if the key is locked out.
    async fn lockout(&self, scope: LockScope, key: &str, now: i64) -> StoreResult<Option<i64>>;
    /// Forgets a key's failures and lockout.
    async fn clear_failures(&self, scope: LockScope, key: &str) -> StoreResult<()>;

    /// Records a request nonce; `false` when it was already seen within its lifetime.
    async fn claim_nonce(&self, nonce: &str, now: i64, ttl: i64) -> StoreResult<bool>;
    /// Checks the store answers.
    async fn ping(&self) -> StoreResult<()>;
}

/// The stores a running gateway uses.
#[derive(Clone)]
pub struct Stores {
    /// Durable records.
    pub data: Arc<dyn Store>,
    /// Security state (the database's or Redis').
    pub sessions: Arc<dyn SessionStore>,
}

/// Statements (one `$1` = user id) deleting what a user owns, run when the user is deleted.
/// Foreign keys cascade too; the explicit statements keep deletion independent of
/// SQLite's `foreign_keys` pragma.
pub(crate) const USER_OWNED_TABLES: &[&str] = &[
    "DELETE FROM api_keys WHERE user_id = $1",
    "DELETE FROM trading_accounts WHERE user_id = $1",
];
