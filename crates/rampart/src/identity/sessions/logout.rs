//! Logout, "log out everywhere", and revoking every login of a user.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{NewAuditEntry, RequestContext};
use crate::authentication::Principal;
use crate::error::ApiError;
use crate::identity::api_keys::ApiKeyView;
use crate::json::OptionalJson;
use crate::state::AppState;

use super::cookies::clearing_cookies;

/// Revokes the current login.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "The current login is revoked"),
              (status = 401, body = crate::error::ErrorBody),
              (status = 403, description = "csrf_failed, or forbidden for API keys", body = crate::error::ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
) -> Result<Response, ApiError> {
    // An API key has no login to end; it is revoked by deleting it.
    principal.require_session()?;
    end_login(&state, &principal, &context, json!({ "all": false })).await?;
    Ok((StatusCode::NO_CONTENT, clearing_cookies()).into_response())
}

/// Revokes the caller's login on this instance at once (the others within
/// `tokens.revocation_lag`), audited as `logout` with `details`.
pub(crate) async fn end_login(
    state: &AppState,
    principal: &Principal,
    context: &RequestContext,
    details: serde_json::Value,
) -> Result<(), ApiError> {
    let now = state.now();
    state
        .stores
        .sessions
        .revoke_family(&principal.family_id, now)
        .await?;
    state
        .revocations
        .insert([(principal.family_id.to_string(), now)]);
    state
        .stores
        .data
        .append_audit(NewAuditEntry::new(
            now,
            "logout",
            Some(principal.user_id),
            details,
            context,
        ))
        .await?;
    Ok(())
}

/// `POST /auth/logout-all`; the body is optional.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutAllBody {
    /// Also revoke every API key of the user. Keys are for programs and survive by default.
    /// Naming it (`true` or `false`) asks for the report (200) instead of 204.
    #[serde(default)]
    pub revoke_api_keys: Option<bool>,
}

/// What "log out everywhere" or a password change revoked, and the API keys that still work.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RevokedReport {
    /// Logins (token families) revoked.
    pub revoked_sessions: usize,
    /// API keys revoked (only with `revoke_api_keys`).
    pub revoked_api_keys: usize,
    /// The user's API keys that are still active (not expired, not revoked).
    pub active_api_keys: Vec<ApiKeyView>,
    /// A login with a CSRF token: the new one, for the login that made the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
}

/// The user's API keys that still work.
pub(crate) async fn active_api_keys(
    state: &AppState,
    user_id: i64,
) -> Result<Vec<ApiKeyView>, ApiError> {
    let now = state.now();
    Ok(state
        .stores
        .data
        .api_keys_of(user_id)
        .await?
        .iter()
        .filter(|key| key.expires_at.is_none_or(|expires_at| expires_at > now))
        .map(ApiKeyView::from)
        .collect())
}

/// Revokes every login of the user; with `{"revoke_api_keys": true}` every API key too, in
/// one statement (a key created meanwhile included), audited as one `api_key_revoked`.
#[utoipa::path(post, path = "/auth/logout-all", tag = "auth", security(("bearer" = [])),
    request_body(content = LogoutAllBody, description = "Optional"),
    responses((status = 204, description = "Every login of the user is revoked (no `revoke_api_keys` in the body)"),
              (status = 200, description = "The body named `revoke_api_keys`: what was revoked, and the API keys still active", body = RevokedReport),
              (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody),
              (status = 403, description = "csrf_failed, or forbidden for API keys", body = crate::error::ErrorBody),
              (status = 415, body = crate::error::ErrorBody)))]
pub async fn logout_all(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    OptionalJson(body): OptionalJson<LogoutAllBody>,
) -> Result<Response, ApiError> {
    principal.require_session()?;
    let revoke_keys = body.revoke_api_keys.unwrap_or(false);
    let now = state.now();
    let revoked_sessions = revoke_user(&state, principal.user_id, None).await?;
    state
        .stores
        .data
        .append_audit(NewAuditEntry::new(
            now,
            "logout",
            Some(principal.user_id),
            json!({ "all": true, "revoke_api_keys": revoke_keys }),
            &context,
        ))
        .await?;
    let revoked_api_keys = if revoke_keys {
        let deleted = state
            .stores
            .data
            .delete_api_keys_of(
                principal.user_id,
                NewAuditEntry::new(
                    state.now(),
                    "api_key_revoked",
                    Some(principal.user_id),
                    json!({ "reason": "logout_all" }),
                    &context,
                ),
            )
            .await?;
        state.api_keys.forget_user(principal.user_id);
        deleted.len()
    } else {
        0
    };
    if body.revoke_api_keys.is_none() {
        return Ok((StatusCode::NO_CONTENT, clearing_cookies()).into_response());
    }
    let report = RevokedReport {
        revoked_sessions,
        revoked_api_keys,
        active_api_keys: active_api_keys(&state, principal.user_id).await?,
        csrf_token: None,
    };
    Ok((StatusCode::OK, clearing_cookies(), Json(report)).into_response())
}

/// Revokes every login of a user except `keep`, here and (within the lag) everywhere;
/// returns how many were revoked.
///
/// # Errors
/// The session store fails.
pub async fn revoke_user(
    state: &AppState,
    user_id: i64,
    keep: Option<&str>,
) -> Result<usize, ApiError> {
    let now = state.now();
    let revoked = state
        .stores
        .sessions
        .revoke_user(user_id, keep, now)
        .await?;
    let count = revoked.len();
    state
        .revocations
        .insert(revoked.into_iter().map(|id| (id, now)));
    Ok(count)
}
