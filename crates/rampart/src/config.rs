//! `rampart.toml`, `RAMPART_SECTION__KEY` overrides and `.env`, checked once at start-up.
//!
//! [`RawConfig`] is the file as written, with `deny_unknown_fields` everywhere so that a
//! mistyped key stops start-up; [`layering`] stacks the file, `.env` and the environment.
//! [`Config::load`] then checks every section and reports every problem at once, each
//! naming its key. Each module owns its section: it declares the section as written
//! (`RawX`) and turns it into the typed value it runs with, adding what is wrong to
//! [`Problems`] — the listener ([`crate::server`]), quotas ([`crate::rate_limit`]), routes
//! ([`crate::routes`]), upstreams ([`crate::proxy`], [`crate::circuit_breaker`]), tokens
//! ([`crate::tokens`]), the password policy ([`crate::password`]), the key ring
//! ([`crate::keyring`]), the intrusion mode ([`crate::intrusion`]), the audit trail
//! ([`crate::audit`]) and the response headers ([`crate::security_headers`]); the few
//! sections without a module of their own are checked here, one function each. What
//! `rampart check-config` accepts is exactly what `rampart serve` runs: both take the
//! [`Config`] this module returns, and nothing is parsed a second time. [`generated`]
//! fills in, at start-up, the secrets left out outside production; `units` reads
//! durations, sizes and networks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::keyring::KeyRing;
use crate::routes::{RawRoute, RouteConfig};
use crate::secrets::Secret;
use crate::ssrf::OutboundPolicy;
use crate::upstream::{RawUpstream, UpstreamConfig};

pub mod generated;
pub mod layering;

pub use crate::audit::config::RawAudit;
pub use crate::intrusion::{IntrusionMode, RawIntrusion};
pub use crate::password::{PasswordPolicy, RawPasswordPolicy};
pub use crate::rate_limit::{OnStoreError, RateLimitsConfig, RawRateLimits};
pub use crate::security_headers::{HeadersConfig, RawHeaders};
pub use crate::server_config::{MAX_CONNECTIONS, RawServer, RawTls, ServerConfig, TlsConfig};
pub use crate::settings::{
    ConfigError, List, Problems, parse_duration, parse_networks, parse_size,
};
pub use crate::tokens::{RawTokens, StateStoreKind, TokenAlgorithm, TokensConfig};
pub use crate::upstream::config::{MAX_RETRIES, MAX_TARGETS, check_target_url};
use layering::Layered;
pub use layering::Sources;

/// `rampart.toml` as written. Nothing here is trusted yet.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// `[server]`: the listener.
    pub server: RawServer,
    /// `[database]`.
    pub database: RawDatabase,
    /// `[tokens]`: access and refresh tokens.
    pub tokens: RawTokens,
    /// `[users]`.
    pub users: RawUsers,
    /// `[password]`: the password policy.
    pub password: RawPasswordPolicy,
    /// `[login]`: brute-force lockouts.
    pub login: RawLogin,
    /// `[rate_limits]`: tier quotas and where their counters live.
    pub rate_limits: RawRateLimits,
    /// `[encryption]`: the key ring for stored secrets.
    pub encryption: RawEncryption,
    /// `[accounts]`: which broker hosts account calls may reach.
    pub accounts: RawAccounts,
    /// `[cors]`.
    pub cors: RawCors,
    /// `[metrics]`.
    pub metrics: RawMetrics,
    /// `[intrusion]`: what the scanner does with a suspicious request.
    pub intrusion: RawIntrusion,
    /// `[audit]`: retention and the chain key.
    pub audit: RawAudit,
    /// `[headers]`: response security headers.
    pub headers: RawHeaders,
    /// `[log]`.
    pub log: RawLog,
    /// `[[routes]]`, in file order.
    pub routes: Vec<RawRoute>,
    /// `[upstreams.NAME]`, by name.
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// `[roles]`: each role's permissions.
    pub roles: BTreeMap<String, List>,
}

/// `[database]` as written.
#[derive(Default, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDatabase {
    /// `sqlite://…` or `postgres://…` (may carry a password); absent: SQLite at
    /// `<server.data_dir>/rampart.db`.
    pub url: Option<String>,
}

/// `[users]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUsers {
    /// The role a self-registered user gets; must be defined in `[roles]`.
    pub default_role: String,
}

impl Default for RawUsers {
    fn default() -> Self {
        Self {
            default_role: "viewer".into(),
        }
    }
}

