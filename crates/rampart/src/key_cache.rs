//! API keys that authenticated, held in memory by the SHA-256 of the whole key, so that a
//! request with a known key costs no store round trip (signed requests still claim their
//! nonce in the store).
//!
//! An entry is what the key grants: its id, owner, the owner's name, role and tier, its
//! expiry and its sealed signing secret (opened once, on first signed use). Only a key
//! that held in full is entered; a miss or a refusal is never held. Expiry is checked
//! against the entry on every use, and an entry is read again from the store after
//! [`MAX_AGE`] whatever happens.
//!
//! Every way of deleting a key or changing what it grants (its owner's role, tier, name,
//! disabled flag, or the owner's deletion) writes a row naming the user to the
//! `credential_changes` log in the same transaction (triggers, migration 0005). Each
//! instance follows that log every [`POLL`] and drops the user's keys; the instance that
//! made the change drops them at once. A cache that has not heard from the store for
//! [`TRUST`] is not used at all (every request goes to the store) until a poll succeeds
//! again, so a change is in force on every instance within `TRUST` of its commit even if
//! an instance cannot reach the store.
//!
//! Lookups take a read lock on one of `SHARDS` (16) maps; a change takes each write lock
//! once. An entry read from the store while a change was being applied is not entered
//! (a generation counter), so a stale record cannot outlive the change that ends it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::store::Store;
use crate::verified_keys::KeyDigest;

/// How often each instance reads the credential-change log.
pub const POLL: Duration = Duration::from_millis(250);
/// How long after the start of its last successful poll the cache is used.
pub const TRUST: Duration = Duration::from_millis(750);
/// How long an entry is used before the key is read from the store again.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// How many keys are held at most.
pub const CAPACITY: usize = 100_000;
/// Independent maps, so that lookups on different cores rarely share a lock.
const SHARDS: usize = 16;
/// Log rows read per poll; a poll that fills the page drops every key instead.
const PAGE: i64 = 10_000;

/// What a verified key grants.
pub struct CachedKey {
    /// The key's id.
    pub key_id: i64,
    /// Its owner.
    pub user_id: i64,
    /// The owner's name, role and tier when the key was read.
    pub username: Arc<str>,
    /// The owner's role.
    pub role: Arc<str>,
    /// The owner's tier.
    pub tier: Arc<str>,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
    /// The key's public prefix (the sealed secret is bound to it).
    pub prefix: Box<str>,
    /// The signing secret as stored (sealed).
    pub sealed_secret: Box<str>,
    /// The signing secret, once opened.
    pub secret: OnceLock<Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for CachedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedKey")
            .field("key_id", &self.key_id)
            .field("user_id", &self.user_id)
            .field("role", &self.role)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Entries with the time they were entered (milliseconds after the cache's origin).
type Shard = RwLock<HashMap<KeyDigest, (u64, Arc<CachedKey>)>>;

/// Verified API keys, bounded in number and age, dropped on every change to what they grant.
#[derive(Debug)]
pub struct KeyCache {
    shards: Box<[Shard]>,
    per_shard: usize,
    /// Milliseconds an entry is used (monotonic time, so no clock step keeps one longer).
    max_age: u64,
    /// Bumped before every change is applied.
    generation: AtomicU64,
    /// Milliseconds after `origin` until which entries are used; `u64::MAX` when no
    /// follower runs (one instance that applies its own changes, in unit tests).
    trusted_until: AtomicU64,
    origin: Instant,
}

impl Default for KeyCache {
    fn default() -> Self {
        Self::new(CAPACITY, MAX_AGE)
    }
}

impl KeyCache {
    /// A cache of at most `capacity` keys, each used for `max_age`.
    pub fn new(capacity: usize, max_age: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
            max_age: u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX),
            generation: AtomicU64::new(0),
            trusted_until: AtomicU64::new(u64::MAX),
            origin: Instant::now(),
        }
    }

    fn shard(&self, digest: &KeyDigest) -> &Shard {
        &self.shards[usize::from(digest[0]) % SHARDS]
    }

    fn millis(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// The entry for a key, unless it is older than the maximum age or the cache has not
    /// heard from the store lately. Expiry is the caller's to check.
    pub fn get(&self, digest: &KeyDigest) -> Option<Arc<CachedKey>> {
        let now = self.millis(Instant::now());
        if now >= self.trusted_until.load(Ordering::Acquire) {
            return None;
        }
        let shard = self
            .shard(digest)
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (entered, entry) = shard.get(digest)?;
        (now.saturating_sub(*entered) < self.max_age).then(|| Arc::clone(entry))
    }

    /// Taken before reading a key from the store, for [`Self::insert`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Holds a key that held in full, unless a change was applied since `generation` was
    /// taken (the record may predate it).
    pub fn insert(&self, digest: KeyDigest, entry: Arc<CachedKey>, generation: u64) {
        let now = self.millis(Instant::now());
        let mut shard = self
            .shard(&digest)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Checked under the lock: a change bumps the generation before it takes the
        // locks to drop entries, so an entry put here either sees the bump or is dropped.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if shard.len() >= self.per_shard && !shard.contains_key(&digest) {
            let max_age = self.max_age;
            shard.retain(|_, (entered, _)| now.saturating_sub(*entered) < max_age);
            if shard.len() >= self.per_shard {
                // Still full: one goes (it is only read from the store again).
                let victim = shard.keys().next().copied();
                if let Some(victim) = victim {
                    shard.remove(&victim);
                }
            }
        }
        shard.insert(digest, (now, entry));
    }

