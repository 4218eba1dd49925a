//! Registration, login, refresh-token rotation and logout.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{NewAuditEntry, RequestContext};
use crate::authentication::{self, CSRF_HEADER, Principal, REFRESH_COOKIE};
use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::identity::api_keys::ApiKeyView;
use crate::identity::{Problems, UserView, check_email, check_username};
use crate::json::ApiJson;
use crate::password::{self, Verified};
use crate::state::AppState;
use crate::store::{Attempt, Family, LockScope, NewUser, Rotation, User};
use crate::tokens;

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

fn locked_out(seconds: i64) -> ApiError {
    ApiError::LockedOut {
        retry_after: std::time::Duration::from_secs(u64::try_from(seconds.max(1)).unwrap_or(1)),
    }
}

/// Reserves one password check against the IP and the account: counted before the check,
/// atomically, so that parallel guesses never run more checks than the limits allow.
/// 429 `locked_out` if either is spent (the other's reservation is handed back).
async fn reserve_attempt(state: &AppState, ip: &str, account: &str) -> Result<(), ApiError> {
    let now = state.now();
    let window = seconds(state.config.login.failure_window);
    let sessions = &state.stores.sessions;
    let login = &state.config.login;
    if let Attempt::Locked(seconds) = sessions
        .reserve_attempt(LockScope::Ip, ip, login.max_failures_per_ip, window, now)
        .await?
    {
        return Err(locked_out(seconds));
    }
    match sessions
        .reserve_attempt(
            LockScope::Account,
            account,
            login.max_failures_per_account,
            window,
            now,
        )
        .await
    {
        Ok(Attempt::Allowed) => Ok(()),
        Ok(Attempt::Locked(seconds)) => {
            sessions.release_attempt(LockScope::Ip, ip).await?;
            Err(locked_out(seconds))
        }
        Err(error) => {
            sessions.release_attempt(LockScope::Ip, ip).await?;
            Err(error.into())
        }
    }
}

/// Reserves one password confirmation (`PUT /users/me/password`, `DELETE /users/me`)
/// against the account's login limit: wrong confirmations count like wrong logins, and an
/// account locked out of logins is locked out of confirmations too.
pub(crate) async fn reserve_confirmation(state: &AppState, user: &User) -> Result<(), ApiError> {
    let now = state.now();
    let window = seconds(state.config.login.failure_window);
    match state
        .stores
        .sessions
        .reserve_attempt(
            LockScope::Account,
            &user.username.to_lowercase(),
            state.config.login.max_failures_per_account,
            window,
            now,
        )
        .await?
    {
        Attempt::Allowed => Ok(()),
        Attempt::Locked(seconds) => Err(locked_out(seconds)),
    }
}

/// Counts a wrong password confirmation against the account, as a failed login.
pub(crate) async fn record_confirmation_failure(
    state: &AppState,
    context: &RequestContext,
    user: &User,
    during: &'static str,
) -> Result<(), ApiError> {
    state.metrics.failed_logins.inc();
    let now = state.now();
    let window = seconds(state.config.login.failure_window);
    let locked = state
        .stores
        .sessions
        .record_failure(
            LockScope::Account,
            &user.username.to_lowercase(),
            state.config.login.max_failures_per_account,
            window,
            now,
        )
        .await?;
    let data = &state.stores.data;
    data.append_audit(NewAuditEntry::new(
        now,
        "login_failed",
        Some(user.id),
        json!({ "reason": "wrong_password", "during": during }),
        context,
    ))
    .await?;
    if locked.is_some() {
        data.append_audit(NewAuditEntry::new(
            now,
            "locked_out",
            Some(user.id),
            json!({ "scope": "account", "seconds": window }),
            context,
        ))
        .await?;
    }
    Ok(())
}

/// A correct password confirmation: the account's count starts over, as after a login.
pub(crate) async fn clear_confirmation(state: &AppState, user: &User) -> Result<(), ApiError> {
    state
        .stores
        .sessions
        .clear_failures(LockScope::Account, &user.username.to_lowercase())
        .await?;
    Ok(())
}

/// Confirms a reserved attempt as failed against the IP and the account, auditing a new
/// lockout.
async fn record_failure(
    state: &AppState,
    context: &RequestContext,
    ip: &str,
    account: &str,
    user: Option<&User>,
    reason: &'static str,
) -> Result<(), ApiError> {
    state.metrics.failed_logins.inc();
    let now = state.now();
    let window = seconds(state.config.login.failure_window);
    let sessions = &state.stores.sessions;
    let ip_locked = sessions
        .record_failure(
            LockScope::Ip,
            ip,
            state.config.login.max_failures_per_ip,
            window,
            now,
        )
        .await?;
    let account_locked = sessions
        .record_failure(
            LockScope::Account,
            account,
            state.config.login.max_failures_per_account,
            window,
            now,
        )
        .await?;
    let user_id = user.map(|user| user.id);
    let data = &state.stores.data;
    data.append_audit(NewAuditEntry::new(
        now,
        "login_failed",
        user_id,
        json!({ "reason": reason }),
        context,
    ))
    .await?;
    for (scope, locked) in [("ip", ip_locked), ("account", account_locked)] {
        if locked.is_some() {
            data.append_audit(NewAuditEntry::new(
                now,
                "locked_out",
                user_id,
                json!({ "scope": scope, "seconds": window }),
                context,
            ))
            .await?;
        }
    }
    Ok(())
}

