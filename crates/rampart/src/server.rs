//! The listener: TLS termination, HTTP/1.1 and HTTP/2 (h2 by ALPN, h2c by prior
//! knowledge), and the limits that keep a client from holding a connection forever.
//!
//! It serves the gateway it is given and knows nothing of the pipeline inside it, except
//! that requests carry `ConnectInfo<SocketAddr>` with the peer's address.
//!
//! Every connection has one deadline at a time (see [`Activity::deadline`]):
//! - from accept, the TLS handshake and the first request head must be complete within
//!   `header_read_timeout`;
//! - once no request is in flight, the next one must begin within `idle_timeout`, and
//!   (HTTP/1.1) its head must be complete within `header_read_timeout` of its first byte;
//! - a write that finds the socket full for `idle_timeout` (a client that stopped
//!   reading) ends the connection.
//!
//! Every request (HTTP/2: every stream) also has deadlines of its own, so that one stalled
//! stream neither holds nor takes down its siblings:
//! - a request body that its handler waits on for `idle_timeout` without a byte arriving
//!   fails; the request is answered 408 (`invalid_request`, "Request timed out") unless
//!   its answer had begun;
//! - an HTTP/2 response the client does not take for `idle_timeout` (its flow-control
//!   window stays shut) ends that stream with RST_STREAM; when no stream is left in
//!   flight, the connection is closed too.
//!
//! While a request is in flight no other read deadline applies: the handler (and the
//! upstream's own timeout) decide. A body trickled a byte at a time within `idle_timeout`
//! is bounded only by `server.max_body`. HTTP/2 clients send frames such as WINDOW_UPDATE after a response,
//! so between streams an HTTP/2 connection is held to `idle_timeout` alone; HTTP/2 pings
//! find dead peers while streams are open.
//!
//! One client address holds at most `max_connections_per_ip` of them (IPv6: one
//! `rate_limits.ipv6_prefix` network; peers in `trusted_proxies` are exempt, since a proxy
//! carries many clients): a connection over that is closed as soon as it is accepted,
//! before a byte is read, so no request is cut off.
//!
//! At most `max_connections` connections are served at once: beyond, the listener stops
//! calling `accept`, so new connections wait in the kernel's backlog and none is cut off
//! mid-request. When the process runs out of descriptors, `accept` fails; the listener logs
//! it once, keeps serving the connections it has, and backs off instead of spinning.
//!
//! Request heads over `max_header_bytes` are refused with 431 and the JSON error body.
//! The size is the head as HTTP/1.1 writes it: request line, `name: value` lines and the
//! blank line (HTTP/2 likewise, with `:authority` counted once). The HTTP parser itself
//! buffers at most [`parser_limit`] (`max_header_bytes` + 16 KiB), so an absurd head is
//! cut off there with the parser's own bare 431 and never held in memory. Two more cases
//! get hyper's bare 431 (no JSON body): an HTTP/1.1 head with more than
//! [`MAX_HEADER_FIELDS`] fields, and a request target over 64 KiB.
//!
//! Memory per connection, at worst: HTTP/1.1 holds its read buffer (`max_header_bytes` +
//! 16 KiB) and the response being written; HTTP/2 holds the header block being decoded
//! (at most the same), request data the client sent and no handler read yet (at most the
//! 1 MiB connection window, 256 KiB per stream) and, per open stream (at most 100),
//! 64 KiB of response queued beyond the client's window, so about 7.5 MiB; TLS adds about
//! 34 KiB of record buffers. `max_connections` times that bounds the listener's share.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::gateway::Gateway;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use http::{HeaderValue, Request, Response, Version, header};
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::server_config::{ServerConfig, TlsConfig};

use crate::error::{ApiError, REQUEST_ID};
use crate::metrics::{RequestLabels, method_label};
use crate::shutdown::Stopping;
use crate::state::AppState;

/// The listener's limits, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request head not complete by then: the connection is closed.
    pub header_read_timeout: Duration,
    /// No request on a kept-alive connection for this long: closed.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections one client address (IPv6: network) may hold at once.
    pub max_connections_per_ip: usize,
    /// Largest request head answered; 431 beyond.
    pub max_header_bytes: usize,
    /// How long a stopping server drains before it closes what is left.
    pub shutdown_timeout: Duration,
}

impl Limits {
    /// The limits of a `[server]` section.
    pub fn new(server: &ServerConfig) -> Self {
        Self {
            header_read_timeout: server.header_read_timeout,
            idle_timeout: server.idle_timeout,
            max_connections: server.max_connections.max(1),
            max_connections_per_ip: server.max_connections_per_ip.max(1),
            max_header_bytes: server.max_header_bytes,
            shutdown_timeout: server.shutdown_timeout,
        }
    }
}

/// What the HTTP parser buffers of a request head at most: past this it answers a bare 431
/// and closes, before Rampart sees the request.
pub fn parser_limit(max_header_bytes: usize) -> usize {
    max_header_bytes.saturating_add(16 * 1024)
}

/// Header fields an HTTP/1.1 request may have: past this hyper answers a bare 431. This is
/// hyper's own default, parsed into a buffer on the stack: any other cap costs a heap buffer
/// of that many entries on every request head parsed (measured: a tenth more CPU per
/// proxied request).
pub const MAX_HEADER_FIELDS: usize = 100;

/// What one HTTP/2 stream's response may have queued beyond its flow-control window.
const MAX_SEND_BUFFER: usize = 64 * 1024;
/// HTTP/2 flow-control windows Rampart grants: what a client may have sent and not yet
/// read by its handler, per stream and per connection.
const STREAM_WINDOW: u32 = 256 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Streams one HTTP/2 connection may have open at once.
const MAX_STREAMS: u32 = 100;

