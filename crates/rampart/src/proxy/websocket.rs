//! WebSocket tunnels on routes with `websocket = true` (SPEC §3).
//!
//! The handshake is an ordinary request to the pipeline: it is authenticated, authorized
//! and limited like any other before it gets here. Rampart then makes its own HTTP/1.1
//! handshake with a target of the upstream (a new connection, through the target's circuit
//! breaker), answers the client with the backend's `101 Switching Protocols`, and copies
//! bytes both ways until either side closes. The tunnel is closed when the caller's login
//! (token family) is revoked — logout, refresh-token reuse, an administrator's revocation —
//! looked up in the revocation cache every second.
//!
//! Only HTTP/1.1 upgrades are tunnelled (not HTTP/2's extended CONNECT), to the backend
//! over HTTP/1.1 as well. On a route without `websocket = true` the `Upgrade` and
//! `Connection` headers are hop-by-hop and dropped as for any request: the backend gets a
//! plain `GET`, and nothing is tunnelled.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{
    AuditContext, Caller, note_transition, note_upstream_state, outgoing_request, strip_hop_by_hop,
};
use crate::authentication::{self, Authentication, Credential, api_key};
use crate::error::{ApiError, OwnBody};
use crate::metrics::UpstreamLabel;
use crate::routes::Route;
use crate::state::AppState;
use crate::upstream::Upstream;
use crate::upstream::client::{self, InFlight, UpstreamBody};

/// How often an open tunnel looks up whether its login was revoked.
const REVOCATION_POLL: Duration = Duration::from_secs(1);

/// One side of a tunnel, noting when it last read a byte.
struct Active<T> {
    io: T,
    epoch: tokio::time::Instant,
    last: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.io).poll_read(context, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let since = u64::try_from(this.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            this.last.store(since, Ordering::Relaxed);
        }
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(context, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(context)
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(context)
    }
}

/// Completes once no byte has gone either way for `limit`.
async fn idle(epoch: tokio::time::Instant, last: &AtomicU64, limit: Duration) {
    loop {
        let deadline = epoch + Duration::from_millis(last.load(Ordering::Relaxed)) + limit;
        if tokio::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// Whether `headers` list `token` in `name` (a comma-separated list, any case).
fn lists(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// Whether this is a WebSocket handshake on a route that tunnels them.
pub(super) fn wanted(request: &Request, route: &Route) -> bool {
    // The common case, no `Upgrade` at all, is settled by the first test.
    request.headers().contains_key(header::UPGRADE)
        && request.method() == Method::GET
        && request.version() == Version::HTTP_11
        && route.websocket
        && lists(request.headers(), header::UPGRADE, "websocket")
        && lists(request.headers(), header::CONNECTION, "upgrade")
}

/// Makes the handshake with a target and, when it accepts, tunnels the connection.
pub(super) async fn tunnel(
    state: &AppState,
    upstream: &Upstream,
    caller: &Caller<'_>,
    mut request: Request,
) -> Response {
    let client_upgrade = hyper::upgrade::on(&mut request);
    let held = Held::of(caller.authentication, request.headers());
    let audit = AuditContext::of(caller);
    let (parts, _empty) = request.into_parts();
    let request = http::Request::from_parts(parts, http_body_util::Empty::<Bytes>::new());
    let (mut request, path) = match outgoing_request(state, upstream, caller, request) {
        Ok(outgoing) => outgoing,
        Err(error) => return error.into_response(),
    };
    // Hop-by-hop, so dropped with the rest; this hop's handshake says them again.
    let headers = request.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));

    let server = &state.config.server;
    let Some(tunnel_guard) = state.proxy.tunnels.open(
        caller.client.0,
        server.max_connections_per_ip,
        server.max_connections,
    ) else {
        return ApiError::ServiceUnavailable {
            message: "Too many open WebSocket connections".into(),
            retry_after: Some(Duration::from_secs(1)),
        }
        .into_response();
    };
    let idle_timeout = server.idle_timeout;

    let (target, permit) = match crate::upstream::balance::pick(upstream, None) {
        Ok(picked) => {
            if !upstream.balancer.shown_closed() {
                note_upstream_state(state, upstream, &audit);
            }
            picked
        }
        Err(unavailable) => {
            note_upstream_state(state, upstream, &audit);
            return ApiError::ServiceUnavailable {
                message: "The upstream service is unavailable".into(),
                retry_after: Some(unavailable.retry_after),
            }
            .into_response();
        }
    };
    if let Some(transition) = permit.transition() {
        note_transition(state, upstream, target, transition, &audit);
    }
    // The tunnel counts as outstanding on its target for as long as it is open.
    let in_flight = InFlight::new(target);
    let started = tokio::time::Instant::now();
    let answered = tokio::time::timeout(
        upstream.timeout,
        client::upgrade(&state.proxy.connector, target, request, &path),
    )
    .await;
    state
        .metrics
        .upstream_duration
        .get_or_create(&UpstreamLabel {
            upstream: upstream.name,
        })
        .observe(started.elapsed().as_secs_f64());
    let mut response = match answered {
        Err(_) => {
            if let Some(transition) = permit.failed() {
                note_transition(state, upstream, target, transition, &audit);
            }
            return ApiError::GatewayTimeout.into_response();
        }
        Ok(Err(error)) => {
            tracing::warn!(
                upstream = upstream.name,
                target = &*target.url,
                error = %error,
                "upstream WebSocket handshake failed"
            );
            if let Some(transition) = permit.failed() {
                note_transition(state, upstream, target, transition, &audit);
            }
            return ApiError::BadGateway.into_response();
        }
        Ok(Ok(response)) => response,
    };
    let transition = if response.status().is_server_error() {
        permit.failed()
    } else {
        permit.succeeded()
    };
    if let Some(transition) = transition {
        note_transition(state, upstream, target, transition, &audit);
    }
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The backend declined: its answer passes as any other.
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::SERVER);
        let mut response =
            Response::from_parts(parts, Body::new(UpstreamBody::new(body, None, in_flight)));
        response.extensions_mut().insert(OwnBody);
        return response;
    }
    let backend_upgrade = hyper::upgrade::on(&mut response);
    let (mut parts, _body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::SERVER);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let upstream_name = upstream.name;
    let state = state.clone();
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let _tunnel = tunnel_guard;
        let (client, backend) = match tokio::try_join!(client_upgrade, backend_upgrade) {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!(upstream = upstream_name, error = %error, "WebSocket upgrade did not complete");
                return;
            }
        };
        let epoch = tokio::time::Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let mut client = Active {
            io: TokioIo::new(client),
            epoch,
            last: Arc::clone(&last),
        };
        let mut backend = Active {
            io: TokioIo::new(backend),
            epoch,
            last: Arc::clone(&last),
        };
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
                if let Err(error) = result {
                    tracing::debug!(upstream = upstream_name, error = %error, "WebSocket tunnel ended");
                }
            }
            () = idle(epoch, &last, idle_timeout) => {
                tracing::debug!(
                    upstream = upstream_name,
                    "WebSocket tunnel closed: idle for server.idle_timeout"
                );
            }
            () = revoked(&state, &held) => {
                tracing::info!(
                    upstream = upstream_name,
                    "WebSocket tunnel closed: its credential no longer holds"
                );
            }
        }
    });
    let mut response = Response::from_parts(parts, Body::empty());
    response.extensions_mut().insert(OwnBody);
    response
}

