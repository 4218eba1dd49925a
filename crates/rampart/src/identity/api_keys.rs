//! The caller's API keys: create (key and secret shown once), list (metadata), delete.
//!
//! Only a login session (bearer token or cookie) manages keys: a key can neither list,
//! mint nor remove keys (403), so a leaked key cannot make itself permanent.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{NewAuditEntry, RequestContext};
use crate::authentication::{Principal, api_key};
use crate::error::ApiError;
use crate::identity::{Problems, check_label, current_user};
use crate::json::{ApiJson, IdPath};
use crate::state::AppState;
use crate::store::ApiKey;
use crate::time_format::rfc3339;

/// Most API keys one user may hold.
pub const MAX_KEYS_PER_USER: i64 = 50;
/// Longest lifetime a key may be given, in days.
pub const MAX_LIFETIME_DAYS: i64 = 3650;

/// `POST /users/me/api-keys`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    /// A label: 1–64 characters of letters, digits, space and `_ - . ( )`.
    pub name: String,
    /// Days until the key stops working (1–3650); absent: it never expires.
    #[serde(default)]
    pub expires_in_days: Option<i64>,
}

/// An API key's metadata; never the key, its hash or its secret.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKeyView {
    /// Numeric id.
    pub id: i64,
    /// Label.
    pub name: String,
    /// The public part of the key, `rk_<prefix>_…`.
    pub prefix: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, or `null` for a key that never expires.
    pub expires_at: Option<String>,
}

impl From<&ApiKey> for ApiKeyView {
    fn from(key: &ApiKey) -> Self {
        Self {
            id: key.id,
            name: key.name.clone(),
            prefix: key.prefix.clone(),
            created_at: rfc3339(key.created_at),
            expires_at: key.expires_at.map(rfc3339),
        }
    }
}

/// A new key, with the key and signing secret shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedApiKey {
    /// Numeric id.
    pub id: i64,
    /// Label.
    pub name: String,
    /// The public part of the key.
    pub prefix: String,
    /// The key, for `X-API-Key`; shown once.
    pub key: String,
    /// The HMAC signing secret (its text is the HMAC key); shown once.
    pub secret: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339, or `null`.
    pub expires_at: Option<String>,
}

/// `{"items": […]}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiKeyList {
    /// Every key of the caller, oldest first.
    pub items: Vec<ApiKeyView>,
}

/// `POST /users/me/api-keys`.
#[utoipa::path(post, path = "/users/me/api-keys", tag = "api-keys", security(("bearer" = [])),
    request_body = NewApiKey,
    responses((status = 201, body = CreatedApiKey, description = "The key and secret, shown once"),
              (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
              (status = 403, description = "Called with an API key", body = crate::error::ErrorBody),
              (status = 409, description = "Too many keys", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    ApiJson(body): ApiJson<NewApiKey>,
) -> Result<Response, ApiError> {
    principal.require_session()?;
    let mut problems = Problems::default();
    problems.extend("name", check_label(&body.name, 64));
    if body
        .expires_in_days
        .is_some_and(|days| !(1..=MAX_LIFETIME_DAYS).contains(&days))
    {
        problems.add(
            "expires_in_days",
            format!("must be a whole number of days from 1 to {MAX_LIFETIME_DAYS}"),
        );
    }
    problems.finish()?;
    let user = current_user(&state, &principal).await?;
    let now = state.now();
    let generated = api_key::generate();
    let sealed = state.keyring.encrypt(
        generated.secret.as_bytes(),
        &crate::sealing::api_key_secret_aad(&generated.prefix),
    );
    let created = state
        .stores
        .data
        .create_api_key(
            ApiKey {
                id: 0,
                user_id: user.id,
                name: body.name,
                prefix: generated.prefix.clone(),
                key_hash: generated.key_hash.clone(),
                secret: sealed,
                created_at: now,
                expires_at: body.expires_in_days.map(|days| now + days * 86_400),
            },
            MAX_KEYS_PER_USER,
            NewAuditEntry::new(
                now,
                "api_key_created",
                Some(user.id),
                json!({ "prefix": generated.prefix }),
                &context,
            ),
        )
        .await?;
    let view = ApiKeyView::from(&created);
    let shown = CreatedApiKey {
        id: view.id,
        name: view.name,
        prefix: view.prefix,
        key: generated.key,
        secret: generated.secret,
        created_at: view.created_at,
        expires_at: view.expires_at,
    };
    Ok((StatusCode::CREATED, Json(shown)).into_response())
}

/// `GET /users/me/api-keys`.
#[utoipa::path(get, path = "/users/me/api-keys", tag = "api-keys", security(("bearer" = [])),
    responses((status = 200, body = ApiKeyList), (status = 401, body = crate::error::ErrorBody),
              (status = 403, description = "Called with an API key", body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<ApiKeyList>, ApiError> {
    principal.require_session()?;
    let keys = state.stores.data.api_keys_of(principal.user_id).await?;
    Ok(Json(ApiKeyList {
        items: keys.iter().map(ApiKeyView::from).collect(),
    }))
}

/// `DELETE /users/me/api-keys/{id}`: the key stops working at once, on every instance.
#[utoipa::path(delete, path = "/users/me/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    params(("id" = i64, Path, description = "API key id")),
    responses((status = 204, description = "Deleted"), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
              (status = 404, description = "No such key of the caller", body = crate::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    principal.require_session()?;
    state
        .stores
        .data
        .delete_api_key(
            principal.user_id,
            id,
            NewAuditEntry::new(
                state.now(),
                "api_key_revoked",
                Some(principal.user_id),
                json!({ "api_key_id": id }),
                &context,
            ),
        )
        .await?;
    // At once here; other instances follow the credential-change log.
    state.api_keys.forget_user(principal.user_id);
    Ok(StatusCode::NO_CONTENT.into_response())
}
