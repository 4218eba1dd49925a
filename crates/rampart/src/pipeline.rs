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
use crate::{
    authentication, authorization, identity, operations, proxy, rate_limit, request, routes,
    security_headers, validation,
};

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
        // Which `[[routes]]` entry applies (its limit, roles, body size, upstream);
        // ambiguous paths are refused here, before any route-based decision.
        .layer(from_fn_with_state(state.clone(), routes::resolve))
        // Who is asking (never refuses by itself): the rate limiter needs the tier, and
        // authorization and handlers refuse 401/403 from what it recorded. Nothing between
        // it and the limiter refuses, so every credential it checks is charged for.
        .layer(from_fn_with_state(state.clone(), authentication::identify))
        // 1. Rate limiting: the caller's tier, then the route's own limit (429).
        .layer(from_fn_with_state(state.clone(), rate_limit::enforce))
        // 2–3. Authentication is required and the role or permission checked (401/403).
        .layer(from_fn_with_state(state.clone(), authorization::authorize))
        // 4. Body size and intrusion detection (413/400).
        .layer(from_fn_with_state(state.clone(), validation::validate))
        .layer(DefaultBodyLimit::max(state.config.server.max_body))
        // 5–6. Proxied routes go to their upstream through its circuit breaker (503/502/504);
        // the rest are served by Rampart's own handlers below.
        .layer(from_fn_with_state(state.clone(), proxy::dispatch));

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