/// `[login]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLogin {
    /// Failed logins from one client address before it is locked out.
    pub max_failures_per_ip: u32,
    /// Failed logins on one account before it is locked out.
    pub max_failures_per_account: u32,
    /// How long failures count and a lockout lasts (a duration).
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

/// `[encryption]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawEncryption {
    /// The sealing keys, the first sealing and every one opening; absent: generated into
    /// `secrets.toml` outside production.
    pub keys: Option<List>,
    /// A file holding the key ring, one `id:key` entry per line (a container secret).
    pub keys_file: Option<PathBuf>,
    /// Whether a broker key sealed before host binding still opens (default `true`).
    pub legacy_host_binding: Option<bool>,
}

/// `[accounts]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAccounts {
    /// Whether broker `host_url`s may be plain `http://`.
    pub allow_http: bool,
    /// Host globs that broker `host_url`s must match; empty: any host.
    pub allowed_hosts: List,
    /// Networks broker calls may reach although they are not public.
    pub allowed_networks: List,
}

/// `[cors]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawCors {
    /// Origins answered with CORS headers; empty: none.
    pub allowed_origins: List,
}

/// `[metrics]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawMetrics {
    /// Client networks that may read `/metrics`.
    pub allowed_networks: List,
}

impl Default for RawMetrics {
    fn default() -> Self {
        Self {
            allowed_networks: List(vec!["127.0.0.0/8".into(), "::1/128".into()]),
        }
    }
}

/// `[log]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLog {
    /// The tracing filter, `info` by default.
    pub level: String,
    /// `auto`, `json` or `text`.
    pub format: String,
    /// Whether each request gets an access-log line.
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

/// What the gateway runs with. Every value has been checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// The listener.
    pub server: ServerConfig,
    /// Where durable state lives; a secret, as it may carry a password.
    pub database_url: Secret,
    /// How tokens are signed, how long they live and where sessions are kept.
    pub tokens: TokensConfig,
    /// The role a self-registered user gets.
    pub default_role: String,
    /// What a new password must satisfy.
    pub password: PasswordPolicy,
    /// Brute-force lockouts.
    pub login: LoginConfig,
    /// Tier quotas and where their counters live.
    pub rate_limits: RateLimitsConfig,
    /// `encryption.keys`, parsed; `None` when none is configured (then
    /// [`crate::config::generated::fill_generated`] loads or generates them).
    pub keyring: Option<KeyRing>,
    /// `encryption.legacy_host_binding` (default `true`): whether a broker key sealed
    /// before keys were bound to their host still opens (and is re-sealed bound to the
    /// host the row names, with a warning and an audit entry). `false` refuses it.
    pub encryption_legacy_host_binding: bool,
    /// `[accounts]`: what broker calls may reach, built once.
    pub outbound: Arc<OutboundPolicy>,
    /// Origins answered with CORS headers.
    pub cors_allowed_origins: Vec<String>,
    /// Client networks that may read `/metrics`.
    pub metrics_allowed_networks: Vec<IpNet>,
    /// What a suspicious request gets.
    pub intrusion: IntrusionMode,
    /// How long audit rows are kept before `serve` purges them.
    pub audit_retention: Duration,
    /// `audit.chain_key`: keys the audit chain's HMAC. Filled from `secrets.toml` when
    /// absent, outside production.
    pub audit_chain_key: Option<Secret>,
    /// Response security headers.
    pub headers: HeadersConfig,
    /// Log filter, format and access lines.
    pub log: LogConfig,
    /// The routes, in file order.
    pub routes: Vec<RouteConfig>,
    /// The backends, by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Each role's permissions.
    pub roles: BTreeMap<String, Vec<String>>,
    /// `RAMPART_ENV=production`.
    pub production: bool,
    /// Where generated secrets and the default SQLite database live.
    pub data_dir: PathBuf,
}