    /// Drops one key (refused on use, e.g. expired).
    pub fn remove(&self, digest: &KeyDigest) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.shard(digest)
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(digest);
    }

    /// Drops every key of these users.
    pub fn forget_users(&self, users: &HashSet<i64>) {
        if users.is_empty() {
            return;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        for shard in &self.shards {
            shard
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .retain(|_, (_, held)| !users.contains(&held.user_id));
        }
    }

    /// Drops every key of one user.
    pub fn forget_user(&self, user_id: i64) {
        self.forget_users(&HashSet::from([user_id]));
    }

    /// Drops every key.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        for shard in &self.shards {
            shard
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
        }
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Follows the store's credential-change log from position `head` every `interval`
    /// until the cache is dropped; from now on the cache is used only within `trust` of a
    /// successful poll.
    ///
    /// PostgreSQL hands out log ids from a sequence and a later id can become visible
    /// before an earlier one, so each poll reads again from the position reached
    /// [`crate::tokens::SETTLE`] ago, skipping the ids it has already applied.
    pub fn spawn_follower(
        self: &Arc<Self>,
        data: Arc<dyn Store>,
        head: i64,
        interval: Duration,
        trust: Duration,
    ) -> tokio::task::JoinHandle<()> {
        self.trust_from(Instant::now(), trust);
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut settled = head;
            let mut applied: HashSet<i64> = HashSet::new();
            let mut recent: VecDeque<(Instant, i64)> = VecDeque::from([(Instant::now(), head)]);
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(cache) = weak.upgrade() else { return };
                let started = Instant::now();
                let rows = match data.credential_changes_after(settled, PAGE).await {
                    Ok(rows) => rows,
                    Err(error) => {
                        tracing::warn!(error = %error, "credential-change poll failed");
                        continue;
                    }
                };
                let furthest = recent.back().map_or(settled, |(_, position)| *position);
                let reached = rows.last().map_or(furthest, |(id, _)| (*id).max(furthest));
                if rows.len() as i64 >= PAGE {
                    // Too many to follow one by one: start afresh from the end.
                    cache.clear();
                    applied.clear();
                    settled = reached;
                    recent.clear();
                } else {
                    let users: HashSet<i64> = rows
                        .iter()
                        .filter(|(id, _)| applied.insert(*id))
                        .map(|(_, user)| *user)
                        .collect();
                    cache.forget_users(&users);
                }
                recent.push_back((started, reached));
                while let Some((at, position)) = recent.front()
                    && at.elapsed() >= crate::tokens::SETTLE
                {
                    settled = *position;
                    recent.pop_front();
                }
                applied.retain(|id| *id > settled);
                cache.trust_from(started, trust);
            }
        })
    }

    fn trust_from(&self, started: Instant, trust: Duration) {
        let until = self.millis(started + trust);
        // Never moved back by a poll that started earlier but finished later.
        let mut current = self.trusted_until.load(Ordering::Acquire);
        loop {
            let next = if current == u64::MAX {
                until
            } else {
                current.max(until)
            };
            match self.trusted_until.compare_exchange(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key_id: i64, user_id: i64) -> Arc<CachedKey> {
        Arc::new(CachedKey {
            key_id,
            user_id,
            username: Arc::from("u"),
            role: Arc::from("user"),
            tier: Arc::from("standard"),
            expires_at: None,
            prefix: "p".into(),
            sealed_secret: "s".into(),
            secret: OnceLock::new(),
        })
    }

    fn digest(n: u8) -> KeyDigest {
        crate::verified_keys::digest(&[n])
    }

    #[test]
    fn entries_age_out_and_changes_drop_their_users_keys() {
        let cache = KeyCache::new(1000, Duration::from_secs(60));
        let generation = cache.generation();
        cache.insert(digest(1), entry(1, 10), generation);
        cache.insert(digest(2), entry(2, 10), generation);
        cache.insert(digest(3), entry(3, 20), generation);
        assert_eq!(cache.get(&digest(1)).map(|e| e.key_id), Some(1));
        assert!(cache.get(&digest(9)).is_none());
        cache.forget_user(10);
        assert!(cache.get(&digest(1)).is_none());
        assert!(cache.get(&digest(2)).is_none());
        assert!(cache.get(&digest(3)).is_some());
        cache.remove(&digest(3));
        assert!(cache.is_empty());
        let brief = KeyCache::new(1000, Duration::from_millis(20));
        brief.insert(digest(1), entry(1, 10), brief.generation());
        assert!(brief.get(&digest(1)).is_some());
        std::thread::sleep(Duration::from_millis(30));
        assert!(brief.get(&digest(1)).is_none(), "read again after max age");
    }

    #[test]
    fn a_record_read_before_a_change_is_not_held() {
        let cache = KeyCache::new(1000, Duration::from_secs(60));
        let before = cache.generation();
        cache.forget_user(10);
        cache.insert(digest(1), entry(1, 10), before);
        assert!(cache.get(&digest(1)).is_none());
        cache.insert(digest(1), entry(1, 10), cache.generation());
        assert!(cache.get(&digest(1)).is_some());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = KeyCache::new(SHARDS, Duration::from_secs(60));
        for n in 0..=255u8 {
            cache.insert(digest(n), entry(i64::from(n), 1), cache.generation());
        }
        assert!(cache.len() <= SHARDS, "{}", cache.len());
    }

    #[test]
    fn a_cache_that_has_not_heard_from_the_store_is_not_used() {
        let cache = KeyCache::new(1000, Duration::from_secs(60));
        cache.insert(digest(1), entry(1, 10), cache.generation());
        cache.trust_from(Instant::now(), Duration::ZERO);
        assert!(cache.get(&digest(1)).is_none());
        cache.trust_from(Instant::now(), Duration::from_secs(60));
        assert!(cache.get(&digest(1)).is_some());
    }
}