/// Logs in with a username and password.
#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginBody,
    responses((status = 200, description = "Tokens (and cookies with `cookie: true`)", body = TokenResponse),
              (status = 400, body = crate::error::ErrorBody),
              (status = 401, description = "invalid_credentials", body = crate::error::ErrorBody),
              (status = 403, description = "disabled (only after a correct password)", body = crate::error::ErrorBody),
              (status = 429, description = "locked_out or rate_limited, with Retry-After", body = crate::error::ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ClientIpText(ip): ClientIpText,
    context: RequestContext,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<Response, ApiError> {
    let account = body.username.to_lowercase();
    // Lockouts key on the IPv6 prefix (a host owns a whole /64); the audit keeps the address.
    let ip = ip.parse::<std::net::IpAddr>().map_or(ip, |address| {
        crate::client_ip::bucket(address, state.config.rate_limits.ipv6_prefix).to_string()
    });
    reserve_attempt(&state, &ip, &account).await?;
    if body.password.len() > 4 * state.config.password.max_length || body.username.len() > 254 {
        // Nothing this long was ever accepted at registration; refuse without hashing it.
        state
            .hasher
            .verify_dummy(String::new())
            .await
            .map_err(ApiError::internal)?;
        record_failure(&state, &context, &ip, &account, None, "too_long").await?;
        return Err(ApiError::InvalidCredentials);
    }
    let user = state.stores.data.user_by_username(&body.username).await?;
    let Some(user) = user else {
        // Spend the time a real check takes, so unknown users cannot be told apart.
        state
            .hasher
            .verify_dummy(body.password)
            .await
            .map_err(ApiError::internal)?;
        record_failure(&state, &context, &ip, &account, None, "unknown_user").await?;
        return Err(ApiError::InvalidCredentials);
    };
    let verified = state
        .hasher
        .verify(body.password, user.password_hash.clone())
        .await
        .map_err(ApiError::internal)?;
    if verified == Verified::No {
        record_failure(
            &state,
            &context,
            &ip,
            &account,
            Some(&user),
            "wrong_password",
        )
        .await?;
        return Err(ApiError::InvalidCredentials);
    }
    if let Verified::YesRehashed(new_hash) = &verified {
        state
            .stores
            .data
            .upgrade_password_hash(user.id, &user.password_hash, new_hash)
            .await?;
    }
    if user.disabled {
        // The password was right: this attempt is no failure.
        let sessions = &state.stores.sessions;
        sessions.release_attempt(LockScope::Ip, &ip).await?;
        sessions
            .release_attempt(LockScope::Account, &account)
            .await?;
        state
            .stores
            .data
            .append_audit(NewAuditEntry::new(
                state.now(),
                "login_failed",
                Some(user.id),
                json!({ "reason": "disabled" }),
                &context,
            ))
            .await?;
        return Err(ApiError::Disabled);
    }
    let sessions = &state.stores.sessions;
    sessions.clear_failures(LockScope::Ip, &ip).await?;
    sessions
        .clear_failures(LockScope::Account, &account)
        .await?;

    let lifetime = if body.cookie {
        if body.remember_me { 30 * DAY } else { DAY }
    } else {
        seconds(state.config.tokens.refresh_ttl)
    };
    let now = state.now();
    let family = Family {
        id: tokens::new_family_id(),
        user_id: user.id,
        created_at: now,
        expires_at: now + lifetime,
        revoked_at: None,
        csrf_hash: None,
    };
    // Cookie sessions get a CSRF token, stored (as a hash) with the family and carried (as
    // the same hash) in each access token; every refresh replaces it.
    let csrf_token = body.cookie.then(tokens::new_csrf_token);
    let family = Family {
        csrf_hash: csrf_token.as_deref().map(tokens::hash_csrf_token),
        ..family
    };
    let refresh_token = format!("{}.{}", family.id, tokens::new_refresh_token());
    sessions
        .create_family(&family, &tokens::hash_refresh_token(&refresh_token))
        .await?;
    state
        .stores
        .data
        .append_audit(NewAuditEntry::new(
            now,
            "login_success",
            Some(user.id),
            json!({ "cookie": body.cookie, "rehashed": matches!(verified, Verified::YesRehashed(_)) }),
            &context,
        ))
        .await?;
    issue(&state, &user, &family, refresh_token, lifetime, csrf_token)
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
    let csrf_hash = csrf_token.as_deref().map(tokens::hash_csrf_token);
    let access_token = state
        .tokens
        .issue_with_csrf(user, &family.id, csrf_hash.as_deref())
        .map_err(ApiError::internal)?;
    let access_ttl = state.tokens.access_ttl();
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

pub(crate) fn cookie_header(
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
) -> Result<HeaderValue, ApiError> {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
    ))
    .map_err(ApiError::internal)
}

fn clearing_cookies() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, path) in [
        (authentication::ACCESS_COOKIE, "/"),
        (REFRESH_COOKIE, "/auth"),
    ] {
        if let Ok(value) = HeaderValue::from_str(&format!(
            "{name}=; Path={path}; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
        )) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    headers
}