// ---------------------------------------------------------------------------------------
// TLS

/// TLS termination with a certificate that can be replaced while running.
pub struct Tls {
    acceptor: tokio_rustls::TlsAcceptor,
    certificate: Arc<CurrentCertificate>,
    provider: Arc<CryptoProvider>,
    cert: PathBuf,
    key: PathBuf,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.0.read().unwrap_or_else(PoisonError::into_inner),
        ))
    }
}

impl Tls {
    /// Loads the certificate chain and key of `server.tls` and builds the TLS settings:
    /// TLS 1.3 (and 1.2 when `min_version = "1.2"`), ALPN `h2` then `http/1.1`.
    ///
    /// # Errors
    /// A file cannot be read or parsed, holds no certificate, or the key does not match
    /// the certificate.
    pub fn new(config: &TlsConfig) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = load(config, &provider)?;
        let certificate = Arc::new(CurrentCertificate(RwLock::new(Arc::new(certified))));
        let versions: &[&rustls::SupportedProtocolVersion] = if config.min_version == "1.2" {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let mut settings = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(versions)
            .map_err(|error| anyhow::anyhow!("server.tls: {error}"))?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        settings.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(settings)),
            certificate,
            provider,
            cert: config.cert.clone(),
            key: config.key.clone(),
        })
    }

    /// Reads the certificate and key files again and serves them to new handshakes.
    /// Connections already open keep theirs.
    ///
    /// # Errors
    /// The new files are unusable (the reason names the file); the certificate in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = TlsConfig {
            cert: self.cert.clone(),
            key: self.key.clone(),
            min_version: String::new(),
        };
        let certified = load(&config, &self.provider)?;
        *self
            .certificate
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(certified);
        Ok(())
    }
}

fn load(config: &TlsConfig, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let cert = config.cert.display();
    let key = config.key.display();
    let chain = CertificateDer::pem_file_iter(&config.cert)
        .and_then(|certificates| certificates.collect::<Result<Vec<_>, _>>())
        .map_err(|error| anyhow::anyhow!("server.tls.cert ({cert}): {error}"))?;
    if chain.is_empty() {
        anyhow::bail!("server.tls.cert ({cert}): no PEM certificate in the file");
    }
    let private_key = PrivateKeyDer::from_pem_file(&config.key)
        .map_err(|error| anyhow::anyhow!("server.tls.key ({key}): {error}"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
        });
    for warning in certificate_warnings(&chain, key_mode(&config.key), now) {
        tracing::warn!(cert = %cert, key = %key, "{warning}");
    }
    CertifiedKey::from_der(chain, private_key, provider).map_err(|error| {
        anyhow::anyhow!(
            "server.tls: the key ({key}) and the certificate ({cert}) do not go together: {error}"
        )
    })
}

/// Handles SIGHUP for the life of the process (without a handler, SIGHUP would end it):
/// reloads the TLS certificate when `server.tls` is set (a bad new file is refused with the
/// reason logged and the previous certificate kept) and says what a restart is needed for.
pub async fn reload_on_hangup(hangups: Hangups, tls: Option<Arc<Tls>>) {
    #[cfg(unix)]
    {
        {
            let mut hangups = match hangups.0 {
                Ok(hangups) => hangups,
                Err(error) => {
                    tracing::warn!(error = %error, "SIGHUP cannot be watched; TLS reload is off");
                    return;
                }
            };
            reload_loop(&mut hangups, tls).await;
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (hangups, tls);
    }
}

/// SIGHUP, watched from the moment the gateway is built: from then on it never takes its
/// default action (ending the process), and none sent after start-up is missed.
#[derive(Debug)]
pub struct Hangups(#[cfg(unix)] io::Result<tokio::signal::unix::Signal>);

impl Hangups {
    /// Starts watching SIGHUP (needs the Tokio runtime).
    pub fn watch() -> Self {
        Self(
            #[cfg(unix)]
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()),
        )
    }
}

#[cfg(unix)]
async fn reload_loop(hangups: &mut tokio::signal::unix::Signal, tls: Option<Arc<Tls>>) {
    {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP received");
            match &tls {
                Some(tls) => {
                    // Files are read off the runtime's workers.
                    let reloading = Arc::clone(tls);
                    match tokio::task::spawn_blocking(move || reloading.reload()).await {
                        Ok(Ok(())) => {
                            tracing::info!(cert = %tls.cert.display(), "TLS certificate reloaded");
                        }
                        Ok(Err(error)) => tracing::error!(
                            error = %error,
                            "TLS certificate not reloaded; the previous one stays in use"
                        ),
                        Err(error) => tracing::error!(
                            error = %error,
                            "TLS certificate not reloaded; the previous one stays in use"
                        ),
                    }
                }
                None => tracing::info!("no server.tls: no certificate to reload"),
            }
            tracing::warn!(
                "SIGHUP reloads only the TLS certificate: changes to routes, upstreams, roles, \
                 tiers and every other setting need a restart"
            );
        }
    }
}

