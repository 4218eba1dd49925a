//! Administration (role `admin`): users, lockouts and the audit trail.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{AuditRecord, NewAuditEntry, RequestContext};
use crate::error::ApiError;
use crate::identity::sessions::revoke_user;
use crate::identity::{Admin, Problems, UserView};
use crate::json::{ApiJson, ApiQuery, IdPath};
use crate::state::AppState;
use crate::store::{AuditFilter, LockScope, UserPatch};
use crate::time_format::parse_rfc3339;

/// `?limit=&offset=`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// 1–200, default 50.
    pub limit: Option<i64>,
    /// Default 0.
    pub offset: Option<i64>,
}

/// A page of users.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserList {
    /// The users.
    pub items: Vec<UserView>,
    /// How many users there are in all.
    pub total: i64,
}

/// `GET /admin/users`.
#[utoipa::path(get, path = "/admin/users", tag = "admin", security(("bearer" = [])),
    params(("limit" = Option<i64>, Query, description = "1–200, default 50"), ("offset" = Option<i64>, Query)),
    responses((status = 200, body = UserList), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn list_users(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiQuery(page): ApiQuery<Page>,
) -> Result<Json<UserList>, ApiError> {
    // SPEC §11: API keys never reach /admin/*.
    admin.require_session()?;
    let limit = page.limit.unwrap_or(50);
    let offset = page.offset.unwrap_or(0);
    let mut problems = Problems::default();
    if !(1..=200).contains(&limit) {
        problems.add("limit", "must be between 1 and 200");
    }
    if offset < 0 {
        problems.add("offset", "must not be negative");
    }
    problems.finish()?;
    let (users, total) = state.stores.data.list_users(limit, offset).await?;
    Ok(Json(UserList {
        items: users.iter().map(UserView::from).collect(),
        total,
    }))
}

/// `PATCH /admin/users/{id}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUser {
    /// A defined role.
    pub role: Option<String>,
    /// `standard` or `premium`.
    pub tier: Option<String>,
    /// Disable or enable logins.
    pub disabled: Option<bool>,
}

/// Changes a user's role, tier or disabled flag; role and disabled changes revoke the
/// user's logins.
#[utoipa::path(patch, path = "/admin/users/{id}", tag = "admin", security(("bearer" = [])), request_body = PatchUser,
    params(("id" = i64, Path, description = "User id")),
    responses((status = 200, body = UserView), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody),
              (status = 409, description = "The last admin cannot be demoted or disabled", body = crate::error::ErrorBody)))]
pub async fn patch_user(
    State(state): State<AppState>,
    Admin(admin): Admin,
    context: RequestContext,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<PatchUser>,
) -> Result<Json<UserView>, ApiError> {
    // SPEC §11: API keys never reach /admin/*.
    admin.require_session()?;
    let mut problems = Problems::default();
    if let Some(role) = &body.role
        && !state.config.roles.contains_key(role)
    {
        problems.add("role", "is not a defined role");
    }
    if let Some(tier) = &body.tier
        && tier != "standard"
        && tier != "premium"
    {
        problems.add("tier", "must be standard or premium");
    }
    if body.role.is_none() && body.tier.is_none() && body.disabled.is_none() {
        problems.add("body", "give at least one of role, tier, disabled");
    }
    problems.finish()?;
    let before = state
        .stores
        .data
        .user_by_id(id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let now = state.now();
    let mut audit = Vec::new();
    let role_changed = body.role.as_ref().is_some_and(|role| *role != before.role);
    let disabled_changed = body
        .disabled
        .is_some_and(|disabled| disabled != before.disabled);
    if role_changed {
        audit.push(NewAuditEntry::new(
            now,
            "role_changed",
            Some(id),
            json!({ "from": before.role, "to": body.role, "by": admin.user_id }),
            &context,
        ));
    }
    if disabled_changed {
        audit.push(NewAuditEntry::new(
            now,
            "user_disabled",
            Some(id),
            json!({ "disabled": body.disabled, "by": admin.user_id }),
            &context,
        ));
    }
    audit.push(NewAuditEntry::new(
        now,
        "admin_action",
        Some(id),
        json!({ "action": "update_user", "role": body.role, "tier": body.tier,
                "disabled": body.disabled, "by": admin.user_id }),
        &context,
    ));
    let updated = state
        .stores
        .data
        .update_user(
            id,
            UserPatch {
                role: body.role,
                tier: body.tier,
                disabled: body.disabled,
            },
            audit,
        )
        .await?;
    // API keys act with the user's role and tier as they are now: dropped here at once,
    // elsewhere within a poll of the credential-change log.
    state.api_keys.forget_user(id);
    if role_changed || disabled_changed || updated.tier != before.tier {
        // Tokens carry role and tier: the user logs in again to get the new ones.
        revoke_user(&state, id, None).await?;
    }
    Ok(Json(UserView::from(&updated)))
}

/// `POST /admin/users/{id}/unlock`, optionally `{"ip": "…"}` to lift an IP lockout too.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnlockBody {
    /// An IP address whose lockout to lift as well.
    pub ip: Option<String>,
}

/// Lifts the account's login and password-confirmation lockouts (and an IP's, if given).
#[utoipa::path(post, path = "/admin/users/{id}/unlock", tag = "admin", security(("bearer" = [])), request_body(content = UnlockBody, description = "Optional"),
    params(("id" = i64, Path, description = "User id")),
    responses((status = 204, description = "Lockouts lifted"), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody),
              (status = 404, body = crate::error::ErrorBody)))]
