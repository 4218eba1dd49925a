//! `[server]`: the listener, its limits and TLS, checked once. A room of its own rather
//! than part of [`crate::server`]: the listener drives the gateway and sits near the top
//! of the house, while configuration is gathered below the shared state that the gateway
//! reads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::settings::{List, Problems, parse_duration, parse_networks, parse_size};

/// The most connections `server.max_connections` may allow.
pub const MAX_CONNECTIONS: usize = 1_000_000;

/// `[server]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    /// `host:port` to listen on.
    pub listen: String,
    /// Networks of proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: List,
    /// TLS ends at a proxy in front.
    pub behind_tls: bool,
    /// Largest request body (a size such as `1MiB`).
    pub max_body: String,
    /// Runtime worker threads; 0: one per core.
    pub worker_threads: usize,
    /// `[server.tls]`: serve TLS directly.
    pub tls: Option<RawTls>,
    /// How long a request head may take to arrive (a duration).
    pub header_read_timeout: String,
    /// How long a keep-alive connection may sit without a request.
    pub idle_timeout: String,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections one client address may hold at once.
    pub max_connections_per_ip: usize,
    /// Largest request head (a size).
    pub max_header_bytes: String,
    /// How long a stopping server drains.
    pub shutdown_timeout: String,
    /// Where the embedded SQLite database and the generated secrets live.
    pub data_dir: PathBuf,
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
            data_dir: PathBuf::from("data"),
        }
    }
}

/// `[server.tls]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Oldest protocol version accepted: `1.2` or `1.3` (default).
    #[serde(default = "default_tls_version")]
    pub min_version: String,
}

fn default_tls_version() -> String {
    "1.3".into()
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

impl ServerConfig {
    /// Checks `[server]`, adding every problem to `problems`; in production, TLS here or at
    /// a proxy in front is required.
    pub fn from_raw(raw: RawServer, production: bool, problems: &mut Problems) -> Self {
        let listen = raw.listen.parse::<SocketAddr>().unwrap_or_else(|_| {
            problems.add(
                "server.listen",
                format!("`{}` is not an address such as 127.0.0.1:8080", raw.listen),
            );
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        let trusted_proxies = parse_networks(&raw.trusted_proxies.0).unwrap_or_else(|message| {
            problems.add("server.trusted_proxies", message);
            Vec::new()
        });
        let max_body = parse_size(&raw.max_body).unwrap_or_else(|message| {
            problems.add("server.max_body", message);
            0
        });
        let mut duration = |key: &str, text: &str, default: u64| {
            parse_duration(text).unwrap_or_else(|message| {
                problems.add(key, message);
                Duration::from_secs(default)
            })
        };
        let header_read_timeout =
            duration("server.header_read_timeout", &raw.header_read_timeout, 10);
        let idle_timeout = duration("server.idle_timeout", &raw.idle_timeout, 60);
        let shutdown_timeout = duration("server.shutdown_timeout", &raw.shutdown_timeout, 30);
        let max_header_bytes = parse_size(&raw.max_header_bytes).unwrap_or_else(|message| {
            problems.add("server.max_header_bytes", message);
            32 * 1024
        });
        if !(1024..=1024 * 1024).contains(&max_header_bytes) {
            problems.add("server.max_header_bytes", "must be between 1KiB and 1MiB");
        }
        for (key, value) in [
            ("server.max_connections", raw.max_connections),
            ("server.max_connections_per_ip", raw.max_connections_per_ip),
        ] {
            if value == 0 {
                problems.add(key, "must be at least 1");
            } else if value > MAX_CONNECTIONS {
                problems.add(key, format!("must be at most {MAX_CONNECTIONS}"));
            }
        }
        if raw.worker_threads > 1024 {
            problems.add("server.worker_threads", "must be at most 1024");
        }
        let tls = raw.tls.map(|tls| {
            if tls.min_version != "1.2" && tls.min_version != "1.3" {
                problems.add("server.tls.min_version", "must be \"1.2\" or \"1.3\"");
            }
            TlsConfig {
                cert: tls.cert,
                key: tls.key,
                min_version: tls.min_version,
            }
        });
        if production && !raw.behind_tls && tls.is_none() {
            problems.add(
                "server.behind_tls",
                "RAMPART_ENV=production needs server.tls or server.behind_tls = true",
            );
        }
        ServerConfig {
            listen,
            trusted_proxies,
            behind_tls: raw.behind_tls,
            max_body,
            worker_threads: raw.worker_threads,
            tls,
            header_read_timeout,
            idle_timeout,
            max_connections: raw.max_connections,
            max_connections_per_ip: raw.max_connections_per_ip,
            max_header_bytes,
            shutdown_timeout,
        }
    }
}