/// What an operator should hear about a certificate and key that load: a certificate
/// outside its validity period, a key file others can read.
fn certificate_warnings(
    chain: &[CertificateDer<'_>],
    key_mode: Option<u32>,
    now: i64,
) -> Vec<&'static str> {
    let mut warnings = Vec::new();
    if let Some(first) = chain.first()
        && let Ok((_, certificate)) = x509_parser::parse_x509_certificate(first.as_ref())
    {
        let validity = certificate.validity();
        if validity.not_after.timestamp() < now {
            warnings.push("the TLS certificate has expired");
        } else if validity.not_before.timestamp() > now {
            warnings.push("the TLS certificate is not valid yet");
        }
    }
    if key_mode.is_some_and(|mode| mode & 0o077 != 0) {
        warnings.push("the TLS key file can be read by other users than its owner (chmod 600)");
    }
    warnings
}

#[cfg(unix)]
fn key_mode(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .ok()
        .map(|metadata| metadata.permissions().mode())
}

#[cfg(not(unix))]
fn key_mode(_path: &std::path::Path) -> Option<u32> {
    None
}

// ---------------------------------------------------------------------------------------
// The descriptor budget

/// Raises the process's soft limit on open files to its hard limit, and warns when
/// `max_connections` plus `reserve` (database and upstream pools, logs, the listener)
/// does not fit under it: past it `accept` fails with EMFILE and the listener backs off.
/// Returns the limit in force, if known.
pub fn descriptor_budget(max_connections: usize, reserve: u64) -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let needed = u64::try_from(max_connections)
                .unwrap_or(u64::MAX)
                .saturating_add(reserve);
            if needed > limit {
                tracing::warn!(
                    open_files = limit,
                    needed,
                    "server.max_connections plus the descriptors Rampart needs besides exceed \
                     the open-file limit (ulimit -n): lower max_connections or raise the limit"
                );
            } else {
                tracing::debug!(open_files = limit, needed, "open-file limit");
            }
            Some(limit)
        }
        Err(error) => {
            tracing::warn!(error = %error, "the open-file limit cannot be read or raised");
            None
        }
    }
}

/// Descriptors Rampart uses besides client connections: its database pool, upstream
/// connection pools (256 idle per upstream at most) and 64 for logs, the listener, DNS
/// and the like.
pub fn descriptor_reserve(database_pool: u32, upstreams: usize) -> u64 {
    u64::from(database_pool)
        .saturating_add(
            u64::try_from(upstreams)
                .unwrap_or(u64::MAX)
                .saturating_mul(256),
        )
        .saturating_add(64)
}

// ---------------------------------------------------------------------------------------
// The accept loop

/// Serves `gateway` on `listener` until `shutdown` completes, then: `/readyz` fails while
/// the listener still accepts for [`drain_delay`] (HTTP/1.1 answers carry
/// `Connection: close`, HTTP/2 connections get GOAWAY), the listener closes, open
/// connections finish what they are serving (HTTP/1.1 with
/// `Connection: close`, HTTP/2 with GOAWAY), and whatever is still open after
/// `shutdown_timeout` is closed.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    gateway: Gateway,
    tls: Option<Arc<Tls>>,
    limits: Limits,
    stopping: Stopping,
    shutdown: impl Future<Output = ()>,
) {
    let builder = Arc::new(http_builder(&limits));
    let (stop, stopped) = watch::channel(Phase::Serving);
    let mut connections = JoinSet::new();
    let shared = Arc::new(Shared {
        state,
        gateway,
        tls,
        limits,
        builder,
        stopping: stopping.clone(),
        per_client: Arc::default(),
    });
    let delay = drain_delay(limits.shutdown_timeout);
    {
        let mut accepting = pin!(accept_loop(&listener, &shared, &stopped, &mut connections));
        let mut accepting_ended = false;
        tokio::select! {
            () = shutdown => {}
            () = accepting.as_mut() => accepting_ended = true,
        }
        // First fail /readyz while still accepting, so that load balancers see the
        // instance go unready (503) rather than refuse connections.
        stopping.begin();
        let _ = stop.send(Phase::Draining);
        tracing::info!(
            connections = connections_len(&shared),
            drain_delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            "shutting down: /readyz fails, still accepting for the drain delay"
        );
        if !accepting_ended {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = accepting.as_mut() => {}
            }
        }
    }
    drop(listener);
    tracing::info!(
        connections = connections.len(),
        "shutting down: stopped accepting, draining open connections"
    );
    let _ = stop.send(Phase::Closing);
    let drained = tokio::time::timeout(limits.shutdown_timeout.saturating_sub(delay), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "server.shutdown_timeout reached: closing the connections still open"
        );
        connections.shutdown().await;
    }
}

/// How long a stopping server keeps accepting (with `/readyz` failing) before it closes
/// its listener: a third of `shutdown_timeout`, at most 5 s.
pub fn drain_delay(shutdown_timeout: Duration) -> Duration {
    (shutdown_timeout / 3).min(Duration::from_secs(5))
}

/// Connections open: each holds the shared state once.
fn connections_len(shared: &Arc<Shared>) -> usize {
    Arc::strong_count(shared).saturating_sub(1)
}

/// Where the server is in its life, for its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    /// `/readyz` fails; HTTP/1.1 answers carry `Connection: close`, HTTP/2 gets GOAWAY.
    Draining,
    /// The listener is closed: every connection finishes what it serves and closes.
    Closing,
}

/// Connections open per client address, for `server.max_connections_per_ip`.
#[derive(Debug, Default)]
struct PerClient(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl PerClient {
    /// A place for one more connection from `key`, unless it holds `cap` already.
    fn admit(self: &Arc<Self>, key: std::net::IpAddr, cap: usize) -> Option<ClientSlot> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= cap {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            clients: Arc::clone(self),
            key,
        })
    }
}