impl Config {
    /// Reads the file, applies `RAMPART_SECTION__KEY` overrides and validates the result.
    ///
    /// Secrets that are not configured are loaded from, or generated once into,
    /// `<data_dir>/secrets.toml` at start-up — except in production, where that is an error.
    ///
    /// # Errors
    /// Every unknown key and invalid value, each named.
    pub fn load(sources: &Sources) -> Result<Self, ConfigError> {
        let label = sources.file_path.as_ref().map_or_else(
            || "rampart.toml".to_owned(),
            |path| path.display().to_string(),
        );
        let layered = Layered::new(sources.file.as_deref().unwrap_or(""), &sources.env, &label)?;
        let mut problems = Problems::default();
        let (raw, removed) = layered.deserialize(&mut problems);
        let config = raw.map(|raw| {
            let production = sources
                .env
                .get("RAMPART_ENV")
                .is_some_and(|value| value.eq_ignore_ascii_case("production"));
            let data_dir = sources
                .data_dir
                .clone()
                .unwrap_or_else(|| raw.server.data_dir.clone());
            let mut checked = Problems::default();
            let config = raw.validate(production, data_dir, &mut checked);
            // A value of the wrong type was already reported and taken out; what its
            // default then fails is the same problem again.
            checked.retain(|key| {
                let steps = layering::key_steps(key);
                !removed.iter().any(|path| steps.starts_with(path))
            });
            problems.extend(checked);
            config
        });
        match problems.into_located(config, |key| layered.locate(key))? {
            Some(config) => Ok(config),
            None => Err(ConfigError::one("the configuration cannot be read")),
        }
    }
}

impl RawConfig {
    /// Reads the secrets given as files (`tokens.secret_file`, `encryption.keys_file`,
    /// `audit.chain_key_file`), as container secrets are mounted, into the keys they stand
    /// for. A key given both ways, or a file that cannot be read, is a problem of its own.
    fn read_secret_files(&mut self, problems: &mut Problems) {
        /// The text of the file `path` names under `key`, unless the secret is also given
        /// directly (`given`, under `value_key`) or the file cannot be read: a problem each.
        fn read(
            key: &str,
            value_key: &str,
            path: Option<PathBuf>,
            given: bool,
            problems: &mut Problems,
        ) -> Option<String> {
            let path = path?;
            if given {
                problems.add(key, format!("give either {value_key} or {key}, not both"));
                return None;
            }
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(text.trim_end_matches(['\n', '\r']).to_owned()),
                Err(error) => {
                    problems.add(key, format!("cannot read {}: {error}", path.display()));
                    None
                }
            }
        }
        let tokens = &mut self.tokens;
        if let Some(secret) = read(
            "tokens.secret_file",
            "tokens.secret",
            tokens.secret_file.take(),
            tokens.secret.is_some(),
            problems,
        ) {
            tokens.secret = Some(secret);
        }
        let audit = &mut self.audit;
        if let Some(key) = read(
            "audit.chain_key_file",
            "audit.chain_key",
            audit.chain_key_file.take(),
            audit.chain_key.is_some(),
            problems,
        ) {
            audit.chain_key = Some(key);
        }
        let encryption = &mut self.encryption;
        if let Some(text) = read(
            "encryption.keys_file",
            "encryption.keys",
            encryption.keys_file.take(),
            encryption.keys.is_some(),
            problems,
        ) {
            let keys = text
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
                .map(str::to_owned)
                .collect();
            encryption.keys = Some(List(keys));
        }
    }

    /// Checks every section, each by the module that owns it, and gathers every problem.
    fn validate(mut self, production: bool, data_dir: PathBuf, problems: &mut Problems) -> Config {
        self.read_secret_files(problems);
        let server = ServerConfig::from_raw(self.server, production, problems);
        let database_url = database(self.database, &data_dir, production, problems);
        let tokens = TokensConfig::from_raw(self.tokens, production, problems);
        let roles = roles(self.roles, problems);
        if !roles.contains_key(&self.users.default_role) {
            problems.add(
                "users.default_role",
                format!("`{}` is not a defined role", self.users.default_role),
            );
        }
        let password = PasswordPolicy::from_raw(self.password, problems);
        let login = login(self.login, problems);
        let rate_limits = RateLimitsConfig::from_raw(self.rate_limits, problems);
        let keyring = KeyRing::from_config(
            self.encryption
                .keys
                .as_ref()
                .map_or(&[][..], |keys| &keys.0),
            production,
            problems,
        );
        let outbound = accounts(self.accounts, problems);
        let metrics_allowed_networks = parse_networks(&self.metrics.allowed_networks.0)
            .unwrap_or_else(|message| {
                problems.add("metrics.allowed_networks", message);
                Vec::new()
            });
        let cors_allowed_origins = cors(self.cors, problems);
        let log = log(self.log, problems);
        let intrusion = IntrusionMode::from_raw(&self.intrusion, problems);
        let headers = HeadersConfig::from_raw(self.headers, problems);
        let (audit_retention, audit_chain_key) =
            crate::audit::config::from_raw(self.audit, production, problems);
        let upstreams: BTreeMap<String, UpstreamConfig> = self
            .upstreams
            .iter()
            .map(|(name, raw)| (name.clone(), UpstreamConfig::from_raw(name, raw, problems)))
            .collect();
        let routes: Vec<RouteConfig> = self
            .routes
            .into_iter()
            .enumerate()
            .map(|(index, raw)| RouteConfig::from_raw(index, raw, &upstreams, &roles, problems))
            .collect();
        Config {
            server,
            database_url,
            tokens,
            default_role: self.users.default_role,
            password,
            login,
            rate_limits,
            keyring,
            encryption_legacy_host_binding: self.encryption.legacy_host_binding.unwrap_or(true),
            outbound,
            cors_allowed_origins,
            metrics_allowed_networks,
            intrusion,
            audit_retention,
            audit_chain_key,
            headers,
            log,
            routes,
            upstreams,
            roles,
            production,
            data_dir,
        }
    }
}

