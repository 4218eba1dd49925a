//! The caller's own account: profile, password, export and deletion; and user lookup.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{AuditRecord, NewAuditEntry, RequestContext};
use crate::authentication::{Credential, Principal};
use crate::error::ApiError;
use crate::identity::accounts::AccountView;
use crate::identity::api_keys::ApiKeyView;
use crate::identity::sessions::{self, RevokedReport, revoke_user};
use crate::identity::{Admin, Problems, UserView, current_user};
use crate::json::{ApiJson, IdPath};
use crate::password::{self, Verified};
use crate::state::AppState;
use crate::store::{AuditFilter, Family, User};
use crate::tokens;

/// `PUT /users/me/password`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The password now.
    pub current_password: String,
    /// The new password; must meet the policy.
    pub new_password: String,
    /// Also revoke every API key of the user. Keys are for programs and survive by default.
    /// Naming it (`true` or `false`) asks for the report (200) instead of 204.
    #[serde(default)]
    pub revoke_api_keys: Option<bool>,
}

/// `DELETE /users/me`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteBody {
    /// The password, to confirm.
    pub password: String,
}

/// `GET /users/me`.
#[utoipa::path(get, path = "/users/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = UserView), (status = 401, body = crate::error::ErrorBody)))]
pub async fn me(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<UserView>, ApiError> {
    let user = current_user(&state, &principal).await?;
    Ok(Json(UserView::from(&user)))
}

/// `GET /users/{id}` (admin).
#[utoipa::path(get, path = "/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = i64, Path, description = "User id")),
    responses((status = 200, body = UserView), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn by_id(
    State(state): State<AppState>,
    _admin: Admin,
    IdPath(id): IdPath,
) -> Result<Json<UserView>, ApiError> {
    let user = state
        .stores
        .data
        .user_by_id(id)
        .await?
        .ok_or(ApiError::NotFound)?;
    Ok(Json(UserView::from(&user)))
}

/// Checks the caller's password; 400 naming `field` when wrong. Each check counts against
/// the user's own confirmation counter (the account's limit and window, independent of the
/// login counters in both directions). When it is spent, the check is refused with 429
/// `locked_out` and the calling login is revoked: guessing with a stolen session burns it.
async fn confirm_password(
    state: &AppState,
    principal: &Principal,
    context: &RequestContext,
    user: &User,
    password: String,
    field: &str,
    during: &'static str,
) -> Result<(), ApiError> {
    let counters = [sessions::Counted::confirmation(state, user)];
    if let Err(error) = sessions::reserve(state, &counters).await {
        if matches!(error, ApiError::LockedOut { .. }) {
            burn_session(state, principal, context, during).await?;
        }
        return Err(error);
    }
    let verified = match state
        .hasher
        .verify(password, user.password_hash.clone())
        .await
    {
        Ok(verified) => verified,
        Err(error) => {
            sessions::release(state, &counters, false).await?;
            return Err(ApiError::internal(error));
        }
    };
    if verified == Verified::No {
        let locked = sessions::record_failure(
            state,
            context,
            &counters,
            Some(user.id),
            json!({ "reason": "wrong_password", "during": during }),
        )
        .await?;
        if let Some(seconds) = locked {
            burn_session(state, principal, context, during).await?;
            return Err(ApiError::LockedOut {
                retry_after: std::time::Duration::from_secs(
                    u64::try_from(seconds.max(1)).unwrap_or(1),
                ),
            });
        }
        let mut problems = Problems::default();
        problems.add(field, "is incorrect");
        return problems.finish();
    }
    sessions::release(state, &counters, true).await
}

/// Revokes the calling login after its confirmations ran out, audited.
async fn burn_session(
    state: &AppState,
    principal: &Principal,
    context: &RequestContext,
    during: &'static str,
) -> Result<(), ApiError> {
    sessions::end_login(
        state,
        principal,
        context,
        json!({ "all": false, "reason": "confirmation_locked_out", "during": during }),
    )
    .await
}

/// The caller's login as the store has it: refused (401) when revoked or ended, whatever
/// the revocation cache says yet.
async fn live_family(state: &AppState, principal: &Principal) -> Result<Family, ApiError> {
    state
        .stores
        .sessions
        .family(&principal.family_id)
        .await?
        .filter(|family| {
            family.user_id == principal.user_id
                && family.revoked_at.is_none()
                && family.expires_at > state.now()
        })
        .ok_or_else(ApiError::invalid_token)
}

/// `PUT /users/me/password`: every other login is revoked; API keys too if asked.
#[utoipa::path(put, path = "/users/me/password", tag = "users", security(("bearer" = [])), request_body = PasswordChange,
    responses((status = 204, description = "Changed; every other login is revoked (no `revoke_api_keys` named, no CSRF token to replace)"),
              (status = 200, description = "Changed; the body named `revoke_api_keys`, or the login has a CSRF token and gets a new one (`csrf_token`)", body = RevokedReport),
              (status = 400, description = "Wrong current password or a weak new one", body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody),
              (status = 403, description = "forbidden for API keys", body = crate::error::ErrorBody),
              (status = 429, description = "locked_out: too many wrong passwords; the calling login is revoked", body = crate::error::ErrorBody)))]
