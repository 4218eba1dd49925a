//! Registration, login, refresh-token rotation and logout.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{NewAuditEntry, RequestContext};
use crate::authentication::{self, REFRESH_COOKIE};
use crate::error::ApiError;
use crate::identity::{Problems, UserView, check_email, check_username};
use crate::json::ApiJson;
use crate::password::{self};
use crate::state::AppState;
use crate::store::{Family, NewUser, User};

mod attempts;
mod cookies;
mod login;
mod logout;
mod refresh;

pub(crate) use attempts::{Counted, account_key, record_failure, release, reserve};
pub(crate) use cookies::access_cookie;
use cookies::cookie_header;
pub use login::{__path_login, ClientIpText, login};
pub use logout::{
    __path_logout, __path_logout_all, LogoutAllBody, RevokedReport, logout, logout_all, revoke_user,
};
pub(crate) use logout::{active_api_keys, end_login};
pub use refresh::{__path_refresh, refresh};

/// `POST /auth/register`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    /// 3–20 characters of `[A-Za-z0-9_]`.
    pub username: String,
    /// A valid address.
    pub email: String,
    /// Must meet the password policy.
    pub password: String,
}

/// `POST /auth/login`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    /// Username (case-insensitive).
    pub username: String,
    /// Password.
    pub password: String,
    /// Also set the tokens as cookies and return a CSRF token.
    #[serde(default)]
    pub cookie: bool,
    /// With `cookie`: keep the session for 30 days instead of 24 hours.
    #[serde(default)]
    pub remember_me: bool,
}

/// `POST /auth/refresh`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    /// The refresh token; may be omitted when the refresh cookie is sent.
    pub refresh_token: Option<String>,
}

/// Tokens issued by login and refresh.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenResponse {
    /// The JWS access token.
    pub access_token: String,
    /// The opaque refresh token.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds the access token lives.
    pub expires_in: i64,
    /// Seconds the refresh token lives.
    pub refresh_expires_in: i64,
    /// The user.
    pub user: UserView,
    /// With cookies: the value to send as `X-CSRF-Token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
}

const DAY: i64 = 86_400;

/// Creates an account; the first account ever becomes `admin`.
#[utoipa::path(post, path = "/auth/register", tag = "auth", request_body = RegisterBody,
    responses((status = 201, description = "Created; the first user ever is admin", body = UserView),
              (status = 400, description = "Invalid fields, every broken rule listed", body = crate::error::ErrorBody),
              (status = 409, description = "Username or email taken", body = crate::error::ErrorBody),
              (status = 413, body = crate::error::ErrorBody), (status = 415, body = crate::error::ErrorBody),
              (status = 429, description = "Rate limited", body = crate::error::ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    context: RequestContext,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<Response, ApiError> {
    let mut problems = Problems::default();
    problems.extend("username", check_username(&body.username));
    problems.extend("email", check_email(&body.email));
    problems.extend(
        "password",
        password::check_policy(&state.config.password, &body.password, &body.username),
    );
    problems.finish()?;
    let hash = state
        .hasher
        .hash(body.password)
        .await
        .map_err(ApiError::internal)?;
    let now = state.now();
    let user = state
        .stores
        .data
        .create_user(
            NewUser {
                username: body.username,
                email: body.email,
                password_hash: hash,
                role: state.config.default_role.clone(),
                force_admin: false,
                created_at: now,
            },
            NewAuditEntry::new(now, "user_registration", None, json!({}), &context),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(UserView::from(&user))).into_response())
}

fn seconds(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX / 4)
}

/// Builds the token response, with cookies when asked.
fn issue(
    state: &AppState,
    user: &User,
    family: &Family,
    refresh_token: String,
    refresh_lifetime: i64,
    csrf_token: Option<String>,
) -> Result<Response, ApiError> {
    // Bound to the family's CSRF hash, and never outliving the login.
    let (access_token, access_ttl) = state
        .tokens
        .issue_for(user, family)
        .map_err(ApiError::internal)?;
    let mut headers = HeaderMap::new();
    if csrf_token.is_some() {
        headers.append(
            header::SET_COOKIE,
            cookie_header(
                authentication::ACCESS_COOKIE,
                &access_token,
                "/",
                access_ttl,
            )?,
        );
        headers.append(
            header::SET_COOKIE,
            cookie_header(REFRESH_COOKIE, &refresh_token, "/auth", refresh_lifetime)?,
        );
    }
    let body = TokenResponse {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: access_ttl,
        refresh_expires_in: refresh_lifetime,
        user: UserView::from(user),
        csrf_token,
    };
    Ok((StatusCode::OK, headers, Json(body)).into_response())
}
