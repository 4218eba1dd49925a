//! `POST /auth/refresh`: refresh-token rotation, with reuse detection.

use axum::extract::State;
use axum::response::Response;
use http::HeaderMap;
use serde_json::json;

use crate::audit::{NewAuditEntry, RequestContext};
use crate::authentication::{self, CSRF_HEADER, REFRESH_COOKIE};
use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::json::OptionalJson;
use crate::state::AppState;
use crate::store::Rotation;
use crate::tokens;

use super::{RefreshBody, TokenResponse, issue, seconds};

/// Exchanges a refresh token for new tokens; the old one stops working at once.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", request_body = RefreshBody,
    responses((status = 200, description = "New access and refresh tokens; the old refresh token is spent", body = TokenResponse),
              (status = 401, description = "unauthorized, or token_reused (the login is revoked)", body = crate::error::ErrorBody),
              (status = 403, description = "csrf_failed (cookie refresh without X-CSRF-Token)", body = crate::error::ErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    client: Option<axum::Extension<ClientIp>>,
    context: RequestContext,
    headers: HeaderMap,
    OptionalJson(body): OptionalJson<RefreshBody>,
) -> Result<Response, ApiError> {
    let (token, from_cookie) = match body.refresh_token {
        Some(token) => (token, false),
        None => match authentication::cookie(&headers, REFRESH_COOKIE) {
            Some(token) => (token.to_owned(), true),
            None => return Err(ApiError::unauthenticated()),
        },
    };
    let Some((family_id, _)) = token.split_once('.') else {
        return Err(ApiError::invalid_token());
    };
    if token.len() > 256 {
        return Err(ApiError::invalid_token());
    }
    let now = state.now();
    let next = format!("{family_id}.{}", tokens::new_refresh_token());
    let existing = state.stores.sessions.family(family_id).await?;
    let Some(existing) = existing else {
        return Err(ApiError::invalid_token());
    };
    if from_cookie {
        let presented = headers
            .get(CSRF_HEADER)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if !state
            .tokens
            .csrf_matches_hash(family_id, existing.csrf_hash.as_deref(), presented)
        {
            let client = client.map(|client| client.0);
            authentication::record_refresh_csrf_failure(&state, client, &context);
            return Err(ApiError::CsrfFailed);
        }
    }
    // Every refresh of a cookie-born login replaces its CSRF token, whichever way the
    // refresh token came: the previous one stops working, and the new access token
    // carries the new one's hash.
    let csrf_token = (from_cookie || existing.csrf_hash.is_some()).then(tokens::new_csrf_token);
    // The login ends when it was set to end at login; rotation never moves that. Each new
    // refresh token lives `refresh_ttl`, cut at the login's end.
    let expires_at = (now + seconds(state.config.tokens.refresh_ttl)).min(existing.expires_at);
    let rotation = state
        .stores
        .sessions
        .rotate(
            &tokens::hash_refresh_token(&token),
            &tokens::hash_refresh_token(&next),
            now,
            expires_at,
            csrf_token
                .as_deref()
                .map(tokens::hash_csrf_token)
                .as_deref(),
        )
        .await?;
    match rotation {
        Rotation::Rotated(family) if family.id == family_id => {
            let user = state.stores.data.user_by_id(family.user_id).await?;
            let Some(user) = user.filter(|user| !user.disabled) else {
                state.stores.sessions.revoke_family(&family.id, now).await?;
                state.revocations.insert([(family.id, now)]);
                return Err(ApiError::invalid_token());
            };
            state
                .stores
                .data
                .append_audit(NewAuditEntry::new(
                    now,
                    "token_refresh",
                    Some(user.id),
                    json!({}),
                    &context,
                ))
                .await?;
            let lifetime = expires_at.min(family.expires_at) - now;
            issue(&state, &user, &family, next, lifetime, csrf_token)
        }
        Rotation::Reused(family) => {
            state.revocations.insert([(family.id.clone(), now)]);
            state
                .stores
                .data
                .append_audit(NewAuditEntry::new(
                    now,
                    "token_reused",
                    Some(family.user_id),
                    json!({ "family": family.id }),
                    &context,
                ))
                .await?;
            Err(ApiError::TokenReused)
        }
        Rotation::Rotated(_) | Rotation::Invalid => Err(ApiError::invalid_token()),
    }
}
