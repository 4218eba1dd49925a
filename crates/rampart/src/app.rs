//! Building and running the gateway: stores, keys and listener from a [`Config`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::audit::throttle::AuditThrottle;
use crate::brokers::Brokers;
use crate::circuit_breaker;
use crate::clock::{SharedClock, SystemClock};
use crate::config::{Config, StateStoreKind};
use crate::keyring::KeyRing;
use crate::metrics::Metrics;
use crate::outbound::OutboundPolicy;
use crate::password::Hasher;
use crate::rate_limit::{Policies, RateLimiter, Tiers};
use crate::routes::RouteTable;
use crate::secrets::masked_url;
use crate::security_headers::SecurityHeaders;
use crate::server::{Limits, Tls};
use crate::shutdown::Stopping;
use crate::state::{AppState, Shared};
use crate::store::redis::RedisSessionStore;
use crate::store::sql::{PostgresStore, SqliteStore};
use crate::store::{SessionStore, Store, Stores};
use crate::tokens::{RevocationCache, TokenService};
use crate::upstream::Proxy;

/// What tests (and embedders) may change about how the gateway is built.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The clock for expiry and lockout windows.
    pub clock: SharedClock,
    /// Prefix of every Redis key this instance writes.
    pub redis_prefix: String,
    /// Largest PostgreSQL connection pool.
    pub max_db_connections: u32,
    /// Time for the in-memory rate limiter; `None` for the real monotonic clock.
    pub rate_limit_time: Option<crate::rate_limit::ManualTime>,
    /// How long a call to a broker host may take in all.
    pub broker_timeout: Duration,
    /// Whether the identity routes' built-in limits apply (SPEC §3); tests that register
    /// many users from one address turn them off.
    pub identity_limits: bool,
    /// When, after start-up, `audit.retention` is first applied (then once a day).
    pub audit_retention_delay: Duration,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            clock: Arc::new(SystemClock),
            redis_prefix: "rampart:".to_owned(),
            max_db_connections: 16,
            rate_limit_time: None,
            broker_timeout: Duration::from_secs(10),
            identity_limits: true,
            audit_retention_delay: Duration::from_secs(60),
        }
    }
}

/// A gateway bound to its address, ready to run.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    tls: Option<Arc<Tls>>,
    /// SIGHUP, watched from start-up on so that it never ends the process.
    hangups: Option<crate::server::Hangups>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

/// Opens the database named by `url`, applies its migrations and keys its audit chain
/// with `audit_key` (without one, the store cannot write audit entries).
///
/// # Errors
/// The database cannot be opened or migrated.
pub async fn open_store(
    url: &str,
    max_connections: u32,
    audit_key: Option<&crate::secrets::Secret>,
) -> anyhow::Result<StoreHandle> {
    let key = audit_key.map(|secret| crate::audit::ChainKey::new(secret.expose()));
    if url.starts_with("sqlite:") {
        let mut store = SqliteStore::connect(url).await?;
        if let Some(key) = key {
            store = store.with_audit_key(key).await?;
        }
        Ok(StoreHandle::Sqlite(Arc::new(store)))
    } else {
        let mut store = PostgresStore::connect(url, max_connections).await?;
        if let Some(key) = key {
            store = store.with_audit_key(key).await?;
        }
        Ok(StoreHandle::Postgres(Arc::new(store)))
    }
}

/// An opened database, whichever kind.
#[derive(Clone)]
pub enum StoreHandle {
    /// SQLite.
    Sqlite(Arc<SqliteStore>),
    /// PostgreSQL.
    Postgres(Arc<PostgresStore>),
}

impl StoreHandle {
    /// The durable-records interface.
    pub fn data(&self) -> Arc<dyn Store> {
        match self {
            Self::Sqlite(store) => store.clone(),
            Self::Postgres(store) => store.clone(),
        }
    }

    /// The database's session-state interface.
    pub fn sessions(&self) -> Arc<dyn SessionStore> {
        match self {
            Self::Sqlite(store) => store.clone(),
            Self::Postgres(store) => store.clone(),
        }
    }

