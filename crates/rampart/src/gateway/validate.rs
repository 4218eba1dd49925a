//! Input validation before a request reaches its backend or handler: the route's body size
//! limit and intrusion detection (SPEC §3 `max_body`, §9 `[intrusion]`).
//!
//! A body declared larger than the route's `max_body` is refused at once with 413; a body
//! that turns out larger while it streams is cut off and answered 413 as well. Whether a
//! request has a body is decided by the body itself, never by its headers, so the rules
//! hold for every framing: HTTP/1.1 `content-length` or chunked, HTTP/2 DATA frames with
//! or without a declared length (a length that lies is caught while the body streams). With
//! `intrusion.mode` `detect` (the default) or `block`, the path, query and body are scanned
//! for SQL injection, XSS, path traversal and command injection: a match is counted in
//! `rampart_suspicious_requests_total{pattern}` and audited as `suspicious_request` (one row
//! per client and pattern a minute); `block` also refuses it with 400. Only the pattern's name
//! is ever recorded, never the matching text, which may hold a password. With detection on,
//! a request with a `Content-Encoding` other than `identity` is refused with 415 (its body
//! could be neither scanned nor held to the limit as sent).

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use http::header;

use super::context::Context;
use super::refusal::{Audit, Metric, Note, Refusal};
use crate::error::ApiError;
use crate::intrusion::IntrusionMode;
use crate::intrusion::{self, Pattern};
use crate::state::AppState;

fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
}

/// The body-policy stage: the body limit (the route's `max_body`, else `server.max_body`)
/// and intrusion detection.
///
/// # Errors
/// 413 for a body over the limit, 415 for an encoded body under detection, 400 for an
/// unreadable body or (in `block` mode) a suspicious request.
pub async fn validate(
    state: &AppState,
    context: &Context,
    request: Request,
) -> Result<Request, Refusal> {
    if context.operations {
        return Ok(request);
    }
    let mode = state.config.intrusion;
    if mode != IntrusionMode::Off && !is_identity_encoded(request.headers()) {
        // A compressed body would be scanned, and held to the limit, as compressed bytes.
        return Err(ApiError::UnsupportedMediaType.into());
    }
    let limit = context
        .route
        .as_ref()
        .map_or(state.config.server.max_body, |route| route.max_body);
    let declared = declared_length(request.headers());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Refusal::too_large());
    }
    let (parts, body) = request.into_parts();
    let mut found = None;
    if mode != IntrusionMode::Off {
        found = intrusion::scan(parts.uri.path())
            .or_else(|| parts.uri.query().and_then(intrusion::scan));
    }
    let body = if body.is_end_stream() {
        body
    } else if mode != IntrusionMode::Off || declared.is_none() {
        // Scanning needs the body whole; a body without a declared length could break
        // the limit half-way, after part of it had reached the backend. Either way it is
        // read in full first, bounded by the limit, and goes on only once complete.
        let bytes =
            match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, limit)).await
            {
                Ok(collected) => collected.to_bytes(),
                Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                    return Err(Refusal::too_large());
                }
                Err(_) => {
                    return Err(ApiError::invalid("Could not read the request body").into());
                }
            };
        if mode != IntrusionMode::Off && found.is_none() {
            found = intrusion::scan_bytes(&bytes);
        }
        Body::from(bytes)
    } else {
        // A declared length within the limit streams: the server's framing (HTTP/1.1
        // content-length, HTTP/2 length checks) ends it there, and the limit stays as a
        // guard.
        Body::new(http_body_util::Limited::new(body, limit))
    };
    let request = Request::from_parts(parts, body);
    if let Some(pattern) = found {
        let note = note(context, pattern, mode, state.config.rate_limits.ipv6_prefix);
        if mode == IntrusionMode::Block {
            return Err(Refusal::new(ApiError::invalid(
                "The request was refused by intrusion detection",
            ))
            .noted(note));
        }
        crate::gateway::refusal::record(state, context, note);
    }
    Ok(request)
}

/// Whether the body is sent as is: no `Content-Encoding`, or only `identity`.
fn is_identity_encoded(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .all(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .all(|coding| coding.trim().eq_ignore_ascii_case("identity"))
            })
        })
}

/// A suspicious request: counted, and audited once per client and pattern a minute. Only
/// the pattern's name is recorded, never the matching text.
fn note(context: &Context, pattern: Pattern, mode: IntrusionMode, ipv6_prefix: u8) -> Note {
    Note {
        metric: Metric::Suspicious(pattern.label()),
        audit: Some(Audit {
            action: "suspicious_request",
            throttle: Some((
                // Keyed by the client's address bucket, as limits are: rotating through an
                // IPv6 prefix opens no new windows.
                format!(
                    "suspicious|{}|{}",
                    pattern.label(),
                    crate::client_ip::bucket(context.client.0, ipv6_prefix)
                ),
                "matches_since_last_entry",
            )),
            details: serde_json::json!({
                "pattern": pattern.label(),
                "blocked": mode == IntrusionMode::Block,
            }),
        }),
    }
}
