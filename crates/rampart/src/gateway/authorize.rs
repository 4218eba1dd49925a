//! Authorization: whether the caller may use the route it matched (SPEC §3).
//!
//! Runs after rate limiting and authentication. An API key or signature that did not hold is
//! refused here (401) on every route, once it has spent its budget. A route open to anyone (`auth = false`)
//! passes; any other needs a principal (401 otherwise, or 403 `csrf_failed` for a cookie
//! session without its CSRF token), and then the role the route lists or the permission it
//! names (403 `forbidden`, audited as `unauthorized_access`). On a route with `signed = true`
//! an API-key request must also be HMAC-signed (401 otherwise). Ownership of a resource (a
//! user's own trading account) is checked by the handler that loads it.

use super::context::Context;
use super::refusal::{Audit, Metric, Note, Refusal};
use crate::authentication::{Authentication, Credential, Refusal as AuthRefusal};
use crate::error::ApiError;
use crate::routes::Access;
use crate::state::AppState;

/// Whether `role` grants `permission` under the configured roles.
pub fn grants(state: &AppState, role: &str, permission: &str) -> bool {
    state
        .config
        .roles
        .get(role)
        .is_some_and(|permissions| permissions.iter().any(|p| p == permission))
}

/// The authorization stage: refuses callers the matched route does not admit, and a
/// refused API key or signature on every route.
///
/// # Errors
/// 401 (or 403 `csrf_failed`) without a principal, 403 `forbidden` (audited as
/// `unauthorized_access`) for a principal the route does not admit.
pub fn authorize(state: &AppState, context: &Context) -> Result<(), Refusal> {
    if let Authentication::Refused(AuthRefusal::InvalidKey) = context.authentication {
        return Err(ApiError::invalid_token().into());
    }
    let Some(route) = &context.route else {
        return Ok(());
    };
    if route.access == Access::Public {
        return Ok(());
    }
    let principal = match &context.authentication {
        Authentication::Authenticated(principal) => principal,
        Authentication::Refused(AuthRefusal::CsrfFailed) => {
            return Err(ApiError::CsrfFailed.into());
        }
        Authentication::Refused(AuthRefusal::InvalidToken | AuthRefusal::InvalidKey) => {
            return Err(ApiError::invalid_token().into());
        }
        Authentication::Anonymous => return Err(ApiError::unauthenticated().into()),
    };
    let allowed = match &route.access {
        Access::Public | Access::Authenticated => true,
        Access::Roles(roles) => roles.iter().any(|role| **role == *principal.role),
        Access::Permission(permission) => grants(state, &principal.role, permission),
    };
    if allowed && route.signed && principal.credential == Credential::ApiKey && !principal.signed {
        // Programs must sign state they change on such routes (SPEC §2 "Signed requests").
        return Err(ApiError::Unauthorized(
            "This route requires a signed request (X-Timestamp, X-Nonce, X-Signature)".into(),
            crate::error::Challenge::InvalidToken,
        )
        .into());
    }
    if !allowed {
        return Err(Refusal::new(ApiError::forbidden()).noted(Note {
            metric: Metric::Nothing,
            audit: Some(Audit {
                action: "unauthorized_access",
                throttle: None,
                details: serde_json::json!({ "role": &*principal.role }),
            }),
        }));
    }
    Ok(())
}
