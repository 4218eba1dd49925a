//! Aggregation of audit events a client can trigger at will (`rate_limit_exceeded`,
//! `suspicious_request`): one row per key and window, carrying how many events it stands for,
//! so that a flood of refused requests cannot flood the audit table.
//!
//! The count of a window is written with the next row of its key; the counts still held when
//! the gateway stops are written at shutdown ([`AuditThrottle::take_held_back`]), and those of
//! expired windows dropped to make room for new keys come back with the next rows to write
//! ([`AuditThrottle::rows`]), so no count is lost to a flood of new keys.

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::Value;

use crate::audit::{NewAuditEntry, RequestContext};

/// Most keys tracked at once; past this, events of new keys are counted but not written until
/// old windows expire, so memory stays bounded whatever the number of clients.
const MAX_KEYS: usize = 10_000;

/// Decides which occurrences of an event are written to the audit log.
#[derive(Debug)]
pub struct AuditThrottle {
    window: i64,
    keys: Mutex<Keys>,
}

#[derive(Debug, Default)]
struct Keys {
    windows: HashMap<String, Window>,
    /// Rows for the held-back counts of windows dropped to make room, not yet written.
    evicted: Vec<NewAuditEntry>,
}

#[derive(Debug)]
struct Window {
    started: i64,
    /// Occurrences since the row that opened the window.
    held_back: u64,
    /// The row that opened the window, to write the held-back count as at shutdown.
    pending: Option<Box<Pending>>,
}

/// What a key's held-back count is written as when no later occurrence writes it: the
/// row that opened its window, with `field` set to the count.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The audit action.
    pub action: &'static str,
    /// The user concerned.
    pub user_id: Option<i64>,
    /// The row's details, without the count.
    pub details: Value,
    /// The details field that carries the count.
    pub field: &'static str,
    /// Who made the request.
    pub context: RequestContext,
}

impl AuditThrottle {
    /// One row per key per `window_seconds`.
    pub fn new(window_seconds: i64) -> Self {
        Self {
            window: window_seconds.max(1),
            keys: Mutex::new(Keys::default()),
        }
    }

    /// `admit_with` without a row template.
    #[cfg(test)]
    fn admit(&self, key: &str, now: i64) -> Option<u64> {
        self.admit_with(key, now, || None)
    }

    /// Counts an occurrence of `key` at `now` (unix seconds). `Some(n)` means: write a row now,
    /// standing for this occurrence and the `n` held back since the previous row; that row,
    /// from `pending` (called only then), is also what the window's held-back count is written
    /// as should no later row of the key carry it (the gateway stops, the window is dropped).
    fn admit_with(
        &self,
        key: &str,
        now: i64,
        pending: impl FnOnce() -> Option<Pending>,
    ) -> Option<u64> {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Keys { windows, evicted } = &mut *keys;
        if let Some(window) = windows.get_mut(key) {
            if now - window.started < self.window {
                window.held_back += 1;
                return None;
            }
            let held_back = window.held_back;
            *window = Window {
                started: now,
                held_back: 0,
                pending: pending().map(Box::new),
            };
            return Some(held_back);
        }
        if windows.len() >= MAX_KEYS {
            let span = self.window;
            windows.retain(|_, entry| {
                let live = now - entry.started < span;
                if !live && let Some(row) = held_back_row(entry, now, "window_evicted") {
                    evicted.push(row);
                }
                live
            });
            if windows.len() >= MAX_KEYS {
                return None;
            }
        }
        windows.insert(
            key.to_owned(),
            Window {
                started: now,
                held_back: 0,
                pending: pending().map(Box::new),
            },
        );
        Some(0)
    }

    /// Counts an occurrence of `key` at `now` whose row, when one is written, is `row` with
    /// its `field` set to the count it stands for. Returns the rows to write now: that row
    /// when the key's window opens, and the rows of windows dropped meanwhile to make room.
    pub fn rows(&self, key: &str, now: i64, row: Pending) -> Vec<NewAuditEntry> {
        let admitted = self.admit_with(key, now, || Some(row.clone()));
        let mut rows = self.take_evicted();
        if let Some(held_back) = admitted {
            let mut details = row.details;
            if let Value::Object(fields) = &mut details {
                fields.insert(row.field.into(), held_back.into());
            }
            rows.push(NewAuditEntry::new(
                now,
                row.action,
                row.user_id,
                details,
                &row.context,
            ));
        }
        rows
    }

