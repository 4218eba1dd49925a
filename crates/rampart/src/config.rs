//! `rampart.toml`, `RAMPART_SECTION__KEY` overrides and `.env`, checked once at start-up.
//!
//! [`RawConfig`] is the file as written, with `deny_unknown_fields` everywhere so that a
//! mistyped key stops start-up. [`Config::load`] merges the environment over the file,
//! validates every value and reports every problem at once, each naming its key.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

use crate::rate_limit::Quota;
use crate::secrets::Secret;

/// Environment variables that are read by the program itself rather than mapped onto keys.
const RESERVED_VARIABLES: [&str; 3] = ["RAMPART_ENV", "RAMPART_CONFIG", "RAMPART_LOG"];

/// Everything that stops start-up: one line per problem, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    /// One entry per invalid key.
    pub problems: Vec<String>,
}

impl ConfigError {
    fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

/// A list given either as a TOML array or, from the environment, as one comma-separated string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct List(pub Vec<String>);

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(deserializer)? {
            OneOrMany::One(text) => List(
                text.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            OneOrMany::Many(items) => List(items),
        })
    }
}

/// `rampart.toml` as written. Nothing here is trusted yet.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawConfig {
    pub server: RawServer,
    pub database: RawDatabase,
    pub tokens: RawTokens,
    pub users: RawUsers,
    pub password: RawPassword,
    pub login: RawLogin,
    pub rate_limits: RawRateLimits,
    pub encryption: RawEncryption,
    pub accounts: RawAccounts,
    pub cors: RawCors,
    pub metrics: RawMetrics,
    pub intrusion: RawIntrusion,
    pub audit: RawAudit,
    pub headers: RawHeaders,
    pub log: RawLog,
    pub routes: Vec<RawRoute>,
    pub upstreams: BTreeMap<String, RawUpstream>,
    pub roles: BTreeMap<String, List>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawServer {
    pub listen: String,
    pub trusted_proxies: List,
    pub behind_tls: bool,
    pub max_body: String,
    pub worker_threads: usize,
    pub tls: Option<RawTls>,
    pub header_read_timeout: String,
    pub idle_timeout: String,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_header_bytes: String,
    pub shutdown_timeout: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            trusted_proxies: List::default(),
            behind_tls: false,
            max_body: "1MiB".into(),
            worker_threads: 0,
            tls: None,
            header_read_timeout: "10s".into(),
            idle_timeout: "60s".into(),
            max_connections: 10_000,
            max_connections_per_ip: 256,
            max_header_bytes: "32KiB".into(),
            shutdown_timeout: "30s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default = "default_tls_version")]
    pub min_version: String,
}