/// One connection's place in [`PerClient`], given back when it closes.
struct ClientSlot {
    clients: Arc<PerClient>,
    key: std::net::IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .clients
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

struct Shared {
    per_client: Arc<PerClient>,
    stopping: Stopping,
    state: AppState,
    gateway: Gateway,
    tls: Option<Arc<Tls>>,
    limits: Limits,
    builder: Arc<auto::Builder<StreamExecutor>>,
}

fn http_builder(limits: &Limits) -> auto::Builder<StreamExecutor> {
    let parser_limit = parser_limit(limits.max_header_bytes);
    let mut builder = auto::Builder::new(StreamExecutor {
        idle_timeout: limits.idle_timeout,
    });
    builder
        .http1()
        .timer(TokioTimer::new())
        // Rampart keeps its own deadlines: hyper's would also cut idle keep-alives.
        .header_read_timeout(None)
        .keep_alive(true)
        .max_buf_size(parser_limit.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(parser_limit).unwrap_or(u32::MAX))
        .max_concurrent_streams(MAX_STREAMS)
        .max_pending_accept_reset_streams(20)
        .max_send_buf_size(MAX_SEND_BUFFER)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .keep_alive_interval(Some(limits.idle_timeout.min(Duration::from_secs(20))))
        // A ping queued behind data on a slow link must not cut a download that the
        // write deadline (idle_timeout) would let finish.
        .keep_alive_timeout(limits.idle_timeout.max(Duration::from_secs(20)));
    builder
}

/// Accepts for ever (the caller stops it), at most `max_connections` at once.
async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    stopped: &watch::Receiver<Phase>,
    connections: &mut JoinSet<()>,
) {
    let permits = Arc::new(Semaphore::new(shared.limits.max_connections));
    let mut backoff = Duration::ZERO;
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, peer)) => {
                if !backoff.is_zero() {
                    tracing::info!("accepting connections again");
                    backoff = Duration::ZERO;
                }
                let slot = match client_slot(shared, peer) {
                    Ok(slot) => slot,
                    Err(key) => {
                        // Closed before a byte is read: never mid-request.
                        tracing::debug!(
                            client = %key,
                            "server.max_connections_per_ip reached: connection closed"
                        );
                        drop(stream);
                        continue;
                    }
                };
                while connections.try_join_next().is_some() {}
                connections.spawn(connection(
                    stream,
                    peer,
                    Arc::clone(shared),
                    stopped.clone(),
                    (permit, slot),
                ));
            }
            Err(error) if !is_exhaustion(&error) => {
                // ECONNABORTED, EPROTO, ENETUNREACH, ...: that connection failed, the
                // listener is fine. Take the next one (after letting others run).
                tracing::debug!(error = %error, "a connection failed before it was accepted");
                drop(permit);
                tokio::task::yield_now().await;
            }
            Err(error) => {
                // Out of descriptors (EMFILE/ENFILE) or memory: the pending connection
                // stays in the backlog. Keep serving what is open and try again shortly.
                if backoff.is_zero() {
                    tracing::error!(
                        error = %error,
                        connections = shared.limits.max_connections - permits.available_permits(),
                        "cannot accept connections; serving the open ones and retrying"
                    );
                    backoff = Duration::from_millis(20);
                } else {
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                drop(permit);
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// A place for a connection from `peer`, or the key it is counted under when that holds
/// `max_connections_per_ip` already. Trusted proxies carry many clients: not counted.
fn client_slot(
    shared: &Arc<Shared>,
    peer: SocketAddr,
) -> Result<Option<ClientSlot>, std::net::IpAddr> {
    let ip = peer.ip().to_canonical();
    let config = &shared.state.config;
    if config
        .server
        .trusted_proxies
        .iter()
        .any(|network| network.contains(&ip))
    {
        return Ok(None);
    }
    let key = crate::client_ip::bucket(ip, config.rate_limits.ipv6_prefix);
    shared
        .per_client
        .admit(key, shared.limits.max_connections_per_ip)
        .map(Some)
        .ok_or(key)
}

/// Whether `accept` failed for want of descriptors (EMFILE, ENFILE), buffers (ENOBUFS) or
/// memory (ENOMEM): then the listener backs off. Every other error concerns the one
/// connection being accepted.
fn is_exhaustion(error: &io::Error) -> bool {
    #[cfg(any(target_os = "macos", target_os = "ios", target_os = "freebsd"))]
    const CODES: [i32; 4] = [24, 23, 55, 12];
    #[cfg(not(any(target_os = "macos", target_os = "ios", target_os = "freebsd")))]
    const CODES: [i32; 4] = [24, 23, 105, 12];
    error.kind() == io::ErrorKind::OutOfMemory
        || error
            .raw_os_error()
            .is_some_and(|code| CODES.contains(&code))
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<Phase>,
    _places: (OwnedSemaphorePermit, Option<ClientSlot>),
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = Tracked {
        inner: stream,
        activity: Arc::clone(&activity),
    };
    let Some(tls) = shared.tls.clone() else {
        return serve_http(io, peer, &shared, activity, stopped).await;
    };
    let handshake = tokio::time::timeout_at(
        activity
            .started
            .checked_add(shared.limits.header_read_timeout)
            .unwrap_or_else(far_future),
        tls.acceptor.accept(io),
    );
    let stream = tokio::select! {
        result = handshake => match result {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(client = %peer.ip(), error = %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(client = %peer.ip(), "TLS handshake not complete in time");
                return;
            }
        },
        () = stop_requested(&mut stopped) => return,
    };
    serve_http(stream, peer, &shared, activity, stopped).await;
}

async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    activity: Arc<Activity>,
    mut stopped: watch::Receiver<Phase>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let shared = Arc::clone(shared);
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let http2 = request.version() == Version::HTTP_2;
            let guard = activity.begin(http2);
            let stream = Arc::new(StreamClock::new(Arc::clone(&activity)));
            if http2 {
                // hyper spawns this stream's task right after this call, on this thread.
                NEXT_STREAM.with(|next| *next.borrow_mut() = Some(Arc::clone(&stream)));
            }
            let size = head_size(&request);
            let refusal = (size > shared.limits.max_header_bytes)
                .then(|| headers_too_large(&shared.state, &request, size, peer));
            let gateway = shared.gateway.clone();
            let idle_timeout = shared.limits.idle_timeout;
            let stopping = shared.stopping.clone();
            async move {
                let response = match refusal {
                    Some(response) => response,
                    None => {
                        let version = request.version();
                        let mut request = request.map(|body| {
                            Body::new(Watched {
                                body,
                                stream: Arc::clone(&stream),
                                idle_timeout,
                                timer: None,
                                waiting: false,
                                timed_out: false,
                            })
                        });
                        request.extensions_mut().insert(ConnectInfo(peer));
                        let response = gateway.handle(request).await;
                        let mut response = if stream.body_timed_out.load(Ordering::Acquire) {
                            request_timed_out(response, version)
                        } else {
                            response
                        };
                        if version < Version::HTTP_2 && stopping.is_stopping() {
                            response
                                .headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        response
                    }
                };
                stream.waiting_on_client();
                Ok::<_, Infallible>(response.map(|body| Counted {
                    body,
                    stream,
                    _guard: guard,
                }))
            }
        })
    };
    let limits = shared.limits;
    let mut connection = pin!(
        shared
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
    );
    let mut timer = pin!(tokio::time::sleep_until(activity.started));
    let mut draining = false;
    let mut armed = None;
    loop {
        // While requests are in flight there is no read deadline; the timer still looks
        // again `idle_timeout` on, so that the end of a request needs no wake-up.
        // A head may also begin without waking this loop: looking again within
        // `header_read_timeout` keeps its deadline exact.
        let now = Duration::from_millis(activity.now());
        let deadline = Some(
            activity
                .deadline(&limits)
                .unwrap_or_else(|| now.saturating_add(limits.idle_timeout))
                .min(now.saturating_add(limits.header_read_timeout)),
        );
        if deadline != armed {
            if let Some(at) = deadline {
                timer
                    .as_mut()
                    .reset(activity.started.checked_add(at).unwrap_or_else(far_future));
            }
            armed = deadline;
        }
        tokio::select! {
            biased;
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(client = %peer.ip(), error = %error, "connection ended");
                }
                return;
            }
            changed = stopped.changed(), if !draining => {
                let phase = if changed.is_ok() { *stopped.borrow_and_update() } else { Phase::Closing };
                // HTTP/1.1 answers carry `Connection: close` from Draining on (see the
                // service); HTTP/2 gets its GOAWAY now.
                if phase == Phase::Closing
                    || (phase == Phase::Draining && activity.http2.load(Ordering::Relaxed))
                {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = activity.changed.notified() => {}
            () = timer.as_mut(), if deadline.is_some() => {
                let Some(expired) = activity.expired(&limits) else {
                    // The deadline moved: arm the timer afresh.
                    armed = None;
                    continue;
                };
                tracing::debug!(client = %peer.ip(), reason = expired.as_str(), "closing connection");
                if let Expired::Idle = expired {
                    // Nothing in flight: say goodbye properly (HTTP/2 GOAWAY).
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection.as_mut()).await;
                }
                return;
            }
        }
    }
}

