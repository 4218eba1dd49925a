//! API keys that authenticated recently, by the SHA-256 of the key (never the key itself).
//!
//! Used for one decision only: whether an API-key request is charged to its client's
//! anonymous budget before its key is looked up. A key in the set is still checked in
//! full on every request (from [`crate::key_cache`], which drops a deleted key on every
//! instance within a second); it is only spared the charge, so that junk from the same address (a shared NAT or IPv6
//! prefix) cannot lock out a working client, and a client with many requests in flight is
//! not held to the anonymous burst. Unknown keys are charged before the lookup as before.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// How long a key stays in the set after it last authenticated, in seconds.
pub const TTL_SECONDS: i64 = 600;
/// How many keys the set holds at most.
pub const CAPACITY: usize = 100_000;

/// The SHA-256 of a presented key, as the set holds it.
pub type KeyDigest = [u8; 32];

/// The digest of a presented key.
pub fn digest(key: &[u8]) -> KeyDigest {
    Sha256::digest(key).into()
}

/// Recently verified keys, bounded in size and age.
#[derive(Debug)]
pub struct VerifiedKeys {
    ttl: i64,
    capacity: usize,
    keys: Mutex<HashMap<KeyDigest, i64>>,
}

impl Default for VerifiedKeys {
    fn default() -> Self {
        Self::new(TTL_SECONDS, CAPACITY)
    }
}

impl VerifiedKeys {
    /// A set whose entries live `ttl` seconds, holding at most `capacity`.
    pub fn new(ttl: i64, capacity: usize) -> Self {
        Self {
            ttl: ttl.max(1),
            capacity: capacity.max(1),
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<KeyDigest, i64>> {
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `key` authenticated within the last `ttl` seconds before `now`.
    pub fn contains(&self, key: &KeyDigest, now: i64) -> bool {
        self.lock().get(key).is_some_and(|expires| *expires > now)
    }

    /// Records that `key` authenticated at `now`.
    pub fn insert(&self, key: KeyDigest, now: i64) {
        let expires = now + self.ttl;
        let mut keys = self.lock();
        if let Some(entry) = keys.get_mut(&key) {
            *entry = expires;
            return;
        }
        if keys.len() >= self.capacity {
            keys.retain(|_, expires| *expires > now);
        }
        if keys.len() >= self.capacity {
            // Still full of live keys: one of them goes (it is only charged again).
            let victim = keys.keys().next().copied();
            if let Some(victim) = victim {
                keys.remove(&victim);
            }
        }
        keys.insert(key, expires);
    }

    /// Forgets `key`: it failed, so it is charged before its lookup again.
    pub fn remove(&self, key: &KeyDigest) {
        self.lock().remove(key);
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_expire_and_the_set_stays_bounded() {
        let set = VerifiedKeys::new(600, 3);
        let a = digest(b"a");
        set.insert(a, 0);
        assert!(set.contains(&a, 599));
        assert!(!set.contains(&a, 600));
        assert!(!set.contains(&digest(b"b"), 0));
        for (i, key) in [b"b", b"c", b"d", b"e"].iter().enumerate() {
            set.insert(digest(*key), i as i64);
        }
        assert_eq!(set.len(), 3);
        assert!(set.contains(&digest(b"e"), 10), "the newest is kept");
        // Expired entries make room first.
        set.insert(digest(b"f"), 10_000);
        assert_eq!(set.len(), 1);
        set.remove(&digest(b"f"));
        assert!(set.is_empty());
    }
}
