//! The reverse proxy: forwards a request whose route names an upstream to one of its
//! targets (SPEC §3).
//!
//! A target is picked by least outstanding requests among the healthy ones (`health`)
//! whose own circuit breaker admits the request; with none, 503 at once. Bodies stream
//! both ways over the target's keep-alive connections (the client in `client`). A connect
//! failure is 502 `bad_gateway` — or, for an idempotent request without a body and
//! `retries` left, another attempt on another target; no response head within the
//! upstream's `timeout` is 504 `gateway_timeout`. The backend's own answers, errors
//! included, pass unchanged. WebSocket upgrades on `websocket = true` routes are tunnelled
//! (`websocket`).
//!
//! Hop-by-hop headers (RFC 9110 §7.6.1, and any the `Connection` header names) are dropped
//! in both directions; the client's credentials, any `X-Rampart-*` header, client-set
//! override and identity headers and names with `_` never reach the backend ([`headers`]),
//! which instead gets the caller's identity as `X-Rampart-User-Id`, `-Username` and
//! `-Role`, the request id, and `Forwarded` / `X-Forwarded-For` / `X-Real-IP` built from the
//! trusted client IP.
//!
//! [`headers`]: crate::upstream::headers

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;

use crate::audit::{NewAuditEntry, RequestContext, record_in_background};
use crate::authentication::Authentication;
use crate::circuit_breaker::Transition;
use crate::client_ip::{ClientIp, IpText};
use crate::error::{ApiError, OwnBody};
use crate::metrics::UpstreamLabel;
use crate::request::RequestId;
use crate::routes::Route;
use crate::state::AppState;

pub(crate) mod health;
mod websocket;

use crate::upstream::client::{self, InFlight, SendError, Target, UpstreamBody};
use crate::upstream::{BODY_FAILED, BODY_TOO_LARGE, WatchedBody, is_body_too_large};
pub use crate::upstream::{Proxy, Upstream};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// obsolete `Proxy-Connection` that some clients still send.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

const USER_ID: HeaderName = HeaderName::from_static("x-rampart-user-id");
const USERNAME: HeaderName = HeaderName::from_static("x-rampart-username");
const ROLE: HeaderName = HeaderName::from_static("x-rampart-role");
const KEY_ID: HeaderName = HeaderName::from_static("x-rampart-key-id");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How an exchange with an upstream ended, for the breaker.
enum Outcome {
    Answered(Response),
    /// The client's body broke the route's size limit while streaming: not the backend's fault.
    TooLarge,
    /// The client's body failed while streaming (a declared length that lied, a reset):
    /// not the backend's fault either.
    ClientBody,
    /// The request's path makes no valid target under the upstream's base path.
    BadPath,
    Unreachable,
    TimedOut,
}

/// What the pipeline knows of the caller that the backend's headers, the tunnel and the
/// audit rows are made from: passed by reference, never through the request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// The trusted client IP.
    pub client: ClientIp,
    /// The request id.
    pub id: &'a RequestId,
    /// The request id as a header value, built once for the backend's request and the
    /// response; `None` when the id cannot be one.
    pub id_header: Option<&'a HeaderValue>,
    /// Who is asking.
    pub authentication: &'a Authentication,
    /// The API key the request authenticated with.
    pub key_id: Option<i64>,
    /// The matched route.
    pub route: &'a Route,
}

/// What an audit entry of a state change needs, kept without allocating.
pub(crate) struct AuditContext {
    client: Option<std::net::IpAddr>,
    request_id: Option<RequestId>,
}

impl AuditContext {
    pub(crate) fn of(caller: &Caller<'_>) -> Self {
        Self {
            client: Some(caller.client.0),
            request_id: Some(caller.id.clone()),
        }
    }

    fn context(&self) -> RequestContext {
        RequestContext {
            ip: self.client.map(|ip| ip.to_string()),
            user_agent: None,
            request_id: self
                .request_id
                .as_ref()
                .map_or_else(|| "-".to_owned(), |id| id.0.to_string()),
        }
    }
}

