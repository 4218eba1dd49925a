//! Rate limiting: the decision engine behind the pipeline's first layer (SPEC §4).
//!
//! Every policy (a tier such as `anonymous`, or a route's own limit such as
//! `route:/orders:POST`) is a [`Quota`] enforced per client identity with GCRA: a full
//! bucket allows a burst of the quota, then refills evenly. A [`RateLimiter`] decides in
//! memory (one instance) or in Redis (one atomic Lua script per decision, shared by any
//! number of instances). The pipeline answers a refused [`Decision`] with `429 rate_limited`
//! and `Retry-After`, and [`StoreUnavailable`] (Redis down under `on_store_error = "deny"`)
//! with `503`; [`headers`] builds the `RateLimit-Policy`, `RateLimit` and `Retry-After` fields.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

mod config;
mod layer;
pub use config::{RateLimitsConfig, RawRateLimits};
pub use layer::{
    CallerKeys, TIER_NAMES, Tiers, charge_anonymous, enforce, refund_anonymous, refuse_when_spent,
};

// ---------------------------------------------------------------------------------------------
// Quota
// ---------------------------------------------------------------------------------------------

/// The largest request count (and burst) a quota may name; beyond it a quota is a typo.
pub const MAX_REQUESTS: u32 = 1_000_000;

/// How many requests a client may make per period, and how many at once.
///
/// Written `"50/min"`, `"10/s"` or `"100/h"` ([`Quota::parse`]); the bucket then holds
/// `limit` requests. The table form `{ rate = "10/s", burst = 100 }` ([`Quota::with_burst`])
/// keeps the sustained rate but sizes the bucket to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: NonZeroU32,
    period_secs: u32,
    burst: Option<NonZeroU32>,
}

/// Why a quota was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The text is not `N/s`, `N/min` or `N/h`.
    #[error("rate limit {0:?} is not of the form N/s, N/min or N/h")]
    Malformed(String),
    /// The count before the `/` is not a whole number.
    #[error("rate limit {0:?}: the request count must be a whole number")]
    NotANumber(String),
    /// The period after the `/` is not a known unit.
    #[error("rate limit {0:?}: unknown period; use s, min or h")]
    UnknownPeriod(String),
    /// A quota of zero requests would refuse every request.
    #[error("rate limit {0:?}: the request count must be at least 1")]
    ZeroRequests(String),
    /// The request count is beyond [`MAX_REQUESTS`].
    #[error("rate limit {0:?}: at most {MAX_REQUESTS} requests per period")]
    TooManyRequests(String),
    /// A period given as a duration is not a whole number of seconds from 1 s to 1 h.
    #[error("rate limit period {0:?} must be a whole number of seconds from 1s to 1h")]
    BadPeriod(Duration),
    /// The explicit burst is zero or beyond [`MAX_REQUESTS`].
    #[error("rate limit burst {0} must be from 1 to {MAX_REQUESTS}")]
    BadBurst(u32),
}

/// Cuts user text to a length fit for an error message.
fn excerpt(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

impl Quota {
    /// Parses `"N/s"`, `"N/min"` or `"N/h"` (also `sec`, `second`, `minute`, `hour`).
    ///
    /// # Errors
    /// A [`QuotaError`] naming what is wrong: the shape, the count (zero, not a number,
    /// above [`MAX_REQUESTS`]) or the period.
    pub fn parse(text: &str) -> Result<Self, QuotaError> {
        let Some((count, unit)) = text.split_once('/') else {
            return Err(QuotaError::Malformed(excerpt(text)));
        };
        let count = count.trim();
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(QuotaError::NotANumber(excerpt(text)));
        }
        let period_secs = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "min" | "minute" => 60,
            "h" | "hour" => 3600,
            _ => return Err(QuotaError::UnknownPeriod(excerpt(text))),
        };
        // Only digits remain, so the parse fails only on overflow.
        let limit = count
            .parse::<u64>()
            .map_err(|_| QuotaError::TooManyRequests(excerpt(text)))?;
        if limit == 0 {
            return Err(QuotaError::ZeroRequests(excerpt(text)));
        }
        let limit = u32::try_from(limit)
            .ok()
            .filter(|limit| *limit <= MAX_REQUESTS)
            .and_then(NonZeroU32::new)
            .ok_or_else(|| QuotaError::TooManyRequests(excerpt(text)))?;
        Ok(Self {
            limit,
            period_secs,
            burst: None,
        })
    }

    /// The table form `{ rate = "10/s", burst = 100 }`: `rate` refills the bucket, which
    /// holds `burst` requests.
    ///
    /// # Errors
    /// A [`QuotaError`] for a bad `rate` (see [`Quota::parse`]) or a `burst` of 0 or above
    /// [`MAX_REQUESTS`].
    pub fn with_burst(rate: &str, burst: u32) -> Result<Self, QuotaError> {
        let quota = Self::parse(rate)?;
        let burst = NonZeroU32::new(burst)
            .filter(|burst| burst.get() <= MAX_REQUESTS)
            .ok_or(QuotaError::BadBurst(burst))?;
        Ok(Self {
            burst: Some(burst),
            ..quota
        })
    }

    /// `limit` requests per `period`, a whole number of seconds from 1 s to 1 h.
    ///
    /// # Errors
    /// [`QuotaError::ZeroRequests`], [`QuotaError::TooManyRequests`] or
    /// [`QuotaError::BadPeriod`].
    pub fn new(limit: u32, period: Duration) -> Result<Self, QuotaError> {
        let text = || format!("{limit}/{}s", period.as_secs());
        let limit = NonZeroU32::new(limit).ok_or_else(|| QuotaError::ZeroRequests(text()))?;
        if limit.get() > MAX_REQUESTS {
            return Err(QuotaError::TooManyRequests(text()));
        }
        if period.subsec_nanos() != 0 || !(1..=3600).contains(&period.as_secs()) {
            return Err(QuotaError::BadPeriod(period));
        }
        let period_secs =
            u32::try_from(period.as_secs()).map_err(|_| QuotaError::BadPeriod(period))?;
        Ok(Self {
            limit,
            period_secs,
            burst: None,
        })
    }

    /// Requests allowed per [`Quota::period`] in the long run.
    pub fn limit(&self) -> u32 {
        self.limit.get()
    }

    /// The period of [`Quota::limit`].
    pub fn period(&self) -> Duration {
        Duration::from_secs(u64::from(self.period_secs))
    }

    /// How many requests a full bucket allows at once: the explicit burst, else the limit.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.limit).get()
    }

    /// The time one request's worth of capacity takes to come back (`period / limit`).
    pub fn emission_interval(&self) -> Duration {
        self.period() / self.limit.get()
    }

    /// `period / limit` in `unit_nanos` units, rounded down, never 0.
    fn interval_in(&self, unit_nanos: u64) -> u64 {
        let period = u64::from(self.period_secs) * 1_000_000_000 / unit_nanos;
        (period / u64::from(self.limit.get())).max(1)
    }
}

impl FromStr for Quota {
    type Err = QuotaError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period_secs {
            1 => "s".to_owned(),
            60 => "min".to_owned(),
            3600 => "h".to_owned(),
            secs => format!("{secs}s"),
        };
        match self.burst {
            Some(burst) => write!(f, "{}/{unit} (burst {burst})", self.limit),
            None => write!(f, "{}/{unit}", self.limit),
        }
    }
}

/// Reads a quota from configuration: either `"50/min"` or `{ rate = "10/s", burst = 100 }`.
impl<'de> serde::Deserialize<'de> for Quota {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuotaVisitor;

        impl<'de> serde::de::Visitor<'de> for QuotaVisitor {
            type Value = Quota;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a rate such as "50/min", or { rate = "10/s", burst = 100 }"#)
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Quota, E> {
                Quota::parse(text).map_err(E::custom)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Quota, A::Error> {
                use serde::de::Error;
                let mut rate: Option<String> = None;
                let mut burst: Option<u32> = None;
                while let Some(field) = map.next_key::<String>()? {
                    match field.as_str() {
                        "rate" if rate.is_none() => rate = Some(map.next_value()?),
                        "burst" if burst.is_none() => burst = Some(map.next_value()?),
                        "rate" | "burst" => {
                            return Err(A::Error::custom(format!("duplicate field `{field}`")));
                        }
                        other => return Err(A::Error::unknown_field(other, &["rate", "burst"])),
                    }
                }
                let rate = rate.ok_or_else(|| A::Error::missing_field("rate"))?;
                match burst {
                    Some(burst) => Quota::with_burst(&rate, burst),
                    None => Quota::parse(&rate),
                }
                .map_err(A::Error::custom)
            }
        }

