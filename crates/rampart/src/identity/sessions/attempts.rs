//! Counting password checks against their limits: reserved before the check, released or
//! recorded as a failure after it, with the lockouts that follow.

use serde_json::json;

use crate::audit::{NewAuditEntry, RequestContext};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{Attempt, LockScope, User};

use super::seconds;

fn locked_out(seconds: i64) -> ApiError {
    ApiError::LockedOut {
        retry_after: std::time::Duration::from_secs(u64::try_from(seconds.max(1)).unwrap_or(1)),
    }
}

/// One counter a password check counts against.
#[derive(Debug, Clone)]
pub(crate) struct Counted {
    scope: LockScope,
    key: String,
    max: u32,
}

impl Counted {
    /// Logins from one IP (its IPv6 prefix).
    pub(super) fn ip(state: &AppState, ip: &str) -> Self {
        Self {
            scope: LockScope::Ip,
            key: ip.to_owned(),
            max: state.config.login.max_failures_per_ip,
        }
    }

    /// Logins to one account, keyed on [`account_key`].
    pub(super) fn account(state: &AppState, username: &str) -> Self {
        Self {
            scope: LockScope::Account,
            key: account_key(username),
            max: state.config.login.max_failures_per_account,
        }
    }

    /// Password confirmations of one user: its own counter, with the account's limit.
    pub(crate) fn confirmation(state: &AppState, user: &User) -> Self {
        Self {
            scope: LockScope::Confirm,
            key: user.id.to_string(),
            max: state.config.login.max_failures_per_account,
        }
    }
}

/// The account counter's key: a fixed-size digest of the lower-cased username, whatever
/// its length, and the same whether or not the account exists.
pub(crate) fn account_key(username: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(username.to_lowercase().as_bytes()))
}

/// Reserves one password check against every counter, atomically each: counted before
/// the check, so that parallel guesses never run more checks than the limits allow. 429
/// `locked_out` if any is spent (the reservations already made are handed back).
pub(crate) async fn reserve(state: &AppState, counters: &[Counted]) -> Result<(), ApiError> {
    let now = state.now();
    let window = seconds(state.config.login.failure_window);
    let sessions = &state.stores.sessions;
    for (index, counter) in counters.iter().enumerate() {
        let outcome = sessions
            .reserve_attempt(counter.scope, &counter.key, counter.max, window, now)
            .await;
        let refused = match outcome {
            Ok(Attempt::Allowed) => continue,
            Ok(Attempt::Locked(seconds)) => locked_out(seconds),
            Err(error) => error.into(),
        };
        for earlier in &counters[..index] {
            sessions
                .release_attempt(earlier.scope, &earlier.key, false)
                .await?;
        }
        return Err(refused);
    }
    Ok(())
}

/// Hands the reservations back: a correct password, or a check that never ran. A success
/// clears the IP's failures (SPEC §2) and the user's own confirmation failures (only the
/// password's holder gets there, and the change or deletion that follows ends every other
/// login); never the account's, which many parties share (a victim's bot logging in must
/// not hand a guesser a new allowance): only its window or an admin clears it. No success
/// forgives another attempt still in flight.
pub(crate) async fn release(
    state: &AppState,
    counters: &[Counted],
    succeeded: bool,
) -> Result<(), ApiError> {
    for counter in counters {
        let forget = succeeded && counter.scope != LockScope::Account;
        state
            .stores
            .sessions
            .release_attempt(counter.scope, &counter.key, forget)
            .await?;
    }
    Ok(())
}

/// Settles the reservations as a failed check: audits it (`login_failed` with `details`)
/// and every lockout it started; returns the longest lockout started, if any.
pub(crate) async fn record_failure(
    state: &AppState,
    context: &RequestContext,
    counters: &[Counted],
    user_id: Option<i64>,
    details: serde_json::Value,
) -> Result<Option<i64>, ApiError> {
    state.metrics.failed_logins.inc();
    let now = state.now();
    let window = seconds(state.config.login.failure_window);
    let sessions = &state.stores.sessions;
    let mut started = Vec::new();
    for counter in counters {
        if let Some(seconds) = sessions
            .record_failure(counter.scope, &counter.key, counter.max, window, now)
            .await?
        {
            started.push((counter.scope, seconds));
        }
    }
    let data = &state.stores.data;
    data.append_audit(NewAuditEntry::new(
        now,
        "login_failed",
        user_id,
        details,
        context,
    ))
    .await?;
    for (scope, seconds) in &started {
        data.append_audit(NewAuditEntry::new(
            now,
            "locked_out",
            user_id,
            json!({ "scope": scope.as_str(), "seconds": seconds }),
            context,
        ))
        .await?;
    }
    Ok(started.iter().map(|(_, seconds)| *seconds).max())
}