/// Whether a request may be sent again after a connect failure: an idempotent method
/// (RFC 9110 §9.2.2) and no body, so nothing the client sent can be lost or doubled.
fn retryable<B: hyper::body::Body>(request: &http::Request<B>) -> bool {
    use http::Method;
    matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) && request.body().is_end_stream()
}

/// Forwards `request` to `upstream`: picks a target (least outstanding requests among the
/// healthy ones whose circuit admits it), sends, and answers with the backend's response,
/// or 502 / 503 / 504 as SPEC §3 says.
pub async fn forward(
    state: &AppState,
    upstream: &Upstream,
    caller: &Caller<'_>,
    request: Request,
) -> Response {
    if websocket::wanted(&request, caller.route) {
        // Boxed: a tunnel's future is large and rare.
        return Box::pin(websocket::tunnel(state, upstream, caller, request)).await;
    }
    let audit = AuditContext::of(caller);
    let (parts, body) = request.into_parts();
    let (body, client_body) = WatchedBody::new(body);
    let request = http::Request::from_parts(parts, body);
    let (mut request, path) = match outgoing_request(state, upstream, caller, request) {
        Ok(outgoing) => outgoing,
        Err(error) => return error.into_response(),
    };
    let may_retry = upstream.retries > 0 && retryable(&request);
    let started = tokio::time::Instant::now();
    let deadline = started + upstream.timeout;
    let mut retries = 0;
    let mut avoid: Option<&Target> = None;
    let (target, permit, outcome) = loop {
        let (target, permit) = match crate::upstream::balance::pick(upstream, avoid) {
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
        let in_flight = InFlight::new(target);
        let sent = tokio::time::timeout_at(
            deadline,
            target.send(&state.proxy.connector, request, &path),
        )
        .await;
        let outcome = match sent {
            Err(_) => {
                target.forget_h2();
                Outcome::TimedOut
            }
            Ok(Ok((response, connection))) => {
                Outcome::Answered(incoming_response(response, connection, in_flight))
            }
            Ok(Err(SendError::Connect(error, unsent))) => {
                tracing::warn!(
                    upstream = upstream.name,
                    target = &*target.url,
                    error = %error,
                    "upstream connect failed"
                );
                if may_retry && retries < upstream.retries {
                    retries += 1;
                    if let Some(transition) = permit.failed() {
                        note_transition(state, upstream, target, transition, &audit);
                    }
                    avoid = Some(target);
                    request = *unsent;
                    continue;
                }
                Outcome::Unreachable
            }
            Ok(Err(SendError::Path)) => Outcome::BadPath,
            Ok(Err(SendError::Failed(error))) if is_body_too_large(&error) => Outcome::TooLarge,
            Ok(Err(_)) if client_body.load(Ordering::Relaxed) == BODY_TOO_LARGE => {
                Outcome::TooLarge
            }
            Ok(Err(_)) if client_body.load(Ordering::Relaxed) == BODY_FAILED => Outcome::ClientBody,
            Ok(Err(SendError::Failed(error))) => {
                tracing::warn!(
                    upstream = upstream.name,
                    target = &*target.url,
                    error = %error,
                    "upstream request failed"
                );
                Outcome::Unreachable
            }
        };
        break (target, permit, outcome);
    };
    state
        .metrics
        .upstream_duration
        .get_or_create(&UpstreamLabel {
            upstream: upstream.name,
        })
        .observe(started.elapsed().as_secs_f64());

    let (transition, response) = match outcome {
        Outcome::Answered(response) if response.status().is_server_error() => {
            (permit.failed(), response)
        }
        Outcome::Answered(response) => (permit.succeeded(), response),
        Outcome::TooLarge => {
            drop(permit);
            (None, crate::error::too_large())
        }
        Outcome::ClientBody => {
            drop(permit);
            (
                None,
                ApiError::invalid("Could not read the request body").into_response(),
            )
        }
        Outcome::BadPath => {
            drop(permit);
            (
                None,
                ApiError::invalid("The request path is not valid").into_response(),
            )
        }
        Outcome::Unreachable => (permit.failed(), ApiError::BadGateway.into_response()),
        Outcome::TimedOut => (permit.failed(), ApiError::GatewayTimeout.into_response()),
    };
    if let Some(transition) = transition {
        note_transition(state, upstream, target, transition, &audit);
    }
    response
}

/// Logs a target's circuit change, and keeps the upstream's gauge, opens counter and
/// audit trail in step with the upstream's circuit: open when every target's is open.
pub(crate) fn note_transition(
    state: &AppState,
    upstream: &Upstream,
    target: &Target,
    transition: Transition,
    audit: &AuditContext,
) {
    if upstream.targets.len() > 1 {
        tracing::info!(
            upstream = upstream.name,
            target = &*target.url,
            state = transition.state().as_str(),
            "target circuit breaker"
        );
    }
    note_upstream_state(state, upstream, audit);
}

/// Shows the upstream's circuit as its targets now make it (every target out by its
/// breaker or its health check: open), counting and auditing an opening.
pub(crate) fn note_upstream_state(state: &AppState, upstream: &Upstream, audit: &AuditContext) {
    let Some(now) = upstream.balancer.settle(&upstream.targets) else {
        return;
    };
    let label = UpstreamLabel {
        upstream: upstream.name,
    };
    state
        .metrics
        .breaker_state
        .get_or_create(&label)
        .set(now.gauge_value());
    tracing::info!(
        upstream = upstream.name,
        state = now.as_str(),
        "circuit breaker"
    );
    if now == crate::circuit_breaker::State::Open {
        state.metrics.breaker_opens.get_or_create(&label).inc();
        let entry = NewAuditEntry::new(
            state.now(),
            "circuit_opened",
            None,
            serde_json::json!({ "upstream": upstream.name }),
            &audit.context(),
        );
        record_in_background(state.stores.data.clone(), entry);
    }
}

/// Names listed in a `Connection` header, which are hop-by-hop too.
fn connection_listed(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One look over the names first: most messages carry none of these, and a removal
    // hashes its name even when it is absent.
    if !headers
        .keys()
        .any(|name| name == header::UPGRADE || HOP_BY_HOP.contains(name))
    {
        return;
    }
    for name in connection_listed(headers) {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    // `Upgrade` is hop-by-hop as well; WebSocket upgrades are not proxied.
    headers.remove(header::UPGRADE);
}

/// The request as the backend gets it, and its path and query (which each target puts
/// under its own base path).
fn outgoing_request<B>(
    state: &AppState,
    upstream: &Upstream,
    caller: &Caller<'_>,
    request: http::Request<B>,
) -> Result<(http::Request<B>, PathAndQuery), ApiError> {
    let (mut parts, body) = request.into_parts();
    // The host the client asked for: `Host`, else the target's authority (HTTP/2's
    // `:authority`, or an absolute-form target), passed on only when it is plainly a host.
    let original_host = parts
        .headers
        .remove(header::HOST)
        .or_else(|| {
            parts
                .extensions
                .get::<axum::extract::OriginalUri>()
                .map_or(&parts.uri, |original| &original.0)
                .authority()
                .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
        })
        .filter(|host| host.to_str().is_ok_and(is_plain_host));
    let path = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    upstream.forward.apply(headers);
    if let Authentication::Authenticated(principal) = caller.authentication {
        headers.insert(USER_ID, HeaderValue::from(principal.user_id));
        // Usernames are [A-Za-z0-9_] and roles [a-z0-9_]: always valid header values.
        if let Ok(value) = HeaderValue::from_str(&principal.username) {
            headers.insert(USERNAME, value);
        }
        if let Ok(value) = HeaderValue::from_str(&principal.role) {
            headers.insert(ROLE, value);
        }
    }
    if let Some(key) = caller.key_id {
        headers.insert(KEY_ID, HeaderValue::from(key));
    }
    if let Some(value) = caller.id_header {
        headers.insert(X_REQUEST_ID, value.clone());
    }
    let proto = if state.proxy.tls { "https" } else { "http" };
    {
        let client = caller.client;
        // Built from the trusted client IP alone: whatever chain the client sent is dropped,
        // so a backend can never be told a client-chosen address. An unknown client is
        // said to be `unknown` in all three (`Forwarded: for=unknown`, RFC 7239 §6): with no
        // header at all, a backend falling back to its socket peer would take it for the
        // gateway itself.
        let known = client.known();
        let text = known.map(IpText::new);
        let value = text
            .as_ref()
            .and_then(|text| HeaderValue::from_str(text).ok())
            .unwrap_or(HeaderValue::from_static("unknown"));
        headers.insert(X_REAL_IP, value.clone());
        headers.insert(X_FORWARDED_FOR, value);
        let mut forwarded = String::with_capacity(96);
        forwarded.push_str("for=");
        match (known, &text) {
            (Some(std::net::IpAddr::V4(_)), Some(text)) => forwarded.push_str(text),
            (Some(std::net::IpAddr::V6(_)), Some(text)) => {
                forwarded.push_str("\"[");
                forwarded.push_str(text);
                forwarded.push_str("]\"");
            }
            _ => forwarded.push_str("unknown"),
        }
        forwarded.push_str(";proto=");
        forwarded.push_str(proto);
        if let Some(host) = original_host.as_ref().and_then(|host| host.to_str().ok()) {
            forwarded.push_str(";host=\"");
            forwarded.push_str(host);
            forwarded.push('"');
        }
        if let Ok(value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(forwarded)) {
            headers.insert(header::FORWARDED, value);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = original_host {
        headers.insert(X_FORWARDED_HOST, host);
    }
    Ok((http::Request::from_parts(parts, body), path))
}

/// Whether `host` is plainly a host and perhaps a port: a name or IPv4 address
/// (`[A-Za-z0-9.-]+`) or a bracketed IPv6 literal, then optionally `:` and digits. Nothing
/// else is repeated to a backend, whose parser of `Forwarded` or `X-Forwarded-Host` might
/// read a `,`, `;` or `=` in it as more than a host.
fn is_plain_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((literal, port)) = rest.split_once(']') else {
            return false;
        };
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match port {
            "" => return true,
            port => match port.strip_prefix(':') {
                Some(port) => ("[]", Some(port)),
                None => return false,
            },
        }
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let name_ok = name == "[]"
        || (!name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-'));
    let port_ok = match port {
        None => true,
        Some(port) => (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit()),
    };
    name_ok && port_ok
}

fn incoming_response(
    response: http::Response<hyper::body::Incoming>,
    connection: Option<Box<client::H1>>,
    in_flight: InFlight,
) -> Response {
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // No backend banner either: SPEC §6 wants no `Server` version on any response.
    parts.headers.remove(header::SERVER);
    let body = UpstreamBody::new(body, connection, in_flight);
    let mut response = Response::from_parts(parts, Body::new(body));
    // The backend's own error bodies pass unchanged.
    response.extensions_mut().insert(OwnBody);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_hosts_are_plain() {
        for host in [
            "a",
            "a.example",
            "a-b.c:8080",
            "192.0.2.1:1",
            "[::1]",
            "[2001:db8::1]:443",
        ] {
            assert!(is_plain_host(host), "{host}");
        }
        for host in [
            "",
            ":80",
            "a:",
            "a:123456",
            "a:8a",
            "a, for=1.2.3.4",
            "a;x=y",
            "a=b",
            "a\"b",
            "a b",
            "u@a",
            "a:1:2",
            "[::1]x",
            "[::1]:",
            "[zz]",
            "[::1",
            "a_b",
            "a%2e",
        ] {
            assert!(!is_plain_host(host), "{host}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        headers.insert("x-private", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert(header::TE, "trailers".parse().unwrap());
        headers.insert(header::UPGRADE, "websocket".parse().unwrap());
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert!(headers.contains_key(header::CONTENT_TYPE));
    }
}