/// The credential a tunnel was opened with, checked again every second while it is open.
enum Held {
    /// An anonymous route: nothing to check.
    Nothing,
    /// An access token (bearer or cookie) and its login.
    Token { token: Box<str>, family: Arc<str> },
    /// An API key as presented.
    Key(Box<str>),
}

impl Held {
    fn of(authentication: &Authentication, headers: &HeaderMap) -> Self {
        let Authentication::Authenticated(principal) = authentication else {
            return Self::Nothing;
        };
        let token = match principal.credential {
            Credential::ApiKey => {
                return headers
                    .get(api_key::KEY_HEADER)
                    .and_then(|value| value.to_str().ok())
                    .map_or(Self::Nothing, |key| Self::Key(key.into()));
            }
            Credential::Bearer => headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.split_once(' '))
                .map(|(_, token)| token.trim()),
            Credential::Cookie => authentication::cookie(headers, authentication::ACCESS_COOKIE),
        };
        token.map_or(Self::Nothing, |token| Self::Token {
            token: token.into(),
            family: Arc::clone(&principal.family_id),
        })
    }
}

/// Whether an API key still authenticates: known, unexpired, its owner enabled. From the
/// key cache (which drops a key on any change to it or its owner), else from the store.
/// A store that cannot answer leaves the tunnel open.
async fn key_holds(state: &AppState, key: &str) -> bool {
    let Some(prefix) = api_key::parse_key(key) else {
        return false;
    };
    let now = state.now();
    let digest = crate::verified_keys::digest(key.as_bytes());
    let unexpired = |expires_at: Option<i64>| expires_at.is_none_or(|at| at > now);
    if let Some(record) = state.api_keys.get(&digest) {
        return unexpired(record.expires_at);
    }
    let record = match state.stores.data.api_key_by_prefix(prefix).await {
        Ok(Some(record)) => record,
        Ok(None) => return false,
        Err(error) => {
            tracing::warn!(error = %error, "could not check a WebSocket tunnel's API key");
            return true;
        }
    };
    if !record.key_hash.eq_ignore_ascii_case(&hex::encode(digest)) || !unexpired(record.expires_at)
    {
        return false;
    }
    match state.stores.data.user_by_id(record.user_id).await {
        Ok(user) => user.is_some_and(|user| !user.disabled),
        Err(error) => {
            tracing::warn!(error = %error, "could not check a WebSocket tunnel's API key");
            true
        }
    }
}

/// Completes once the caller's credential no longer holds: its login revoked or its access
/// token expired, its API key deleted, expired or its owner disabled. Never on an anonymous
/// route.
async fn revoked(state: &AppState, held: &Held) {
    if matches!(held, Held::Nothing) {
        return std::future::pending().await;
    }
    let mut ticker = tokio::time::interval(REVOCATION_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let holds = match held {
            Held::Nothing => true,
            Held::Token { token, family } => {
                (family.is_empty() || !state.revocations.is_revoked(family))
                    && state.tokens.verify(token).is_ok()
            }
            Held::Key(key) => key_holds(state, key).await,
        };
        if !holds {
            return;
        }
    }
}
