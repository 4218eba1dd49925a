//! The listener: TLS termination, HTTP/1.1 and HTTP/2 (h2 by ALPN, h2c by prior
//! knowledge), and the limits that keep a client from holding a connection forever.
//!
//! It serves the gateway it is given and knows nothing of the pipeline inside it, except
//! that requests carry `ConnectInfo<SocketAddr>` with the peer's address.
//!
//! Every connection has one deadline at a time (see `activity::Activity::deadline`):
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

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use crate::gateway::Gateway;
use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::server_config::ServerConfig;

mod activity;
mod connection;
mod limits;
mod refusal;
mod streams;
mod tls;

use connection::connection;
use limits::{PerClient, client_slot, is_exhaustion};
pub use limits::{descriptor_budget, descriptor_reserve};
pub use streams::{BodyTimedOut, StreamExecutor};
pub use tls::{Hangups, Tls, reload_on_hangup};

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

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365 * 30)
}

/// Listener limits for the listener's test modules: the documented timeouts and head size,
/// small connection caps.
#[cfg(test)]
pub(crate) fn test_limits() -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        max_connections: 10,
        max_connections_per_ip: 5,
        max_header_bytes: 32 * 1024,
        shutdown_timeout: Duration::from_secs(30),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parser_holds_more_than_the_limit_but_not_without_bound() {
        assert_eq!(parser_limit(32 * 1024), 48 * 1024);
        assert_eq!(parser_limit(1024), 17 * 1024);
        assert_eq!(parser_limit(1024 * 1024), 1040 * 1024);
        assert_eq!(parser_limit(usize::MAX), usize::MAX);
    }
}