fn default_tls_version() -> String {
    "1.3".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawDatabase {
    pub url: String,
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: "sqlite://data/rampart.db".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawTokens {
    pub algorithm: String,
    pub secret: Option<String>,
    pub private_key_file: Option<PathBuf>,
    pub issuer: String,
    pub audience: String,
    pub access_ttl: String,
    pub refresh_ttl: String,
    pub store: String,
    pub revocation_lag: String,
}

impl Default for RawTokens {
    fn default() -> Self {
        Self {
            algorithm: "HS256".into(),
            secret: None,
            private_key_file: None,
            issuer: "rampart".into(),
            audience: "rampart".into(),
            access_ttl: "1h".into(),
            refresh_ttl: "7d".into(),
            store: "database".into(),
            revocation_lag: "5s".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawUsers {
    pub default_role: String,
}

impl Default for RawUsers {
    fn default() -> Self {
        Self {
            default_role: "viewer".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawPassword {
    pub preset: Option<String>,
    pub min_length: Option<usize>,
    pub max_length: Option<usize>,
    pub require_upper: Option<bool>,
    pub require_lower: Option<bool>,
    pub require_digit: Option<bool>,
    pub require_special: Option<bool>,
    pub reject_common: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawLogin {
    pub max_failures_per_ip: u32,
    pub max_failures_per_account: u32,
    pub failure_window: String,
}

impl Default for RawLogin {
    fn default() -> Self {
        Self {
            max_failures_per_ip: 5,
            max_failures_per_account: 20,
            failure_window: "1h".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawRateLimits {
    pub store: String,
    pub on_store_error: String,
    pub anonymous: String,
    pub standard: String,
    pub premium: String,
    pub ipv6_prefix: u8,
}

impl Default for RawRateLimits {
    fn default() -> Self {
        Self {
            store: "memory".into(),
            on_store_error: "local".into(),
            anonymous: "10/min".into(),
            standard: "100/min".into(),
            premium: "1000/min".into(),
            ipv6_prefix: 64,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawEncryption {
    pub keys: Option<List>,
    pub legacy_host_binding: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawAccounts {
    pub allow_http: bool,
    pub allowed_hosts: List,
    pub allowed_networks: List,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawCors {
    pub allowed_origins: List,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawMetrics {
    pub allowed_networks: List,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            allowed_networks: List(vec!["127.0.0.0/8".into(), "::1/128".into()]),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawIntrusion {
    pub mode: String,
}

impl Default for RawIntrusion {
    fn default() -> Self {
        Self {
            mode: "detect".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawAudit {
    pub retention: String,
    /// Key of the audit chain's HMAC; absent: generated into `secrets.toml`.
    pub chain_key: Option<String>,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            retention: "365d".into(),
            chain_key: None,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawLog {
    pub level: String,
    pub format: String,
    pub access: bool,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "auto".into(),
            access: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct RawHeaders {
    pub x_xss_protection: String,
}

impl Default for RawHeaders {
    fn default() -> Self {
        Self {
            x_xss_protection: "0".into(),
        }
    }
}

/// One `[[routes]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawRoute {
    pub path: String,
    #[serde(default)]
    pub methods: List,
    pub upstream: Option<String>,
    pub roles: Option<List>,
    pub permission: Option<String>,
    pub rate_limit: Option<RawRateLimit>,
    #[serde(default)]
    pub signed: bool,
    pub max_body: Option<String>,
    #[serde(default = "default_true")]
    pub auth: bool,
    /// Whose budget the route's own limit is: "ip", "user" (default) or "key".
    #[serde(default = "default_per")]
    pub per: String,
    /// `false`: match the path without regard to ASCII case.
    #[serde(default = "default_true")]
    pub case_sensitive: bool,
    /// Whether WebSocket upgrades on this route are tunnelled to the upstream.
    #[serde(default)]
    pub websocket: bool,
}

fn default_per() -> String {
    "user".into()
}

fn default_true() -> bool {
    true
}

/// A route's `rate_limit`: `"50/min"` or `{ rate = "10/s", burst = 100 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
#[allow(missing_docs)]
pub enum RawRateLimit {
    Plain(String),
    WithBurst { rate: String, burst: u32 },
}

impl RawRateLimit {
    /// The quota, parsed by the limiter's own [`Quota::parse`] (or [`Quota::with_burst`]).
    ///
    /// # Errors
    /// What is wrong with the rate or the burst.
    pub fn quota(&self) -> Result<Quota, crate::rate_limit::QuotaError> {
        match self {
            Self::Plain(rate) => Quota::parse(rate),
            Self::WithBurst { rate, burst } => Quota::with_burst(rate, *burst),
        }
    }
}

/// One `[upstreams.NAME]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawUpstream {
    /// One backend; or `targets`, several (exactly one of the two).
    #[serde(default)]
    pub url: Option<String>,
    /// Several backends, balanced by least outstanding requests.
    #[serde(default)]
    pub targets: Option<List>,
    #[serde(default = "default_upstream_timeout")]
    pub timeout: String,
    #[serde(default)]
    pub circuit_breaker: Option<RawCircuitBreaker>,
    /// Request headers removed on top of the built-in list.
    #[serde(default)]
    pub strip_request_headers: List,
    /// Headers of the built-in strip list that this upstream gets as the client sent them.
    #[serde(default)]
    pub pass_request_headers: List,
    /// Active health checks of every target.
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    /// Further attempts, on another target where there is one, after a connect failure
    /// (idempotent methods without a body only).
    #[serde(default)]
    pub retries: u32,
}

impl RawUpstream {
    /// The backend URLs as written: `url`, or every entry of `targets`.
    pub fn target_urls(&self) -> Vec<&str> {
        match (&self.url, &self.targets) {
            (Some(url), _) => vec![url.as_str()],
            (None, Some(targets)) => targets.0.iter().map(String::as_str).collect(),
            (None, None) => Vec::new(),
        }
    }
}

/// An upstream's `health_check` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawHealthCheck {
    pub path: String,
    #[serde(default = "default_health_interval")]
    pub interval: String,
}

fn default_health_interval() -> String {
    "5s".into()
}

/// The largest `retries` accepted: more attempts than this only delay the 502.
pub const MAX_RETRIES: u32 = 5;

/// The largest number of `targets` in one upstream.
pub const MAX_TARGETS: usize = 64;

fn default_upstream_timeout() -> String {
    "5s".into()
}

/// An upstream's `circuit_breaker` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RawCircuitBreaker {
    #[serde(default = "default_cb_failures")]
    pub failures: u32,
    #[serde(default = "default_cb_window")]
    pub window: String,
    #[serde(default = "default_cb_window")]
    pub open_for: String,
    #[serde(default = "default_cb_half_open")]
    pub half_open_requests: u32,
}

fn default_cb_failures() -> u32 {
    5
}
fn default_cb_window() -> String {
    "30s".into()
}
fn default_cb_half_open() -> u32 {
    1
}

/// The JWS algorithm tokens are signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAlgorithm {
    /// HMAC-SHA256 with `tokens.secret`.
    Hs256,
    /// Ed25519 with `tokens.private_key_file` (PKCS#8 PEM).
    EdDsa,
    /// RSA-SHA256 with `tokens.private_key_file` (PKCS#8 or PKCS#1 PEM).
    Rs256,
}

/// Where refresh tokens, revocations, nonces and lockout counters live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateStoreKind {
    /// The main database.
    Database,
    /// A Redis server, shared by every instance.
    Redis(String),
}

pub use crate::rate_limit::OnStoreError;

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// `key=value` text.
    Text,
}

impl LogFormat {
    /// Whether lines are JSON, `Auto` deciding by whether stdout is a terminal.
    pub fn is_json(self) -> bool {
        match self {
            Self::Json => true,
            Self::Text => false,
            Self::Auto => !std::io::IsTerminal::is_terminal(&std::io::stdout()),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The filter (`RUST_LOG`, when set, wins).
    pub level: String,
    /// Text or JSON.
    pub format: LogFormat,
    /// One line per request.
    pub access: bool,
}

/// What the intrusion detector does with a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrusionMode {
    /// Count and audit, let the request pass.
    Detect,
    /// Refuse with 400.
    Block,
    /// No scanning.
    Off,
}

/// Listener settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// TLS ends at a proxy in front: send HSTS, mark cookies Secure.
    pub behind_tls: bool,
    /// Largest request body accepted anywhere.
    pub max_body: usize,
    /// Runtime worker threads; 0 = one per core.
    pub worker_threads: usize,
    /// Certificate and key for serving TLS directly.
    pub tls: Option<TlsConfig>,
    /// A request head not complete by then: the connection is closed.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Connections served at once; beyond, new ones wait in the backlog.
    pub max_connections: usize,
    /// Connections one client address (IPv6: its `rate_limits.ipv6_prefix` network) may
    /// hold at once; beyond, new ones are closed at once. Peers in `trusted_proxies` are
    /// exempt.
    pub max_connections_per_ip: usize,
    /// Largest request head (request line and headers) accepted; 431 beyond.
    pub max_header_bytes: usize,
    /// How long a stopping server drains before it closes what is left.
    pub shutdown_timeout: Duration,
}

/// Certificate and key files for serving TLS.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Oldest protocol version accepted: "1.2" or "1.3".
    pub min_version: String,
}

/// Token settings.
#[derive(Debug, Clone)]
pub struct TokensConfig {
    /// Signing algorithm; tokens signed otherwise are refused.
    pub algorithm: TokenAlgorithm,
    /// HS256 secret.
    pub secret: Option<Secret>,
    /// PEM private key for EdDSA/RS256.
    pub private_key_file: Option<PathBuf>,
    /// `iss` claim issued and required.
    pub issuer: String,
    /// `aud` claim issued and required.
    pub audience: String,
    /// Access token lifetime.
    pub access_ttl: Duration,
    /// Refresh token lifetime.
    pub refresh_ttl: Duration,
    /// Where session state lives.
    pub store: StateStoreKind,
    /// Longest time a revoked access token may still pass on another instance.
    pub revocation_lag: Duration,
}

/// Password rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// Fewest characters.
    pub min_length: usize,
    /// Most characters.
    pub max_length: usize,
    /// At least one upper-case letter.
    pub require_upper: bool,
    /// At least one lower-case letter.
    pub require_lower: bool,
    /// At least one digit.
    pub require_digit: bool,
    /// At least one character that is neither a letter nor a digit.
    pub require_special: bool,
    /// Refuse passwords from the common/breached list.
    pub reject_common: bool,
}

impl Default for PasswordPolicy {
    fn default() -> Self {
        Self {
            min_length: 8,
            max_length: 128,
            require_upper: true,
            require_lower: true,
            require_digit: true,
            require_special: true,
            reject_common: true,
        }
    }
}

impl PasswordPolicy {
    /// NIST SP 800-63B-4 style: long passphrases, no composition rules.
    pub fn nist() -> Self {
        Self {
            min_length: 15,
            max_length: 128,
            require_upper: false,
            require_lower: false,
            require_digit: false,
            require_special: false,
            reject_common: true,
        }
    }
}

/// Brute-force lockout settings.
#[derive(Debug, Clone)]
pub struct LoginConfig {
    /// Failures from one IP before it is locked out.
    pub max_failures_per_ip: u32,
    /// Failures on one account before it is locked out.
    pub max_failures_per_account: u32,
    /// How long failures count, and how long a lockout lasts.
    pub failure_window: Duration,
}

/// Rate-limit settings, each quota parsed by [`Quota::parse`], the limiter's own parser.
#[derive(Debug, Clone)]
pub struct RateLimitsConfig {
    /// `None` for memory, or a Redis URL.
    pub redis_url: Option<String>,
    /// Behaviour when Redis fails.
    pub on_store_error: OnStoreError,
    /// Quota for anonymous clients, per IP.
    pub anonymous: Quota,
    /// Quota for standard-tier users.
    pub standard: Quota,
    /// Quota for premium-tier users.
    pub premium: Quota,
    /// IPv6 clients are limited and locked out per prefix of this length.
    pub ipv6_prefix: u8,
}

/// Trading-account outbound settings.
#[derive(Debug, Clone, Default)]
pub struct AccountsConfig {
    /// Allow `http://` broker hosts.
    pub allow_http: bool,
    /// Host globs; empty = any public host.
    pub allowed_hosts: Vec<String>,
    /// Networks let through the private-address check.
    pub allowed_networks: Vec<IpNet>,
}

/// Response header settings.
#[derive(Debug, Clone)]
pub struct HeadersConfig {
    /// Value of `X-XSS-Protection`.
    pub x_xss_protection: String,
}

/// What the gateway runs with. Every value has been checked.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct Config {
    pub server: ServerConfig,
    pub database_url: Secret,
    pub tokens: TokensConfig,
    pub default_role: String,
    pub password: PasswordPolicy,
    pub login: LoginConfig,
    pub rate_limits: RateLimitsConfig,
    pub encryption_keys: Vec<Secret>,
    /// `encryption.legacy_host_binding` (default `true`): whether a broker key sealed
    /// before keys were bound to their host still opens (and is re-sealed bound to the
    /// host the row names, with a warning and an audit entry). `false` refuses it.
    pub encryption_legacy_host_binding: bool,
    pub accounts: AccountsConfig,
    pub cors_allowed_origins: Vec<String>,
    pub metrics_allowed_networks: Vec<IpNet>,
    pub intrusion: IntrusionMode,
    pub audit_retention: Duration,
    /// `audit.chain_key`: keys the audit chain's HMAC. Filled from `secrets.toml` when
    /// absent, outside production.
    pub audit_chain_key: Option<Secret>,
    pub headers: HeadersConfig,
    pub log: LogConfig,
    pub routes: Vec<RawRoute>,
    pub upstreams: BTreeMap<String, RawUpstream>,
    pub roles: BTreeMap<String, Vec<String>>,
    /// `RAMPART_ENV=production`.
    pub production: bool,
    /// Where generated secrets and the default SQLite database live.
    pub data_dir: PathBuf,
}

/// Where configuration comes from.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// The TOML text of `rampart.toml`, if any.
    pub file: Option<String>,
    /// Environment variables (the process environment merged over `.env`).
    pub env: HashMap<String, String>,
    /// Directory for generated secrets; `./data` by default.
    pub data_dir: Option<PathBuf>,
}

impl Sources {
    /// The sources a command-line run uses: `--config` or `RAMPART_CONFIG` (or `./rampart.toml`
    /// if present), `.env`, then the process environment, which wins.
    ///
    /// # Errors
    /// A config file that was named but cannot be read, or a malformed `.env`.
    pub fn from_process(config_path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut env: HashMap<String, String> = HashMap::new();
        if Path::new(".env").exists() {
            let entries = dotenvy::from_path_iter(".env")
                .map_err(|error| ConfigError::one(format!(".env: {error}")))?;
            for entry in entries {
                let (key, value) =
                    entry.map_err(|error| ConfigError::one(format!(".env: {error}")))?;
                env.insert(key, value);
            }
        }
        env.extend(std::env::vars());
        let named = config_path
            .map(Path::to_path_buf)
            .or_else(|| env.get("RAMPART_CONFIG").map(PathBuf::from));
        let file = match named {
            Some(path) => Some(std::fs::read_to_string(&path).map_err(|error| {
                ConfigError::one(format!("config file {}: {error}", path.display()))
            })?),
            None if Path::new("rampart.toml").exists() => Some(
                std::fs::read_to_string("rampart.toml")
                    .map_err(|error| ConfigError::one(format!("rampart.toml: {error}")))?,
            ),
            None => None,
        };
        Ok(Self {
            file,
            env,
            data_dir: None,
        })
    }
}

impl Config {
    /// Reads the file, applies `RAMPART_SECTION__KEY` overrides and validates the result.
    ///
    /// Secrets that are not configured are loaded from, or generated once into,
    /// `<data_dir>/secrets.toml` — except in production, where that is an error.
    ///
    /// # Errors
    /// Every unknown key and invalid value, each named.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let raw = RawConfig::parse(sources.file.as_deref().unwrap_or(""), &sources.env)?;
        let production = sources
            .env
            .get("RAMPART_ENV")
            .is_some_and(|value| value.eq_ignore_ascii_case("production"));
        let data_dir = sources
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("data"));
        raw.validate(production, data_dir)
    }
}

impl RawConfig {
    /// Parses TOML text and applies environment overrides; unknown keys are errors.
    ///
    /// # Errors
    /// Malformed TOML, unknown keys or values of the wrong type, each named.
    pub fn parse(text: &str, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|error| ConfigError::one(format!("rampart.toml: {}", error.message())))?;
        let mut overrides: Vec<(&String, &String)> = env
            .iter()
            .filter(|(key, _)| {
                key.starts_with("RAMPART_") && !RESERVED_VARIABLES.contains(&key.as_str())
            })
            .collect();
        overrides.sort();
        let mut problems = Vec::new();
        for (key, value) in overrides {
            let path: Vec<String> = key["RAMPART_".len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            if path.len() < 2 || path.iter().any(String::is_empty) {
                // `RAMPART_SOMETHING` without a section is not a config key; it is
                // probably meant for another tool, so it is left alone.
                continue;
            }
            if let Err(problem) = set_path(&mut table, &path, env_value(value)) {
                problems.push(format!("{key}: {problem}"));
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let deserializer = toml::Value::Table(table);
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            ConfigError::one(format!("{path}: {}", inner.message()))
        })
    }

    fn validate(self, production: bool, data_dir: PathBuf) -> Result<Config, ConfigError> {
        let mut problems: Vec<String> = Vec::new();
        let mut bad = |key: &str, message: String| problems.push(format!("{key}: {message}"));

        let listen = self
            .server
            .listen
            .parse::<SocketAddr>()
            .unwrap_or_else(|_| {
                bad(
                    "server.listen",
                    format!(
                        "`{}` is not an address such as 127.0.0.1:8080",
                        self.server.listen
                    ),
                );
                SocketAddr::from(([127, 0, 0, 1], 8080))
            });
        let trusted_proxies =
            parse_networks(&self.server.trusted_proxies.0).unwrap_or_else(|message| {
                bad("server.trusted_proxies", message);
                Vec::new()
            });
        let max_body = parse_size(&self.server.max_body).unwrap_or_else(|message| {
            bad("server.max_body", message);
            0
        });
        let mut server_duration = |key: &str, text: &str, default: u64| {
            parse_duration(text).unwrap_or_else(|message| {
                bad(key, message);
                Duration::from_secs(default)
            })
        };
        let header_read_timeout = server_duration(
            "server.header_read_timeout",
            &self.server.header_read_timeout,
            10,
        );
        let idle_timeout = server_duration("server.idle_timeout", &self.server.idle_timeout, 60);
        let shutdown_timeout =
            server_duration("server.shutdown_timeout", &self.server.shutdown_timeout, 30);
        for (key, value) in [
            ("server.header_read_timeout", header_read_timeout),
            ("server.idle_timeout", idle_timeout),
        ] {
            if value.is_zero() {
                bad(key, "must be longer than 0s".into());
            }
        }
        let max_header_bytes =
            parse_size(&self.server.max_header_bytes).unwrap_or_else(|message| {
                bad("server.max_header_bytes", message);
                32 * 1024
            });
        if !(1024..=1024 * 1024).contains(&max_header_bytes) {
            bad(
                "server.max_header_bytes",
                "must be between 1KiB and 1MiB".into(),
            );
        }
        if self.server.max_connections == 0 {
            bad("server.max_connections", "must be at least 1".into());
        } else if self.server.max_connections > MAX_CONNECTIONS {
            bad(
                "server.max_connections",
                format!("must be at most {MAX_CONNECTIONS}"),
            );
        }
        if self.server.max_connections_per_ip == 0 {
            bad("server.max_connections_per_ip", "must be at least 1".into());
        } else if self.server.max_connections_per_ip > MAX_CONNECTIONS {
            bad(
                "server.max_connections_per_ip",
                format!("must be at most {MAX_CONNECTIONS}"),
            );
        }
        if self.server.worker_threads > 1024 {
            bad("server.worker_threads", "must be at most 1024".into());
        }
        let tls = self.server.tls.map(|tls| {
            if tls.min_version != "1.2" && tls.min_version != "1.3" {
                bad(
                    "server.tls.min_version",
                    "must be \"1.2\" or \"1.3\"".into(),
                );
            }
            TlsConfig {
                cert: tls.cert,
                key: tls.key,
                min_version: tls.min_version,
            }
        });

        let database_url = self.database.url.clone();
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            bad(
                "database.url",
                "must start with sqlite: or postgres://".into(),
            );
        }

        let algorithm = match self.tokens.algorithm.as_str() {
            "HS256" => TokenAlgorithm::Hs256,
            "EdDSA" => TokenAlgorithm::EdDsa,
            "RS256" => TokenAlgorithm::Rs256,
            other => {
                bad(
                    "tokens.algorithm",
                    format!("`{other}` is not one of HS256, EdDSA, RS256"),
                );
                TokenAlgorithm::Hs256
            }
        };
        if algorithm != TokenAlgorithm::Hs256 && self.tokens.private_key_file.is_none() {
            bad(
                "tokens.private_key_file",
                format!("required with algorithm {}", self.tokens.algorithm),
            );
        }
        if let Some(secret) = &self.tokens.secret
            && secret.len() < 32
        {
            bad(
                "tokens.secret",
                format!("must be at least 32 bytes (is {})", secret.len()),
            );
        }
        if let Some(key) = &self.audit.chain_key
            && key.len() < 32
        {
            bad(
                "audit.chain_key",
                format!("must be at least 32 bytes (is {})", key.len()),
            );
        }
        let mut duration = |key: &str, text: &str| {
            parse_duration(text).unwrap_or_else(|message| {
                problems.push(format!("{key}: {message}"));
                Duration::from_secs(1)
            })
        };
        let access_ttl = duration("tokens.access_ttl", &self.tokens.access_ttl);
        let refresh_ttl = duration("tokens.refresh_ttl", &self.tokens.refresh_ttl);
        let revocation_lag = duration("tokens.revocation_lag", &self.tokens.revocation_lag);
        let failure_window = duration("login.failure_window", &self.login.failure_window);
        let audit_retention = duration("audit.retention", &self.audit.retention);
        let mut bad = |key: &str, message: String| problems.push(format!("{key}: {message}"));
        let store = match self.tokens.store.as_str() {
            "database" => StateStoreKind::Database,
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                StateStoreKind::Redis(url.to_owned())
            }
            _ => {
                bad(
                    "tokens.store",
                    "must be \"database\" or a redis:// URL".into(),
                );
                StateStoreKind::Database
            }
        };

        let builtin_roles = ["admin", "trader", "viewer"];
        let mut roles: BTreeMap<String, Vec<String>> = default_roles();
        for (name, permissions) in self.roles {
            if !is_identifier(&name) {
                bad(&format!("roles.{name}"), "role names are [a-z0-9_]".into());
            }
            roles.insert(name, permissions.0);
        }
        for required in builtin_roles {
            if !roles.contains_key(required) {
                bad("roles", format!("role `{required}` cannot be removed"));
            }
        }
        if !roles.contains_key(&self.users.default_role) {
            bad(
                "users.default_role",
                format!("`{}` is not a defined role", self.users.default_role),
            );
        }

        let mut password = match self.password.preset.as_deref() {
            None | Some("default") => PasswordPolicy::default(),
            Some("nist") => PasswordPolicy::nist(),
            Some(other) => {
                bad(
                    "password.preset",
                    format!("`{other}` is not one of default, nist"),
                );
                PasswordPolicy::default()
            }
        };
        let raw_password = self.password;
        macro_rules! override_field {
            ($field:ident) => {
                if let Some(value) = raw_password.$field {
                    password.$field = value;
                }
            };
        }
        override_field!(min_length);
        override_field!(max_length);
        override_field!(require_upper);
        override_field!(require_lower);
        override_field!(require_digit);
        override_field!(require_special);
        override_field!(reject_common);
        if password.min_length < 8 {
            bad("password.min_length", "must be at least 8".into());
        }
        if password.max_length < password.min_length || password.max_length > 1024 {
            bad(
                "password.max_length",
                "must be between min_length and 1024".into(),
            );
        }

        if self.login.max_failures_per_ip == 0 {
            bad("login.max_failures_per_ip", "must be at least 1".into());
        }
        if self.login.max_failures_per_account == 0 {
            bad(
                "login.max_failures_per_account",
                "must be at least 1".into(),
            );
        }

        let redis_url = match self.rate_limits.store.as_str() {
            "memory" => None,
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Some(url.to_owned())
            }
            _ => {
                bad(
                    "rate_limits.store",
                    "must be \"memory\" or a redis:// URL".into(),
                );
                None
            }
        };
        let on_store_error = match self.rate_limits.on_store_error.as_str() {
            "local" => OnStoreError::Local,
            "deny" => OnStoreError::Deny,
            other => {
                bad(
                    "rate_limits.on_store_error",
                    format!("`{other}` is not one of local, deny"),
                );
                OnStoreError::Local
            }
        };
        if !(32..=128).contains(&self.rate_limits.ipv6_prefix) {
            bad(
                "rate_limits.ipv6_prefix",
                "must be between 32 and 128".into(),
            );
        }
        let mut tier = |key: &str, text: &str| {
            Quota::parse(text).unwrap_or_else(|error| {
                bad(key, error.to_string());
                Quota::parse("1/s").expect("a valid quota")
            })
        };
        let anonymous = tier("rate_limits.anonymous", &self.rate_limits.anonymous);
        let standard = tier("rate_limits.standard", &self.rate_limits.standard);
        let premium = tier("rate_limits.premium", &self.rate_limits.premium);

        let legacy_host_binding = self.encryption.legacy_host_binding.unwrap_or(true);
        let encryption_keys: Vec<Secret> = self
            .encryption
            .keys
            .map(|keys| keys.0.into_iter().map(Secret::new).collect())
            .unwrap_or_default();
        if !encryption_keys.is_empty() {
            let entries: Vec<&str> = encryption_keys.iter().map(Secret::expose).collect();
            // The message names the entry's position and id, never the key.
            if let Err(error) = crate::keyring::KeyRing::parse(&entries) {
                bad("encryption.keys", error.to_string());
            }
        }
        if let Err(message) = crate::ssrf::OutboundPolicy::new(
            self.accounts.allow_http,
            &self.accounts.allowed_hosts.0,
            &[],
        ) {
            bad("accounts.allowed_hosts", message);
        }

        let allowed_networks =
            parse_networks(&self.accounts.allowed_networks.0).unwrap_or_else(|message| {
                bad("accounts.allowed_networks", message);
                Vec::new()
            });
        let metrics_allowed_networks = parse_networks(&self.metrics.allowed_networks.0)
            .unwrap_or_else(|message| {
                bad("metrics.allowed_networks", message);
                Vec::new()
            });
        for origin in &self.cors.allowed_origins.0 {
            if origin == "*" {
                bad(
                    "cors.allowed_origins",
                    "`*` is refused: list each origin (credentials are allowed)".into(),
                );
            } else if !(origin.starts_with("https://") || origin.starts_with("http://"))
                || origin.ends_with('/')
                || http::HeaderValue::from_str(origin).is_err()
            {
                bad(
                    "cors.allowed_origins",
                    format!("`{origin}` is not an origin such as https://app.example.com"),
                );
            }
        }
        let log_format = match self.log.format.as_str() {
            "auto" => LogFormat::Auto,
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                bad(
                    "log.format",
                    format!("`{other}` is not one of auto, json, text"),
                );
                LogFormat::Auto
            }
        };
        if self.log.level.trim().is_empty() {
            bad("log.level", "is empty".into());
        }
        let intrusion = match self.intrusion.mode.as_str() {
            "detect" => IntrusionMode::Detect,
            "block" => IntrusionMode::Block,
            "off" => IntrusionMode::Off,
            other => {
                bad(
                    "intrusion.mode",
                    format!("`{other}` is not one of detect, block, off"),
                );
                IntrusionMode::Detect
            }
        };
        if http::HeaderValue::from_str(&self.headers.x_xss_protection).is_err() {
            bad(
                "headers.x_xss_protection",
                "is not a valid header value".into(),
            );
        }

        for (index, route) in self.routes.iter().enumerate() {
            let key = format!("routes[{index}] ({})", route.path);
            if !route.path.starts_with('/') {
                bad(&key, "path must start with /".into());
            }
            if let Some(upstream) = &route.upstream
                && !self.upstreams.contains_key(upstream)
            {
                bad(&key, format!("upstream `{upstream}` is not defined"));
            }
            // Tunnels speak HTTP/1.1 to the backend; an h2c:// target has none.
            if route.websocket
                && let Some(name) = &route.upstream
                && let Some(upstream) = self.upstreams.get(name)
                && upstream.target_urls().iter().any(|url| {
                    url.get(..6)
                        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("h2c://"))
                })
            {
                bad(
                    &format!("{key}.websocket"),
                    format!(
                        "upstream `{name}` has an h2c:// target, and WebSocket tunnels need HTTP/1.1"
                    ),
                );
            }
            if route.roles.is_some() && route.permission.is_some() {
                bad(&key, "give either roles or permission, not both".into());
            }
            for role in route.roles.iter().flat_map(|roles| roles.0.iter()) {
                if !roles.contains_key(role) {
                    bad(&key, format!("role `{role}` is not defined"));
                }
            }
            for method in &route.methods.0 {
                if http::Method::from_bytes(method.as_bytes()).is_err()
                    || method.to_ascii_uppercase() != *method
                {
                    bad(&key, format!("`{method}` is not an HTTP method"));
                }
            }
            if let Some(limit) = &route.rate_limit
                && let Err(error) = limit.quota()
            {
                bad(&format!("{key}.rate_limit"), error.to_string());
            }
            if let Some(size) = &route.max_body
                && let Err(message) = parse_size(size)
            {
                bad(&format!("{key}.max_body"), message);
            }
            if !matches!(route.per.as_str(), "ip" | "user" | "key") {
                bad(
                    &format!("{key}.per"),
                    format!("`{}` is not one of ip, user, key", route.per),
                );
            }
        }
        for (name, upstream) in &self.upstreams {
            let key = format!("upstreams.{name}");
            match (&upstream.url, &upstream.targets) {
                (Some(_), Some(_)) => bad(
                    &format!("{key}.targets"),
                    "give either url or targets, not both".into(),
                ),
                (None, None) => bad(&format!("{key}.url"), "url or targets is required".into()),
                (None, Some(targets)) if targets.0.is_empty() => {
                    bad(&format!("{key}.targets"), "lists no target".into())
                }
                (None, Some(targets)) if targets.0.len() > MAX_TARGETS => bad(
                    &format!("{key}.targets"),
                    format!("lists more than {MAX_TARGETS} targets"),
                ),
                _ => {}
            }
            let field = if upstream.url.is_some() {
                "url"
            } else {
                "targets"
            };
            let mut seen = std::collections::HashSet::new();
            for url in upstream.target_urls() {
                if let Err(message) = check_target_url(url) {
                    bad(&format!("{key}.{field}"), message);
                } else if !seen.insert(url) {
                    bad(
                        &format!("{key}.{field}"),
                        format!("`{url}` is listed twice"),
                    );
                }
            }
            if let Some(check) = &upstream.health_check {
                if !check.path.starts_with('/')
                    || check.path.parse::<http::uri::PathAndQuery>().is_err()
                {
                    bad(
                        &format!("{key}.health_check.path"),
                        format!("`{}` is not a path such as /healthz", check.path),
                    );
                }
                if let Err(message) = parse_duration(&check.interval) {
                    bad(&format!("{key}.health_check.interval"), message);
                }
            }
            if upstream.retries > MAX_RETRIES {
                bad(
                    &format!("{key}.retries"),
                    format!("must be at most {MAX_RETRIES}"),
                );
            }
            if let Err(message) = parse_duration(&upstream.timeout) {
                bad(&format!("{key}.timeout"), message);
            }
            for (field, message) in crate::proxy::headers::check(
                &upstream.strip_request_headers.0,
                &upstream.pass_request_headers.0,
            ) {
                bad(&format!("{key}.{field}"), message);
            }
            if let Some(breaker) = &upstream.circuit_breaker {
                for (field, text) in [("window", &breaker.window), ("open_for", &breaker.open_for)]
                {
                    if let Err(message) = parse_duration(text) {
                        bad(&format!("{key}.circuit_breaker.{field}"), message);
                    }
                }
                if breaker.failures == 0 || breaker.half_open_requests == 0 {
                    bad(
                        &format!("{key}.circuit_breaker"),
                        "failures and half_open_requests must be at least 1".into(),
                    );
                }
            }
        }

        if production {
            if database_url.starts_with("sqlite:") {
                bad(
                    "database.url",
                    "RAMPART_ENV=production needs PostgreSQL, not SQLite".into(),
                );
            }
            if !self.server.behind_tls && tls.is_none() {
                bad(
                    "server.behind_tls",
                    "RAMPART_ENV=production needs server.tls or server.behind_tls = true".into(),
                );
            }
            if algorithm == TokenAlgorithm::Hs256 && self.tokens.secret.is_none() {
                bad(
                    "tokens.secret",
                    "RAMPART_ENV=production needs a configured secret (see `rampart keygen`)"
                        .into(),
                );
            }
            if let Some(reason) = self
                .tokens
                .secret
                .as_deref()
                .and_then(crate::secrets::weakness)
            {
                bad(
                    "tokens.secret",
                    format!(
                        "RAMPART_ENV=production refuses a weak secret: {reason} (see `rampart keygen`)"
                    ),
                );
            }
            if encryption_keys.is_empty() {
                bad(
                    "encryption.keys",
                    "RAMPART_ENV=production needs configured keys (see `rampart keygen`)".into(),
                );
            }
            for (index, entry) in encryption_keys.iter().enumerate() {
                // Malformed entries are reported above; the message never shows the key.
                let Some((id, encoded)) = entry.expose().trim().split_once(':') else {
                    continue;
                };
                let Some(key) = crate::keyring::decode_key(encoded) else {
                    continue;
                };
                if let Some(reason) = crate::secrets::key_weakness(&key) {
                    bad(
                        "encryption.keys",
                        format!(
                            "entry {index} ({id}): RAMPART_ENV=production refuses a weak key: \
                             {reason} (see `rampart keygen`)"
                        ),
                    );
                }
            }
            match self
                .audit
                .chain_key
                .as_deref()
                .map(crate::secrets::weakness)
            {
                None => bad(
                    "audit.chain_key",
                    "RAMPART_ENV=production needs a configured key (see `rampart keygen`)".into(),
                ),
                Some(Some(reason)) => bad(
                    "audit.chain_key",
                    format!(
                        "RAMPART_ENV=production refuses a weak key: {reason} (see `rampart keygen`)"
                    ),
                ),
                Some(None) => {}
            }
        }

        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Config {
            server: ServerConfig {
                listen,
                trusted_proxies,
                behind_tls: self.server.behind_tls,
                max_body,
                worker_threads: self.server.worker_threads,
                tls,
                header_read_timeout,
                idle_timeout,
                max_connections: self.server.max_connections,
                max_connections_per_ip: self.server.max_connections_per_ip,
                max_header_bytes,
                shutdown_timeout,
            },
            database_url: Secret::new(database_url),
            tokens: TokensConfig {
                algorithm,
                secret: self.tokens.secret.map(Secret::new),
                private_key_file: self.tokens.private_key_file,
                issuer: self.tokens.issuer,
                audience: self.tokens.audience,
                access_ttl,
                refresh_ttl,
                store,
                revocation_lag,
            },
            default_role: self.users.default_role,
            password,
            login: LoginConfig {
                max_failures_per_ip: self.login.max_failures_per_ip,
                max_failures_per_account: self.login.max_failures_per_account,
                failure_window,
            },
            rate_limits: RateLimitsConfig {
                redis_url,
                on_store_error,
                anonymous,
                standard,
                premium,
                ipv6_prefix: self.rate_limits.ipv6_prefix,
            },
            encryption_keys,
            encryption_legacy_host_binding: legacy_host_binding,
            accounts: AccountsConfig {
                allow_http: self.accounts.allow_http,
                allowed_hosts: self.accounts.allowed_hosts.0,
                allowed_networks,
            },
            cors_allowed_origins: self.cors.allowed_origins.0,
            metrics_allowed_networks,
            intrusion,
            audit_retention,
            audit_chain_key: self.audit.chain_key.map(Secret::new),
            headers: HeadersConfig {
                x_xss_protection: self.headers.x_xss_protection,
            },
            log: LogConfig {
                level: self.log.level,
                format: log_format,
                access: self.log.access,
            },
            routes: self.routes,
            upstreams: self.upstreams,
            roles,
            production,
            data_dir,
        })
    }
}

/// The built-in roles and their permissions (SPEC §3).
pub fn default_roles() -> BTreeMap<String, Vec<String>> {
    let role = |permissions: &[&str]| permissions.iter().map(|p| (*p).to_owned()).collect();
    BTreeMap::from([
        (
            "admin".to_owned(),
            role(&[
                "users:read",
                "users:write",
                "orders:read",
                "orders:write",
                "positions:read",
                "positions:write",
            ]),
        ),
        (
            "trader".to_owned(),
            role(&[
                "users:read",
                "orders:read",
                "orders:write",
                "positions:read",
            ]),
        ),
        (
            "viewer".to_owned(),
            role(&["users:read", "orders:read", "positions:read"]),
        ),
    ])
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// An environment value as a TOML value: booleans, integers, arrays and inline tables are
/// read as TOML; anything else is taken as a string, exactly as written.
fn env_value(text: &str) -> toml::Value {
    let trimmed = text.trim();
    let looks_typed = trimmed == "true"
        || trimmed == "false"
        || (!trimmed.is_empty()
            && trimmed.len() < 19
            && trimmed.bytes().all(|b| b.is_ascii_digit()))
        || trimmed.starts_with('[')
        || trimmed.starts_with('{');
    if looks_typed
        && let Ok(mut table) = toml::from_str::<toml::Table>(&format!("value = {trimmed}"))
        && let Some(value) = table.remove("value")
    {
        return value;
    }
    toml::Value::String(text.to_owned())
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(format!("`{part}` is not a section")),
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}

fn parse_networks(items: &[String]) -> Result<Vec<IpNet>, String> {
    items
        .iter()
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{item}` is not a network such as 10.0.0.0/8"))
        })
        .collect()
}

/// The most connections `server.max_connections` may allow.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// Whether `url` is a target an upstream can be sent to: `http://`, `https://` or `h2c://`
/// (HTTP/2 with prior knowledge, in the clear) and a host.
///
/// # Errors
/// What is wrong with it.
pub fn check_target_url(url: &str) -> Result<http::Uri, String> {
    match url.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https" | "h2c"))
                && uri.host().is_some_and(|host| !host.is_empty())
                && uri.query().is_none() =>
        {
            if uri
                .authority()
                .is_some_and(|authority| authority.as_str().contains('@'))
            {
                // Not echoed: the text before `@` is a credential.
                return Err("a target URL must not carry user information (user:password@)".into());
            }
            Ok(uri)
        }
        _ => Err(format!(
            "`{}` is not an http(s) URL (or h2c:// for HTTP/2 in the clear)",
            // Text before an `@` may be a credential: not echoed.
            if url.contains('@') { "the URL" } else { url }
        )),
    }
}

/// Parses a duration such as `250ms`, `30s`, `5min`, `1h`, `7d`.
///
/// # Errors
/// A message naming the text when it is not a positive duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration such as 30s, 5min, 1h or 7d");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds_per = match unit {
        "ms" => {
            if number / 1000 > 100 * 365 * 86_400 {
                return Err(format!("`{text}` is longer than a hundred years"));
            }
            return positive(Duration::from_millis(number), text);
        }
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let seconds = number.checked_mul(seconds_per).ok_or_else(bad)?;
    if seconds > 100 * 365 * 86_400 {
        return Err(format!("`{text}` is longer than a hundred years"));
    }
    positive(Duration::from_secs(seconds), text)
}

fn positive(duration: Duration, text: &str) -> Result<Duration, String> {
    if duration.is_zero() {
        Err(format!("`{text}` must be longer than zero"))
    } else {
        Ok(duration)
    }
}

/// Parses a size such as `512B`, `64KiB`, `1MiB`, `1GiB` (also `KB`/`MB`, decimal).
///
/// # Errors
/// A message naming the text when it is not a size.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let bad = || format!("`{text}` is not a size such as 64KiB or 1MiB");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number.parse().map_err(|_| bad())?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    let size = number.checked_mul(factor).ok_or_else(bad)?;
    if size == 0 {
        return Err(format!("`{text}` must be larger than zero"));
    }
    Ok(size)
}

impl fmt::Display for TokenAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hs256 => "HS256",
            Self::EdDsa => "EdDSA",
            Self::Rs256 => "RS256",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(&Sources {
            file: Some(text.to_owned()),
            env,
            data_dir: Some(PathBuf::from("/nonexistent")),
        })
    }

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let config = load("", &[]).unwrap();
        assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.server.max_body, 1 << 20);
        assert_eq!(config.tokens.access_ttl, Duration::from_secs(3600));
        assert_eq!(config.tokens.refresh_ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(config.login.max_failures_per_ip, 5);
        assert_eq!(config.default_role, "viewer");
        assert_eq!(config.intrusion, IntrusionMode::Detect);
        assert_eq!(config.headers.x_xss_protection, "0");
        assert_eq!(config.metrics_allowed_networks.len(), 2);
    }

    #[test]
    fn unknown_keys_stop_start_up_naming_the_key() {
        let error = load("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n", &[]).unwrap_err();
        assert!(error.to_string().contains("server"), "{error}");
        assert!(error.to_string().contains("lisen"), "{error}");
        let error = load("[nonsense]\n", &[]).unwrap_err();
        assert!(error.to_string().contains("nonsense"), "{error}");
    }

    #[test]
    fn invalid_values_are_all_reported_at_once() {
        let error = load(
            "[server]\nlisten = \"nowhere\"\nmax_body = \"lots\"\n[tokens]\naccess_ttl = \"soon\"\n",
            &[],
        )
        .unwrap_err();
        let text = error.to_string();
        for key in ["server.listen", "server.max_body", "tokens.access_ttl"] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = load(
            "[login]\nmax_failures_per_ip = 9\n",
            &[
                ("RAMPART_LOGIN__MAX_FAILURES_PER_IP", "3"),
                ("RAMPART_SERVER__LISTEN", "127.0.0.1:9999"),
                ("RAMPART_SERVER__BEHIND_TLS", "true"),
                (
                    "RAMPART_CORS__ALLOWED_ORIGINS",
                    "https://a.example,https://b.example",
                ),
                ("RAMPART_ENV", "development"),
            ],
        )
        .unwrap();
        assert_eq!(config.login.max_failures_per_ip, 3);
        assert_eq!(config.server.listen.port(), 9999);
        assert!(config.server.behind_tls);
        assert_eq!(config.cors_allowed_origins.len(), 2);
    }

    #[test]
    fn an_unknown_environment_key_is_refused() {
        let error = load("", &[("RAMPART_SERVER__LISTN", "x")]).unwrap_err();
        assert!(error.to_string().contains("listn"), "{error}");
    }

    #[test]
    fn production_refuses_sqlite_plain_http_and_missing_secrets() {
        let error = load("", &[("RAMPART_ENV", "production")]).unwrap_err();
        let text = error.to_string();
        for key in [
            "database.url",
            "server.behind_tls",
            "tokens.secret",
            "encryption.keys",
            "audit.chain_key",
        ] {
            assert!(text.contains(key), "{key} missing from {text}");
        }
        let weak = load(
            "",
            &[
                ("RAMPART_ENV", "production"),
                ("RAMPART_AUDIT__CHAIN_KEY", &"k".repeat(40)),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            weak.contains("audit.chain_key: RAMPART_ENV=production refuses a weak key"),
            "{weak}"
        );
        let short = load("[audit]\nchain_key = \"short\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            short.contains("audit.chain_key: must be at least 32 bytes"),
            "{short}"
        );
    }

    #[test]
    fn production_refuses_trivial_encryption_keys() {
        use base64::Engine;
        let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        let production = |keys: &str| {
            load(
                "",
                &[
                    ("RAMPART_ENV", "production"),
                    ("RAMPART_ENCRYPTION__KEYS", keys),
                ],
            )
            .unwrap_err()
            .to_string()
        };
        let good = crate::secrets::generate_key_entry("k1");
        let counting: Vec<u8> = (0u8..32).collect();
        for (weak, reason) in [
            (format!("k2:{}", encode(&[0u8; 32])), "all zeros"),
            (
                format!("k2:{}", encode(&[7u8; 32])),
                "too few distinct bytes",
            ),
            (format!("k2:{}", encode(&counting)), "counting sequence"),
            (
                format!("k2:{}", encode(b"0123456789abcdefghijklmnopqrstuv")),
                "printable text",
            ),
        ] {
            let text = production(&format!("{good},{weak}"));
            assert!(
                text.contains(
                    "encryption.keys: entry 1 (k2): RAMPART_ENV=production refuses a weak key"
                ) && text.contains(reason),
                "{reason}: {text}"
            );
            assert!(!text.contains(&weak[3..]), "the key is not shown: {text}");
        }
        let text = production(&good);
        assert!(!text.contains("encryption.keys"), "{text}");
        // Outside production only the format is checked.
        assert!(
            load(
                "",
                &[(
                    "RAMPART_ENCRYPTION__KEYS",
                    &format!("k1:{}", encode(&[0u8; 32]))
                )]
            )
            .is_ok()
        );
    }

    #[test]
    fn production_refuses_a_trivial_jwt_secret_and_takes_a_generated_one() {
        let production = |secret: &str| {
            load(
                "[database]\nurl = \"postgres://db/rampart\"\n[server]\nbehind_tls = true\n",
                &[
                    ("RAMPART_ENV", "production"),
                    ("RAMPART_TOKENS__SECRET", secret),
                    (
                        "RAMPART_ENCRYPTION__KEYS",
                        &crate::secrets::generate_key_entry("k1"),
                    ),
                    (
                        "RAMPART_AUDIT__CHAIN_KEY",
                        &crate::secrets::generate_token_secret(),
                    ),
                ],
            )
        };
        for secret in [
            "a".repeat(64),
            "0123456789abcdef".repeat(2),
            "changeme-changeme-changeme-changeme".to_owned(),
            "bench-secret-bench-secret-bench-secret-0123".to_owned(),
        ] {
            let error = production(&secret).unwrap_err().to_string();
            assert!(
                error.contains("tokens.secret") && error.contains("weak"),
                "{secret}: {error}"
            );
            assert!(
                !error.contains(&secret),
                "the value itself is not echoed: {error}"
            );
        }
        assert!(production(&crate::secrets::generate_token_secret()).is_ok());
        // Outside production the same value only needs its length.
        assert!(load(&format!("[tokens]\nsecret = \"{}\"\n", "a".repeat(64)), &[]).is_ok());
    }

    #[test]
    fn a_short_jwt_secret_is_refused() {
        let error = load("[tokens]\nsecret = \"short\"\n", &[]).unwrap_err();
        assert!(error.to_string().contains("tokens.secret"));
    }

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5min"), Ok(Duration::from_secs(300)));
        for bad in [
            "",
            "s",
            "10",
            "-1s",
            "1 s",
            "0s",
            "1w",
            "99999999999999999999d",
            "18446744073709551615ms",
            "3153600001000ms",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1_048_576));
        for bad in ["", "KiB", "0B", "1TiB", "-1B"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn extreme_listener_values_are_refused() {
        assert!(load("[server]\nmax_connections = 1000000\n", &[]).is_ok());
        for bad in [
            "max_connections = 1000001",
            "max_connections = 9223372036854775807",
            "max_connections_per_ip = 0",
            "max_connections_per_ip = 1000001",
            "idle_timeout = \"18446744073709551615ms\"",
            "shutdown_timeout = \"99999999999999ms\"",
        ] {
            let error = load(&format!("[server]\n{bad}\n"), &[])
                .map(|_| ())
                .expect_err(bad);
            assert!(error.to_string().contains("server."), "{bad}: {error}");
        }
    }

    #[test]
    fn the_nist_preset_drops_character_classes() {
        let config = load("[password]\npreset = \"nist\"\n", &[]).unwrap();
        assert_eq!(config.password.min_length, 15);
        assert!(!config.password.require_special);
        assert!(config.password.reject_common);
    }

    #[test]
    fn the_shipped_example_configuration_is_valid() {
        let text = include_str!("../../../config/rampart.example.toml");
        load(text, &[]).expect("config/rampart.example.toml loads");
    }

    #[test]
    fn a_wildcard_cors_origin_is_refused() {
        assert!(load("[cors]\nallowed_origins = [\"*\"]\n", &[]).is_err());
    }

    #[test]
    fn routes_must_name_defined_upstreams_and_roles() {
        let error = load(
            "[[routes]]\npath = \"/orders\"\nupstream = \"nowhere\"\nroles = [\"wizard\"]\n",
            &[],
        )
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("/orders"), "{text}");
        assert!(text.contains("nowhere"), "{text}");
        assert!(text.contains("wizard"), "{text}");
    }
}
