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
#[allow(missing_docs)]
pub struct Shared {
    pub config: Config,
    pub stores: Stores,
    pub tokens: TokenService,
    pub revocations: Arc<RevocationCache>,
    pub hasher: Hasher,
    pub metrics: Metrics,
    pub clock: SharedClock,
    pub security_headers: SecurityHeaders,
    pub routes: RouteTable,
    pub limiter: Arc<RateLimiter>,
    pub tiers: Tiers,
    pub proxy: Proxy,
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
