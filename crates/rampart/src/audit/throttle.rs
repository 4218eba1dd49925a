//! Aggregation of audit events a client can trigger at will (`rate_limit_exceeded`,
//! `suspicious_request`): one row per key and window, carrying how many events it stands for,
//! so that a flood of refused requests cannot flood the audit table.

use std::collections::HashMap;
use std::sync::Mutex;

/// Most keys tracked at once; past this, events of new keys are counted but not written until
/// old windows expire, so memory stays bounded whatever the number of clients.
const MAX_KEYS: usize = 10_000;

/// Decides which occurrences of an event are written to the audit log.
#[derive(Debug)]
pub struct AuditThrottle {
    window: i64,
    keys: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: i64,
    /// Occurrences since the row that opened the window.
    held_back: u64,
}

impl AuditThrottle {
    /// One row per key per `window_seconds`.
    pub fn new(window_seconds: i64) -> Self {
        Self {
            window: window_seconds.max(1),
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an occurrence of `key` at `now` (unix seconds). `Some(n)` means: write a row now,
    /// standing for this occurrence and the `n` held back since the previous row.
    pub fn admit(&self, key: &str, now: i64) -> Option<u64> {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(window) = keys.get_mut(key) {
            if now - window.started < self.window {
                window.held_back += 1;
                return None;
            }
            let held_back = window.held_back;
            *window = Window {
                started: now,
                held_back: 0,
            };
            return Some(held_back);
        }
        if keys.len() >= MAX_KEYS {
            let window = self.window;
            keys.retain(|_, entry| now - entry.started < window);
            if keys.len() >= MAX_KEYS {
                return None;
            }
        }
        keys.insert(
            key.to_owned(),
            Window {
                started: now,
                held_back: 0,
            },
        );
        Some(0)
    }
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
    fn a_flood_of_distinct_keys_stays_bounded() {
        let throttle = AuditThrottle::new(60);
        let written = (0..MAX_KEYS + 500)
            .filter(|i| throttle.admit(&format!("ip:{i}"), 5).is_some())
            .count();
        assert_eq!(written, MAX_KEYS);
        // Once the windows have passed, new keys are written again.
        assert_eq!(throttle.admit("late", 100), Some(0));
    }
}
