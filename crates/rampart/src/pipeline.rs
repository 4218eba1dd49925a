//! The request pipeline. A request meets these layers top to bottom; the first that
//! refuses it answers, and the answer travels back up through every layer above it.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use http::{HeaderName, HeaderValue, Method};
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::error::ApiError;
use crate::state::AppState;
use crate::{authentication, identity, operations, request, security_headers};

/// The whole gateway as one router.
pub fn router(state: AppState) -> Router {
    let served = identity::routes()
        .merge(operations::routes())
        .fallback(|| async { ApiError::NotFound })
        .with_state(state.clone());

    let layers = ServiceBuilder::new()
        // Outermost: the request id, the trusted client IP, the access log and metrics,
        // and a JSON body on every refusal — so everything below is observed.
        .layer(from_fn_with_state(state.clone(), request::observe))
        // Security headers on every response, refusals included.
        .layer(from_fn_with_state(state.clone(), security_headers::apply))
        .option_layer(cors(&state))
        // Who is asking (never refuses by itself): the rate limiter needs the tier, and
        // handlers refuse 401/403 from what it recorded.
        .layer(from_fn_with_state(state.clone(), authentication::identify))
        .layer(DefaultBodyLimit::max(state.config.server.max_body));

    Router::new().fallback_service(served).layer(layers)
}

fn cors(state: &AppState) -> Option<CorsLayer> {
    let origins: Vec<HeaderValue> = state
        .config
        .cors_allowed_origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_credentials(true)
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                http::header::AUTHORIZATION,
                http::header::CONTENT_TYPE,
                HeaderName::from_static("x-csrf-token"),
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("x-timestamp"),
                HeaderName::from_static("x-nonce"),
                HeaderName::from_static("x-signature"),
            ])
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("ratelimit"),
                HeaderName::from_static("ratelimit-policy"),
                http::header::RETRY_AFTER,
            ]),
    )
}