/// The client IP as text.
#[derive(Debug, Clone)]
pub struct ClientIpText(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIpText {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<ClientIp>().map_or_else(
            || "unknown".to_owned(),
            |ip| ip.0.to_string(),
        )))
    }
}

/// Exchanges a refresh token for new tokens; the old one stops working at once.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth", request_body = RefreshBody,
    responses((status = 200, description = "New access and refresh tokens; the old refresh token is spent", body = TokenResponse),
              (status = 401, description = "unauthorized, or token_reused (the login is revoked)", body = crate::error::ErrorBody),
              (status = 403, description = "csrf_failed (cookie refresh without X-CSRF-Token)", body = crate::error::ErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    context: RequestContext,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: RefreshBody = if body.is_empty() {
        RefreshBody::default()
    } else {
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        crate::json::parse(&body)?
    };
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
            return Err(ApiError::CsrfFailed);
        }
    }
    // A refresh through the cookie replaces the CSRF token: the previous one stops working.
    let csrf_token = from_cookie.then(tokens::new_csrf_token);
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

/// Revokes the current login.
#[utoipa::path(post, path = "/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204, description = "The current login is revoked"),
              (status = 400, description = "Called with an API key, which has no login", body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 403, description = "csrf_failed", body = crate::error::ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
) -> Result<Response, ApiError> {
    // An API key has no login to end; it is revoked by deleting it.
    if principal.family_id.is_empty() {
        return Err(ApiError::invalid(
            "An API key has no session to log out of; delete the key to revoke it",
        ));
    }
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
            json!({ "all": false }),
            &context,
        ))
        .await?;
    Ok((StatusCode::NO_CONTENT, clearing_cookies()).into_response())
}

/// `POST /auth/logout-all`; the body is optional.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogoutAllBody {
    /// Also revoke every API key of the user. Keys are for programs and survive by default.
    #[serde(default)]
    pub revoke_api_keys: bool,
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
    /// Cookie sessions: the new CSRF token of the login that made the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf_token: Option<String>,
}

/// Revokes the user's API keys if asked (each audited), then lists the still-active ones.
pub(crate) async fn settle_api_keys(
    state: &AppState,
    user_id: i64,
    revoke: bool,
    reason: &'static str,
    context: &RequestContext,
) -> Result<(usize, Vec<ApiKeyView>), ApiError> {
    let data = &state.stores.data;
    let mut revoked = 0;
    if revoke {
        for key in data.api_keys_of(user_id).await? {
            let entry = NewAuditEntry::new(
                state.now(),
                "api_key_revoked",
                Some(user_id),
                json!({ "api_key_id": key.id, "reason": reason }),
                context,
            );
            match data.delete_api_key(user_id, key.id, entry).await {
                Ok(()) => revoked += 1,
                // Deleted meanwhile by another request: gone either way.
                Err(crate::store::StoreError::NotFound) => {}
                Err(error) => return Err(error.into()),
            }
        }
    }
    let now = state.now();
    let active = data
        .api_keys_of(user_id)
        .await?
        .iter()
        .filter(|key| key.expires_at.is_none_or(|expires_at| expires_at > now))
        .map(ApiKeyView::from)
        .collect();
    Ok((revoked, active))
}

/// Revokes every login of the user; with `{"revoke_api_keys": true}` every API key too.
#[utoipa::path(post, path = "/auth/logout-all", tag = "auth", security(("bearer" = [])),
    request_body(content = LogoutAllBody, description = "Optional"),
    responses((status = 200, description = "Every login of the user is revoked; the API keys still active are listed", body = RevokedReport),
              (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn logout_all(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: LogoutAllBody = if body.is_empty() {
        LogoutAllBody::default()
    } else {
        // Only an object: serde would take `[true]` for the struct's fields in order.
        if !crate::json::parse::<serde_json::Value>(&body)?.is_object() {
            return Err(ApiError::invalid("The body must be a JSON object"));
        }
        crate::json::parse(&body)?
    };
    if body.revoke_api_keys && principal.credential == authentication::Credential::ApiKey {
        return Err(ApiError::Forbidden(
            "API keys are revoked from a login session, not with an API key".into(),
        ));
    }
    let now = state.now();
    let revoked_sessions = revoke_user(&state, principal.user_id, None).await?;
    state
        .stores
        .data
        .append_audit(NewAuditEntry::new(
            now,
            "logout",
            Some(principal.user_id),
            json!({ "all": true, "revoke_api_keys": body.revoke_api_keys }),
            &context,
        ))
        .await?;
    let (revoked_api_keys, active_api_keys) = settle_api_keys(
        &state,
        principal.user_id,
        body.revoke_api_keys,
        "logout_all",
        &context,
    )
    .await?;
    let report = RevokedReport {
        revoked_sessions,
        revoked_api_keys,
        active_api_keys,
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