        deserializer.deserialize_any(QuotaVisitor)
    }
}

// ---------------------------------------------------------------------------------------------
// Decisions and errors
// ---------------------------------------------------------------------------------------------

/// The outcome of one request against one policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The bucket's capacity ([`Quota::burst`]).
    pub limit: u32,
    /// Requests still allowed right now, after this one.
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
    /// When refused: the time until one request will be allowed.
    pub retry_after: Option<Duration>,
}

/// The shared rate-limit store (Redis) could not decide and `on_store_error` is `deny`.
///
/// Also returned for a [`PolicyId`] that another [`RateLimiter`] issued, a programming
/// error that must fail closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate-limit store unavailable")]
pub struct StoreUnavailable;

/// Whether a decision counts the request or only looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Take,
    Peek,
    Refund,
}

/// Whose budget a route's own limit is (`per` of a `[[routes]]` entry, SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Per {
    /// The client's address (an IPv6 client's prefix), whatever credentials it sends.
    Ip,
    /// The authenticated user; the client's address when there is none.
    #[default]
    User,
    /// The API key of an API-key request; otherwise as [`Per::User`].
    Key,
}

impl Per {
    /// `"ip"`, `"user"` or `"key"`; `None` for anything else (configuration validation
    /// refuses it).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ip" => Some(Self::Ip),
            "user" => Some(Self::User),
            "key" => Some(Self::Key),
            _ => None,
        }
    }
}

/// What to do when Redis cannot decide (`rate_limits.on_store_error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Decide with a per-instance in-memory limiter and log it (the default).
    #[default]
    Local,
    /// Refuse: [`RateLimiter::check`] returns [`StoreUnavailable`] (the pipeline answers 503).
    Deny,
}

/// Why a policy could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Another policy already has this name.
    #[error("rate-limit policy {0:?} is defined twice")]
    Duplicate(String),
    /// Names are 1–100 printable ASCII characters other than `"`, `\`, `{` and `}`, so that
    /// they fit a header string and a Redis hash tag unchanged.
    #[error(
        "rate-limit policy name {0:?} must be 1-100 printable ASCII characters without quotes, backslashes or braces"
    )]
    InvalidName(String),
}

/// Why the Redis store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum StoreSetupError {
    /// `rate_limits.store` is not a usable Redis URL (the URL is not repeated: it may hold a
    /// password).
    #[error("rate_limits.store is not a valid Redis URL")]
    InvalidUrl(#[source] redis::RedisError),
}

// ---------------------------------------------------------------------------------------------
// Policies
// ---------------------------------------------------------------------------------------------

/// A registered policy, as returned by [`Policies::add`]; cheap to copy and to look up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PolicyId {
    registry: u32,
    index: u32,
}

/// Tells apart the ids of different [`Policies`] sets.
static NEXT_REGISTRY: AtomicU32 = AtomicU32::new(1);

/// The policies a [`RateLimiter`] will enforce, registered up front.
#[derive(Debug)]
pub struct Policies {
    registry: u32,
    entries: Vec<(String, Quota)>,
}

impl Default for Policies {
    fn default() -> Self {
        Self::new()
    }
}

impl Policies {
    /// An empty set.
    pub fn new() -> Self {
        Self {
            registry: NEXT_REGISTRY.fetch_add(1, Ordering::Relaxed),
            entries: Vec::new(),
        }
    }

    /// Registers `name` with `quota` and returns the id [`RateLimiter::check`] takes.
    ///
    /// # Errors
    /// [`PolicyError::Duplicate`] for a name already registered, [`PolicyError::InvalidName`]
    /// for a name that would not fit a header or a Redis key unchanged.
    pub fn add(&mut self, name: &str, quota: Quota) -> Result<PolicyId, PolicyError> {
        let valid = (1..=100).contains(&name.len())
            && name
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && !matches!(b, b'"' | b'\\' | b'{' | b'}'));
        if !valid {
            return Err(PolicyError::InvalidName(excerpt(name)));
        }
        if self.entries.iter().any(|(existing, _)| existing == name) {
            return Err(PolicyError::Duplicate(name.to_owned()));
        }
        let index = u32::try_from(self.entries.len())
            .map_err(|_| PolicyError::InvalidName(excerpt(name)))?;
        self.entries.push((name.to_owned(), quota));
        Ok(PolicyId {
            registry: self.registry,
            index,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------------------------

/// A monotonic clock that moves only when told to, for tests of in-memory limiting.
#[derive(Debug, Clone, Default)]
pub struct ManualTime {
    nanos: Arc<AtomicU64>,
}

impl ManualTime {
    /// A clock at its origin.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // `fetch_update` with a closure that always returns `Some` cannot fail.
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(by))
            });
    }
}

/// Where the limiter reads time: nanoseconds since the limiter was built.
#[derive(Debug, Clone)]
enum TimeSource {
    // The CPU's invariant time-stamp counter where there is one (about 10 ns a read here,
    // against 22 ns for `clock_gettime`, the largest single cost of an in-memory decision),
    // else the OS monotonic clock. Tests move time through `Manual`, not a paused runtime.
    Counter { clock: quanta::Clock, origin: u64 },
    Manual(ManualTime),
}

