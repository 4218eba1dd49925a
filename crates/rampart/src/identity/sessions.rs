//! Registration, login, refresh-token rotation and logout.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use cookie::{Cookie, SameSite};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{NewAuditEntry, RequestContext};
use crate::authentication::{self, CSRF_HEADER, Principal, REFRESH_COOKIE};
use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::identity::api_keys::ApiKeyView;
use crate::identity::{Problems, UserView, check_email, check_username};
use crate::json::{ApiJson, OptionalJson};
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

/// One counter a password check counts against.
#[derive(Debug, Clone)]
pub(crate) struct Counted {
    scope: LockScope,
    key: String,
    max: u32,
}

impl Counted {
    /// Logins from one IP (its IPv6 prefix).
    fn ip(state: &AppState, ip: &str) -> Self {
        Self {
            scope: LockScope::Ip,
            key: ip.to_owned(),
            max: state.config.login.max_failures_per_ip,
        }
    }

    /// Logins to one account, keyed on [`account_key`].
    fn account(state: &AppState, username: &str) -> Self {
        Self {
            scope: LockScope::Account,
            key: account_key(username),
            max: state.config.login.max_failures_per_account,
        }
    }

    /// Password confirmations of one user: its own counter, with the account's limit.
    pub(crate) fn confirmation(state: &AppState, user: &User) -> Self {
        Self {
            scope: LockScope::Confirm,
            key: user.id.to_string(),
            max: state.config.login.max_failures_per_account,
        }
    }
}

/// The account counter's key: a fixed-size digest of the lower-cased username, whatever
/// its length, and the same whether or not the account exists.
pub(crate) fn account_key(username: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(username.to_lowercase().as_bytes()))
}

/// Reserves one password check against every counter, atomically each: counted before
/// the check, so that parallel guesses never run more checks than the limits allow. 429
/// `locked_out` if any is spent (the reservations already made are handed back).
pub(crate) async fn reserve(state: &AppState, counters: &[Counted]) -> Result<(), ApiError> {
    let now = state.now();
    let window = seconds(state.config.login.failure_window);
    let sessions = &state.stores.sessions;
    for (index, counter) in counters.iter().enumerate() {
        let outcome = sessions
            .reserve_attempt(counter.scope, &counter.key, counter.max, window, now)
            .await;
        let refused = match outcome {
            Ok(Attempt::Allowed) => continue,
            Ok(Attempt::Locked(seconds)) => locked_out(seconds),
            Err(error) => error.into(),
        };
        for earlier in &counters[..index] {
            sessions
                .release_attempt(earlier.scope, &earlier.key, false)
                .await?;
        }
        return Err(refused);
    }
    Ok(())
}

/// Hands the reservations back: a correct password, or a check that never ran. A success
/// clears the IP's failures (SPEC §2) and the user's own confirmation failures (only the
/// password's holder gets there, and the change or deletion that follows ends every other
/// login); never the account's, which many parties share (a victim's bot logging in must
/// not hand a guesser a new allowance): only its window or an admin clears it. No success
/// forgives another attempt still in flight.
pub(crate) async fn release(
    state: &AppState,
    counters: &[Counted],
    succeeded: bool,
) -> Result<(), ApiError> {
    for counter in counters {
        let forget = succeeded && counter.scope != LockScope::Account;
        state
            .stores
            .sessions
            .release_attempt(counter.scope, &counter.key, forget)
            .await?;
    }
    Ok(())
}