    /// The rows for every count held back and not yet written (at shutdown), dated `now`
    /// and marked `flushed_at_shutdown`; the counts are reset, so a second call returns only
    /// what was counted since.
    pub fn take_held_back(&self, now: i64) -> Vec<NewAuditEntry> {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Keys { windows, evicted } = &mut *keys;
        let mut rows = std::mem::take(evicted);
        rows.extend(
            windows
                .values_mut()
                .filter_map(|window| held_back_row(window, now, "flushed_at_shutdown")),
        );
        rows
    }

    /// The rows for the held-back counts of windows dropped to make room for new keys, to be
    /// written now.
    fn take_evicted(&self) -> Vec<NewAuditEntry> {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::take(&mut keys.evicted)
    }
}

/// The row for `window`'s held-back count, dated `now` and marked with `why`, resetting the
/// count; none when nothing is held or the window has no row to write it as.
fn held_back_row(window: &mut Window, now: i64, why: &str) -> Option<NewAuditEntry> {
    if window.held_back == 0 {
        return None;
    }
    let pending = window.pending.as_deref()?;
    let mut details = pending.details.clone();
    if let Value::Object(fields) = &mut details {
        fields.insert(pending.field.into(), window.held_back.into());
        fields.insert(why.into(), true.into());
    }
    window.held_back = 0;
    Some(NewAuditEntry::new(
        now,
        pending.action,
        pending.user_id,
        details,
        &pending.context,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_per_key_and_window_counts_the_rest() {
        let throttle = AuditThrottle::new(60);
        assert_eq!(throttle.admit("a", 1000), Some(0));
        for _ in 0..41 {
            assert_eq!(throttle.admit("a", 1010), None);
        }
        assert_eq!(throttle.admit("b", 1010), Some(0), "keys are separate");
        assert_eq!(throttle.admit("a", 1060), Some(41));
        assert_eq!(throttle.admit("a", 1061), None);
    }

    #[test]
    fn held_back_counts_are_taken_once_as_the_row_that_opened_their_window() {
        let throttle = AuditThrottle::new(60);
        let pending = |policy: &str| {
            Some(Pending {
                action: "rate_limit_exceeded",
                user_id: None,
                details: serde_json::json!({ "policy": policy }),
                field: "refusals_since_last_entry",
                context: RequestContext::default(),
            })
        };
        assert_eq!(
            throttle.admit_with("a", 1000, || pending("anonymous")),
            Some(0)
        );
        assert_eq!(
            throttle.admit_with("b", 1000, || pending("standard")),
            Some(0)
        );
        for _ in 0..3 {
            assert_eq!(
                throttle.admit_with("a", 1010, || panic!("no row, no template")),
                None
            );
        }
        // `b` holds nothing back; a key admitted without a template is not written.
        assert_eq!(throttle.admit("c", 1000), Some(0));
        assert_eq!(throttle.admit("c", 1001), None);
        let rows = throttle.take_held_back(1020);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(rows[0].action, "rate_limit_exceeded");
        assert_eq!(rows[0].at, 1020);
        assert_eq!(
            rows[0].details,
            serde_json::json!({
                "policy": "anonymous",
                "refusals_since_last_entry": 3,
                "flushed_at_shutdown": true,
            })
        );
        assert!(throttle.take_held_back(1021).is_empty(), "taken once");
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_bounded() {
        let throttle = AuditThrottle::new(60);
        let written = (0..MAX_KEYS + 500)
            .filter(|i| throttle.admit(&format!("ip:{i}"), 5).is_some())
            .count();
        assert_eq!(written, MAX_KEYS);
        // Once the windows have passed, new keys are written again.
        assert_eq!(throttle.admit("late", 100), Some(0));
    }

    #[test]
    fn counts_of_windows_dropped_for_new_keys_are_handed_back_to_be_written() {
        let throttle = AuditThrottle::new(60);
        let pending = || {
            Some(Pending {
                action: "auth_failed",
                user_id: None,
                details: serde_json::json!({ "reason": "bearer" }),
                field: "failures_since_last_entry",
                context: RequestContext::default(),
            })
        };
        assert_eq!(throttle.admit_with("victim", 0, pending), Some(0));
        for _ in 0..7 {
            assert_eq!(throttle.admit_with("victim", 10, pending), None);
        }
        // Fill the table after the victim's window has passed: it is dropped to make room,
        // and its seven held-back failures come back as a row instead of vanishing.
        for i in 0..MAX_KEYS {
            throttle.admit(&format!("ip:{i}"), 100);
        }
        let rows = throttle.take_evicted();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!(
            rows[0].details,
            serde_json::json!({
                "reason": "bearer",
                "failures_since_last_entry": 7,
                "window_evicted": true,
            })
        );
        assert!(throttle.take_evicted().is_empty(), "taken once");
    }
}