impl TimeSource {
    fn counter() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Self::Counter { clock, origin }
    }

    fn now(&self) -> u64 {
        match self {
            Self::Counter { clock, origin } => clock.delta_as_nanos(*origin, clock.raw()),
            Self::Manual(time) => time.nanos.load(Ordering::SeqCst),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GCRA
// ---------------------------------------------------------------------------------------------

/// The generic cell rate algorithm over integer time in `unit_nanos` units.
///
/// The state per key is one number, the theoretical arrival time (`tat`): the moment the
/// bucket will be full again. A request is allowed when, after adding its `interval`,
/// `tat` is at most `window` (a full bucket's worth of time) ahead of now. The Lua script
/// below is the same arithmetic.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    interval: u64,
    window: u64,
    capacity: u32,
    unit_nanos: u64,
}

impl Gcra {
    fn new(quota: &Quota, unit_nanos: u64) -> Self {
        let interval = quota.interval_in(unit_nanos);
        let capacity = quota.burst();
        Self {
            interval,
            window: interval * u64::from(capacity),
            capacity,
            unit_nanos,
        }
    }

    fn duration(&self, units: u64) -> Duration {
        Duration::from_nanos(units.saturating_mul(self.unit_nanos))
    }

    /// Decides one request at `now` against the stored `tat`; returns the decision and,
    /// when allowed, the new `tat` to store. A refused request does not change the state.
    fn decide(&self, tat: Option<u64>, now: u64) -> (Decision, Option<u64>) {
        let tat = tat.map_or(now, |tat| tat.max(now));
        let new_tat = tat.saturating_add(self.interval);
        let allow_at = new_tat.saturating_sub(self.window);
        if now < allow_at {
            let decision = Decision {
                allowed: false,
                limit: self.capacity,
                remaining: 0,
                reset: self.duration(tat - now),
                retry_after: Some(self.duration(allow_at - now)),
            };
            return (decision, None);
        }
        let used = new_tat - now;
        let remaining =
            (self.window.saturating_sub(used) / self.interval).min(u64::from(self.capacity));
        let decision = Decision {
            allowed: true,
            limit: self.capacity,
            remaining: u32::try_from(remaining).unwrap_or(self.capacity),
            reset: self.duration(used),
            retry_after: None,
        };
        (decision, Some(new_tat))
    }
}

// ---------------------------------------------------------------------------------------------
// In-memory store
// ---------------------------------------------------------------------------------------------

/// Shards per policy; a power of two.
const SHARDS: usize = 64;
const _: () = assert!(SHARDS.is_power_of_two());
/// A shard is swept when it grows to this many keys, at least.
const MIN_SWEEP: usize = 64;

/// One lock's worth of keys. Aligned to a cache line so that neighbouring locks do not
/// contend through false sharing.
#[repr(align(64))]
#[derive(Default)]
struct Shard(Mutex<ShardMap>);

struct ShardMap {
    // SipHash with a random key (the std default): client keys are chosen by clients (an
    // IPv6 /64 alone offers 2^64 of them), so a fast unkeyed hash would invite collisions.
    tats: HashMap<Box<str>, u64>,
    /// The next sweep happens when `tats` reaches this length.
    sweep_at: usize,
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
    fn peek(&self, gcra: &Gcra, key: &str, now: u64) -> Decision {
        gcra.decide(self.tats.get(key).copied(), now).0
    }

    /// Gives back one request's worth of capacity taken earlier.
    fn refund(&mut self, gcra: &Gcra, key: &str, now: u64) -> Decision {
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

    fn check(&mut self, gcra: &Gcra, key: &str, now: u64) -> Decision {
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
    fn sweep(&mut self, now: u64) {
        self.tats.retain(|_, tat| *tat > now);
        self.sweep_at = (self.tats.len() * 2).max(MIN_SWEEP);
        if self.tats.capacity() > 4 * self.sweep_at {
            self.tats.shrink_to(self.sweep_at);
        }
    }
}

/// The keys of one policy.
struct PolicyShards {
    gcra: Gcra,
    shards: Box<[Shard; SHARDS]>,
}

impl PolicyShards {
    fn new(quota: &Quota) -> Self {
        Self {
            gcra: Gcra::new(quota, 1),
            shards: Box::new(std::array::from_fn(|_| Shard::default())),
        }
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, ShardMap> {
        lock(&self.shards[shard_index(key.as_bytes())])
    }
}

/// Picks a key's shard from its first and last eight bytes (all of an IPv4 address, the
/// interface half of an IPv6 one). Only the lock depends on it; the map inside hashes
/// with SipHash, so a client steering its keys to one shard gains nothing but contention.
fn shard_index(key: &[u8]) -> usize {
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

fn lock(shard: &Shard) -> MutexGuard<'_, ShardMap> {
    // Nothing panics while the lock is held (integer arithmetic and a map insert), and a
    // map left by a panicking thread is still a valid map.
    shard.0.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Keyed GCRA over sharded maps, one per policy.
struct MemoryStore {
    time: TimeSource,
    policies: Box<[PolicyShards]>,
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
    fn new(quotas: &[(String, Quota)], time: TimeSource) -> Self {
        Self {
            time,
            policies: quotas
                .iter()
                .map(|(_, quota)| PolicyShards::new(quota))
                .collect(),
        }
    }

    fn check(&self, index: usize, key: &str, mode: Mode) -> Option<Decision> {
        let policy = self.policies.get(index)?;
        let now = self.time.now();
        let mut shard = policy.shard(key);
        Some(match mode {
            Mode::Take => shard.check(&policy.gcra, key, now),
            Mode::Peek => shard.peek(&policy.gcra, key, now),
            Mode::Refund => shard.refund(&policy.gcra, key, now),
        })
    }

    fn tracked_keys(&self) -> usize {
        self.policies
            .iter()
            .flat_map(|policy| policy.shards.iter())
            .map(|shard| lock(shard).tats.len())
            .sum()
    }

    fn evict_idle(&self) {
        for shard in self.policies.iter().flat_map(|policy| policy.shards.iter()) {
            let now = self.time.now();
            lock(shard).sweep(now);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Redis store
// ---------------------------------------------------------------------------------------------

/// The longest a decision waits for Redis before `on_store_error` applies.
pub const STORE_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failure, decisions skip Redis for this long (one probe excepted), so that an
/// outage costs one timeout per interval rather than one per request.
const STORE_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The fallback is logged at most once per this interval.
const WARN_EVERY: Duration = Duration::from_secs(30);

/// GCRA in microseconds (exact in Lua's doubles for centuries), time from the server's own
/// clock (`TIME`) so that instances with skewed clocks agree. KEYS[1]: the bucket.
/// ARGV[1]: emission interval, ARGV[2]: window (capacity × interval), both in µs;
/// ARGV[3]: `0` to count the request, `1` to decide without counting it (a peek), `2` to
/// give back one request taken earlier (a refund; the reply then means nothing).
/// Returns {allowed (0/1), remaining, µs until full, µs until retry}. The key expires
/// when its bucket is full, so idle keys vanish.
const GCRA_SCRIPT: &str = r"
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local interval = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if ARGV[3] == '2' then
  if tat ~= nil then
    local back = tat - interval
    if back <= now then
      redis.call('DEL', KEYS[1])
    else
      redis.call('SET', KEYS[1], string.format('%.0f', back), 'PX', math.ceil((back - now) / 1000))
    end
  end
  return {1, 0, 0, 0}
end
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - window
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end
if ARGV[3] == '1' then
  return {1, math.floor((window - (new_tat - now)) / interval), new_tat - now, 0}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, math.floor((window - (new_tat - now)) / interval), new_tat - now, 0}
";

/// Redis keys and script arguments of one policy.
#[derive(Debug)]
struct RedisPolicy {
    /// `<prefix>rl:{<policy>:`; the client key and `}` complete it. The braces are a hash
    /// tag: each bucket lives whole on one Redis Cluster node.
    key_head: String,
    interval_us: u64,
    window_us: u64,
    capacity: u32,
}

/// Logs at most once per interval, counting what it held back.
#[derive(Debug, Default)]
struct LogThrottle {
    /// Time of the last log plus one (0: never logged).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    /// `Some(number held back since the last log)` when a log is due at `now`.
    fn due(&self, now: u64, every: Duration) -> Option<u64> {
        let every = u64::try_from(every.as_nanos()).unwrap_or(u64::MAX);
        let last = self.last.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last - 1) >= every;
        if due
            && self
                .last
                .compare_exchange(
                    last,
                    now.saturating_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

struct RedisStore {
    connection: ConnectionManager,
    script: redis::Script,
    on_error: OnStoreError,
    policies: Box<[RedisPolicy]>,
    /// Local time until which Redis is skipped after a failure (0: Redis is healthy).
    down_until: AtomicU64,
    warnings: LogThrottle,
}

impl fmt::Debug for RedisStore {
    // The connection's Debug shows its connection info, password included.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("on_error", &self.on_error)
            .field("policies", &self.policies)
            .finish_non_exhaustive()
    }
}

/// Why a Redis decision failed; logged, never shown to clients.
#[derive(Debug)]
enum RedisFailure {
    Timeout,
    Redis(redis::RedisError),
}

impl fmt::Display for RedisFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout => write!(f, "no answer within {STORE_TIMEOUT:?}"),
            Self::Redis(error) => write!(f, "{error}"),
        }
    }
}

impl RedisStore {
    async fn decide(
        &self,
        policy: &RedisPolicy,
        key: &str,
        mode: Mode,
    ) -> Result<Decision, RedisFailure> {
        let mut bucket = String::with_capacity(policy.key_head.len() + key.len() + 1);
        bucket.push_str(&policy.key_head);
        bucket.push_str(key);
        bucket.push('}');
        let mut invocation = self.script.key(bucket);
        invocation
            .arg(policy.interval_us)
            .arg(policy.window_us)
            .arg(match mode {
                Mode::Take => 0u8,
                Mode::Peek => 1,
                Mode::Refund => 2,
            });
        let mut connection = self.connection.clone();
        // EVALSHA, and SCRIPT LOAD + EVALSHA only when the server lacks the script.
        let reply = tokio::time::timeout(
            STORE_TIMEOUT,
            invocation.invoke_async::<(i64, i64, i64, i64)>(&mut connection),
        )
        .await
        .map_err(|_| RedisFailure::Timeout)?
        .map_err(RedisFailure::Redis)?;
        let (allowed, remaining, reset_us, retry_us) = reply;
        let micros = |value: i64| Duration::from_micros(u64::try_from(value).unwrap_or(0));
        Ok(Decision {
            allowed: allowed == 1,
            limit: policy.capacity,
            remaining: u32::try_from(remaining.clamp(0, i64::from(policy.capacity))).unwrap_or(0),
            reset: micros(reset_us),
            retry_after: (allowed != 1).then(|| micros(retry_us).max(Duration::from_micros(1))),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// RateLimiter
// ---------------------------------------------------------------------------------------------

/// Decides whether a client may make a request under a policy.
#[derive(Debug)]
pub struct RateLimiter {
    registry: u32,
    names: Box<[(String, Quota)]>,
    /// The policy names as `'static` metric labels; policies are registered once at start-up.
    labels: Box<[&'static str]>,
    /// Per policy: its name as a Structured Fields string and its `RateLimit-Policy` value,
    /// which never change, so that a response formats only the `RateLimit` numbers.
    fields: Box<[(String, HeaderValue)]>,
    /// The store in memory mode; the fallback under [`OnStoreError::Local`] in Redis mode.
    memory: MemoryStore,
    redis: Option<RedisStore>,
}

impl RateLimiter {
    /// An in-memory limiter (one instance), reading time from a monotonic clock that a
    /// paused tokio runtime does not stop; tests use [`RateLimiter::memory_with_time`].
    pub fn memory(policies: Policies) -> Self {
        Self::memory_with_time_source(policies, TimeSource::counter())
    }

    /// An in-memory limiter reading time from `time`; for tests.
    pub fn memory_with_time(policies: Policies, time: ManualTime) -> Self {
        Self::memory_with_time_source(policies, TimeSource::Manual(time))
    }

    fn memory_with_time_source(policies: Policies, time: TimeSource) -> Self {
        Self {
            registry: policies.registry,
            labels: policies
                .entries
                .iter()
                .map(|(name, _)| &*Box::leak(name.clone().into_boxed_str()))
                .collect(),
            fields: policies
                .entries
                .iter()
                .map(|(name, quota)| (sf_string(name), headers(name, quota, &FULL).policy))
                .collect(),
            memory: MemoryStore::new(&policies.entries, time),
            names: policies.entries.into_boxed_slice(),
            redis: None,
        }
    }

    /// A limiter whose buckets live in Redis at `url`, shared by every instance that uses
    /// the same Redis and `key_prefix`. Buckets are keys `<key_prefix>rl:{<policy>:<key>}`.
    ///
    /// Connects lazily: an unreachable Redis is not an error here but is logged, and each
    /// decision then follows `on_store_error`.
    ///
    /// # Errors
    /// [`StoreSetupError::InvalidUrl`] when `url` is not a Redis URL.
    pub async fn redis(
        url: &str,
        key_prefix: String,
        on_store_error: OnStoreError,
        policies: Policies,
    ) -> Result<Self, StoreSetupError> {
        let time = TimeSource::counter();
        Self::redis_with_time_source(url, key_prefix, on_store_error, policies, time).await
    }

    async fn redis_with_time_source(
        url: &str,
        key_prefix: String,
        on_store_error: OnStoreError,
        policies: Policies,
        time: TimeSource,
    ) -> Result<Self, StoreSetupError> {
        let client = redis::Client::open(url).map_err(StoreSetupError::InvalidUrl)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(STORE_TIMEOUT))
            .set_response_timeout(Some(STORE_TIMEOUT))
            .set_number_of_retries(0);
        let connection = client
            .get_connection_manager_lazy(config)
            .map_err(StoreSetupError::InvalidUrl)?;
        let redis_policies = policies
            .entries
            .iter()
            .map(|(name, quota)| {
                let gcra = Gcra::new(quota, 1_000);
                RedisPolicy {
                    key_head: format!("{key_prefix}rl:{{{name}:"),
                    interval_us: gcra.interval,
                    window_us: gcra.window,
                    capacity: gcra.capacity,
                }
            })
            .collect();
        let store = RedisStore {
            connection,
            script: redis::Script::new(GCRA_SCRIPT),
            on_error: on_store_error,
            policies: redis_policies,
            down_until: AtomicU64::new(0),
            warnings: LogThrottle::default(),
        };
        // Loading the script now checks the connection and saves the first decision a
        // round trip. A failure is not fatal: the store is marked down, so that the first
        // requests do not each wait for it, and decisions follow `on_store_error`.
        let mut connection = store.connection.clone();
        let loaded =
            tokio::time::timeout(STORE_TIMEOUT, store.script.load_async(&mut connection)).await;
        let failure = match loaded {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(RedisFailure::Redis(error)),
            Err(_) => Some(RedisFailure::Timeout),
        };
        if let Some(error) = failure {
            tracing::warn!(%error, ?on_store_error, "rate-limit store unreachable at start-up");
            store
                .down_until
                .store(retry_at(time.now()), Ordering::Release);
        }
        let mut limiter = Self::memory_with_time_source(policies, time);
        limiter.redis = Some(store);
        Ok(limiter)
    }

    /// Looks up a policy by name (for set-up code; the hot path keeps the [`PolicyId`]).
    pub fn policy(&self, name: &str) -> Option<PolicyId> {
        let index = self
            .names
            .iter()
            .position(|(existing, _)| existing == name)?;
        Some(PolicyId {
            registry: self.registry,
            index: u32::try_from(index).ok()?,
        })
    }

    /// The name of `policy`, if it belongs to this limiter.
    pub fn policy_name(&self, policy: PolicyId) -> Option<&str> {
        self.entry(policy).map(|(name, _)| name.as_str())
    }

    /// The name of `policy` as a metric label, if it belongs to this limiter.
    pub fn policy_label(&self, policy: PolicyId) -> Option<&'static str> {
        if policy.registry != self.registry {
            return None;
        }
        self.labels.get(policy.index as usize).copied()
    }

    /// Every policy's name as a metric label, in registration order.
    pub fn policy_labels(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.labels.iter().copied()
    }

    /// The quota of `policy`, if it belongs to this limiter.
    pub fn quota(&self, policy: PolicyId) -> Option<&Quota> {
        self.entry(policy).map(|(_, quota)| quota)
    }

    fn entry(&self, policy: PolicyId) -> Option<&(String, Quota)> {
        if policy.registry != self.registry {
            return None;
        }
        self.names.get(policy.index as usize)
    }

    /// Counts `key`'s request against `policy` and says whether it may go on.
    ///
    /// In memory mode the decision is taken by this call and the future is ready at once;
    /// in Redis mode it is taken when the future is awaited.
    ///
    /// # Errors
    /// [`StoreUnavailable`] when Redis cannot decide (unreachable, or no answer within
    /// [`STORE_TIMEOUT`]) and `on_store_error` is [`OnStoreError::Deny`]; also, failing
    /// closed, for a `policy` issued by another limiter.
    #[inline]
    pub fn check<'a>(
        &'a self,
        policy: PolicyId,
        key: &'a str,
    ) -> impl Future<Output = Result<Decision, StoreUnavailable>> + Send + 'a {
        self.decide(policy, key, Mode::Take)
    }

    /// What [`RateLimiter::check`] would answer for `key` under `policy` now, without
    /// counting a request: for refusing early, before work that only a refusal would follow.
    ///
    /// # Errors
    /// As [`RateLimiter::check`].
    #[inline]
    pub fn peek<'a>(
        &'a self,
        policy: PolicyId,
        key: &'a str,
    ) -> impl Future<Output = Result<Decision, StoreUnavailable>> + Send + 'a {
        self.decide(policy, key, Mode::Peek)
    }

    /// Gives back one request that [`RateLimiter::check`] counted for `key` under `policy`:
    /// for a request charged up front and then found to owe nothing.
    ///
    /// # Errors
    /// As [`RateLimiter::check`].
    pub async fn refund(&self, policy: PolicyId, key: &str) -> Result<(), StoreUnavailable> {
        self.decide(policy, key, Mode::Refund).await.map(drop)
    }

    #[inline]
    fn decide<'a>(
        &'a self,
        policy: PolicyId,
        key: &'a str,
        mode: Mode,
    ) -> impl Future<Output = Result<Decision, StoreUnavailable>> + Send + 'a {
        use futures::future::{Either, ready};
        if policy.registry != self.registry {
            tracing::error!(?policy, "rate-limit policy id from another limiter");
            return Either::Left(ready(Err(StoreUnavailable)));
        }
        let index = policy.index as usize;
        match &self.redis {
            // Decided here, not in an async fn: a ready future of a few words costs less to
            // move and poll than a state machine sized for the Redis path.
            None => Either::Left(ready(self.check_locally(index, key, mode))),
            // Boxed so that the memory path's future does not carry the Redis one (~700 bytes).
            Some(redis) => Either::Right(Box::pin(self.check_redis(redis, index, key, mode))),
        }
    }

    #[inline]
    fn check_locally(
        &self,
        index: usize,
        key: &str,
        mode: Mode,
    ) -> Result<Decision, StoreUnavailable> {
        self.memory.check(index, key, mode).ok_or(StoreUnavailable)
    }

    async fn check_redis(
        &self,
        redis: &RedisStore,
        index: usize,
        key: &str,
        mode: Mode,
    ) -> Result<Decision, StoreUnavailable> {
        let policy = redis.policies.get(index).ok_or(StoreUnavailable)?;
        let down_until = redis.down_until.load(Ordering::Acquire);
        if down_until != 0 {
            let now = self.memory.time.now();
            // While Redis is marked down, one decision per interval probes it; the others
            // go straight to the fallback.
            let probe = now >= down_until
                && redis
                    .down_until
                    .compare_exchange(
                        down_until,
                        retry_at(now),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok();
            if !probe {
                return self.store_failed(redis, index, key, mode, None);
            }
        }
        match redis.decide(policy, key, mode).await {
            Ok(decision) => {
                if down_until != 0 && redis.down_until.swap(0, Ordering::AcqRel) != 0 {
                    tracing::info!("rate-limit store reachable again");
                }
                Ok(decision)
            }
            Err(failure) => {
                redis
                    .down_until
                    .store(retry_at(self.memory.time.now()), Ordering::Release);
                self.store_failed(redis, index, key, mode, Some(failure))
            }
        }
    }

    fn store_failed(
        &self,
        redis: &RedisStore,
        index: usize,
        key: &str,
        mode: Mode,
        failure: Option<RedisFailure>,
    ) -> Result<Decision, StoreUnavailable> {
        if let Some(held_back) = redis.warnings.due(self.memory.time.now(), WARN_EVERY) {
            let error = failure.map_or_else(
                || "marked down after an earlier failure".to_owned(),
                |f| f.to_string(),
            );
            match redis.on_error {
                OnStoreError::Local => tracing::warn!(
                    %error,
                    held_back,
                    "rate-limit store unavailable; deciding with this instance's own limiter"
                ),
                OnStoreError::Deny => {
                    tracing::warn!(%error, held_back, "rate-limit store unavailable; refusing requests")
                }
            }
        }
        match redis.on_error {
            OnStoreError::Local => self.check_locally(index, key, mode),
            OnStoreError::Deny => Err(StoreUnavailable),
        }
    }

    /// How many client keys the in-memory store (or the Redis fallback) holds.
    pub fn tracked_keys(&self) -> usize {
        self.memory.tracked_keys()
    }

    /// Forgets every in-memory key whose bucket is full again and returns unused memory.
    /// Checks already do this amortised; calling it periodically also returns memory after
    /// a flood of clients has passed.
    pub fn evict_idle(&self) {
        self.memory.evict_idle();
    }

    /// Runs [`RateLimiter::evict_idle`] every `every` (at least 1 s) on the tokio runtime
    /// until the limiter is dropped.
    pub fn spawn_idle_eviction(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let limiter = Arc::downgrade(self);
        let every = every.max(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(limiter) = limiter.upgrade() else {
                    break;
                };
                limiter.evict_idle_gradually().await;
            }
        })
    }

    /// [`RateLimiter::evict_idle`], yielding after each policy so that a large sweep never
    /// holds a runtime worker for long.
    async fn evict_idle_gradually(&self) {
        for policy in self.memory.policies.iter() {
            for shard in policy.shards.iter() {
                let now = self.memory.time.now();
                lock(shard).sweep(now);
            }
            tokio::task::yield_now().await;
        }
    }

    /// The `RateLimit-Policy`, `RateLimit` and (when refused) `Retry-After` fields for a
    /// decision under `policy`; `None` for a policy of another limiter.
    pub fn headers(&self, policy: PolicyId, decision: &Decision) -> Option<RateLimitHeaders> {
        if policy.registry != self.registry {
            return None;
        }
        let (name, policy_field) = self.fields.get(policy.index as usize)?;
        Some(RateLimitHeaders {
            policy: policy_field.clone(),
            rate_limit: rate_limit_field(name, decision),
            retry_after: retry_after_field(decision),
        })
    }
}

fn retry_at(now: u64) -> u64 {
    now.saturating_add(u64::try_from(STORE_RETRY_AFTER.as_nanos()).unwrap_or(u64::MAX))
        .max(1)
}

// ---------------------------------------------------------------------------------------------
// Headers
// ---------------------------------------------------------------------------------------------

// Field syntax of draft-ietf-httpapi-ratelimit-headers-11 (May 2026), §3 and §4: each field
// is a Structured Fields List of String items with parameters, e.g.
//   RateLimit-Policy: "permin";q=50;w=60
//   RateLimit: "permin";r=49;t=2
// Several policies on one response are several items, here several field lines (§3, §4:
// a list may be split over field lines).

/// `RateLimit-Policy`: the policies that apply to the request.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: the quota currently left under each policy.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The rate-limit fields for one decision under one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// `"<name>";q=<limit>;w=<period secs>`, plus `;rampart-burst=<burst>` when the bucket is
    /// sized apart from the limit.
    pub policy: HeaderValue,
    /// `"<name>";r=<remaining>;t=<seconds until the bucket is full, rounded up>`.
    pub rate_limit: HeaderValue,
    /// `Retry-After` in whole seconds, rounded up and at least 1, when refused.
    pub retry_after: Option<HeaderValue>,
}