    async fn sweep(&self, now: i64) {
        let keep = 2 * 86_400;
        let result = match self {
            Self::Sqlite(store) => store.sweep(now, keep).await,
            Self::Postgres(store) => store.sweep(now, keep).await,
        };
        if let Err(error) = result {
            tracing::warn!(error = %error, "sweeping expired session state failed");
        }
    }
}

impl Application {
    /// Builds the gateway with the system clock.
    ///
    /// # Errors
    /// Secrets, stores, keys or the listener cannot be set up.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with(config, BuildOptions::default()).await
    }

    /// Builds the gateway.
    ///
    /// # Errors
    /// Secrets, stores, keys or the listener cannot be set up.
    pub async fn build_with(mut config: Config, options: BuildOptions) -> anyhow::Result<Self> {
        crate::config::generated::fill_generated(&mut config)?;
        crate::server::descriptor_budget(
            config.server.max_connections,
            crate::server::descriptor_reserve(options.max_db_connections, config.upstreams.len()),
        );
        let database = open_store(
            config.database_url.expose(),
            options.max_db_connections,
            config.audit_chain_key.as_ref(),
        )
        .await
        .with_context(|| {
            format!(
                "database.url = {}: cannot open the database",
                masked_url(config.database_url.expose())
            )
        })?;
        let sessions: Arc<dyn SessionStore> = match &config.tokens.store {
            StateStoreKind::Database => database.sessions(),
            StateStoreKind::Redis(url) => Arc::new(
                RedisSessionStore::connect(url, options.redis_prefix.clone())
                    .await
                    .with_context(|| {
                        format!("tokens.store = {}: cannot reach Redis", masked_url(url))
                    })?,
            ),
        };
        let clock = options.clock;
        let tokens = TokenService::new(&config.tokens, clock.clone())?;
        let keep_revoked = tokens.access_ttl() + 2 * crate::tokens::LEEWAY_SECONDS;
        let revocations = RevocationCache::new(keep_revoked);
        let mut background = Vec::new();
        // Poll at half the allowed lag so a revocation elsewhere lands within it.
        let poll = (config.tokens.revocation_lag / 2).max(Duration::from_millis(100));
        // Every revocation so far is known before the first request is served.
        let loaded = revocations
            .load(&*sessions, &clock)
            .await
            .map_err(|error| anyhow::anyhow!("reading the revocation log: {error}"))?;
        background.push(revocations.spawn_refresher(sessions.clone(), clock.clone(), poll, loaded));
        // Verified API keys are held in memory and dropped on every instance within a poll
        // of any change to what they grant (authentication::key_cache).
        let api_keys = Arc::new(crate::key_cache::KeyCache::default());
        let head = database
            .data()
            .credential_change_head()
            .await
            .map_err(|error| anyhow::anyhow!("reading the credential-change log: {error}"))?;
        background.push(api_keys.spawn_follower(
            database.data(),
            head,
            crate::key_cache::POLL,
            crate::key_cache::TRUST,
        ));
        {
            let database = database.clone();
            let clock = clock.clone();
            background.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_secs(600));
                loop {
                    ticker.tick().await;
                    database.sweep(clock.unix()).await;
                }
            }));
        }
        let mut policies = Policies::new();
        let tiers =
            Tiers::register(&mut policies, &config.rate_limits).map_err(anyhow::Error::msg)?;
        let mut routes = RouteTable::new(
            &config.routes,
            &config.upstreams,
            config.server.max_body,
            &mut policies,
        )
        .map_err(anyhow::Error::msg)?;
        if options.identity_limits {
            routes
                .add_identity_limits(&mut policies)
                .map_err(anyhow::Error::msg)?;
        }
        let limiter = match (&config.rate_limits.redis_url, options.rate_limit_time) {
            (None, None) => RateLimiter::memory(policies),
            (None, Some(time)) => RateLimiter::memory_with_time(policies, time),
            (Some(url), _) => RateLimiter::redis(
                url,
                options.redis_prefix.clone(),
                config.rate_limits.on_store_error,
                policies,
            )
            .await
            .with_context(|| {
                format!("rate_limits.store = {}: cannot use Redis", masked_url(url))
            })?,
        };
        let limiter = Arc::new(limiter);
        background.push(limiter.spawn_idle_eviction(Duration::from_secs(30)));
        let tls = config.server.behind_tls || config.server.tls.is_some();
        let proxy = Proxy::new(tls);
        // Active health checks of every upstream target that has one.
        background.extend(crate::proxy::health::spawn(&routes, &proxy));
        let metrics = Metrics::new();
        // Every upstream's circuit shows from the start, closed.
        for upstream in routes.upstreams.values() {
            metrics
                .breaker_state
                .get_or_create(&crate::metrics::UpstreamLabel {
                    upstream: upstream.name,
                })
                .set(0);
        }
        start_at_zero(&metrics, &limiter, &routes);
        // Password hashing may use every core but one: a login flood then saturates the
        // hashing pool, never the cores that serve everything else.
        let concurrency = std::thread::available_parallelism()
            .map_or(2, usize::from)
            .saturating_sub(1)
            .max(1);
        let security_headers = SecurityHeaders::new(
            &config.headers.x_xss_protection,
            config.server.behind_tls || config.server.tls.is_some(),
        );
        let (keyring, brokers) = build_secrets_and_brokers(&config, options.broker_timeout)?;
        let tls = config
            .server
            .tls
            .as_ref()
            .map(Tls::new)
            .transpose()?
            .map(Arc::new);
        let listener = TcpListener::bind(config.server.listen)
            .await
            .map_err(|error| anyhow::anyhow!("listening on {}: {error}", config.server.listen))?;
        let state = AppState::new(Shared {
            stores: Stores {
                data: database.data(),
                sessions,
            },
            tokens,
            revocations,
            hasher: Hasher::new(concurrency),
            metrics,
            clock,
            security_headers,
            routes,
            limiter,
            tiers,
            proxy,
            audit_throttle: AuditThrottle::new(60),
            keyring,
            brokers,
            verified_keys: Default::default(),
            api_keys,
            stopping: Stopping::default(),
            config,
        });
        background.push(spawn_retention(
            state.clone(),
            options.audit_retention_delay,
        ));
        Ok(Self {
            listener,
            state,
            tls,
            hangups: Some(crate::server::Hangups::watch()),
            background,
        })
    }

    /// The address the listener is bound to.
    ///
    /// # Errors
    /// The socket has no local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared state (for tests and embedders).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// The TLS termination, when `server.tls` is set: its `reload` re-reads the
    /// certificate and key (SIGHUP calls it).
    pub fn tls(&self) -> Option<Arc<Tls>> {
        self.tls.clone()
    }

    /// Serves until SIGINT or SIGTERM, then drains in-flight requests; SIGHUP reloads the
    /// TLS certificate.
    ///
    /// # Errors
    /// The server fails.
    pub async fn run_until_stopped(mut self) -> std::io::Result<()> {
        // Always: SIGHUP's default action would end the process.
        if let Some(hangups) = self.hangups.take() {
            self.background
                .push(tokio::spawn(crate::server::reload_on_hangup(
                    hangups,
                    self.tls.clone(),
                )));
        }
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then fails `/readyz`, stops accepting and drains
    /// open connections for at most `server.shutdown_timeout`.
    ///
    /// # Errors
    /// The server fails.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let gateway = crate::gateway::Gateway::new(self.state.clone());
        let limits = Limits::new(&self.state.config.server);
        crate::server::serve(
            self.listener,
            self.state.clone(),
            gateway,
            self.tls,
            limits,
            self.state.stopping.clone(),
            shutdown,
        )
        .await;
        for task in self.background {
            task.abort();
        }
        // The counts the audit throttle still holds (refusals, failed authentications and
        // suspicious requests since their key's last row) are written as rows of their own.
        for entry in self.state.audit_throttle.take_held_back(self.state.now()) {
            self.state.stores.data.append_audit_later(entry);
        }
        // The audit entries the drained requests queued (refusals, failed authentications)
        // are written too, unless the database has stopped answering.
        let flushed = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            self.state.stores.data.flush_audit(),
        );
        if flushed.await.is_err() {
            tracing::warn!("audit entries queued before shutdown may not have been written");
        }
        tracing::info!("stopped");
        // Every line of the requests just drained is written before this returns.
        if let Some(sink) = crate::gateway::access_log::sink() {
            sink.flush(std::time::Duration::from_secs(5));
        }
        Ok(())
    }
}