/// Completes once shutdown begins (or the server is gone).
async fn stop_requested(stopped: &mut watch::Receiver<Phase>) {
    let _ = stopped
        .wait_for(|phase| *phase == Phase::Closing)
        .await
        .map(|_| ());
}

/// The size of a request head as HTTP/1.1 writes it.
fn head_size<B>(request: &Request<B>) -> usize {
    let uri = request.uri();
    let target = uri
        .path_and_query()
        .map_or(1, |target| target.as_str().len())
        + uri
            .authority()
            .map_or(0, |authority| authority.as_str().len());
    // "METHOD target HTTP/1.1\r\n" and the final "\r\n".
    let line = request.method().as_str().len() + 1 + target + 11;
    request
        .headers()
        .iter()
        .fold(line + 2, |size, (name, value)| {
            size + name.as_str().len() + 2 + value.len() + 2
        })
}

/// The 431 answer, made here because the head never reaches the gateway: the same JSON
/// body, request id and security headers as every other refusal, one access-log line and
/// the request counter.
fn headers_too_large<B>(
    state: &AppState,
    request: &Request<B>,
    size: usize,
    peer: SocketAddr,
) -> Response<Body> {
    let id_header = request
        .headers()
        .get("x-request-id")
        .filter(|value| value.to_str().is_ok_and(crate::request::is_well_formed_id))
        .cloned()
        .or_else(|| {
            let mut buffer = [0u8; ulid::ULID_LEN];
            HeaderValue::from_str(ulid::Ulid::new().array_to_str(&mut buffer)).ok()
        });
    let id: Arc<str> = Arc::from(
        id_header
            .as_ref()
            .and_then(|value| value.to_str().ok())
            .unwrap_or("-"),
    );
    let mut response = REQUEST_ID.sync_scope(Arc::clone(&id), || {
        ApiError::HeadersTooLarge.into_response()
    });
    let headers = response.headers_mut();
    if let Some(value) = id_header {
        headers.insert("x-request-id", value);
    }
    state.security_headers.decorate(
        headers,
        crate::security_headers::is_private(request.uri().path()),
    );
    if request.version() < Version::HTTP_2 {
        // The rest of what this client sends cannot be trusted to be framed as it thinks.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let method = method_label(request.method());
    state
        .metrics
        .http_requests
        .get_or_create(&RequestLabels {
            route: "unmatched",
            method,
            status: 431,
        })
        .inc();
    let client = crate::client_ip::resolve(
        peer,
        request.headers(),
        &state.config.server.trusted_proxies,
    );
    tracing::debug!(client = %client, head_bytes = size, "request head too large");
    if state.config.log.access
        && let Some(sink) = crate::gateway::access_log::sink()
    {
        // The path as sent: the head was never read far enough to put it in canonical form.
        let entry = crate::gateway::access_log::Entry {
            request_id: &id,
            client,
            method: request.method().as_str(),
            path: request.uri().path(),
            route: "unmatched",
            status: 431,
            bytes: hyper::body::Body::size_hint(response.body()).exact(),
            duration: std::time::Duration::ZERO,
            upstream: None,
            user_id: None,
            key_id: None,
            user_agent: request
                .headers()
                .get(header::USER_AGENT)
                .map(HeaderValue::as_bytes),
        };
        sink.send(entry.line(sink.json(), std::time::SystemTime::now()));
    }
    response
}

// ---------------------------------------------------------------------------------------
// Per-connection deadlines

/// What a connection is doing, for its deadline. Times are milliseconds after `started`.
#[derive(Debug)]
struct Activity {
    started: Instant,
    /// Requests being served (HTTP/2: open streams).
    in_flight: AtomicUsize,
    /// Whether any request head was ever complete.
    served: AtomicBool,
    http2: AtomicBool,
    /// Since when no request has been in flight.
    idle_since: AtomicU64,
    /// When the first byte arrived since the connection went idle, plus one; 0 for none.
    head_since: AtomicU64,
    /// When a write found the socket full, plus one; 0 while writes go through.
    write_blocked_since: AtomicU64,
    /// An HTTP/2 stream was ended because the client did not take its response, and none
    /// is left in flight: the connection is closed.
    stalled: AtomicBool,
    /// Wakes the connection's watchdog when its deadline may have moved earlier.
    changed: Notify,
}

#[derive(Debug, Clone, Copy)]
enum Expired {
    /// No request for `idle_timeout`.
    Idle,
    /// A head (or the TLS handshake and first head) not complete in time.
    Head,
    /// The client stopped reading.
    Write,
    /// Every stream in flight was ended because the client did not take its response.
    Stalled,
}

impl Expired {
    fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle_timeout",
            Self::Head => "header_read_timeout",
            Self::Write => "client stopped reading (idle_timeout)",
            Self::Stalled => "client stopped taking its responses (idle_timeout)",
        }
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
    }

    /// A request head is complete; the guard ends it when its response is done.
    fn begin(self: &Arc<Self>, http2: bool) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Release);
        }
        if http2 && !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Release);
        }
        InFlight(Arc::clone(self))
    }

    fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == 0
            && self.served.load(Ordering::Relaxed)
        {
            // No wake-up (it would cost every keep-alive request one): the watchdog looks
            // again within `header_read_timeout` of arming, so this deadline still holds.
            self.head_since.store(self.now() + 1, Ordering::Release);
        }
    }

    fn on_write(&self, blocked: bool) {
        self.mark(&self.write_blocked_since, blocked);
    }

    /// Starts (or clears) a "since" clock.
    fn mark(&self, clock: &AtomicU64, stuck: bool) {
        let since = clock.load(Ordering::Relaxed);
        if stuck && since == 0 {
            clock.store(self.now() + 1, Ordering::Relaxed);
            self.changed.notify_one();
        } else if !stuck && since != 0 {
            clock.store(0, Ordering::Relaxed);
        }
    }

    /// The time the connection is closed at unless something happens, and why.
    fn next(&self, limits: &Limits) -> Option<(u64, Expired)> {
        let millis =
            |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX / 4);
        let read = if self.in_flight.load(Ordering::Acquire) > 0 {
            None
        } else if self.stalled.load(Ordering::Acquire) {
            Some((0, Expired::Stalled))
        } else if !self.served.load(Ordering::Acquire) {
            Some((millis(limits.header_read_timeout), Expired::Head))
        } else {
            match self.head_since.load(Ordering::Acquire) {
                since if since != 0 && !self.http2.load(Ordering::Relaxed) => Some((
                    (since - 1).saturating_add(millis(limits.header_read_timeout)),
                    Expired::Head,
                )),
                _ => Some((
                    self.idle_since
                        .load(Ordering::Acquire)
                        .saturating_add(millis(limits.idle_timeout)),
                    Expired::Idle,
                )),
            }
        };
        let stalled = |clock: &AtomicU64, why: Expired| match clock.load(Ordering::Relaxed) {
            0 => None,
            since => Some(((since - 1).saturating_add(millis(limits.idle_timeout)), why)),
        };
        match (read, stalled(&self.write_blocked_since, Expired::Write)) {
            (Some(read), Some(write)) => Some(if write.0 < read.0 { write } else { read }),
            (read, write) => read.or(write),
        }
    }

    fn deadline(&self, limits: &Limits) -> Option<Duration> {
        self.next(limits).map(|(at, _)| Duration::from_millis(at))
    }

    fn expired(&self, limits: &Limits) -> Option<Expired> {
        self.next(limits)
            .filter(|(at, _)| *at <= self.now())
            .map(|(_, why)| why)
    }
}

