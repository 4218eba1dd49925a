//! Input validation before a request reaches its backend or handler: the route's body size
//! limit and intrusion detection (SPEC §3 `max_body`, §9 `[intrusion]`).
//!
//! A body declared larger than the route's `max_body` is refused at once with 413; a body
//! that turns out larger while it streams is cut off and answered 413 as well. With
//! `intrusion.mode` `detect` (the default) or `block`, the path, query and body are scanned
//! for SQL injection, XSS, path traversal and command injection: a match is counted in
//! `rampart_suspicious_requests_total{pattern}` and audited as `suspicious_request` (one row
//! per client and pattern a minute); `block` also refuses it with 400. Only the pattern's name
//! is ever recorded, never the matching text, which may hold a password.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header;

use crate::audit::{record_in_background, request_entry};
use crate::config::IntrusionMode;
use crate::error::ApiError;
use crate::intrusion::{self, Pattern};
use crate::metrics::PatternLabel;
use crate::routes::MatchedRoute;
use crate::state::AppState;

/// The largest body a request may carry: its route's `max_body`, else `server.max_body`.
fn body_limit(state: &AppState, request: &Request) -> usize {
    request
        .extensions()
        .get::<MatchedRoute>()
        .map_or(state.config.server.max_body, |route| route.0.max_body)
}

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

fn has_body(headers: &http::HeaderMap) -> bool {
    declared_length(headers).is_some_and(|length| length > 0)
        || headers.contains_key(header::TRANSFER_ENCODING)
}

/// Applies the body limit and intrusion detection.
pub async fn validate(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if crate::operations::PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let limit = body_limit(&state, &request);
    if declared_length(request.headers()).is_some_and(|length| length > limit as u64) {
        return too_large();
    }
    let mode = state.config.intrusion;
    if mode == IntrusionMode::Off {
        let (parts, body) = request.into_parts();
        let body = Body::new(http_body_util::Limited::new(body, limit));
        return next.run(Request::from_parts(parts, body)).await;
    }

    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let query = parts.uri.query();
    let mut found = intrusion::scan(path).or_else(|| query.and_then(intrusion::scan));
    let request = if has_body(&parts.headers) {
        // Scanning needs the body whole; it is bounded by the route's limit.
        let bytes = match axum::body::to_bytes(body, limit).await {
            Ok(bytes) => bytes,
            Err(_) => return too_large(),
        };
        if found.is_none() {
            found = intrusion::scan_bytes(&bytes);
        }
        Request::from_parts(parts, Body::from(bytes))
    } else {
        Request::from_parts(parts, body)
    };
    if let Some(pattern) = found {
        report(&state, &request, pattern, mode);
        if mode == IntrusionMode::Block {
            return ApiError::invalid("The request was refused by intrusion detection")
                .into_response();
        }
    }
    next.run(request).await
}

/// 413, closing the connection: the rest of the body is never read, so the connection
/// cannot carry another request, and the client must not try.
pub(crate) fn too_large() -> Response {
    let mut response = ApiError::PayloadTooLarge.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    response
}

fn report(state: &AppState, request: &Request, pattern: Pattern, mode: IntrusionMode) {
    state
        .metrics
        .suspicious_requests
        .get_or_create(&PatternLabel {
            pattern: pattern.label(),
        })
        .inc();
    let now = state.now();
    let ip = request
        .extensions()
        .get::<crate::client_ip::ClientIp>()
        .map(|ip| ip.0);
    let throttle_key = match ip {
        Some(ip) => format!("suspicious|{}|{ip}", pattern.label()),
        None => format!("suspicious|{}|-", pattern.label()),
    };
    let Some(held_back) = state.audit_throttle.admit(&throttle_key, now) else {
        return;
    };
    let entry = request_entry(
        now,
        "suspicious_request",
        request,
        serde_json::json!({
            "pattern": pattern.label(),
            "blocked": mode == IntrusionMode::Block,
            "matches_since_last_entry": held_back,
        }),
    );
    record_in_background(state.stores.data.clone(), entry);
}
