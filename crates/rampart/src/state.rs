//! What every handler and layer shares: configuration, stores, keys, metrics, the clock.

use std::ops::Deref;
use std::sync::Arc;

use crate::audit::throttle::AuditThrottle;
use crate::brokers::Brokers;
use crate::clock::SharedClock;
use crate::config::Config;
use crate::keyring::KeyRing;
use crate::metrics::Metrics;
use crate::password::Hasher;
use crate::rate_limit::{RateLimiter, Tiers};
use crate::routes::RouteTable;
use crate::security_headers::SecurityHeaders;
use crate::store::Stores;
use crate::tokens::{RevocationCache, TokenService};
use crate::upstream::Proxy;

/// Shared state; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

/// The contents of [`AppState`].
pub struct Shared {
    /// The checked configuration.
    pub config: Config,
    /// Durable records, and the security state (the database's or Redis').
    pub stores: Stores,
    /// Issues and verifies access tokens.
    pub tokens: TokenService,
    /// Sessions revoked, refreshed from the session store.
    pub revocations: Arc<RevocationCache>,
    /// Hashes and verifies passwords on the blocking pool.
    pub hasher: Hasher,
    /// What `/metrics` exports.
    pub metrics: Metrics,
    /// The time every expiry is measured against.
    pub clock: SharedClock,
    /// The headers added to every response.
    pub security_headers: SecurityHeaders,
    /// The route table and the upstreams it names.
    pub routes: RouteTable,
    /// Every rate limit's counters.
    pub limiter: Arc<RateLimiter>,
    /// The limiter's policy of each tier.
    pub tiers: Tiers,
    /// Forwards requests to the upstreams.
    pub proxy: Proxy,
    /// Folds repeated refusals into one audit row per client and minute.
    pub audit_throttle: AuditThrottle,
    /// Seals and opens stored secrets (`encryption.keys`).
    pub keyring: KeyRing,
    /// Calls to users' broker hosts, with a circuit breaker per host.
    pub brokers: Brokers,
    /// API keys that authenticated recently (spared the anonymous charge).
    pub verified_keys: crate::verified_keys::VerifiedKeys,
    /// API keys that held, by key digest, so that a known key costs no store round trip.
    pub api_keys: Arc<crate::key_cache::KeyCache>,
    /// Set when shutdown begins (`/readyz` then fails).
    pub stopping: crate::shutdown::Stopping,
}

impl AppState {
    /// Wraps the shared parts.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }

    /// The current time in unix seconds.
    pub fn now(&self) -> i64 {
        self.clock.unix()
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}
