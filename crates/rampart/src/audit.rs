//! The tamper-evident audit trail (SPEC §7).
//!
//! Every security event becomes one `audit_log` row, written in the same transaction as
//! the change it records. Each row's `hash` is an HMAC-SHA256, keyed by `audit.chain_key`,
//! over its fields and the previous row's hash, so editing, deleting or recomputing rows
//! without the key breaks the chain that `rampart audit verify` walks. Two sealed records
//! bound the chain: the head (last id and hash, updated in the same transaction as each
//! append, so cutting rows off the end shows) and, after a purge, the `audit_purged` row
//! that names the hash the purge cut at (so cutting rows off the start shows).
//! Rows written before the chain was keyed (plain SHA-256) are checked as before, up to
//! the switch-over, which is read from the trail itself and sealed, with the head, once:
//! when the chain is first opened with its key. After that a chain record without its
//! seal is tampering, never something to seal.
//! The client IP and user agent enter the hash through a salted digest: pseudonymising a
//! deleted user's rows erases those fields and the salt but keeps the digest, so the
//! chain still verifies while the personal data is gone.

use serde_json::Value;

use crate::chain::constant_time_eq;
pub use crate::chain::{
    AuditRecord, ChainKey, GENESIS, HEAD, LEGACY_END, LEGACY_START, NewAuditEntry, PURGED,
    REDACTED, RequestContext, SealedEntry, keyed_row_hash, pii_digest, redact, row_hash, seal,
};
use crate::store::{AuditItem, ChainRecord, Store, StoreResult};

pub mod config;
pub mod export;
pub mod throttle;

/// Writes `entry` without making the request wait for it, after the entries queued before
/// it ([`Store::append_audit_later`]); a failure is logged. For events that record a
/// refusal rather than a change (there is no transaction to join).
pub fn record_in_background(store: std::sync::Arc<dyn Store>, entry: NewAuditEntry) {
    store.append_audit_later(entry);
}

/// Actions anyone can cause on an account without being its owner (a guessed password, a
/// stolen refresh token): the IP and user agent on them may be someone else's.
const ATTEMPTED_BY_ANYONE: [&str; 3] = ["login_failed", "locked_out", "token_reused"];

/// Keys of `details` that describe the subject of a row, kept when someone else caused it.
const ABOUT_THE_SUBJECT: [&str; 13] = [
    "action",
    "from",
    "to",
    "role",
    "tier",
    "disabled",
    "order_limits",
    "reason",
    "scope",
    "seconds",
    "family",
    "account_id",
    "api_key_id",
];

/// `record` as exported to `subject` (GDPR portability): whole when the subject caused it;
/// otherwise only what it says about the subject (action, time, details about them), with
/// no IP, user agent or identity of whoever caused it (an admin, or a stranger guessing a
/// password), as that is another person's data.
pub fn for_subject(record: &AuditRecord, subject: i64) -> Value {
    let details: Value = serde_json::from_str(&record.details).unwrap_or(Value::Null);
    let by_another = details
        .get("by")
        .is_some_and(|by| by.as_i64() != Some(subject));
    if !by_another && !ATTEMPTED_BY_ANYONE.contains(&record.action.as_str()) {
        return serde_json::to_value(record).unwrap_or(Value::Null);
    }
    let about: serde_json::Map<String, Value> = match details {
        Value::Object(fields) => fields
            .into_iter()
            .filter(|(key, _)| ABOUT_THE_SUBJECT.contains(&key.as_str()))
            .collect(),
        _ => serde_json::Map::new(),
    };
    serde_json::json!({
        "id": record.id,
        "at": crate::time_format::rfc3339(record.at),
        "user_id": record.user_id,
        "action": record.action,
        "details": about,
        "caused_by_subject": false,
    })
}

/// Applies retention: deletes the entries older than `age` at `now` (unix seconds) and, in
/// the same transaction, records the purge ([`PURGED`], with the age, the cutoff, the count
/// and the hash it cut at) as made by `by` under `request_id`. `rampart audit purge` and
/// the daily run of `serve` both come here. Returns how many entries were deleted.
///
/// # Errors
/// The store fails.
pub async fn purge_older_than(
    store: &dyn Store,
    age: std::time::Duration,
    now: i64,
    by: &str,
    request_id: &str,
) -> StoreResult<u64> {
    let cutoff = now.saturating_sub(i64::try_from(age.as_secs()).unwrap_or(i64::MAX / 2));
    let context = RequestContext {
        ip: None,
        user_agent: Some(by.to_owned()),
        request_id: request_id.to_owned(),
    };
    let entry = NewAuditEntry::new(
        now,
        PURGED,
        None,
        serde_json::json!({ "older_than_seconds": age.as_secs(), "cutoff": cutoff }),
        &context,
    );
    store.purge_audit(cutoff, entry).await
}