impl RateLimitHeaders {
    /// Appends the fields to `headers`, beside those of other policies of the same response.
    /// A `Retry-After` already present is kept if it asks for a longer wait.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        headers.append(RATELIMIT_POLICY, self.policy.clone());
        headers.append(RATELIMIT, self.rate_limit.clone());
        if let Some(retry_after) = &self.retry_after {
            let seconds =
                |value: &HeaderValue| value.to_str().ok().and_then(|v| v.parse::<u64>().ok());
            let longer = match headers.get(http::header::RETRY_AFTER) {
                Some(existing) => seconds(retry_after) > seconds(existing),
                None => true,
            };
            if longer {
                headers.insert(http::header::RETRY_AFTER, retry_after.clone());
            }
        }
    }
}

/// Whole seconds, rounded up.
fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// `text` as a Structured Fields String: printable ASCII, `"` and `\` escaped; anything else
/// (impossible for registered policy names) becomes `?`.
fn sf_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

fn header_value(text: String) -> HeaderValue {
    // Only printable ASCII is ever written, which every header value accepts.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("\"invalid\""))
}

/// A decision that only serves to build a policy's fixed `RateLimit-Policy` value.
const FULL: Decision = Decision {
    allowed: true,
    limit: 0,
    remaining: 0,
    reset: Duration::ZERO,
    retry_after: None,
};

