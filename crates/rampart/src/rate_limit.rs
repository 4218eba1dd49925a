//! Rate limiting: the decision engine behind the pipeline's first layer (SPEC §4).
//!
//! Every policy (a tier such as `anonymous`, or a route's own limit such as
//! `route:/orders:POST`) is a [`Quota`] enforced per client identity with GCRA: a full
//! bucket allows a burst of the quota, then refills evenly. A [`RateLimiter`] decides in
//! memory (one instance) or in Redis (one atomic Lua script per decision, shared by any
//! number of instances). The pipeline answers a refused [`Decision`] with `429 rate_limited`
//! and `Retry-After`, and [`StoreUnavailable`] (Redis down under `on_store_error = "deny"`)
//! with `503`; [`headers`] builds the `RateLimit-Policy`, `RateLimit` and `Retry-After` fields.
//!
//! `quota` is the quota grammar that configuration and the limiter share; `gcra` the
//! algorithm and its clock; `memory` and `redis` the two stores, which keep the same state
//! under the same keys; `headers` the response fields, each policy's fixed part built once
//! at start-up; `config` the `[rate_limits]` section; `keys` the tiers and the keys budgets are kept under.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::HeaderValue;

mod config;
mod gcra;
mod headers;
mod keys;
mod memory;
mod quota;
mod redis;

use self::redis::RedisStore;
use gcra::TimeSource;
use headers::{policy_field, rate_limit_field, retry_after_field, sf_name};
use memory::{MemoryStore, lock};
use quota::excerpt;

pub use self::redis::STORE_TIMEOUT;
pub use config::{RateLimitsConfig, RawRateLimits};
pub use gcra::ManualTime;
pub use headers::{RATELIMIT, RATELIMIT_POLICY, RateLimitHeaders, headers};
pub use keys::{CallerKeys, TIER_NAMES, Tiers};
pub use quota::{MAX_REQUESTS, Quota, QuotaError};

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
    InvalidUrl(#[source] ::redis::RedisError),
}

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

/// Decides whether a client may make a request under a policy.
#[derive(Debug)]
pub struct RateLimiter {
    registry: u32,
    names: Box<[(String, Quota)]>,
    /// The policy names as `'static` metric labels; policies are registered once at start-up.
    labels: Box<[&'static str]>,
    /// Per policy: its name as a Structured Fields string and its `RateLimit-Policy` value,
    /// which never change, so that a response formats only the `RateLimit` numbers.
    fields: Box<[(sfv::String, HeaderValue)]>,
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
                .map(|(name, quota)| {
                    let name = sf_name(name);
                    let policy = policy_field(&name, quota);
                    (name, policy)
                })
                .collect(),
            memory: MemoryStore::new(&policies.entries, time),
            names: policies.entries.into_boxed_slice(),
            redis: None,
        }
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

#[cfg(test)]
pub(crate) mod test_support {
    //! What the limiter's test modules share.

    use std::time::Duration;

    use super::{Decision, ManualTime, Policies, PolicyId, Quota, RateLimiter};

    /// An in-memory limiter with one policy `test` of `quota`, on a clock the test moves.
    pub(crate) fn manual_limiter(quota: &str) -> (RateLimiter, PolicyId, ManualTime) {
        let mut policies = Policies::new();
        let id = policies.add("test", Quota::parse(quota).unwrap()).unwrap();
        let time = ManualTime::new();
        (
            RateLimiter::memory_with_time(policies, time.clone()),
            id,
            time,
        )
    }

    /// How many of `times` checks of `key` the limiter allows.
    pub(crate) async fn allowed(
        limiter: &RateLimiter,
        id: PolicyId,
        key: &str,
        times: usize,
    ) -> usize {
        let mut count = 0;
        for _ in 0..times {
            if limiter.check(id, key).await.unwrap().allowed {
                count += 1;
            }
        }
        count
    }

    /// Any decision, for header tests that only need one.
    pub(crate) fn some_decision() -> Decision {
        Decision {
            allowed: true,
            limit: 1,
            remaining: 0,
            reset: Duration::ZERO,
            retry_after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::test_support::{manual_limiter, some_decision};

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
}
