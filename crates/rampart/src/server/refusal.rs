//! Refusals the listener writes itself, for request heads that never reach the gateway.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::response::IntoResponse;
use http::{HeaderValue, Request, Response, Version, header};

use crate::error::{ApiError, REQUEST_ID};
use crate::metrics::{RequestLabels, method_label};
use crate::state::AppState;

/// The size of a request head as HTTP/1.1 writes it.
pub(super) fn head_size<B>(request: &Request<B>) -> usize {
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
pub(super) fn headers_too_large<B>(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
