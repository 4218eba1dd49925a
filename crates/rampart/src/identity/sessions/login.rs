//! `POST /auth/login`: a password checked against the lockout counters, and a new login.

use axum::extract::State;
use axum::response::Response;
use serde_json::json;

use crate::audit::{NewAuditEntry, RequestContext};
use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::password::Verified;
use crate::state::AppState;
use crate::store::Family;
use crate::tokens;

use super::attempts::{Counted, record_failure, release, reserve};
use super::{DAY, LoginBody, TokenResponse, issue, seconds};

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
        return refuse_unchecked(&state, &context, &counters, String::new(), "too_long").await;
    }
    let user = state.stores.data.user_by_username(&body.username).await?;
    let Some(user) = user else {
        return refuse_unchecked(&state, &context, &counters, body.password, "unknown_user").await;
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

/// A login refused with no account's hash to check (`reason`): `password` is hashed against
/// a dummy all the same, so that the answer takes the time a real check takes and unknown
/// users cannot be told apart; counted as a failure.
async fn refuse_unchecked<T>(
    state: &AppState,
    context: &RequestContext,
    counters: &[Counted],
    password: String,
    reason: &'static str,
) -> Result<T, ApiError> {
    state
        .hasher
        .verify_dummy(password)
        .await
        .map_err(ApiError::internal)?;
    record_failure(state, context, counters, None, json!({ "reason": reason })).await?;
    Err(ApiError::InvalidCredentials)
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
