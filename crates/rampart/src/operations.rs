//! Operational endpoints: `/healthz`, `/readyz`, `/metrics`, `/.well-known/jwks.json`, and
//! the API document (`/openapi.json`) with its documentation page (`/docs`).
//!
//! They are neither rate limited nor authenticated, so probes and scrapers never spend a
//! client's budget; `/metrics` is fenced by network instead (`metrics.allowed_networks`).

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use serde_json::json;

use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::request::{RouteName, operations_path};
use crate::state::AppState;

/// The routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/openapi.json", get(crate::openapi::served))
        .merge(crate::openapi::docs_routes())
        .layer(axum::middleware::map_response(
            |request_path: axum::extract::OriginalUri, mut response: Response| async move {
                let name = operations_path(request_path.path()).unwrap_or("operations");
                response.extensions_mut().insert(RouteName(name));
                response
            },
        ))
}

/// Alive.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready when every store answers, and not shutting down.
async fn readyz(State(state): State<AppState>) -> Response {
    if state.stopping.is_stopping() {
        let mut response = ApiError::ServiceUnavailable {
            message: "Shutting down".into(),
            retry_after: None,
        }
        .into_response();
        *response.body_mut() = Json(json!({ "status": "stopping" }))
            .into_response()
            .into_body();
        return response;
    }
    // Both checks at once, each bounded: a store that hangs (a dropped network path, a
    // server that accepts but never answers) makes the probe fail in about a second
    // instead of holding it past the prober's own timeout.
    let (database, sessions) = tokio::join!(
        answers_in_time(state.stores.data.ping()),
        answers_in_time(state.stores.sessions.ping()),
    );
    let body = Json(json!({
        "status": if database && sessions { "ready" } else { "unavailable" },
        "checks": { "database": database, "session_store": sessions },
    }));
    if database && sessions {
        body.into_response()
    } else {
        let mut response = ApiError::ServiceUnavailable {
            message: "A backing store is unreachable".into(),
            retry_after: Some(std::time::Duration::from_secs(1)),
        }
        .into_response();
        *response.body_mut() = body.into_response().into_body();
        response
    }
}

/// How long `/readyz` waits for one store's answer.
const READINESS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Whether `ping` succeeded within [`READINESS_TIMEOUT`].
async fn answers_in_time<E>(ping: impl Future<Output = Result<(), E>>) -> bool {
    matches!(
        tokio::time::timeout(READINESS_TIMEOUT, ping).await,
        Ok(Ok(()))
    )
}

/// Prometheus text, for `metrics.allowed_networks` only (404 for anyone else, so the
/// endpoint does not advertise itself).
async fn metrics(
    State(state): State<AppState>,
    client: Option<axum::Extension<ClientIp>>,
) -> Response {
    let allowed = client.is_some_and(|client| {
        state
            .config
            .metrics_allowed_networks
            .iter()
            // An unknown client is in no network, whatever the list says.
            .any(|network| client.0.known().is_some_and(|ip| network.contains(&ip)))
    });
    if !allowed {
        return ApiError::NotFound.into_response();
    }
    let mut response = (StatusCode::OK, state.metrics.render()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The public signing keys (asymmetric algorithms only; 404 with HS256).
async fn jwks(State(state): State<AppState>) -> Response {
    match state.tokens.jwks() {
        Some(keys) => Json(keys.clone()).into_response(),
        None => ApiError::NotFound.into_response(),
    }
}