/// Settles the reservations as a failed check: audits it (`login_failed` with `details`)
/// and every lockout it started; returns the longest lockout started, if any.
pub(crate) async fn record_failure(
    state: &AppState,
    context: &RequestContext,
    counters: &[Counted],
    user_id: Option<i64>,
    details: serde_json::Value,
) -> Result<Option<i64>, ApiError> {
    state.metrics.failed_logins.inc();
    let now = state.now();
    let window = seconds(state.config.login.failure_window);
    let sessions = &state.stores.sessions;
    let mut started = Vec::new();
    for counter in counters {
        if let Some(seconds) = sessions
            .record_failure(counter.scope, &counter.key, counter.max, window, now)
            .await?
        {
            started.push((counter.scope, seconds));
        }
    }
    let data = &state.stores.data;
    data.append_audit(NewAuditEntry::new(
        now,
        "login_failed",
        user_id,
        details,
        context,
    ))
    .await?;
    for (scope, seconds) in &started {
        data.append_audit(NewAuditEntry::new(
            now,
            "locked_out",
            user_id,
            json!({ "scope": scope.as_str(), "seconds": seconds }),
            context,
        ))
        .await?;
    }
    Ok(started.iter().map(|(_, seconds)| *seconds).max())
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
    // Lockouts key on the IPv6 prefix (a host owns a whole /64); the audit keeps the address.
    let ip = ip.parse::<std::net::IpAddr>().map_or(ip, |address| {
        crate::client_ip::bucket(address, state.config.rate_limits.ipv6_prefix).to_string()
    });
    // Nothing this long was ever accepted at registration: such a name has no account
    // counter (no account can be locked by it, none can exist), only the IP's.
    let too_long =
        body.password.len() > 4 * state.config.password.max_length || body.username.len() > 254;
    let mut counters = vec![Counted::ip(&state, &ip)];
    if body.username.len() <= 254 {
        counters.push(Counted::account(&state, &body.username));
    }
    reserve(&state, &counters).await?;
    if too_long {
        // Refused without hashing it, in the time a real check takes.
        state
            .hasher
            .verify_dummy(String::new())
            .await
            .map_err(ApiError::internal)?;
        record_failure(
            &state,
            &context,
            &counters,
            None,
            json!({ "reason": "too_long" }),
        )
        .await?;
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
        record_failure(
            &state,
            &context,
            &counters,
            None,
            json!({ "reason": "unknown_user" }),
        )
        .await?;
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
            &counters,
            Some(user.id),
            json!({ "reason": "wrong_password" }),
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
        // The password was right: this attempt is no failure (nor a success).
        release(&state, &counters, false).await?;
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
    release(&state, &counters, true).await?;
    let sessions = &state.stores.sessions;

    // Every login ends at a fixed time (SPEC §5: absolute lifetimes; rotation never moves
    // it): a cookie session after 24 hours or, remembered, 30 days; a login without cookies
    // `tokens.refresh_ttl` (7 days, SPEC §2) after it began, however often it refreshes.
    let lifetime = if body.cookie {
        if body.remember_me { 30 * DAY } else { DAY }
    } else {
        seconds(state.config.tokens.refresh_ttl)
    };
    let now = state.now();
    // Cookie sessions get a CSRF token, stored (as a hash) with the family and carried (as
    // the same hash) in each access token; every refresh replaces it.
    let csrf_token = body.cookie.then(tokens::new_csrf_token);
    let family = Family {
        id: tokens::new_family_id(),
        user_id: user.id,
        created_at: now,
        expires_at: now + lifetime,
        revoked_at: None,
        csrf_hash: csrf_token.as_deref().map(tokens::hash_csrf_token),
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

/// The access cookie for a login, expiring with its token.
pub(crate) fn access_cookie(
    state: &AppState,
    user: &User,
    family: &Family,
) -> Result<HeaderValue, ApiError> {
    let (access_token, lifetime) = state
        .tokens
        .issue_for(user, family)
        .map_err(ApiError::internal)?;
    cookie_header(authentication::ACCESS_COOKIE, &access_token, "/", lifetime)
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

/// A session cookie's `Set-Cookie` value: `HttpOnly; Secure; SameSite=Strict`, scoped to
/// `path`, kept `max_age` seconds by the browser (0 deletes it).
pub(crate) fn cookie_header(
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
) -> Result<HeaderValue, ApiError> {
    let cookie = Cookie::build((name, value))
        .path(path)
        .max_age(cookie::time::Duration::seconds(max_age))
        .http_only(true)
        .secure(true)
        .same_site(SameSite::Strict);
    HeaderValue::try_from(cookie.to_string()).map_err(ApiError::internal)
}

/// `Set-Cookie` headers that delete the access and refresh cookies.
fn clearing_cookies() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, path) in [
        (authentication::ACCESS_COOKIE, "/"),
        (REFRESH_COOKIE, "/auth"),
    ] {
        if let Ok(value) = cookie_header(name, "", path, 0) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_cookies_carry_every_attribute() {
        let value = cookie_header(authentication::ACCESS_COOKIE, "tok", "/", 3600).unwrap();
        assert_eq!(
            value.to_str().unwrap(),
            "__Host-access_token=tok; HttpOnly; SameSite=Strict; Secure; Path=/; Max-Age=3600"
        );
    }

    #[test]
    fn logout_clears_both_cookies_where_they_were_set() {
        let headers = clearing_cookies();
        let values: Vec<&str> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|value| value.to_str().unwrap())
            .collect();
        assert_eq!(
            values,
            [
                "__Host-access_token=; HttpOnly; SameSite=Strict; Secure; Path=/; Max-Age=0",
                "__Secure-refresh_token=; HttpOnly; SameSite=Strict; Secure; Path=/auth; Max-Age=0",
            ]
        );
    }
}