pub async fn change_password(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    ApiJson(body): ApiJson<PasswordChange>,
) -> Result<Response, ApiError> {
    principal.require_session()?;
    let user = current_user(&state, &principal).await?;
    let family = live_family(&state, &principal).await?;
    let mut problems = Problems::default();
    problems.extend(
        "new_password",
        password::check_policy(&state.config.password, &body.new_password, &user.username),
    );
    if body.new_password == body.current_password {
        problems.add("new_password", "must differ from the current password");
    }
    problems.finish()?;
    confirm_password(
        &state,
        &principal,
        &context,
        &user,
        body.current_password,
        "current_password",
        "password_change",
    )
    .await?;
    let hash = state
        .hasher
        .hash(body.new_password)
        .await
        .map_err(ApiError::internal)?;
    let revoke_keys = body.revoke_api_keys.unwrap_or(false);
    let revoked_api_keys = state
        .stores
        .data
        .change_password(
            user.id,
            &hash,
            NewAuditEntry::new(
                state.now(),
                "password_changed",
                Some(user.id),
                json!({ "revoke_api_keys": revoke_keys }),
                &context,
            ),
            revoke_keys.then(|| {
                NewAuditEntry::new(
                    state.now(),
                    "api_key_revoked",
                    Some(user.id),
                    json!({ "reason": "password_changed" }),
                    &context,
                )
            }),
        )
        .await?
        .len();
    if revoke_keys {
        state.api_keys.forget_user(user.id);
    }
    let revoked_sessions = revoke_user(&state, user.id, Some(&family.id)).await?;
    // A login with a CSRF token (cookie-born, whichever way this request came) gets a new
    // one, and a new access cookie carrying its hash: the one from before the change stops
    // working. Only while the login is still live; its end never moves.
    let mut headers = http::HeaderMap::new();
    let mut csrf_token = None;
    if family.csrf_hash.is_some() || principal.credential == Credential::Cookie {
        let token = tokens::new_csrf_token();
        let csrf_hash = tokens::hash_csrf_token(&token);
        if state
            .stores
            .sessions
            .set_csrf_hash(&family.id, &csrf_hash, state.now())
            .await?
        {
            let family = Family {
                csrf_hash: Some(csrf_hash),
                ..family
            };
            headers.append(
                http::header::SET_COOKIE,
                sessions::access_cookie(&state, &user, &family)?,
            );
            csrf_token = Some(token);
        }
    }
    if body.revoke_api_keys.is_none() && csrf_token.is_none() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let report = RevokedReport {
        revoked_sessions,
        revoked_api_keys,
        active_api_keys: sessions::active_api_keys(&state, user.id).await?,
        csrf_token,
    };
    Ok((StatusCode::OK, headers, Json(report)).into_response())
}

