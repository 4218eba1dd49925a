//! The in-memory store: GCRA state per policy and key, in sharded maps, with amortised
//! and background eviction of buckets that are full again.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::gcra::{Gcra, TimeSource};
use super::{Decision, Mode, Quota};

/// Shards per policy; a power of two.
pub(super) const SHARDS: usize = 64;
const _: () = assert!(SHARDS.is_power_of_two());
/// A shard is swept when it grows to this many keys, at least.
pub(super) const MIN_SWEEP: usize = 64;

/// One lock's worth of keys. Aligned to a cache line so that neighbouring locks do not
/// contend through false sharing.
#[repr(align(64))]
#[derive(Default)]
pub(super) struct Shard(pub(super) Mutex<ShardMap>);

pub(super) struct ShardMap {
    // SipHash with a random key (the std default): client keys are chosen by clients (an
    // IPv6 /64 alone offers 2^64 of them), so a fast unkeyed hash would invite collisions.
    pub(super) tats: HashMap<Box<str>, u64>,
    /// The next sweep happens when `tats` reaches this length.
    pub(super) sweep_at: usize,
}

impl Default for ShardMap {
    fn default() -> Self {
        Self {
            tats: HashMap::new(),
            sweep_at: MIN_SWEEP,
        }
    }
}

impl ShardMap {
    /// Decides without counting: what [`ShardMap::check`] would answer now.
    pub(super) fn peek(&self, gcra: &Gcra, key: &str, now: u64) -> Decision {
        gcra.decide(self.tats.get(key).copied(), now).0
    }

    /// Gives back one request's worth of capacity taken earlier.
    pub(super) fn refund(&mut self, gcra: &Gcra, key: &str, now: u64) -> Decision {
        if let Some(tat) = self.tats.get_mut(key) {
            let back = tat.saturating_sub(gcra.interval);
            if back <= now {
                self.tats.remove(key);
            } else {
                *tat = back;
            }
        }
        self.peek(gcra, key, now)
    }

    pub(super) fn check(&mut self, gcra: &Gcra, key: &str, now: u64) -> Decision {
        if let Some(tat) = self.tats.get_mut(key) {
            let (decision, new_tat) = gcra.decide(Some(*tat), now);
            if let Some(new_tat) = new_tat {
                *tat = new_tat;
            }
            return decision;
        }
        let (decision, new_tat) = gcra.decide(None, now);
        if let Some(new_tat) = new_tat {
            // Amortised eviction: sweeping when the shard has doubled since the last sweep
            // costs O(1) per new key and keeps the shard within twice its live keys, however
            // many distinct clients pass by.
            if self.tats.len() >= self.sweep_at {
                self.sweep(now);
            }
            self.tats.insert(key.into(), new_tat);
        }
        decision
    }

    /// Forgets every key whose bucket is full: such a key decides exactly like an unknown one.
    pub(super) fn sweep(&mut self, now: u64) {
        self.tats.retain(|_, tat| *tat > now);
        self.sweep_at = (self.tats.len() * 2).max(MIN_SWEEP);
        if self.tats.capacity() > 4 * self.sweep_at {
            self.tats.shrink_to(self.sweep_at);
        }
    }
}

/// The keys of one policy.
pub(super) struct PolicyShards {
    pub(super) gcra: Gcra,
    pub(super) shards: Box<[Shard; SHARDS]>,
}

impl PolicyShards {
    pub(super) fn new(quota: &Quota) -> Self {
        Self {
            gcra: Gcra::new(quota, 1),
            shards: Box::new(std::array::from_fn(|_| Shard::default())),
        }
    }

    pub(super) fn shard(&self, key: &str) -> MutexGuard<'_, ShardMap> {
        lock(&self.shards[shard_index(key.as_bytes())])
    }
}