/// A request in flight; dropped with its response body.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // No wake-up: while requests are in flight the watchdog's timer stays armed
            // `idle_timeout` ahead, never later than the idle deadline this starts.
            activity.idle_since.store(activity.now(), Ordering::Release);
        }
    }
}

/// A response body that holds its request's place until it is sent (or dropped).
struct Counted {
    body: Body,
    stream: Arc<StreamClock>,
    _guard: InFlight,
}

impl HttpBody for Counted {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let result = Pin::new(&mut self.body).poll_frame(cx);
        match &result {
            // The frame is out; the next poll waits on the client's flow-control window.
            Poll::Ready(Some(Ok(_))) => self.stream.waiting_on_client(),
            // Waiting on the handler or upstream, or done: not the client's doing.
            _ => self.stream.not_waiting(),
        }
        result
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body with its own deadline: when its handler has waited `idle_timeout` for
/// bytes the client does not send, reading it fails (and the request is answered 408 if
/// nothing was sent yet). Other requests on the connection are not affected.
struct Watched {
    body: Incoming,
    stream: Arc<StreamClock>,
    idle_timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the last poll found no bytes (the timer runs since then).
    waiting: bool,
    timed_out: bool,
}

/// The error a stalled request body fails with.
#[derive(Debug, thiserror::Error)]
#[error("the request body stopped arriving (server.idle_timeout)")]
pub struct BodyTimedOut;

impl HttpBody for Watched {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.timed_out {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Pending => {
                let idle_timeout = self.idle_timeout;
                let fresh = !std::mem::replace(&mut self.waiting, true);
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle_timeout)));
                if fresh {
                    timer.as_mut().reset(
                        Instant::now()
                            .checked_add(idle_timeout)
                            .unwrap_or_else(far_future),
                    );
                }
                if timer.as_mut().poll(cx).is_ready() {
                    self.timed_out = true;
                    self.stream.body_timed_out.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
                }
                Poll::Pending
            }
            Poll::Ready(result) => {
                self.waiting = false;
                Poll::Ready(result.map(|frame| frame.map_err(axum::BoxError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// The 408 that replaces the handler's answer when the request body stopped arriving.
fn request_timed_out(response: Response<Body>, version: Version) -> Response<Body> {
    let id: Arc<str> = Arc::from(
        response
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("-"),
    );
    let (mut parts, _) = response.into_parts();
    let fresh = REQUEST_ID.sync_scope(id, || ApiError::RequestTimedOut.into_response());
    let (fresh_parts, body) = fresh.into_parts();
    parts.status = fresh_parts.status;
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        parts.headers.remove(&name);
        if let Some(value) = fresh_parts.headers.get(&name) {
            parts.headers.insert(name, value.clone());
        }
    }
    parts.headers.remove(header::TRANSFER_ENCODING);
    if version < Version::HTTP_2 {
        // The rest of the body may still come: the connection cannot be reused.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Response::from_parts(parts, body)
}

// ---------------------------------------------------------------------------------------
// Per-stream deadlines (HTTP/2)

/// One request's clock: whether its response waits on the client, and whether its body
/// timed out.
#[derive(Debug)]
struct StreamClock {
    activity: Arc<Activity>,
    /// Since when the response body waits for the client to take what was sent (its
    /// flow-control window), plus one; 0 while it does not.
    waiting_since: AtomicU64,
    body_timed_out: AtomicBool,
}

impl StreamClock {
    fn new(activity: Arc<Activity>) -> Self {
        Self {
            activity,
            waiting_since: AtomicU64::new(0),
            body_timed_out: AtomicBool::new(false),
        }
    }

    fn waiting_on_client(&self) {
        self.waiting_since
            .store(self.activity.now() + 1, Ordering::Relaxed);
    }

    fn not_waiting(&self) {
        if self.waiting_since.load(Ordering::Relaxed) != 0 {
            self.waiting_since.store(0, Ordering::Relaxed);
        }
    }

    /// When the stream is ended unless the client takes more of its response.
    fn deadline(&self, idle_timeout: Duration) -> Instant {
        match self.waiting_since.load(Ordering::Relaxed) {
            0 => Instant::now()
                .checked_add(idle_timeout)
                .unwrap_or_else(far_future),
            since => self
                .activity
                .started
                .checked_add(Duration::from_millis(since - 1))
                .and_then(|at| at.checked_add(idle_timeout))
                .unwrap_or_else(far_future),
        }
    }
}

thread_local! {
    /// The stream hyper is about to spawn (set by the service, taken by the executor).
    static NEXT_STREAM: std::cell::RefCell<Option<Arc<StreamClock>>> =
        const { std::cell::RefCell::new(None) };
}

/// Spawns each HTTP/2 stream with its idle deadline: a response the client does not take
/// (its flow-control window stays shut) for `idle_timeout` ends that stream with
/// RST_STREAM, as Envoy's `stream_idle_timeout` does.
#[derive(Debug, Clone, Copy)]
pub struct StreamExecutor {
    idle_timeout: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        let Some(stream) = NEXT_STREAM.with(|next| next.borrow_mut().take()) else {
            tokio::spawn(future);
            return;
        };
        let idle_timeout = self.idle_timeout;
        tokio::spawn(async move {
            let cut = {
                let mut future = pin!(future);
                let mut timer = pin!(tokio::time::sleep(idle_timeout));
                loop {
                    tokio::select! {
                        biased;
                        () = future.as_mut() => break false,
                        () = timer.as_mut() => {
                            let at = stream.deadline(idle_timeout);
                            if at <= Instant::now() {
                                break true;
                            }
                            timer.as_mut().reset(at);
                        }
                    }
                }
            };
            // The stream's future is dropped: h2 resets the stream (CANCEL).
            if cut {
                let activity = &stream.activity;
                tracing::debug!(reason = Expired::Stalled.as_str(), "ending HTTP/2 stream");
                if activity.in_flight.load(Ordering::Acquire) == 0 {
                    activity.stalled.store(true, Ordering::Release);
                    activity.changed.notify_one();
                }
            }
        });
    }
}

/// The socket, reporting reads and stalled writes to the connection's [`Activity`].
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.on_write(result.is_pending());
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.on_write(result.is_pending());
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10,
            max_connections_per_ip: 5,
            max_header_bytes: 32 * 1024,
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    #[test]
    fn head_size_is_the_head_as_written_on_the_wire() {
        let request = Request::get("/orders?id=7")
            .header("host", "example.com")
            .header("x-a", "1")
            .body(())
            .unwrap();
        let wire = "GET /orders?id=7 HTTP/1.1\r\nhost: example.com\r\nx-a: 1\r\n\r\n";
        assert_eq!(head_size(&request), wire.len());
    }

    #[test]
    fn the_parser_holds_more_than_the_limit_but_not_without_bound() {
        assert_eq!(parser_limit(32 * 1024), 48 * 1024);
        assert_eq!(parser_limit(1024), 17 * 1024);
        assert_eq!(parser_limit(1024 * 1024), 1040 * 1024);
        assert_eq!(parser_limit(usize::MAX), usize::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection() {
        let limits = limits();
        let activity = Arc::new(Activity::new());
        // A fresh connection must bring its first head within header_read_timeout.
        assert_eq!(activity.deadline(&limits), Some(Duration::from_secs(10)));
        let guard = activity.begin(false);
        assert_eq!(
            activity.deadline(&limits),
            None,
            "in flight: no read deadline"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(guard);
        assert_eq!(activity.deadline(&limits), Some(Duration::from_secs(65)));
        tokio::time::advance(Duration::from_secs(20)).await;
        activity.on_read();
        assert_eq!(activity.deadline(&limits), Some(Duration::from_secs(35)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(activity.expired(&limits), Some(Expired::Head)));
        // A stalled write counts from when it stalled.
        let activity = Arc::new(Activity::new());
        let _guard = activity.begin(true);
        activity.on_write(true);
        assert_eq!(activity.deadline(&limits), Some(Duration::from_secs(60)));
        activity.on_write(false);
        assert_eq!(activity.deadline(&limits), None);
    }

    #[tokio::test(start_paused = true)]
    async fn extreme_timeouts_do_not_wrap() {
        let limits = Limits {
            header_read_timeout: Duration::MAX,
            idle_timeout: Duration::MAX,
            ..limits()
        };
        let activity = Arc::new(Activity::new());
        let far = activity.deadline(&limits).expect("a deadline");
        assert!(far >= Duration::from_secs(86_400 * 365 * 100));
        drop(activity.begin(false));
        activity.on_read();
        activity.on_write(true);
        assert!(activity.deadline(&limits).expect("a deadline") >= far / 2);
        assert!(activity.expired(&limits).is_none());
        let stream = StreamClock::new(Arc::clone(&activity));
        stream.waiting_on_client();
        assert!(stream.deadline(limits.idle_timeout) > Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn http2_bytes_between_streams_do_not_start_a_head_deadline() {
        let limits = limits();
        let activity = Arc::new(Activity::new());
        drop(activity.begin(true));
        tokio::time::advance(Duration::from_secs(1)).await;
        activity.on_read();
        assert_eq!(activity.deadline(&limits), Some(Duration::from_secs(60)));
    }

    #[test]
    fn certificate_warnings_name_expiry_and_readable_keys() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let key = rcgen::KeyPair::generate().unwrap();
        let chain = [params.self_signed(&key).unwrap().der().clone()];
        // 2025, 2033 and 2017.
        let now = 1_750_000_000;
        assert!(certificate_warnings(&chain, Some(0o100_600), now).is_empty());
        assert_eq!(
            certificate_warnings(&chain, Some(0o100_644), now),
            ["the TLS key file can be read by other users than its owner (chmod 600)"]
        );
        assert_eq!(
            certificate_warnings(&chain, Some(0o600), 2_000_000_000),
            ["the TLS certificate has expired"]
        );
        assert_eq!(
            certificate_warnings(&chain, Some(0o600), 1_500_000_000),
            ["the TLS certificate is not valid yet"]
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn per_connection_accept_errors_are_told_apart_from_exhaustion() {
        // EMFILE, ENFILE, ENOBUFS, ENOMEM
        for code in [24, 23, 105, 12] {
            assert!(is_exhaustion(&io::Error::from_raw_os_error(code)), "{code}");
        }
        // ECONNABORTED, EPROTO, ENETUNREACH, EHOSTUNREACH, EPERM, ETIMEDOUT
        for code in [103, 71, 101, 113, 1, 110] {
            assert!(
                !is_exhaustion(&io::Error::from_raw_os_error(code)),
                "{code}"
            );
        }
        assert!(!is_exhaustion(&io::Error::from(
            io::ErrorKind::ConnectionAborted
        )));
    }
}
