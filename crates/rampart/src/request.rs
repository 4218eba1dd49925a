//! What every request gets first and last: an id, a trusted client IP, a JSON body on
//! every refusal, an access-log line and its metrics.
//!
//! This is the outermost layer, so it sees every response, including the framework's own
//! rejections (unknown path, wrong method), which it rewrites into the JSON error body.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::client_ip::{self, ClientIp};
use crate::error::{ApiError, OwnBody, REQUEST_ID};
use crate::metrics::{RequestLabels, RouteLabel, method_label};
use crate::state::AppState;

/// The request's id, in its extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// The route pattern that served a response, for metric labels; set by the router.
#[derive(Debug, Clone, Copy)]
pub struct RouteName(pub &'static str);

/// Whether a client-sent request id is safe to adopt: 1–128 characters of
/// `[A-Za-z0-9._:-]`.
pub fn is_well_formed_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The outermost layer.
pub async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let started = tokio::time::Instant::now();
    let adopted = request
        .headers()
        .get("x-request-id")
        .filter(|value| value.to_str().is_ok_and(is_well_formed_id))
        .cloned();
    // One header value serves the request, the response and (by cloning a reference) the
    // backend; the text form is made once for logs, audit rows and error bodies.
    let (id, id_header): (Arc<str>, Option<HeaderValue>) = match adopted {
        Some(header) => (Arc::from(header.to_str().unwrap_or("-")), Some(header)),
        None => {
            let mut buffer = [0u8; ulid::ULID_LEN];
            let text = ulid::Ulid::new().array_to_str(&mut buffer);
            (Arc::from(&*text), HeaderValue::from_str(text).ok())
        }
    };
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), |info| info.0);
    let ip: IpAddr = client_ip::resolve(
        peer,
        request.headers(),
        &state.config.server.trusted_proxies,
    );
    request.extensions_mut().insert(ClientIp(ip));
    request.extensions_mut().insert(RequestId(Arc::clone(&id)));
    if let Some(value) = &id_header {
        request.headers_mut().insert("x-request-id", value.clone());
    }
    let method = method_label(request.method());

    let mut response = REQUEST_ID
        .scope(Arc::clone(&id), async move {
            let response = next.run(request).await;
            let failed = response.status().is_client_error() || response.status().is_server_error();
            if failed && response.extensions().get::<OwnBody>().is_none() {
                return rewrite(response);
            }
            response
        })
        .await;

    if let Some(value) = id_header {
        response.headers_mut().insert("x-request-id", value);
    }
    let route = response
        .extensions()
        .get::<RouteName>()
        .map_or("unmatched", |name| name.0);
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state
        .metrics
        .http_requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status,
        })
        .inc();
    state
        .metrics
        .http_duration
        .get_or_create(&RouteLabel { route })
        .observe(elapsed.as_secs_f64());
    tracing::info!(
        target: "rampart::access",
        request_id = %id,
        client = %ip,
        method,
        route,
        status,
        micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
    );
    response
}

/// Turns a framework rejection (plain text or empty) into the JSON error body, keeping
/// headers such as `Allow`.
fn rewrite(response: Response) -> Response {
    let status = response.status();
    let error = match status {
        StatusCode::NOT_FOUND => ApiError::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        StatusCode::UNAUTHORIZED => ApiError::unauthenticated(),
        StatusCode::FORBIDDEN => ApiError::forbidden(),
        StatusCode::REQUEST_TIMEOUT => ApiError::invalid("Request timed out"),
        status if status.is_client_error() => ApiError::invalid("Bad request"),
        StatusCode::SERVICE_UNAVAILABLE => ApiError::ServiceUnavailable {
            message: "Service unavailable".into(),
            retry_after: None,
        },
        _ => ApiError::internal(anyhow::anyhow!("unhandled {status} from the framework")),
    };
    let (parts, _) = response.into_parts();
    let route = parts.extensions.get::<RouteName>().copied();
    let mut rewritten = error.into_response();
    *rewritten.status_mut() = status;
    // Keep what the layers below added (security headers, `Allow`, …); only the body
    // and its description change.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    if let Some(route) = route {
        rewritten.extensions_mut().insert(route);
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_request_ids_are_adopted() {
        assert!(is_well_formed_id("01J9ZQ5K3V0000000000000000"));
        assert!(is_well_formed_id("3f2c1b1e-9c1d-4e43-9d3c-2b7f1f9a2c11"));
        for bad in ["", "has space", "new\nline", "<script>", &"x".repeat(129)] {
            assert!(!is_well_formed_id(bad), "{bad:?}");
        }
    }
}
