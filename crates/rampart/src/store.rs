//! The storage boundary: what the gateway keeps, and the two places it can keep it.
//!
//! [`Store`] holds durable records (users, audit trail, API keys, trading accounts);
//! [`SessionStore`] holds short-lived security state (refresh-token families, lockout
//! counters, nonces). The SQL implementation in [`sql`] serves both for SQLite and
//! PostgreSQL; [`redis`] serves [`SessionStore`] for fleets. Nothing above this module
//! knows which one it talks to.

pub mod audit_writer;
pub mod redis;
pub mod sql;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

pub use crate::chain::ChainRecord;
use crate::chain::{AuditRecord, NewAuditEntry};
use crate::error::ApiError;

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
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct Family {
    /// Random id, also the `sid` claim of its access tokens.
    pub id: String,
    /// Owner.
    pub user_id: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// When the login ends (unix seconds): fixed at login, never moved by rotation.
    pub expires_at: i64,
    /// Unix seconds, when revoked.
    pub revoked_at: Option<i64>,
    /// SHA-256 (hex) of the current CSRF token, for cookie sessions.
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

/// Which counter a password check counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockScope {
    /// Logins per client IP (an IPv6 prefix); a successful login clears its failures.
    Ip,
    /// Logins per account, keyed on a fixed-size digest of the lower-cased username; a
    /// success never clears it.
    Account,
    /// Password confirmations (`PUT /users/me/password`, `DELETE /users/me`) per user id;
    /// independent of both login counters in either direction.
    Confirm,
}

impl LockScope {
    /// Short name used in keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ip => "ip",
            Self::Account => "account",
            Self::Confirm => "confirm",
        }
    }
}

/// One lockout counter, as every session store keeps it. The transitions below are the
/// whole semantics; the SQL store applies them to a locked row, the Redis store runs the
/// same steps in Lua.
///
/// `failures` are confirmed failures of the window, `pending` the attempts reserved and
/// not yet settled. An attempt is allowed while `failures + pending < max`; a refused
/// attempt changes nothing (it is not counted). A failure moves one attempt from `pending`
/// to `failures`; a success or an abandoned attempt only hands its own reservation back,
/// and may clear confirmed `failures` (the IP scope after a successful login), never
/// another client's reservation. When a window has passed, the next reservation starts a
/// new one with nothing counted (an attempt still in flight from the old window then counts
/// its failure in the new one); a reservation never settled (a crash) is forgotten so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct Counter {
    /// Confirmed failures in the window.
    pub failures: i64,
    /// Attempts reserved and not settled.
    pub pending: i64,
    /// Unix seconds the window started.
    pub window_start: i64,
    /// Unix seconds a lockout ends.
    pub locked_until: Option<i64>,
}

impl Counter {
    /// A fresh counter whose window starts `now`.
    pub fn new(now: i64) -> Self {
        Self {
            window_start: now,
            ..Self::default()
        }
    }

    /// Reserves an attempt, or says how long the key is refused.
    pub fn reserve(&mut self, now: i64, window: i64, max: u32) -> Attempt {
        if let Some(until) = self.locked_until.filter(|until| *until > now) {
            return Attempt::Locked(until - now);
        }
        if self.window_start <= now - window {
            *self = Self::new(now);
        }
        if self.failures + self.pending >= i64::from(max) {
            return Attempt::Locked((self.window_start + window - now).max(1));
        }
        self.pending += 1;
        Attempt::Allowed
    }

    /// Settles a reserved attempt as failed; the lockout's length if it started one.
    pub fn fail(&mut self, now: i64, window: i64, max: u32) -> Option<i64> {
        self.pending = (self.pending - 1).max(0);
        self.failures += 1;
        if self.failures >= i64::from(max) && self.locked_until.is_none_or(|until| until <= now) {
            self.locked_until = Some(now + window);
            return Some(window);
        }
        None
    }