/// Picks a key's shard from its first and last eight bytes (all of an IPv4 address, the
/// interface half of an IPv6 one). Only the lock depends on it; the map inside hashes
/// with SipHash, so a client steering its keys to one shard gains nothing but contention.
pub(super) fn shard_index(key: &[u8]) -> usize {
    let len = key.len();
    let word = if len >= 8 {
        let head = <[u8; 8]>::try_from(&key[..8]).map_or(0, u64::from_le_bytes);
        let tail = <[u8; 8]>::try_from(&key[len - 8..]).map_or(0, u64::from_le_bytes);
        head.rotate_left(29) ^ tail
    } else {
        key.iter()
            .fold(0, |word, byte| (word << 8) | u64::from(*byte))
    };
    let mixed = (word ^ len as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    // The top bits of a multiplicative hash are its best mixed; SHARDS is a power of two.
    (mixed >> (64 - SHARDS.trailing_zeros())) as usize
}

pub(super) fn lock(shard: &Shard) -> MutexGuard<'_, ShardMap> {
    // Nothing panics while the lock is held (integer arithmetic and a map insert), and a
    // map left by a panicking thread is still a valid map.
    shard.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keyed GCRA over sharded maps, one per policy.
pub(super) struct MemoryStore {
    pub(super) time: TimeSource,
    pub(super) policies: Box<[PolicyShards]>,
}

impl fmt::Debug for MemoryStore {
    // The maps may hold a million keys: not for a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("time", &self.time)
            .field("policies", &self.policies.len())
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    pub(super) fn new(quotas: &[(String, Quota)], time: TimeSource) -> Self {
        Self {
            time,
            policies: quotas
                .iter()
                .map(|(_, quota)| PolicyShards::new(quota))
                .collect(),
        }
    }

    pub(super) fn check(&self, index: usize, key: &str, mode: Mode) -> Option<Decision> {
        let policy = self.policies.get(index)?;
        let now = self.time.now();
        let mut shard = policy.shard(key);
        Some(match mode {
            Mode::Take => shard.check(&policy.gcra, key, now),
            Mode::Peek => shard.peek(&policy.gcra, key, now),
            Mode::Refund => shard.refund(&policy.gcra, key, now),
        })
    }

    pub(super) fn tracked_keys(&self) -> usize {
        self.policies
            .iter()
            .flat_map(|policy| policy.shards.iter())
            .map(|shard| lock(shard).tats.len())
            .sum()
    }

    pub(super) fn evict_idle(&self) {
        for shard in self.policies.iter().flat_map(|policy| policy.shards.iter()) {
            let now = self.time.now();
            lock(shard).sweep(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use super::*;
    use crate::rate_limit::test_support::{allowed, manual_limiter};
    use crate::rate_limit::*;

    // --- GCRA in memory -------------------------------------------------------------------------

    #[tokio::test]
    async fn five_per_minute_allows_exactly_five_then_refuses() {
        let (limiter, id, _) = manual_limiter("5/min");
        for expected_remaining in (0..5).rev() {
            let decision = limiter.check(id, "198.51.100.7").await.unwrap();
            assert!(decision.allowed);
            assert_eq!(decision.remaining, expected_remaining);
            assert_eq!(decision.limit, 5);
            assert_eq!(decision.retry_after, None);
        }
        let refused = limiter.check(id, "198.51.100.7").await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(12)));
        assert_eq!(refused.reset, Duration::from_secs(60));
        assert_eq!(
            allowed(&limiter, id, "198.51.100.7", 10).await,
            0,
            "refusals are not charged, but do not pass"
        );
    }

    #[tokio::test]
    async fn a_peek_tells_the_decision_without_spending() {
        let (limiter, id, time) = manual_limiter("2/min");
        for _ in 0..5 {
            assert!(limiter.peek(id, "k").await.unwrap().allowed);
        }
        assert_eq!(limiter.tracked_keys(), 0, "a peek stores nothing");
        assert_eq!(allowed(&limiter, id, "k", 3).await, 2);
        let peeked = limiter.peek(id, "k").await.unwrap();
        assert!(!peeked.allowed);
        assert_eq!(peeked.retry_after, Some(Duration::from_secs(30)));
        time.advance(Duration::from_secs(30));
        assert!(limiter.peek(id, "k").await.unwrap().allowed);
        assert!(
            limiter.peek(id, "k").await.unwrap().allowed,
            "still not spent"
        );
        assert_eq!(allowed(&limiter, id, "k", 2).await, 1);
    }

    #[tokio::test]
    async fn a_refund_gives_back_one_request() {
        let (limiter, id, time) = manual_limiter("2/min");
        assert_eq!(allowed(&limiter, id, "k", 3).await, 2);
        limiter.refund(id, "k").await.unwrap();
        assert_eq!(allowed(&limiter, id, "k", 2).await, 1, "one came back");
        limiter.refund(id, "k").await.unwrap();
        limiter.refund(id, "k").await.unwrap();
        limiter.refund(id, "k").await.unwrap();
        assert_eq!(
            allowed(&limiter, id, "k", 3).await,
            2,
            "never beyond a full bucket"
        );
        limiter.refund(id, "unknown").await.unwrap();
        assert_eq!(allowed(&limiter, id, "unknown", 3).await, 2);
        time.advance(Duration::from_secs(60));
        limiter.refund(id, "k").await.unwrap();
        assert_eq!(allowed(&limiter, id, "k", 3).await, 2);
    }

    #[tokio::test]
    async fn the_default_clock_limits_too() {
        let mut policies = Policies::new();
        let id = policies
            .add("hourly", Quota::parse("2/h").unwrap())
            .unwrap();
        let limiter = RateLimiter::memory(policies);
        assert_eq!(allowed(&limiter, id, "k", 5).await, 2);
        let refused = limiter.check(id, "k").await.unwrap();
        let retry_after = refused.retry_after.unwrap();
        assert!(
            retry_after > Duration::from_secs(1799) && retry_after <= Duration::from_secs(1800)
        );
    }

    #[tokio::test]
    async fn the_bucket_refills_one_request_every_twelve_seconds() {
        let (limiter, id, time) = manual_limiter("5/min");
        assert_eq!(allowed(&limiter, id, "k", 5).await, 5);
        time.advance(Duration::from_secs(11));
        let early = limiter.check(id, "k").await.unwrap();
        assert!(!early.allowed);
        assert_eq!(early.retry_after, Some(Duration::from_secs(1)));
        time.advance(Duration::from_secs(1));
        let refilled = limiter.check(id, "k").await.unwrap();
        assert!(refilled.allowed, "one request comes back after 12 s");
        assert_eq!(refilled.remaining, 0);
        assert!(
            !limiter.check(id, "k").await.unwrap().allowed,
            "and only one"
        );
        time.advance(Duration::from_secs(24));
        assert_eq!(
            allowed(&limiter, id, "k", 5).await,
            2,
            "two come back after 24 s"
        );
        time.advance(Duration::from_secs(600));
        assert_eq!(
            allowed(&limiter, id, "k", 10).await,
            5,
            "an idle bucket holds no more than the quota"
        );
    }

    #[tokio::test]
    async fn reset_is_the_time_until_the_bucket_is_full() {
        let (limiter, id, time) = manual_limiter("5/min");
        let first = limiter.check(id, "k").await.unwrap();
        assert_eq!(first.reset, Duration::from_secs(12));
        time.advance(Duration::from_secs(5));
        let second = limiter.check(id, "k").await.unwrap();
        assert_eq!(second.reset, Duration::from_secs(19));
        assert_eq!(second.remaining, 3);
    }

    #[tokio::test]
    async fn keys_and_policies_have_separate_buckets() {
        let mut policies = Policies::new();
        let login = policies
            .add("route:/auth/login:POST", Quota::parse("2/min").unwrap())
            .unwrap();
        let anonymous = policies
            .add("anonymous", Quota::parse("3/min").unwrap())
            .unwrap();
        let limiter = RateLimiter::memory_with_time(policies, ManualTime::new());
        assert_eq!(allowed(&limiter, login, "192.0.2.1", 5).await, 2);
        assert_eq!(allowed(&limiter, login, "192.0.2.2", 5).await, 2);
        assert_eq!(allowed(&limiter, anonymous, "192.0.2.1", 5).await, 3);
        assert_eq!(allowed(&limiter, anonymous, "u:42", 5).await, 3);
    }

    #[tokio::test]
    async fn an_explicit_burst_sizes_the_bucket_but_not_the_rate() {
        let mut policies = Policies::new();
        let id = policies
            .add("bursty", Quota::with_burst("10/s", 100).unwrap())
            .unwrap();
        let time = ManualTime::new();
        let limiter = RateLimiter::memory_with_time(policies, time.clone());
        assert_eq!(allowed(&limiter, id, "k", 150).await, 100);
        time.advance(Duration::from_secs(1));
        assert_eq!(allowed(&limiter, id, "k", 50).await, 10);
        let small = Quota::with_burst("60/min", 1).unwrap();
        let mut policies = Policies::new();
        let id = policies.add("smooth", small).unwrap();
        let limiter = RateLimiter::memory_with_time(policies, time.clone());
        assert_eq!(allowed(&limiter, id, "k", 5).await, 1);
        time.advance(Duration::from_secs(1));
        assert_eq!(allowed(&limiter, id, "k", 5).await, 1);
    }

    #[tokio::test]
    async fn concurrent_checks_never_exceed_the_quota() {
        let (limiter, id, _) = manual_limiter("100/h");
        let limiter = Arc::new(limiter);
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let limiter = limiter.clone();
                tokio::spawn(async move { allowed(&limiter, id, "shared", 50).await })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        assert_eq!(total, 100);
    }

    // --- Eviction ------------------------------------------------------------------------------

    #[tokio::test]
    async fn a_million_distinct_clients_cannot_exhaust_memory() {
        let (limiter, id, time) = manual_limiter("10/s");
        let mut key = String::new();
        let mut most = 0;
        for i in 0u32..1_000_000 {
            key.clear();
            let [a, b, c, d] = i.to_be_bytes();
            write!(key, "{a}.{b}.{c}.{d}").unwrap();
            assert!(limiter.check(id, &key).await.unwrap().allowed);
            // One new client every 100 µs: about 1000 buckets are live at once (each is
            // full again 100 ms after its only request).
            time.advance(Duration::from_micros(100));
            if i % 10_000 == 0 {
                most = most.max(limiter.tracked_keys());
            }
        }
        // Twice the live keys plus the sweep threshold of each shard, instead of a million.
        let bound = 2 * 1000 + SHARDS * MIN_SWEEP;
        assert!(most <= bound, "{most} keys were held at once");
        let capacity: usize = limiter.memory.policies[0]
            .shards
            .iter()
            .map(|shard| lock(shard).tats.capacity())
            .sum();
        assert!(
            capacity <= 4 * bound,
            "the maps hold room for {capacity} keys"
        );
        time.advance(Duration::from_millis(100));
        limiter.evict_idle();
        assert_eq!(
            limiter.tracked_keys(),
            0,
            "every bucket is full again, so every key goes"
        );
    }

    #[tokio::test]
    async fn eviction_never_forgets_a_bucket_that_is_not_full() {
        let (limiter, id, time) = manual_limiter("5/min");
        assert_eq!(allowed(&limiter, id, "victim", 5).await, 5);
        for i in 0..100_000 {
            limiter.check(id, &format!("flood-{i}")).await.unwrap();
        }
        time.advance(Duration::from_secs(59));
        limiter.evict_idle();
        assert_eq!(
            limiter.tracked_keys(),
            1,
            "the flood's buckets are full again after 12 s"
        );
        assert_eq!(
            allowed(&limiter, id, "victim", 5).await,
            4,
            "the victim's bucket still counts"
        );
    }

    #[tokio::test]
    async fn the_background_sweep_forgets_full_buckets_of_every_policy() {
        let mut policies = Policies::new();
        let slow = policies.add("slow", Quota::parse("1/h").unwrap()).unwrap();
        let fast = policies.add("fast", Quota::parse("10/s").unwrap()).unwrap();
        let time = ManualTime::new();
        let limiter = RateLimiter::memory_with_time(policies, time.clone());
        for i in 0..1000 {
            limiter.check(slow, &format!("s{i}")).await.unwrap();
            limiter.check(fast, &format!("f{i}")).await.unwrap();
        }
        time.advance(Duration::from_secs(1));
        limiter.evict_idle_gradually().await;
        assert_eq!(
            limiter.tracked_keys(),
            1000,
            "only the 1/h buckets are still filling"
        );
    }

    #[tokio::test]
    async fn the_eviction_task_holds_no_strong_reference() {
        let (limiter, _, _) = manual_limiter("5/min");
        let limiter = Arc::new(limiter);
        let task = limiter.spawn_idle_eviction(Duration::from_secs(60));
        assert_eq!(Arc::strong_count(&limiter), 1);
        assert!(
            Arc::try_unwrap(limiter).is_ok(),
            "dropping the last handle frees the limiter"
        );
        task.abort();
    }
}
