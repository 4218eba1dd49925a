//! Authorization: whether the caller may use the route it matched (SPEC §3).
//!
//! Runs after rate limiting and authentication. An API key or signature that did not hold is
//! refused here (401) on every route, once it has spent its budget. A route open to anyone (`auth = false`)
//! passes; any other needs a principal (401 otherwise, or 403 `csrf_failed` for a cookie
//! session without its CSRF token), and then the role the route lists or the permission it
//! names (403 `forbidden`, audited as `unauthorized_access`). On a route with `signed = true`
//! an API-key request must also be HMAC-signed (401 otherwise). Ownership of a resource (a
//! user's own trading account) is checked by the handler that loads it.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::audit::{record_in_background, request_entry};
use crate::authentication::{Authentication, Credential, Principal, Refusal};
use crate::error::ApiError;
use crate::routes::{Access, MatchedRoute};
use crate::state::AppState;

/// Whether `role` grants `permission` under the configured roles.
pub fn grants(state: &AppState, role: &str, permission: &str) -> bool {
    state
        .config
        .roles
        .get(role)
        .is_some_and(|permissions| permissions.iter().any(|p| p == permission))
}

/// Refuses callers the matched route does not admit, and a refused API key or signature on
/// every route.
pub async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Some(Authentication::Refused(Refusal::InvalidKey)) = request.extensions().get() {
        return ApiError::invalid_token().into_response();
    }
    let Some(route) = request
        .extensions()
        .get::<MatchedRoute>()
        .map(|matched| Arc::clone(&matched.0))
    else {
        return next.run(request).await;
    };
    if route.access == Access::Public {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let principal = match Principal::from_request_parts(&mut parts, &state).await {
        Ok(principal) => principal,
        Err(refusal) => return refusal.into_response(),
    };
    let allowed = match &route.access {
        Access::Public | Access::Authenticated => true,
        Access::Roles(roles) => roles.iter().any(|role| **role == *principal.role),
        Access::Permission(permission) => grants(&state, &principal.role, permission),
    };
    let request = Request::from_parts(parts, body);
    if allowed && route.signed && principal.credential == Credential::ApiKey && !principal.signed {
        // Programs must sign state they change on such routes (SPEC §2 "Signed requests").
        return ApiError::Unauthorized(
            "This route requires a signed request (X-Timestamp, X-Nonce, X-Signature)".into(),
            crate::error::Challenge::InvalidToken,
        )
        .into_response();
    }
    if !allowed {
        let entry = request_entry(
            state.now(),
            "unauthorized_access",
            &request,
            serde_json::json!({ "role": &*principal.role }),
        );
        record_in_background(state.stores.data.clone(), entry);
        return ApiError::forbidden().into_response();
    }
    next.run(request).await
}
