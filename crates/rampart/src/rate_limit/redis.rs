//! The Redis store: one atomic Lua script per decision, the same GCRA as [`super::gcra`],
//! shared by every instance; and what the limiter does when Redis fails.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::gcra::{Gcra, TimeSource};
use super::{
    Decision, Mode, OnStoreError, Policies, RateLimiter, StoreSetupError, StoreUnavailable,
};

/// The longest a decision waits for Redis before `on_store_error` applies.
pub const STORE_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failure, decisions skip Redis for this long (one probe excepted), so that an
/// outage costs one timeout per interval rather than one per request.
pub(super) const STORE_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The fallback is logged at most once per this interval.
pub(super) const WARN_EVERY: Duration = Duration::from_secs(30);

/// GCRA in microseconds (exact in Lua's doubles for centuries), time from the server's own
/// clock (`TIME`) so that instances with skewed clocks agree. KEYS[1]: the bucket.
/// ARGV[1]: emission interval, ARGV[2]: window (capacity × interval), both in µs;
/// ARGV[3]: `0` to count the request, `1` to decide without counting it (a peek), `2` to
/// give back one request taken earlier (a refund; the reply then means nothing).
/// Returns {allowed (0/1), remaining, µs until full, µs until retry}. The key expires
/// when its bucket is full, so idle keys vanish.
pub(super) const GCRA_SCRIPT: &str = r"
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
pub(super) struct RedisPolicy {
    /// `<prefix>rl:{<policy>:`; the client key and `}` complete it. The braces are a hash
    /// tag: each bucket lives whole on one Redis Cluster node.
    pub(super) key_head: String,
    pub(super) interval_us: u64,
    pub(super) window_us: u64,
    pub(super) capacity: u32,
}

/// Logs at most once per interval, counting what it held back.
#[derive(Debug, Default)]
pub(super) struct LogThrottle {
    /// Time of the last log plus one (0: never logged).
    pub(super) last: AtomicU64,
    pub(super) suppressed: AtomicU64,
}

impl LogThrottle {
    /// `Some(number held back since the last log)` when a log is due at `now`.
    pub(super) fn due(&self, now: u64, every: Duration) -> Option<u64> {
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

pub(super) struct RedisStore {
    pub(super) connection: ConnectionManager,
    pub(super) script: redis::Script,
    pub(super) on_error: OnStoreError,
    pub(super) policies: Box<[RedisPolicy]>,
    /// Local time until which Redis is skipped after a failure (0: Redis is healthy).
    pub(super) down_until: AtomicU64,
    pub(super) warnings: LogThrottle,
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
pub(super) enum RedisFailure {
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
    pub(super) async fn decide(
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

impl RateLimiter {
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

    pub(super) async fn redis_with_time_source(
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
            tracing::warn!(
                key = "rate_limits.store",
                url = %crate::secrets::masked_url(url),
                %error,
                ?on_store_error,
                "rate-limit store unreachable at start-up"
            );
            store
                .down_until
                .store(retry_at(time.now()), Ordering::Release);
        }
        let mut limiter = Self::memory_with_time_source(policies, time);
        limiter.redis = Some(store);
        Ok(limiter)
    }

    pub(super) async fn check_redis(
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

    pub(super) fn store_failed(
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
}

fn retry_at(now: u64) -> u64 {
    now.saturating_add(u64::try_from(STORE_RETRY_AFTER.as_nanos()).unwrap_or(u64::MAX))
        .max(1)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::rate_limit::test_support::allowed;
    use crate::rate_limit::*;

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

    // --- Redis -------------------------------------------------------------------------------------

    const REDIS_URL: &str = "redis://127.0.0.1:6379";

    /// Fails (never skips) when the machine's Redis is missing.
    async fn require_redis() -> ::redis::aio::MultiplexedConnection {
        let failure = |error: String| -> ! {
            panic!(
                "these tests need Redis at 127.0.0.1:6379 (start it with `redis-server`): {error}"
            )
        };
        let client = ::redis::Client::open(REDIS_URL).unwrap_or_else(|e| failure(e.to_string()));
        let mut connection = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .unwrap_or_else(|_| failure("no answer within 2 s".into()))
        .unwrap_or_else(|e| failure(e.to_string()));
        let pong: String = ::redis::cmd("PING")
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
        let ttl: i64 = ::redis::cmd("PTTL")
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
        let ttl: i64 = ::redis::cmd("PTTL")
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
        let tat: i64 = ::redis::cmd("GET")
            .arg(&key)
            .query_async(&mut redis)
            .await
            .unwrap();
        let _: () = ::redis::cmd("SET")
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
        let stored = |redis: &mut ::redis::aio::MultiplexedConnection| {
            let mut redis = redis.clone();
            let key = key.clone();
            async move {
                ::redis::cmd("GET")
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