/// `[database]`; production needs PostgreSQL.
fn database(
    raw: RawDatabase,
    data_dir: &std::path::Path,
    production: bool,
    problems: &mut Problems,
) -> Secret {
    let url = raw
        .url
        .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("rampart.db").display()));
    if !(url.starts_with("sqlite:")
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://"))
    {
        problems.add("database.url", "must start with sqlite: or postgres://");
    }
    if production && url.starts_with("sqlite:") {
        problems.add(
            "database.url",
            "RAMPART_ENV=production needs PostgreSQL, not SQLite",
        );
    }
    Secret::new(url)
}

/// `[roles]` over the built-in roles, which may be extended but not removed.
fn roles(raw: BTreeMap<String, List>, problems: &mut Problems) -> BTreeMap<String, Vec<String>> {
    let mut roles = default_roles();
    for (name, permissions) in raw {
        if !is_identifier(&name) {
            problems.add(&format!("roles.{name}"), "role names are [a-z0-9_]");
        }
        roles.insert(name, permissions.0);
    }
    for required in ["admin", "trader", "viewer"] {
        if !roles.contains_key(required) {
            problems.add("roles", format!("role `{required}` cannot be removed"));
        }
    }
    roles
}

/// `[login]`: the brute-force lockout.
fn login(raw: RawLogin, problems: &mut Problems) -> LoginConfig {
    if raw.max_failures_per_ip == 0 {
        problems.add("login.max_failures_per_ip", "must be at least 1");
    }
    if raw.max_failures_per_account == 0 {
        problems.add("login.max_failures_per_account", "must be at least 1");
    }
    let failure_window = parse_duration(&raw.failure_window).unwrap_or_else(|message| {
        problems.add("login.failure_window", message);
        Duration::from_secs(1)
    });
    LoginConfig {
        max_failures_per_ip: raw.max_failures_per_ip,
        max_failures_per_account: raw.max_failures_per_account,
        failure_window,
    }
}

/// `[accounts]`: the outbound policy of broker calls, built once here.
fn accounts(raw: RawAccounts, problems: &mut Problems) -> Arc<OutboundPolicy> {
    let allowed_networks = parse_networks(&raw.allowed_networks.0).unwrap_or_else(|message| {
        problems.add("accounts.allowed_networks", message);
        Vec::new()
    });
    let policy = OutboundPolicy::new(raw.allow_http, &raw.allowed_hosts.0, &allowed_networks)
        .unwrap_or_else(|message| {
            problems.add("accounts.allowed_hosts", message);
            OutboundPolicy::new(raw.allow_http, &[], &[]).expect("an empty policy")
        });
    Arc::new(policy)
}

/// `[cors]`: each origin spelled out (credentials are allowed, so never `*`).
fn cors(raw: RawCors, problems: &mut Problems) -> Vec<String> {
    for origin in &raw.allowed_origins.0 {
        if origin == "*" {
            problems.add(
                "cors.allowed_origins",
                "`*` is refused: list each origin (credentials are allowed)",
            );
        } else if !(origin.starts_with("https://") || origin.starts_with("http://"))
            || origin.ends_with('/')
            || http::HeaderValue::from_str(origin).is_err()
        {
            problems.add(
                "cors.allowed_origins",
                format!("`{origin}` is not an origin such as https://app.example.com"),
            );
        }
    }
    raw.allowed_origins.0
}