    /// Hands a reserved attempt back; `forget_failures` also clears the confirmed ones.
    pub fn release(&mut self, forget_failures: bool) {
        self.pending = (self.pending - 1).max(0);
        if forget_failures {
            self.failures = 0;
        }
    }
}

/// The outcome of reserving a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The attempt is counted; verify the password, then report the outcome.
    Allowed,
    /// Too many failures (or attempts in flight): refused for this many seconds.
    Locked(i64),
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
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
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
    /// Replaces a password hash, with its audit entry; with `revoke_api_keys`, deletes every
    /// API key of the user in the same transaction, with that audit entry (its details get
    /// the deleted ids as `api_key_ids`). Returns the deleted keys' ids.
    async fn change_password(
        &self,
        id: i64,
        hash: &str,
        audit: NewAuditEntry,
        revoke_api_keys: Option<NewAuditEntry>,
    ) -> StoreResult<Vec<i64>>;
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
    /// Queues an audit entry to be appended in the background, after every entry queued
    /// before it; a failure is logged.
    fn append_audit_later(&self, entry: NewAuditEntry);
    /// Waits until every entry queued by [`Self::append_audit_later`] before this call is
    /// written (or its failure logged).
    async fn flush_audit(&self);
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
    /// The position of the newest entry of the credential-change log (0 when empty): the
    /// users whose API keys were deleted or changed, or who were changed in role, tier,
    /// name or disabled flag, or deleted (logged by triggers, migration 0005).
    async fn credential_change_head(&self) -> StoreResult<i64>;
    /// Entries of the credential-change log after position `after`, oldest first, at most
    /// `limit`: (position, user id).
    async fn credential_changes_after(
        &self,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, i64)>>;
    /// Deletes a user's API key.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the user has no key with this id.
    async fn delete_api_key(&self, user_id: i64, id: i64, audit: NewAuditEntry) -> StoreResult<()>;
    /// Deletes every API key of a user in one statement, a key created meanwhile included,
    /// with one audit entry (its details get the deleted ids as `api_key_ids`) unless none
    /// was deleted. Returns the deleted keys' ids.
    async fn delete_api_keys_of(&self, user_id: i64, audit: NewAuditEntry)
    -> StoreResult<Vec<i64>>;

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
    #[cfg(any(test, feature = "test-util"))]
    async fn tamper_sealed_for_test(
        &self,
        kind: SealedKind,
        id: i64,
        value: &str,
    ) -> StoreResult<()>;

    /// Overwrites one audit row's details; only for tamper-detection tests.
    #[cfg(any(test, feature = "test-util"))]
    async fn tamper_audit_for_test(&self, id: i64, details: &str) -> StoreResult<()>;
}