/// What `rampart audit verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verification {
    /// Every row checked out, from the chain's start (or the last purge's anchor) to the
    /// sealed head.
    Intact {
        /// How many rows were checked.
        rows: u64,
        /// How many of them predate the keyed chain and were checked with plain SHA-256
        /// (a legacy row proves less: anyone can recompute it).
        legacy_rows: u64,
        /// The `audit_purged` row whose anchor the first row links to, if any.
        anchor: Option<i64>,
        /// The sealed head: the last row's id and hash (row 0 and [`GENESIS`] before the
        /// first row). Worth recording outside the database: someone with write access
        /// who rewrites the whole trail as plain SHA-256 rows and drops the chain records
        /// makes it look like a trail never keyed, and only a record kept elsewhere shows
        /// that the head went back.
        head: (i64, String),
        /// The last row checked with plain SHA-256 (the switch-over), if the trail has one.
        legacy_end: Option<i64>,
    },
    /// The first row that does not check out.
    Broken {
        /// Its id (for a missing start or end, the row next to the gap; 0 for none).
        id: i64,
        /// Why.
        reason: &'static str,
    },
}

/// Walks the trail in id order, as of one moment, and checks every hash and link, that
/// every chain record carries its seal, that the first row starts the chain (or links to
/// the hash the last purge cut at, or is the first row recorded at the switch-over), that
/// the recorded switch-over is there, and that the last row is the sealed head. Rows
/// appended while it runs (after the head it read) are not checked.
///
/// # Errors
/// The store fails.
pub async fn verify(store: &dyn Store, key: &ChainKey) -> StoreResult<Verification> {
    let mut walk = Walk::new(key);
    store
        .audit_snapshot(&mut |item| match item {
            AuditItem::Chain(records) => walk.chain(records),
            AuditItem::Row(record) => walk.row(record),
        })
        .await?;
    Ok(walk.finish())
}

/// The state of one [`verify`] walk.
struct Walk<'k> {
    key: &'k ChainKey,
    head: Option<ChainRecord>,
    legacy_start: Option<ChainRecord>,
    legacy_end: Option<ChainRecord>,
    saw_legacy_end: bool,
    first: Option<(i64, String)>,
    previous: Option<(i64, String)>,
    anchor: Option<(i64, String)>,
    rows: u64,
    legacy_rows: u64,
    broken: Option<Verification>,
}

impl<'k> Walk<'k> {
    fn new(key: &'k ChainKey) -> Self {
        Self {
            key,
            head: None,
            legacy_start: None,
            legacy_end: None,
            saw_legacy_end: false,
            first: None,
            previous: None,
            anchor: None,
            rows: 0,
            legacy_rows: 0,
            broken: None,
        }
    }

    fn fail(&mut self, id: i64, reason: &'static str) -> bool {
        self.broken = Some(Verification::Broken { id, reason });
        false
    }

    fn chain(&mut self, records: Vec<ChainRecord>) -> bool {
        for record in records {
            if record.mac.is_none() {
                return self.fail(
                    record.row_id,
                    "a chain record (head or switch-over) carries no seal (it was written or edited without the key)",
                );
            }
            if !self.key.record_is_sealed(&record) {
                return self.fail(
                    record.row_id,
                    "a chain record (head or switch-over) was edited or was sealed with another key",
                );
            }
            match record.name.as_str() {
                HEAD => self.head = Some(record),
                LEGACY_START => self.legacy_start = Some(record),
                LEGACY_END => self.legacy_end = Some(record),
                _ => {}
            }
        }
        if self.head.is_none() {
            return self.fail(0, "the chain's head record is missing");
        }
        if self.legacy_start.is_some() != self.legacy_end.is_some() {
            return self.fail(
                0,
                "one of the switch-over records (legacy_start, legacy_end) is missing",
            );
        }
        true
    }

    fn row(&mut self, record: AuditRecord) -> bool {
        self.rows += 1;
        if self.first.is_none() {
            self.first = Some((record.id, record.prev_hash.clone()));
        }
        if let Some((_, previous)) = &self.previous
            && *previous != record.prev_hash
        {
            return self.fail(
                record.id,
                "does not link to the row before it (a row was deleted or edited)",
            );
        }
        if let Some(salt) = &record.pii_salt
            && pii_digest(
                salt,
                record.ip_address.as_deref(),
                record.user_agent.as_deref(),
            ) != record.pii_digest
        {
            return self.fail(record.id, "its IP address or user agent was edited");
        }
        let legacy = self
            .legacy_end
            .as_ref()
            .is_some_and(|end| record.id <= end.row_id);
        let expected = if legacy {
            self.legacy_rows += 1;
            row_hash(
                &record.prev_hash,
                record.at,
                record.user_id,
                &record.action,
                &record.details,
                &record.request_id,
                &record.pii_digest,
            )
        } else {
            keyed_row_hash(
                self.key,
                &record.prev_hash,
                record.at,
                record.user_id,
                &record.action,
                &record.details,
                &record.request_id,
                &record.pii_digest,
            )
        };
        if !constant_time_eq(expected.as_bytes(), record.hash.as_bytes()) {
            return self.fail(
                record.id,
                "its contents do not match its hash (the row was edited, or hashed without the chain key)",
            );
        }
        if let Some(end) = &self.legacy_end
            && record.id == end.row_id
        {
            if record.hash != end.hash {
                return self.fail(
                    record.id,
                    "the last row before the keyed chain is not the one recorded at the switch-over",
                );
            }
            self.saw_legacy_end = true;
        }
        if !legacy && record.action == PURGED {
            let cut = serde_json::from_str::<Value>(&record.details)
                .ok()
                .and_then(|details| details.get("anchor")?.as_str().map(str::to_owned));
            if let Some(cut) = cut {
                self.anchor = Some((record.id, cut));
            }
        }
        self.previous = Some((record.id, record.hash));
        true
    }