/// `[log]`.
fn log(raw: RawLog, problems: &mut Problems) -> LogConfig {
    let format = match raw.format.as_str() {
        "auto" => LogFormat::Auto,
        "json" => LogFormat::Json,
        "text" => LogFormat::Text,
        other => {
            problems.add(
                "log.format",
                format!("`{other}` is not one of auto, json, text"),
            );
            LogFormat::Auto
        }
    };
    if raw.level.trim().is_empty() {
        problems.add("log.level", "is empty");
    }
    LogConfig {
        level: raw.level,
        format,
        access: raw.access,
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(&Sources {
            file_path: None,
            file: Some(text.to_owned()),
            env,
            data_dir: Some(PathBuf::from("/nonexistent")),
        })
    }

    /// A file under the system's temporary directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(text: &str) -> Self {
            let path = std::env::temp_dir().join(format!("rampart-config-{}", ulid::Ulid::new()));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    #[test]
    fn the_data_directory_holds_the_default_database_unless_one_is_named() {
        let load_without_override = |text: &str| {
            Config::load(&Sources {
                file_path: None,
                file: Some(text.to_owned()),
                env: HashMap::new(),
                data_dir: None,
            })
            .unwrap()
        };
        let config = load_without_override("");
        assert_eq!(config.data_dir, PathBuf::from("data"));
        assert_eq!(config.database_url.expose(), "sqlite://data/rampart.db");
        let config = load_without_override("[server]\ndata_dir = \"/srv/rampart\"\n");
        assert_eq!(config.data_dir, PathBuf::from("/srv/rampart"));
        assert_eq!(
            config.database_url.expose(),
            "sqlite:///srv/rampart/rampart.db"
        );
        let config = load_without_override(
            "[server]\ndata_dir = \"/srv/rampart\"\n[database]\nurl = \"postgres://db/rampart\"\n",
        );
        assert_eq!(config.database_url.expose(), "postgres://db/rampart");
    }

    #[test]
    fn secrets_are_read_from_files_named_by_their_file_keys() {
        let secret = crate::secrets::generate_token_secret();
        let chain = crate::secrets::generate_token_secret();
        let (first, second) = (
            crate::secrets::generate_key_entry("k2"),
            crate::secrets::generate_key_entry("k1"),
        );
        let secret_file = TempFile::new(&format!("{secret}\n"));
        let chain_file = TempFile::new(&chain);
        let keys_file = TempFile::new(&format!("# the ring\n{first}\n\n{second}\r\n"));
        let text = format!(
            "[tokens]\nsecret_file = {:?}\n[audit]\nchain_key_file = {:?}\n\
             [encryption]\nkeys_file = {:?}\n",
            secret_file.0, chain_file.0, keys_file.0
        );
        let config = load(&text, &[]).unwrap();
        assert_eq!(config.tokens.secret.as_ref().unwrap().expose(), secret);
        assert_eq!(config.audit_chain_key.as_ref().unwrap().expose(), chain);
        let ring = config.keyring.unwrap();
        assert_eq!(ring.key_ids().collect::<Vec<_>>(), ["k2", "k1"]);
        assert_eq!(ring.primary_id(), "k2");
        // Also from the environment, as a container sets it.
        let path = secret_file.0.to_str().unwrap();
        let config = load("", &[("RAMPART_TOKENS__SECRET_FILE", path)]).unwrap();
        assert_eq!(config.tokens.secret.as_ref().unwrap().expose(), secret);
    }

    #[test]
    fn a_secret_given_twice_or_an_unreadable_file_is_refused_naming_the_key() {
        let secret = crate::secrets::generate_token_secret();
        let file = TempFile::new(&secret);
        let both = format!(
            "[tokens]\nsecret = {secret:?}\nsecret_file = {:?}\n",
            file.0
        );
        let error = load(&both, &[]).unwrap_err().to_string();
        assert!(
            error.contains("tokens.secret_file: give either tokens.secret"),
            "{error}"
        );
        assert!(
            !error.contains(&secret),
            "the secret is never shown: {error}"
        );
        let error = load("[encryption]\nkeys_file = \"/nonexistent/keys\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("encryption.keys_file: cannot read /nonexistent/keys"),
            "{error}"
        );
    }

    /// Every problem of `text` (as `/etc/rampart.toml`) and `env`, one per entry.
    fn problems(text: &str, env: &[(&str, &str)]) -> Vec<String> {
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(&Sources {
            file: Some(text.to_owned()),
            file_path: Some(PathBuf::from("/etc/rampart.toml")),
            env,
            data_dir: Some(PathBuf::from("/nonexistent")),
        })
        .map(|_| ())
        .unwrap_err()
        .problems
    }

    #[test]
    fn every_problem_in_a_file_is_reported_at_once_with_its_line() {
        let found = problems(
            "[server]\nlisten = \"nowhere\"\nlisen = 3\nbehind_tls = \"yes\"\n\
             [tokens]\naccess_ttl = \"soon\"\n[nonsense]\n",
            &[],
        );
        let expected = [
            "/etc/rampart.toml:2: server.listen: ",
            "/etc/rampart.toml:3: server.lisen: unknown key, expected one of",
            "/etc/rampart.toml:4: server.behind_tls: invalid type: string \"yes\"",
            "/etc/rampart.toml:6: tokens.access_ttl: `soon` is not a duration",
            "/etc/rampart.toml:7: nonsense: unknown key",
        ];
        assert_eq!(found.len(), expected.len(), "{found:#?}");
        for start in expected {
            assert!(
                found.iter().any(|problem| problem.starts_with(start)),
                "{start} missing from {found:#?}"
            );
        }
    }

    #[test]
    fn a_problem_set_by_the_environment_names_its_variable() {
        let found = problems(
            "[server]\nlisten = \"127.0.0.1:1\"\n",
            &[
                ("RAMPART_SERVER__LISTN", "127.0.0.1:2"),
                ("RAMPART_SERVER__LISTEN", "nowhere"),
                ("RAMPART_LOGIN__MAX_FAILURES_PER_IP", "many"),
            ],
        );
        for start in [
            "RAMPART_SERVER__LISTN: server.listn: unknown key",
            "RAMPART_SERVER__LISTEN: server.listen: ",
            "RAMPART_LOGIN__MAX_FAILURES_PER_IP: login.max_failures_per_ip: invalid type",
        ] {
            assert!(
                found.iter().any(|problem| problem.starts_with(start)),
                "{start} missing from {found:#?}"
            );
        }
        assert!(
            !found
                .iter()
                .any(|problem| problem.contains("rampart.toml:")),
            "the file's listen is overridden, not at fault: {found:#?}"
        );
    }

    #[test]
    fn unknown_keys_in_named_tables_and_route_entries_are_found_on_their_lines() {
        let found = problems(
            "[upstreams.orders]\nurl = \"http://127.0.0.1:9\"\ntimout = \"5s\"\n\
             \n[[routes]]\npath = \"/orders\"\nupstream = \"orders\"\n\
             \n[[routes]]\npath = \"/positions\"\nupsteam = \"orders\"\nupstream = \"orders\"\n",
            &[],
        );
        for start in [
            "/etc/rampart.toml:3: upstreams.orders.timout: unknown key",
            "/etc/rampart.toml:11: routes[1].upsteam: unknown key",
        ] {
            assert!(
                found.iter().any(|problem| problem.starts_with(start)),
                "{start} missing from {found:#?}"
            );
        }
        assert_eq!(found.len(), 2, "{found:#?}");
    }

    #[test]
    fn a_value_in_an_array_of_tables_is_found_on_its_own_line() {
        let found = problems(
            "[upstreams.orders]\nurl = \"http://127.0.0.1:9\"\n\
             [[routes]]\npath = \"/orders\"\nupstream = \"orders\"\n\
             [[routes]]\npath = \"/positions\"\nupstream = \"orders\"\n\
             per = \"team\"\nmax_body = \"lots\"\n\
             [[routes]]\npath = \"/funds\"\nupstream = \"nowhere\"\n",
            &[],
        );
        for start in [
            "/etc/rampart.toml:9: routes[1] (/positions).per: `team` is not one of",
            "/etc/rampart.toml:10: routes[1] (/positions).max_body: ",
            "/etc/rampart.toml:11: routes[2] (/funds): upstream `nowhere` is not defined",
        ] {
            assert!(
                found.iter().any(|problem| problem.starts_with(start)),
                "{start} missing from {found:#?}"
            );
        }
    }

    #[test]
    fn a_toml_syntax_error_names_its_line() {
        let found = problems("[server]\nlisten = \"127.0.0.1:1\"\nbroken =\n", &[]);
        assert!(found[0].starts_with("/etc/rampart.toml:3: "), "{found:#?}");
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