/// Short-lived security state.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Starts a family with its first refresh token (stored as a hash).
    async fn create_family(&self, family: &Family, token_hash: &str) -> StoreResult<()>;
    /// Uses a refresh token once: marks it used and stores its successor atomically.
    /// The successor expires at `expires_at` but never after its family; the family's own
    /// expiry never moves. `csrf_hash`, when given, replaces the family's CSRF token hash.
    /// A token that was already used revokes its whole family.
    async fn rotate(
        &self,
        token_hash: &str,
        next_hash: &str,
        now: i64,
        expires_at: i64,
        csrf_hash: Option<&str>,
    ) -> StoreResult<Rotation>;
    /// Replaces the CSRF token hash of a live family (neither revoked nor expired at
    /// `now`); `false` when there is none.
    async fn set_csrf_hash(&self, family_id: &str, csrf_hash: &str, now: i64) -> StoreResult<bool>;
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
    /// Revocations logged after `cursor` (exclusive; `""` for the oldest still kept), in
    /// log order, and the cursor of the last one (`cursor` itself when there is none).
    /// The log is ordered by the store (a row id, a stream id), never by any instance's
    /// clock; see [`crate::tokens::RevocationCache`] for how gaps are handled.
    async fn revocations_after(&self, cursor: &str) -> StoreResult<(Vec<String>, String)>;
    /// Whether the log's newest position ever handed out is below `cursor`: the log went
    /// backwards (a database restored, Redis restarted without persistence, the stream
    /// deleted), so a reader must start over.
    async fn revocation_log_rewound(&self, cursor: &str) -> StoreResult<bool>;
    /// Deletes every family and token of a user.
    async fn delete_user_sessions(&self, user_id: i64) -> StoreResult<()>;

    /// Reserves one password check for `key`, atomically ([`Counter::reserve`]): counted
    /// before the check, so that parallel attempts never run more checks than `max_failures`
    /// within the window. A refused attempt is not counted. Each allowed attempt is then
    /// settled once: [`Self::record_failure`] or [`Self::release_attempt`].
    async fn reserve_attempt(
        &self,
        scope: LockScope,
        key: &str,
        max_failures: u32,
        window: i64,
        now: i64,
    ) -> StoreResult<Attempt>;
    /// Hands back one reserved attempt (a success, or abandoned before its check); with
    /// `forget_failures`, the confirmed failures go too ([`Counter::release`]). Other
    /// attempts in flight stay counted.
    async fn release_attempt(
        &self,
        scope: LockScope,
        key: &str,
        forget_failures: bool,
    ) -> StoreResult<()>;
    /// Settles a reserved attempt as failed ([`Counter::fail`]); returns how long the key
    /// is locked out if this failure started a lockout.
    async fn record_failure(
        &self,
        scope: LockScope,
        key: &str,
        max_failures: u32,
        window: i64,
        now: i64,
    ) -> StoreResult<Option<i64>>;
    /// Forgets a key's counter entirely (an admin's unlock).
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

/// Unreachable-store errors, logged through one throttle: a store that is down fails
/// every request, and one line per [`crate::error::LOG_EVERY`] says so.
static STORE_UNAVAILABLE: crate::error::LogThrottle = crate::error::LogThrottle::new();

/// How a store failure reaches a client: a conflict or a missing row as themselves, an
/// unreachable store as 503 with `Retry-After`, anything else as 500.
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Conflict(what) => ApiError::Conflict(what.into()),
            StoreError::NotFound => ApiError::NotFound,
            StoreError::Unavailable(source) => {
                if let Some(held_back) = STORE_UNAVAILABLE.admit(crate::error::LOG_EVERY) {
                    tracing::error!(
                        error = %crate::error::chain_text(source.as_ref()),
                        held_back,
                        "store unavailable"
                    );
                }
                ApiError::ServiceUnavailable {
                    message: "A backing store is unavailable".into(),
                    retry_after: Some(Duration::from_secs(1)),
                }
            }
            StoreError::Other(source) => ApiError::Internal(source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_attempt_changes_nothing() {
        let mut counter = Counter::new(0);
        assert_eq!(counter.reserve(0, 100, 1), Attempt::Allowed);
        let before = counter;
        assert_eq!(counter.reserve(10, 100, 1), Attempt::Locked(90));
        assert_eq!(counter, before);
    }

    #[test]
    fn a_success_hands_back_only_its_own_attempt() {
        let mut counter = Counter::new(0);
        for _ in 0..3 {
            assert_eq!(counter.reserve(0, 100, 3), Attempt::Allowed);
        }
        counter.release(true);
        assert_eq!(counter.pending, 2);
        assert_eq!(counter.fail(1, 100, 3), None);
        assert_eq!(counter.fail(1, 100, 3), None);
        assert_eq!(counter.failures, 2);
        assert_eq!(counter.reserve(2, 100, 3), Attempt::Allowed);
        assert_eq!(counter.fail(2, 100, 3), Some(100));
        assert_eq!(counter.reserve(50, 100, 3), Attempt::Locked(52));
        // The lockout ends, and with it the window.
        assert_eq!(counter.reserve(102, 100, 3), Attempt::Allowed);
        assert_eq!((counter.failures, counter.pending), (0, 1));
    }
}
