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

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Version};
use hyper_util::rt::TokioIo;

use super::client::{self, InFlight, UpstreamBody};
use super::{AuditContext, Caller, note_transition, outgoing_request, strip_hop_by_hop};
use crate::authentication::{Authentication, Principal};
use crate::error::{ApiError, OwnBody};
use crate::metrics::UpstreamLabel;
use crate::routes::{Route, Upstream};
use crate::state::AppState;

/// How often an open tunnel looks up whether its login was revoked.
const REVOCATION_POLL: Duration = Duration::from_secs(1);

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
    let principal = match caller.authentication {
        Authentication::Authenticated(principal) => Some(principal.clone()),
        _ => None,
    };
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

    let (target, permit) = match client::pick(upstream, None) {
        Ok(picked) => picked,
        Err(unavailable) => {
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
        let (client, backend) = match tokio::try_join!(client_upgrade, backend_upgrade) {
            Ok(both) => both,
            Err(error) => {
                tracing::debug!(upstream = upstream_name, error = %error, "WebSocket upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        tokio::select! {
            result = tokio::io::copy_bidirectional(&mut client, &mut backend) => {
                if let Err(error) = result {
                    tracing::debug!(upstream = upstream_name, error = %error, "WebSocket tunnel ended");
                }
            }
            () = revoked(&state, principal.as_ref()) => {
                tracing::info!(
                    upstream = upstream_name,
                    "WebSocket tunnel closed: its login was revoked"
                );
            }
        }
    });
    let mut response = Response::from_parts(parts, Body::empty());
    response.extensions_mut().insert(OwnBody);
    response
}

/// Completes once the caller's login is revoked; never for a caller without one (an
/// anonymous route, or an API key).
async fn revoked(state: &AppState, principal: Option<&Principal>) {
    let Some(family) = principal
        .map(|principal| &principal.family_id)
        .filter(|family| !family.is_empty())
    else {
        return std::future::pending().await;
    };
    let mut ticker = tokio::time::interval(REVOCATION_POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if state.revocations.is_revoked(family) {
            return;
        }
    }
}