/// Applies `audit.retention` `delay` after start-up, then once a day (an hour after a
/// failure), with the purge of `rampart audit purge`: each run is an `audit_purged` entry.
/// A zero retention (never set by the defaults) keeps everything rather than nothing.
fn spawn_retention(state: AppState, delay: Duration) -> tokio::task::JoinHandle<()> {
    const DAY: Duration = Duration::from_secs(24 * 60 * 60);
    const RETRY: Duration = Duration::from_secs(60 * 60);
    tokio::spawn(async move {
        let age = state.config.audit_retention;
        if age.is_zero() {
            return;
        }
        tokio::time::sleep(delay).await;
        loop {
            let purged = crate::audit::purge_older_than(
                &*state.stores.data,
                age,
                state.now(),
                "rampart serve (audit.retention)",
                "retention",
            )
            .await;
            let next = match purged {
                Ok(removed) => {
                    tracing::info!(
                        removed,
                        retention_seconds = age.as_secs(),
                        "audit retention applied"
                    );
                    DAY
                }
                Err(error) => {
                    tracing::warn!(%error, "applying audit.retention failed; retrying in an hour");
                    RETRY
                }
            };
            tokio::time::sleep(next).await;
        }
    })
}

/// Creates every series whose label values are known at start-up, at zero (SPEC §8), so
/// that alerts and dashboards see them before the first event.
fn start_at_zero(metrics: &Metrics, limiter: &RateLimiter, routes: &RouteTable) {
    use crate::metrics::{PatternLabel, PolicyLabel, ReasonLabel, UpstreamLabel};
    for policy in limiter.policy_labels() {
        drop(
            metrics
                .rate_limit_hits
                .get_or_create(&PolicyLabel { policy }),
        );
    }
    for reason in crate::tokens::Rejected::ALL.map(crate::tokens::Rejected::label) {
        drop(metrics.jwt_failures.get_or_create(&ReasonLabel { reason }));
    }
    for reason in crate::authentication::Failure::ALL.map(crate::authentication::Failure::label) {
        drop(metrics.auth_failures.get_or_create(&ReasonLabel { reason }));
    }
    for pattern in crate::intrusion::Pattern::ALL.map(crate::intrusion::Pattern::label) {
        drop(
            metrics
                .suspicious_requests
                .get_or_create(&PatternLabel { pattern }),
        );
    }
    for upstream in routes.upstreams.values() {
        let label = UpstreamLabel {
            upstream: upstream.name,
        };
        drop(metrics.breaker_opens.get_or_create(&label));
    }
    // The brokers behind trading accounts share one circuit label.
    drop(
        metrics
            .breaker_opens
            .get_or_create(&UpstreamLabel { upstream: "broker" }),
    );
}

/// The key ring of `encryption.keys`.
///
/// # Errors
/// A key entry is malformed (the message names its position, never the key).
pub fn keyring(config: &Config) -> anyhow::Result<KeyRing> {
    config
        .keyring
        .clone()
        .ok_or_else(|| anyhow::anyhow!("{}", crate::keyring::KeyRingError::Empty))
}

fn build_secrets_and_brokers(
    config: &Config,
    broker_timeout: Duration,
) -> anyhow::Result<(KeyRing, Brokers)> {
    Ok((
        keyring(config)?,
        Brokers::new(
            OutboundPolicy::clone(&config.outbound),
            broker_timeout,
            circuit_breaker::Settings::default(),
        ),
    ))
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: draining in-flight requests");
}