/// `RateLimit` for `decision`, given the policy's name already as a Structured Fields string.
fn rate_limit_field(sf_name: &str, decision: &Decision) -> HeaderValue {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(sf_name.len() + 24);
    text.push_str(sf_name);
    let _ = write!(
        text,
        ";r={};t={}",
        decision.remaining,
        ceil_secs(decision.reset)
    );
    header_value(text)
}

fn retry_after_field(decision: &Decision) -> Option<HeaderValue> {
    match (decision.allowed, decision.retry_after) {
        (true, _) => None,
        (false, wait) => Some(HeaderValue::from(
            ceil_secs(wait.unwrap_or(Duration::ZERO)).max(1),
        )),
    }
}

/// Builds the `RateLimit-Policy`, `RateLimit` and `Retry-After` values for `decision` under
/// the policy `policy_name` with `quota`.
pub fn headers(policy_name: &str, quota: &Quota, decision: &Decision) -> RateLimitHeaders {
    let name = sf_string(policy_name);
    let mut policy = format!("{name};q={};w={}", quota.limit(), quota.period().as_secs());
    if quota.burst() != quota.limit() {
        policy.push_str(&format!(";rampart-burst={}", quota.burst()));
    }
    RateLimitHeaders {
        policy: header_value(policy),
        rate_limit: rate_limit_field(&name, decision),
        retry_after: retry_after_field(decision),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write as _;

    fn manual_limiter(quota: &str) -> (RateLimiter, PolicyId, ManualTime) {
        let mut policies = Policies::new();
        let id = policies.add("test", Quota::parse(quota).unwrap()).unwrap();
        let time = ManualTime::new();
        (
            RateLimiter::memory_with_time(policies, time.clone()),
            id,
            time,
        )
    }

    async fn allowed(limiter: &RateLimiter, id: PolicyId, key: &str, times: usize) -> usize {
        let mut count = 0;
        for _ in 0..times {
            if limiter.check(id, key).await.unwrap().allowed {
                count += 1;
            }
        }
        count
    }

    // --- Quota --------------------------------------------------------------------------------

    #[test]
    fn quota_parse_accepts_the_documented_forms() {
        let cases = [
            ("50/min", 50, 60),
            ("10/s", 10, 1),
            ("100/h", 100, 3600),
            (" 5 / min ", 5, 60),
            ("1/sec", 1, 1),
            ("2/second", 2, 1),
            ("3/minute", 3, 60),
            ("4/hour", 4, 3600),
            ("1000000/s", 1_000_000, 1),
        ];
        for (text, limit, secs) in cases {
            let quota = Quota::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"));
            assert_eq!(quota.limit(), limit, "limit of {text:?}");
            assert_eq!(
                quota.period(),
                Duration::from_secs(secs),
                "period of {text:?}"
            );
            assert_eq!(
                quota.burst(),
                limit,
                "a plain quota's burst is its limit ({text:?})"
            );
        }
    }

    #[test]
    fn quota_parse_refuses_bad_text_and_says_why() {
        let malformed = || QuotaError::Malformed(String::new());
        let not_a_number = || QuotaError::NotANumber(String::new());
        let unknown_period = || QuotaError::UnknownPeriod(String::new());
        let cases = [
            ("", malformed()),
            ("50", malformed()),
            ("50 per minute", malformed()),
            ("/min", not_a_number()),
            ("abc/min", not_a_number()),
            ("-5/min", not_a_number()),
            ("+5/min", not_a_number()),
            ("1.5/s", not_a_number()),
            ("5/m", unknown_period()),
            ("5/day", unknown_period()),
            ("5/", unknown_period()),
            ("0/min", QuotaError::ZeroRequests(String::new())),
            ("1000001/s", QuotaError::TooManyRequests(String::new())),
            (
                "99999999999999999999999/s",
                QuotaError::TooManyRequests(String::new()),
            ),
        ];
        for (text, expected) in cases {
            let error = Quota::parse(text).expect_err(text);
            assert_eq!(
                std::mem::discriminant(&error),
                std::mem::discriminant(&expected),
                "{text:?} gave {error:?}"
            );
            assert!(
                error.to_string().contains("rate limit"),
                "{error} names the setting"
            );
        }
    }

    #[test]
    fn quota_errors_quote_long_input_shortened() {
        let text = format!("{}/min", "x".repeat(500));
        let message = Quota::parse(&text).unwrap_err().to_string();
        assert!(message.len() < 150, "{message}");
    }

    #[test]
    fn quota_with_burst_sizes_the_bucket_and_refuses_zero_or_absurd_bursts() {
        let quota = Quota::with_burst("10/s", 100).unwrap();
        assert_eq!((quota.limit(), quota.burst()), (10, 100));
        assert_eq!(quota.emission_interval(), Duration::from_millis(100));
        assert_eq!(Quota::with_burst("10/s", 0), Err(QuotaError::BadBurst(0)));
        assert_eq!(
            Quota::with_burst("10/s", 1_000_001),
            Err(QuotaError::BadBurst(1_000_001))
        );
        assert!(matches!(
            Quota::with_burst("0/s", 5),
            Err(QuotaError::ZeroRequests(_))
        ));
    }

    #[test]
    fn quota_new_takes_whole_second_periods_up_to_an_hour() {
        assert_eq!(
            Quota::new(5, Duration::from_secs(60)).unwrap(),
            Quota::parse("5/min").unwrap()
        );
        assert!(Quota::new(0, Duration::from_secs(1)).is_err());
        assert!(Quota::new(5, Duration::ZERO).is_err());
        assert!(Quota::new(5, Duration::from_millis(1500)).is_err());
        assert!(Quota::new(5, Duration::from_secs(3601)).is_err());
    }

    #[test]
    fn quota_displays_as_written() {
        assert_eq!(Quota::parse("50/minute").unwrap().to_string(), "50/min");
        assert_eq!(
            Quota::with_burst("10/s", 100).unwrap().to_string(),
            "10/s (burst 100)"
        );
        assert_eq!("100/h".parse::<Quota>().unwrap().to_string(), "100/h");
    }

    #[test]
    fn quota_deserializes_from_both_config_forms() {
        #[derive(serde::Deserialize)]
        struct Route {
            rate_limit: Quota,
        }
        let plain: Route = toml::from_str(r#"rate_limit = "50/min""#).unwrap();
        assert_eq!(plain.rate_limit, Quota::parse("50/min").unwrap());
        let table: Route =
            toml::from_str(r#"rate_limit = { rate = "10/s", burst = 100 }"#).unwrap();
        assert_eq!(table.rate_limit, Quota::with_burst("10/s", 100).unwrap());
        let table: Route = toml::from_str(r#"rate_limit = { rate = "10/s" }"#).unwrap();
        assert_eq!(table.rate_limit, Quota::parse("10/s").unwrap());

        for (bad, needle) in [
            (r#"rate_limit = "0/min""#, "at least 1"),
            (r#"rate_limit = { burst = 5 }"#, "rate"),
            (r#"rate_limit = { rate = "10/s", burst = 0 }"#, "burst"),
            (r#"rate_limit = { rate = "10/s", brust = 5 }"#, "brust"),
            ("rate_limit = 5", "a rate such as"),
        ] {
            let error = toml::from_str::<Route>(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(error.to_string().contains(needle), "{bad}: {error}");
        }
    }

    #[test]
    fn on_store_error_reads_local_and_deny() {
        #[derive(serde::Deserialize)]
        struct Section {
            on_store_error: OnStoreError,
        }
        let local: Section = toml::from_str(r#"on_store_error = "local""#).unwrap();
        let deny: Section = toml::from_str(r#"on_store_error = "deny""#).unwrap();
        assert_eq!(
            (local.on_store_error, deny.on_store_error),
            (OnStoreError::Local, OnStoreError::Deny)
        );
        assert!(toml::from_str::<Section>(r#"on_store_error = "panic""#).is_err());
        assert_eq!(OnStoreError::default(), OnStoreError::Local);
    }

    // --- Policies -----------------------------------------------------------------------------

    #[test]
    fn policies_refuse_duplicate_and_unprintable_names() {
        let quota = Quota::parse("1/s").unwrap();
        let mut policies = Policies::new();
        policies.add("route:/orders:POST", quota).unwrap();
        assert_eq!(
            policies.add("route:/orders:POST", quota),
            Err(PolicyError::Duplicate("route:/orders:POST".into()))
        );
        for bad in [
            "",
            "tab\there",
            "quote\"",
            "back\\slash",
            "{tag}",
            "é",
            &"x".repeat(101),
        ] {
            assert!(
                matches!(policies.add(bad, quota), Err(PolicyError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    fn some_decision() -> Decision {
        Decision {
            allowed: true,
            limit: 1,
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: None,
        }
    }

    #[tokio::test]
    async fn a_policy_id_from_another_limiter_fails_closed() {
        let (limiter, _, _) = manual_limiter("5/min");
        let (_, foreign, _) = manual_limiter("1/s");
        assert_eq!(
            limiter.check(foreign, "1.2.3.4").await,
            Err(StoreUnavailable)
        );
        assert!(limiter.quota(foreign).is_none());
        assert!(limiter.headers(foreign, &some_decision()).is_none());
    }

    #[test]
    fn policies_are_found_by_name() {
        let mut policies = Policies::new();
        let anonymous = policies
            .add("anonymous", Quota::parse("10/min").unwrap())
            .unwrap();
        let premium = policies
            .add("premium", Quota::parse("1000/min").unwrap())
            .unwrap();
        let limiter = RateLimiter::memory(policies);
        assert_eq!(limiter.policy("anonymous"), Some(anonymous));
        assert_eq!(limiter.policy("premium"), Some(premium));
        assert_eq!(limiter.policy("nobody"), None);
        assert_eq!(limiter.policy_name(premium), Some("premium"));
        assert_eq!(limiter.quota(anonymous).map(Quota::limit), Some(10));
    }

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

    // --- Log throttle ------------------------------------------------------------------------------

    #[test]
    fn store_failures_are_logged_once_per_interval_with_a_count_of_the_rest() {
        let throttle = LogThrottle::default();
        let second = 1_000_000_000;
        assert_eq!(throttle.due(0, Duration::from_secs(30)), Some(0));
        assert_eq!(throttle.due(second, Duration::from_secs(30)), None);
        assert_eq!(throttle.due(29 * second, Duration::from_secs(30)), None);
        assert_eq!(throttle.due(30 * second, Duration::from_secs(30)), Some(2));
        assert_eq!(throttle.due(31 * second, Duration::from_secs(30)), None);
    }

    // --- Headers ---------------------------------------------------------------------------------

    #[tokio::test]
    async fn the_limiters_precomputed_fields_match_the_documented_format() {
        let mut policies = Policies::new();
        let id = policies
            .add("route:POST /orders", Quota::with_burst("10/s", 25).unwrap())
            .unwrap();
        let limiter = RateLimiter::memory_with_time(policies, ManualTime::new());
        for _ in 0..30 {
            let decision = limiter.check(id, "k").await.unwrap();
            let quota = limiter.quota(id).unwrap();
            assert_eq!(
                limiter.headers(id, &decision),
                Some(headers("route:POST /orders", quota, &decision))
            );
        }
    }

    #[test]
    fn headers_follow_the_ietf_draft_for_an_allowed_request() {
        let quota = Quota::parse("50/min").unwrap();
        let decision = Decision {
            allowed: true,
            limit: 50,
            remaining: 49,
            reset: Duration::from_millis(1200),
            retry_after: None,
        };
        let fields = headers("route:/orders:POST", &quota, &decision);
        assert_eq!(fields.policy, "\"route:/orders:POST\";q=50;w=60");
        assert_eq!(fields.rate_limit, "\"route:/orders:POST\";r=49;t=2");
        assert_eq!(fields.retry_after, None);
    }

    #[test]
    fn headers_of_a_refusal_carry_retry_after_rounded_up_and_at_least_one() {
        let quota = Quota::parse("10/s").unwrap();
        let mut decision = Decision {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset: Duration::from_millis(1000),
            retry_after: Some(Duration::from_millis(100)),
        };
        let fields = headers("anonymous", &quota, &decision);
        assert_eq!(fields.rate_limit, "\"anonymous\";r=0;t=1");
        assert_eq!(fields.retry_after, Some(HeaderValue::from_static("1")));
        decision.retry_after = Some(Duration::from_millis(12_001));
        assert_eq!(
            headers("anonymous", &quota, &decision).retry_after,
            Some(HeaderValue::from_static("13"))
        );
        decision.retry_after = Some(Duration::ZERO);
        assert_eq!(
            headers("anonymous", &quota, &decision).retry_after,
            Some(HeaderValue::from_static("1"))
        );
    }

    #[test]
    fn headers_name_an_explicit_burst_with_a_vendor_parameter() {
        let quota = Quota::with_burst("10/s", 100).unwrap();
        let fields = headers("premium", &quota, &some_decision());
        assert_eq!(fields.policy, "\"premium\";q=10;w=1;rampart-burst=100");
    }

    #[test]
    fn headers_escape_names_as_structured_field_strings() {
        let quota = Quota::parse("1/h").unwrap();
        let fields = headers("a\"b\\c\u{e9}\n", &quota, &some_decision());
        assert_eq!(fields.policy, r#""a\"b\\c??";q=1;w=3600"#);
    }

    #[test]
    fn several_policies_share_the_fields_and_the_longest_retry_after_wins() {
        let mut map = HeaderMap::new();
        let refused = |secs| Decision {
            allowed: false,
            limit: 5,
            remaining: 0,
            reset: Duration::from_secs(60),
            retry_after: Some(Duration::from_secs(secs)),
        };
        headers("standard", &Quota::parse("100/min").unwrap(), &refused(30)).append_to(&mut map);
        headers(
            "route:/orders:POST",
            &Quota::parse("5/min").unwrap(),
            &refused(12),
        )
        .append_to(&mut map);
        assert_eq!(map.get_all(RATELIMIT_POLICY).iter().count(), 2);
        assert_eq!(map.get_all(RATELIMIT).iter().count(), 2);
        assert_eq!(map.get(http::header::RETRY_AFTER).unwrap(), "30");
    }

    #[tokio::test]
    async fn the_limiter_builds_headers_from_its_own_policies() {
        let (limiter, id, _) = manual_limiter("5/min");
        let decision = limiter.check(id, "k").await.unwrap();
        let fields = limiter.headers(id, &decision).unwrap();
        assert_eq!(fields.policy, "\"test\";q=5;w=60");
        assert_eq!(fields.rate_limit, "\"test\";r=4;t=12");
    }

    // --- Redis -------------------------------------------------------------------------------------

    const REDIS_URL: &str = "redis://127.0.0.1:6379";

    /// Fails (never skips) when the machine's Redis is missing.
    async fn require_redis() -> redis::aio::MultiplexedConnection {
        let failure = |error: String| -> ! {
            panic!(
                "these tests need Redis at 127.0.0.1:6379 (start it with `redis-server`): {error}"
            )
        };
        let client = redis::Client::open(REDIS_URL).unwrap_or_else(|e| failure(e.to_string()));
        let mut connection = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .unwrap_or_else(|_| failure("no answer within 2 s".into()))
        .unwrap_or_else(|e| failure(e.to_string()));
        let pong: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .unwrap_or_else(|e| failure(e.to_string()));
        assert_eq!(pong, "PONG");
        connection
    }

    fn test_prefix() -> String {
        format!("rampart-test-{:016x}:", rand::random::<u64>())
    }

    async fn redis_limiter(
        prefix: &str,
        quota: &str,
        on_error: OnStoreError,
    ) -> (RateLimiter, PolicyId) {
        let mut policies = Policies::new();
        let id = policies
            .add("orders", Quota::parse(quota).unwrap())
            .unwrap();
        let limiter = RateLimiter::redis(REDIS_URL, prefix.to_owned(), on_error, policies)
            .await
            .unwrap();
        (limiter, id)
    }

    #[tokio::test]
    async fn redis_allows_exactly_the_quota_then_refuses_with_retry_after() {
        require_redis().await;
        let (limiter, id) = redis_limiter(&test_prefix(), "5/min", OnStoreError::Deny).await;
        for expected_remaining in (0..5).rev() {
            let decision = limiter.check(id, "203.0.113.9").await.unwrap();
            assert!(decision.allowed);
            assert_eq!(decision.remaining, expected_remaining);
            assert_eq!(decision.limit, 5);
        }
        let refused = limiter.check(id, "203.0.113.9").await.unwrap();
        assert!(!refused.allowed);
        let retry_after = refused.retry_after.unwrap();
        assert!(
            retry_after > Duration::from_secs(11) && retry_after <= Duration::from_secs(12),
            "{retry_after:?}"
        );
        assert!(
            refused.reset > Duration::from_secs(59) && refused.reset <= Duration::from_secs(60)
        );
        assert!(
            limiter.check(id, "203.0.113.10").await.unwrap().allowed,
            "other clients are unaffected"
        );
    }

    #[tokio::test]
    async fn a_redis_peek_tells_the_decision_without_spending_and_a_refund_gives_back() {
        require_redis().await;
        let (limiter, id) = redis_limiter(&test_prefix(), "2/min", OnStoreError::Deny).await;
        for _ in 0..5 {
            assert!(limiter.peek(id, "203.0.113.9").await.unwrap().allowed);
        }
        assert!(limiter.check(id, "203.0.113.9").await.unwrap().allowed);
        assert!(limiter.check(id, "203.0.113.9").await.unwrap().allowed);
        let peeked = limiter.peek(id, "203.0.113.9").await.unwrap();
        assert!(!peeked.allowed);
        assert!(peeked.retry_after.is_some());
        assert!(!limiter.check(id, "203.0.113.9").await.unwrap().allowed);
        limiter.refund(id, "203.0.113.9").await.unwrap();
        assert!(
            limiter.check(id, "203.0.113.9").await.unwrap().allowed,
            "refunded"
        );
        assert!(!limiter.check(id, "203.0.113.9").await.unwrap().allowed);
    }

    #[tokio::test]
    async fn redis_buckets_are_cluster_safe_keys_that_expire_when_full() {
        let mut redis = require_redis().await;
        let prefix = test_prefix();
        let (limiter, id) = redis_limiter(&prefix, "5/min", OnStoreError::Deny).await;
        limiter.check(id, "u:42").await.unwrap();
        let key = format!("{prefix}rl:{{orders:u:42}}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(
            ttl > 11_000 && ttl <= 12_000,
            "one request's worth: {ttl} ms"
        );
        for _ in 0..4 {
            limiter.check(id, "u:42").await.unwrap();
        }
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(
            ttl > 59_000 && ttl <= 60_000,
            "an empty bucket is full after 60 s: {ttl} ms"
        );
    }

    #[tokio::test]
    async fn redis_buckets_refill_as_time_passes() {
        let mut redis = require_redis().await;
        let prefix = test_prefix();
        let (limiter, id) = redis_limiter(&prefix, "5/min", OnStoreError::Deny).await;
        for _ in 0..5 {
            assert!(limiter.check(id, "k").await.unwrap().allowed);
        }
        assert!(!limiter.check(id, "k").await.unwrap().allowed);
        // Twelve seconds pass, as far as the bucket can tell: its state moves back in time.
        let key = format!("{prefix}rl:{{orders:k}}");
        let tat: i64 = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(tat - 12_000_000)
            .arg("PX")
            .arg(60_000)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(
            limiter.check(id, "k").await.unwrap().allowed,
            "one request came back"
        );
        assert!(!limiter.check(id, "k").await.unwrap().allowed, "only one");
    }

    #[tokio::test]
    async fn two_instances_sharing_redis_share_one_budget() {
        require_redis().await;
        let prefix = test_prefix();
        let (first, first_id) = redis_limiter(&prefix, "5/min", OnStoreError::Deny).await;
        let (second, second_id) = redis_limiter(&prefix, "5/min", OnStoreError::Deny).await;
        let mut allowed = 0;
        for i in 0..10 {
            let decision = if i % 2 == 0 {
                first.check(first_id, "198.51.100.1").await
            } else {
                second.check(second_id, "198.51.100.1").await
            };
            allowed += usize::from(decision.unwrap().allowed);
        }
        assert_eq!(allowed, 5);

        // Concurrently, too: the script is atomic.
        let (first, second) = (Arc::new(first), Arc::new(second));
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let limiter = if i % 2 == 0 {
                    first.clone()
                } else {
                    second.clone()
                };
                let id = if i % 2 == 0 { first_id } else { second_id };
                tokio::spawn(
                    async move { limiter.check(id, "198.51.100.2").await.unwrap().allowed },
                )
            })
            .collect();
        let mut allowed = 0;
        for task in tasks {
            allowed += usize::from(task.await.unwrap());
        }
        assert_eq!(allowed, 5);
    }

    /// A Redis limiter pointed at a port where nothing listens.
    async fn refusing_limiter(quota: &str, on_error: OnStoreError) -> (RateLimiter, PolicyId) {
        let mut policies = Policies::new();
        let id = policies
            .add("orders", Quota::parse(quota).unwrap())
            .unwrap();
        let limiter = RateLimiter::redis("redis://127.0.0.1:1", test_prefix(), on_error, policies)
            .await
            .unwrap();
        (limiter, id)
    }

    #[tokio::test]
    async fn unreachable_redis_with_local_still_limits_on_this_instance() {
        let (limiter, id) = refusing_limiter("3/min", OnStoreError::Local).await;
        let mut allowed = 0;
        for _ in 0..6 {
            allowed += usize::from(limiter.check(id, "192.0.2.77").await.unwrap().allowed);
        }
        assert_eq!(allowed, 3);
        assert_eq!(
            limiter.tracked_keys(),
            1,
            "the fallback keeps its own buckets"
        );
    }

    #[tokio::test]
    async fn unreachable_redis_with_deny_refuses_to_decide() {
        let (limiter, id) = refusing_limiter("3/min", OnStoreError::Deny).await;
        for _ in 0..3 {
            assert_eq!(limiter.check(id, "192.0.2.77").await, Err(StoreUnavailable));
        }
    }

    /// A loopback TCP relay to the test Redis that can drop every connection and refuse
    /// new ones, or hold them without ever answering.
    struct FlakyRelay {
        url: String,
        mode: Arc<AtomicU32>,
        relays: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    }

    const RELAY: u32 = 0;
    const REFUSE: u32 = 1;
    const SILENT: u32 = 2;

    impl FlakyRelay {
        async fn start(mode: u32) -> Self {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("redis://{}", listener.local_addr().unwrap());
            let mode = Arc::new(AtomicU32::new(mode));
            let relays = Arc::new(Mutex::new(Vec::new()));
            let (task_mode, task_relays) = (mode.clone(), relays.clone());
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((mut client, _)) = listener.accept().await {
                    match task_mode.load(Ordering::SeqCst) {
                        RELAY => {
                            let relay = tokio::spawn(async move {
                                if let Ok(mut server) =
                                    tokio::net::TcpStream::connect("127.0.0.1:6379").await
                                {
                                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server)
                                        .await;
                                }
                            });
                            task_relays.lock().unwrap().push(relay);
                        }
                        SILENT => held.push(client),
                        _ => drop(client),
                    }
                }
            });
            Self { url, mode, relays }
        }

        async fn go_down(&self) {
            self.mode.store(REFUSE, Ordering::SeqCst);
            let relays: Vec<_> = self.relays.lock().unwrap().drain(..).collect();
            for relay in relays {
                relay.abort();
                let _ = relay.await;
            }
        }

        fn come_back(&self) {
            self.mode.store(RELAY, Ordering::SeqCst);
        }
    }

    async fn relayed_limiter(
        relay: &FlakyRelay,
        prefix: &str,
        on_error: OnStoreError,
    ) -> (RateLimiter, PolicyId, ManualTime) {
        let mut policies = Policies::new();
        let id = policies
            .add("orders", Quota::parse("3/min").unwrap())
            .unwrap();
        let time = ManualTime::new();
        let limiter = RateLimiter::redis_with_time_source(
            &relay.url,
            prefix.to_owned(),
            on_error,
            policies,
            TimeSource::Manual(time.clone()),
        )
        .await
        .unwrap();
        (limiter, id, time)
    }

    #[tokio::test]
    async fn a_redis_outage_falls_back_locally_and_redis_is_used_again_once_back() {
        let mut redis = require_redis().await;
        let relay = FlakyRelay::start(RELAY).await;
        let prefix = test_prefix();
        let (limiter, id, time) = relayed_limiter(&relay, &prefix, OnStoreError::Local).await;
        let key = format!("{prefix}rl:{{orders:k}}");
        let stored = |redis: &mut redis::aio::MultiplexedConnection| {
            let mut redis = redis.clone();
            let key = key.clone();
            async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<Option<String>>(&mut redis)
                    .await
                    .unwrap()
            }
        };

        assert!(limiter.check(id, "k").await.unwrap().allowed);
        let before = stored(&mut redis).await;
        assert!(before.is_some(), "the decision was taken in Redis");

        relay.go_down().await;
        assert_eq!(
            allowed(&limiter, id, "k", 5).await,
            3,
            "the local limiter takes over, with its own bucket"
        );
        assert_eq!(stored(&mut redis).await, before, "Redis was not touched");

        relay.come_back();
        let mut back = false;
        for _ in 0..10 {
            time.advance(STORE_RETRY_AFTER);
            limiter.check(id, "k").await.unwrap();
            if stored(&mut redis).await != before {
                back = true;
                break;
            }
        }
        assert!(back, "decisions return to Redis after it comes back");
    }

    #[tokio::test]
    async fn a_redis_that_never_answers_costs_one_timeout_then_decisions_skip_it() {
        let relay = FlakyRelay::start(SILENT).await;
        let (limiter, id, time) =
            relayed_limiter(&relay, &test_prefix(), OnStoreError::Local).await;
        let started = tokio::time::Instant::now();
        assert_eq!(
            allowed(&limiter, id, "k", 5).await,
            3,
            "start-up marked the store down"
        );
        time.advance(STORE_RETRY_AFTER);
        assert!(
            !limiter.check(id, "k").await.unwrap().allowed,
            "one probe times out, then the local bucket decides"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );

        let (limiter, id, time) = relayed_limiter(&relay, &test_prefix(), OnStoreError::Deny).await;
        assert_eq!(limiter.check(id, "k").await, Err(StoreUnavailable));
        time.advance(STORE_RETRY_AFTER);
        assert_eq!(limiter.check(id, "k").await, Err(StoreUnavailable));
    }

    #[tokio::test]
    async fn a_bad_redis_url_is_a_setup_error_without_the_url() {
        let error = RateLimiter::redis(
            "mysql://user:hunter2@db",
            String::new(),
            OnStoreError::Local,
            Policies::new(),
        )
        .await
        .unwrap_err();
        assert!(!format!("{error} {error:?}").contains("hunter2"));
    }
}
