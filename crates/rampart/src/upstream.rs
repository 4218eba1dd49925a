//! Upstreams as the gateway knows them: each one's targets with their keep-alive
//! connections, circuit breakers and balancing ([`client`]), its checked configuration
//! ([`config`]), which request headers stop at the gateway ([`headers`]), and the open
//! WebSocket tunnels counted against the connection caps. It knows nothing of requests'
//! callers or of the shared state: [`crate::proxy`] forwards through it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;

pub mod balance;
pub mod client;
pub mod config;
pub mod headers;

pub use balance::Balancer;
use client::Connector;
pub use client::Target;
pub use config::{HealthCheck, RawHealthCheck, RawUpstream, UpstreamConfig};
use headers::ForwardPolicy;

/// An upstream service: one or more targets, balanced by least outstanding requests.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Its configured name (the metric label).
    pub name: &'static str,
    /// Its backends (`url`, or each of `targets`), each with its own connections, circuit
    /// breaker and health.
    pub targets: Arc<[Arc<Target>]>,
    /// Time allowed for the response head.
    pub timeout: Duration,
    /// Circuit-breaker settings, for each target.
    pub circuit_breaker: crate::circuit_breaker::Settings,
    /// Which request headers stop at the gateway.
    pub forward: ForwardPolicy,
    /// Active health checks of each target, if configured.
    pub health_check: Option<HealthCheck>,
    /// Further attempts after a connect failure (idempotent methods without a body).
    pub retries: u32,
    /// The balancer's shared state: the upstream-level circuit state and the rotation.
    pub balancer: Arc<Balancer>,
}

/// The upstream client's connector and what every forwarded request shares.
#[derive(Debug)]
pub struct Proxy {
    pub(crate) connector: Connector,
    /// Open WebSocket tunnels, per client IP and in all.
    pub(crate) tunnels: Arc<Tunnels>,
    /// Whether the gateway is reached over TLS (for `Forwarded: proto=`).
    pub(crate) tls: bool,
}

impl Proxy {
    /// The client; each upstream's targets keep their own connections and breakers.
    pub fn new(tls: bool) -> Self {
        Self {
            connector: Connector::new(),
            tunnels: std::sync::Arc::default(),
            tls,
        }
    }
}

/// Open tunnels, per client IP and in all: a tunnel outlives the connection that asked for
/// it, so it is counted here against `server.max_connections_per_ip` and
/// `server.max_connections`.
#[derive(Debug, Default)]
pub struct Tunnels {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open tunnel, counted until dropped.
pub struct TunnelGuard {
    tunnels: Arc<Tunnels>,
    client: IpAddr,
}

impl Tunnels {
    /// Counts a new tunnel for `client`, unless it or everyone already has as many as allowed.
    pub fn open(
        self: &Arc<Self>,
        client: IpAddr,
        per_ip: usize,
        total: usize,
    ) -> Option<TunnelGuard> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (all, by_ip) = &mut *open;
        let mine = by_ip.get(&client).copied().unwrap_or(0);
        if mine >= per_ip || *all >= total {
            return None;
        }
        *all += 1;
        by_ip.insert(client, mine + 1);
        Some(TunnelGuard {
            tunnels: Arc::clone(self),
            client,
        })
    }
}

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        let mut open = self
            .tunnels
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (all, by_ip) = &mut *open;
        *all = all.saturating_sub(1);
        if let Some(mine) = by_ip.get_mut(&self.client) {
            *mine -= 1;
            if *mine == 0 {
                by_ip.remove(&self.client);
            }
        }
    }
}

pub(crate) const BODY_TOO_LARGE: u8 = 1;
pub(crate) const BODY_FAILED: u8 = 2;

/// The client's body on its way to the backend, noting whether it failed, so that a
/// client's broken upload is answered as the client's fault and never counts against the
/// upstream's circuit breaker.
pub(crate) struct WatchedBody {
    inner: Body,
    failed: Arc<AtomicU8>,
}

impl WatchedBody {
    pub(crate) fn new(inner: Body) -> (Self, Arc<AtomicU8>) {
        let failed = Arc::new(AtomicU8::new(0));
        (
            Self {
                inner,
                failed: Arc::clone(&failed),
            },
            failed,
        )
    }
}

impl hyper::body::Body for WatchedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let poll = hyper::body::Body::poll_frame(std::pin::Pin::new(&mut self.inner), context);
        if let std::task::Poll::Ready(Some(Err(error))) = &poll {
            let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
            let mut verdict = BODY_FAILED;
            while let Some(error) = source {
                if error.is::<http_body_util::LengthLimitError>() {
                    verdict = BODY_TOO_LARGE;
                    break;
                }
                source = error.source();
            }
            self.failed.store(verdict, Ordering::Relaxed);
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        hyper::body::Body::is_end_stream(&self.inner)
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::Body::size_hint(&self.inner)
    }
}

pub(crate) fn is_body_too_large(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
}