    fn finish(mut self) -> Verification {
        if let Some(broken) = self.broken.take() {
            return broken;
        }
        // The start: the first row opens the chain, or links to where the last purge cut,
        // or is the first row recorded at the switch-over.
        if let Some((id, prev)) = &self.first {
            let starts = match &self.anchor {
                Some((_, cut)) => prev == cut,
                None => {
                    prev == GENESIS
                        || self
                            .legacy_start
                            .as_ref()
                            .is_some_and(|start| start.row_id == *id && start.hash == *prev)
                }
            };
            if !starts {
                return Verification::Broken {
                    id: *id,
                    reason: "the first row does not start the chain or link to the last purge's anchor (rows were removed from the start)",
                };
            }
        }
        // The switch-over: its last legacy row is there, unless a purge removed it.
        if let Some(end) = &self.legacy_end
            && !self.saw_legacy_end
        {
            let purged_away = self.anchor.is_some()
                && self.first.as_ref().is_some_and(|(id, _)| *id > end.row_id);
            if !purged_away {
                return Verification::Broken {
                    id: end.row_id,
                    reason: "the last row before the keyed chain, recorded at the switch-over, is missing",
                };
            }
        }
        // The end: the last row is the sealed head (row 0 and the chain's start for a
        // trail with no rows yet).
        let Some(head) = self.head.take() else {
            return Verification::Broken {
                id: 0,
                reason: "the chain's head record is missing",
            };
        };
        let ends = match &self.previous {
            Some((id, hash)) => head.row_id == *id && head.hash == *hash,
            None => head.row_id == 0 && head.hash == GENESIS,
        };
        if !ends {
            return Verification::Broken {
                id: head.row_id,
                reason: "the last row is not the recorded head (rows were removed from the end)",
            };
        }
        Verification::Intact {
            rows: self.rows,
            legacy_rows: self.legacy_rows,
            anchor: self.anchor.map(|(id, _)| id),
            head: (head.row_id, head.hash),
            legacy_end: self.legacy_end.map(|end| end.row_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let redacted = redact(json!({
            "username": "alice",
            "password": "hunter2",
            "nested": {"refresh_token": "abc", "api_key": "k", "list": [{"secret": 1}]},
            "user_id": 4,
        }));
        let text = redacted.to_string();
        for secret in ["hunter2", "\"abc\"", "\"k\""] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(redacted["username"], "alice");
        assert_eq!(redacted["user_id"], 4);
        assert_eq!(redacted["nested"]["list"][0]["secret"], REDACTED);
        let flags = redact(json!({ "cookie": true, "api_key": null, "token": 1234 }));
        assert_eq!(
            flags,
            json!({ "cookie": true, "api_key": null, "token": REDACTED })
        );
    }

    #[test]
    fn the_keyed_hash_needs_the_key() {
        let key = ChainKey::new("k");
        let keyed = keyed_row_hash(&key, GENESIS, 1, None, "a", "{}", "r", "d");
        assert_ne!(keyed, row_hash(GENESIS, 1, None, "a", "{}", "r", "d"));
        assert_ne!(
            keyed,
            keyed_row_hash(
                &ChainKey::new("other"),
                GENESIS,
                1,
                None,
                "a",
                "{}",
                "r",
                "d"
            )
        );
        assert_eq!(
            keyed,
            keyed_row_hash(&key, GENESIS, 1, None, "a", "{}", "r", "d")
        );
    }

    #[test]
    fn a_changed_field_changes_the_hash() {
        let base = row_hash(GENESIS, 1, Some(1), "login_success", "{}", "r", "d");
        assert_ne!(
            base,
            row_hash(GENESIS, 2, Some(1), "login_success", "{}", "r", "d")
        );
        assert_ne!(
            base,
            row_hash(GENESIS, 1, None, "login_success", "{}", "r", "d")
        );
        assert_ne!(
            base,
            row_hash(GENESIS, 1, Some(1), "login_failed", "{}", "r", "d")
        );
        // Length prefixes keep field boundaries: moving a character across them matters.
        assert_ne!(
            row_hash(GENESIS, 1, Some(1), "ab", "c", "r", "d"),
            row_hash(GENESIS, 1, Some(1), "a", "bc", "r", "d")
        );
    }
}