/// `GET /users/me/export`: everything stored about the caller, trading accounts with
/// masked keys and API-key metadata included.
#[utoipa::path(get, path = "/users/me/export", tag = "users", security(("bearer" = [])),
    responses((status = 200, description = "Everything stored about the user (GDPR portability)"),
              (status = 401, body = crate::error::ErrorBody)))]
pub async fn export(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
) -> Result<Json<Value>, ApiError> {
    let user = current_user(&state, &principal).await?;
    let now = state.now();
    let sessions: Vec<Value> = state
        .stores
        .sessions
        .active_families(user.id, now)
        .await?
        .iter()
        .map(|family| {
            json!({
                "id": family.id,
                "created_at": crate::time_format::rfc3339(family.created_at),
                "expires_at": crate::time_format::rfc3339(family.expires_at),
            })
        })
        .collect();
    let accounts: Vec<AccountView> = state
        .stores
        .data
        .accounts_of(user.id)
        .await?
        .iter()
        .map(AccountView::from)
        .collect();
    let api_keys: Vec<ApiKeyView> = state
        .stores
        .data
        .api_keys_of(user.id)
        .await?
        .iter()
        .map(ApiKeyView::from)
        .collect();
    let mut audit: Vec<AuditRecord> = Vec::new();
    let mut before = None;
    loop {
        let page = state
            .stores
            .data
            .list_audit(&AuditFilter {
                user_id: Some(user.id),
                before_id: before,
                limit: 500,
                ..AuditFilter::default()
            })
            .await?;
        let done = page.len() < 500;
        before = page.last().map(|record| record.id);
        audit.extend(page);
        if done || audit.len() >= 50_000 {
            break;
        }
    }
    state
        .stores
        .data
        .append_audit(NewAuditEntry::new(
            now,
            "data_export",
            Some(user.id),
            json!({}),
            &context,
        ))
        .await?;
    let document = json!({
        "exported_at": crate::time_format::rfc3339(now),
        "profile": UserView::from(&user),
        "trading_accounts": accounts,
        "api_keys": api_keys,
        "sessions": sessions,
        "audit": audit
            .iter()
            .map(|record| crate::audit::for_subject(record, user.id))
            .collect::<Vec<_>>(),
    });
    Ok(Json(document))
}

/// `DELETE /users/me`: the caller's data is deleted, their audit entries pseudonymised.
#[utoipa::path(delete, path = "/users/me", tag = "users", security(("bearer" = [])), request_body = DeleteBody,
    responses((status = 204, description = "Deleted; audit entries pseudonymised"),
              (status = 400, description = "Wrong password", body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody),
              (status = 403, description = "forbidden for API keys", body = crate::error::ErrorBody),
              (status = 429, description = "locked_out: too many wrong passwords; the calling login is revoked", body = crate::error::ErrorBody),
              (status = 409, description = "The last admin cannot delete itself", body = crate::error::ErrorBody)))]
pub async fn delete_me(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    ApiJson(body): ApiJson<DeleteBody>,
) -> Result<Response, ApiError> {
    principal.require_session()?;
    let user = current_user(&state, &principal).await?;
    live_family(&state, &principal).await?;
    confirm_password(
        &state,
        &principal,
        &context,
        &user,
        body.password,
        "password",
        "account_deletion",
    )
    .await?;
    // The deletion's own entry carries no personal data: it outlives the user.
    let anonymous = RequestContext {
        ip: None,
        user_agent: None,
        request_id: context.request_id.clone(),
    };
    state
        .stores
        .data
        .delete_user(
            user.id,
            NewAuditEntry::new(
                state.now(),
                "user_deleted",
                Some(user.id),
                json!({}),
                &anonymous,
            ),
        )
        .await?;
    state.api_keys.forget_user(user.id);
    // Revoked after the deletion succeeded (the last admin is refused above), and kept
    // revoked so that every instance's cache learns of it.
    revoke_user(&state, user.id, None).await?;
    state.stores.sessions.delete_user_sessions(user.id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