pub async fn unlock(
    State(state): State<AppState>,
    Admin(admin): Admin,
    context: RequestContext,
    IdPath(id): IdPath,
    crate::json::OptionalJson(body): crate::json::OptionalJson<UnlockBody>,
) -> Result<Response, ApiError> {
    // SPEC §11: API keys never reach /admin/*.
    admin.require_session()?;
    let ip = match body.ip {
        Some(ip) => Some(
            ip.parse::<std::net::IpAddr>()
                .map_err(|_| {
                    let mut problems = Problems::default();
                    problems.add("ip", "must be an IP address");
                    problems
                        .finish()
                        .err()
                        .unwrap_or_else(|| ApiError::invalid("ip"))
                })?
                .to_string(),
        ),
        None => None,
    };
    // Lockouts key on the IPv6 prefix, as at login.
    let ip_key = ip
        .as_deref()
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .map(|address| {
            crate::client_ip::bucket(address, state.config.rate_limits.ipv6_prefix).to_string()
        });
    let user = state
        .stores
        .data
        .user_by_id(id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let sessions = &state.stores.sessions;
    sessions
        .clear_failures(
            LockScope::Account,
            &crate::identity::sessions::account_key(&user.username),
        )
        .await?;
    sessions
        .clear_failures(LockScope::Confirm, &user.id.to_string())
        .await?;
    if let Some(ip) = &ip_key {
        sessions.clear_failures(LockScope::Ip, ip).await?;
    }
    state
        .stores
        .data
        .append_audit(NewAuditEntry::new(
            state.now(),
            "admin_action",
            Some(id),
            json!({ "action": "unlock", "ip": ip, "by": admin.user_id }),
            &context,
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /admin/audit` filters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only this user.
    pub user_id: Option<i64>,
    /// Only this action.
    pub action: Option<String>,
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    /// 1–500, default 100.
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of audit entries, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// Entries.
    pub items: Vec<AuditRecord>,
    /// Pass as `cursor` for the next page; null at the end.
    pub next_cursor: Option<String>,
}

fn time_filter(problems: &mut Problems, field: &str, value: Option<&str>) -> Option<i64> {
    let value = value?;
    let parsed = parse_rfc3339(value);
    if parsed.is_none() {
        problems.add(
            field,
            "must be an RFC 3339 time such as 2026-01-31T00:00:00Z",
        );
    }
    parsed
}

/// `GET /admin/audit`.
#[utoipa::path(get, path = "/admin/audit", tag = "admin", security(("bearer" = [])),
    params(("user_id" = Option<i64>, Query), ("action" = Option<String>, Query),
           ("since" = Option<String>, Query, description = "RFC 3339"), ("until" = Option<String>, Query, description = "RFC 3339"),
           ("limit" = Option<i64>, Query, description = "1–500, default 100"), ("cursor" = Option<String>, Query)),
    responses((status = 200, body = AuditPage), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn audit(
    State(state): State<AppState>,
    Admin(admin): Admin,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    // SPEC §11: API keys never reach /admin/*.
    admin.require_session()?;
    let mut problems = Problems::default();
    let since = time_filter(&mut problems, "since", query.since.as_deref());
    let until = time_filter(&mut problems, "until", query.until.as_deref());
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        problems.add("limit", "must be between 1 and 500");
    }
    let before_id = match query.cursor.as_deref() {
        None => None,
        Some(cursor) => {
            let id = cursor.parse::<i64>().ok().filter(|id| *id > 0);
            if id.is_none() {
                problems.add("cursor", "is not a cursor this API returned");
            }
            id
        }
    };
    problems.finish()?;
    let items = state
        .stores
        .data
        .list_audit(&AuditFilter {
            user_id: query.user_id,
            action: query.action,
            since,
            until,
            before_id,
            limit,
        })
        .await?;
    let next_cursor = (items.len() == usize::try_from(limit).unwrap_or(0))
        .then(|| items.last().map(|record| record.id.to_string()))
        .flatten();
    Ok(Json(AuditPage { items, next_cursor }))
}

/// `GET /admin/audit/export` parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportQuery {
    /// `jsonl` (default) or `csv`.
    pub format: Option<String>,
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
}

/// `GET /admin/audit/export`: the trail in id order, streamed page by page.
#[utoipa::path(get, path = "/admin/audit/export", tag = "admin", security(("bearer" = [])),
    params(("format" = Option<String>, Query, description = "jsonl (default) or csv"),
           ("since" = Option<String>, Query), ("until" = Option<String>, Query)),
    responses((status = 200, description = "Streamed JSON lines or CSV"), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 403, body = crate::error::ErrorBody)))]
pub async fn export_audit(
    State(state): State<AppState>,
    Admin(admin): Admin,
    context: RequestContext,
    ApiQuery(query): ApiQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    // SPEC §11: API keys never reach /admin/*.
    admin.require_session()?;
    let mut problems = Problems::default();
    let since = time_filter(&mut problems, "since", query.since.as_deref());
    let until = time_filter(&mut problems, "until", query.until.as_deref());
    let csv = match query.format.as_deref() {
        None | Some("jsonl") => false,
        Some("csv") => true,
        Some(_) => {
            problems.add("format", "must be jsonl or csv");
            false
        }
    };
    problems.finish()?;
    state
        .stores
        .data
        .append_audit(NewAuditEntry::new(
            state.now(),
            "admin_action",
            None,
            json!({ "action": "audit_export", "by": admin.user_id }),
            &context,
        ))
        .await?;
    let store = state.stores.data.clone();
    let format = if csv {
        crate::audit::export::Format::Csv
    } else {
        crate::audit::export::Format::Jsonl
    };
    let stream = crate::audit::export::stream(store, since, until, format);
    let content_type = if csv {
        "text/csv; charset=utf-8"
    } else {
        "application/x-ndjson"
    };
    let mut response = Body::from_stream(stream).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}
