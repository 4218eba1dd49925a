//! The caller's trading accounts (broker connections), and fetching their funds.
//!
//! Only the owner sees an account: anyone else, admins included, gets 404. The broker's
//! API key is sealed by the key ring, bound to the row and to the broker host it may be
//! sent to, and only ever shown masked. Moving an account to another host takes the key
//! again in the same request.
//! `host_url` must pass the `[accounts]` outbound policy (400 `fields.host_url`).

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::audit::{NewAuditEntry, RequestContext};
use crate::authentication::Principal;
use crate::circuit_breaker::Transition;
use crate::error::ApiError;
use crate::identity::{Problems, check_label, current_user};
use crate::json::{ApiJson, IdPath};
use crate::keyring::DecryptError;
use crate::metrics::UpstreamLabel;
use crate::sealing::{account_key_aad, canonical_host_url, mask, open_account_key};
use crate::state::AppState;
use crate::store::{AccountPatch, SealedKind, TradingAccount};
use crate::time_format::rfc3339;

/// Most trading accounts one user may hold.
pub const MAX_ACCOUNTS_PER_USER: i64 = 100;
/// Longest broker API key accepted.
pub const MAX_KEY_LEN: usize = 512;

/// `POST /accounts`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccount {
    /// A label: 1–64 characters of letters, digits, space and `_ - . ( )`.
    pub name: String,
    /// The broker: 1–32 such characters.
    pub broker: String,
    /// The broker host's base URL (`https`, a public address unless allowed).
    pub host_url: String,
    /// The broker API key: 1–512 visible ASCII characters.
    pub api_key: String,
}

/// `PATCH /accounts/{id}`: the fields to replace.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountChange {
    /// New label.
    pub name: Option<String>,
    /// New broker.
    pub broker: Option<String>,
    /// New host URL.
    pub host_url: Option<String>,
    /// New broker API key.
    pub api_key: Option<String>,
}

/// A trading account as shown: the key only masked.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountView {
    /// Numeric id.
    pub id: i64,
    /// Label.
    pub name: String,
    /// Broker.
    pub broker: String,
    /// The broker host's base URL.
    pub host_url: String,
    /// `abcd...wxyz`, or `***` for keys shorter than 12 characters.
    pub api_key_masked: String,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<&TradingAccount> for AccountView {
    fn from(account: &TradingAccount) -> Self {
        Self {
            id: account.id,
            name: account.name.clone(),
            broker: account.broker.clone(),
            host_url: account.host_url.clone(),
            api_key_masked: account.api_key_masked.clone(),
            created_at: rfc3339(account.created_at),
            updated_at: rfc3339(account.updated_at),
        }
    }
}

/// `{"items": […]}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountList {
    /// The caller's accounts, oldest first.
    pub items: Vec<AccountView>,
}

/// `POST /accounts/{id}/refresh`: the broker's `data`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Funds {
    /// The `data` object of the broker's OpenAlgo answer, as the broker sent it.
    #[schema(value_type = Object)]
    pub data: Value,
}

fn check_key(key: &str) -> Vec<String> {
    if (1..=MAX_KEY_LEN).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic()) {
        Vec::new()
    } else {
        vec![format!(
            "must be 1 to {MAX_KEY_LEN} visible ASCII characters, without spaces"
        )]
    }
}

async fn check_host_url(state: &AppState, url: &str, problems: &mut Problems) {
    match state.brokers.policy().check_url_resolved(url).await {
        Ok(parsed) if parsed.query().is_some() => {
            problems.add("host_url", "must not contain a query");
        }
        Ok(_) => {}
        Err(refused) => problems.add("host_url", refused.to_string()),
    }
}

/// `POST /accounts`.
#[utoipa::path(post, path = "/accounts", tag = "accounts", security(("bearer" = [])),
    request_body = NewAccount,
    responses((status = 201, body = AccountView),
              (status = 400, description = "Invalid fields, or host_url refused by the SSRF policy", body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody),
              (status = 409, description = "Too many accounts", body = crate::error::ErrorBody)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    ApiJson(body): ApiJson<NewAccount>,
) -> Result<Response, ApiError> {
    let mut problems = Problems::default();
    problems.extend("name", check_label(&body.name, 64));
    problems.extend("broker", check_label(&body.broker, 32));
    problems.extend("api_key", check_key(&body.api_key));
    check_host_url(&state, &body.host_url, &mut problems).await;
    problems.finish()?;
    let user = current_user(&state, &principal).await?;
    let now = state.now();
    let uid = ulid::Ulid::new().to_string();
    let sealed = state.keyring.encrypt(
        body.api_key.as_bytes(),
        &account_key_aad(&uid, &body.host_url),
    );
    let created = state
        .stores
        .data
        .create_account(
            TradingAccount {
                id: 0,
                uid,
                user_id: user.id,
                name: body.name,
                broker: body.broker.clone(),
                host_url: body.host_url,
                api_key: sealed,
                api_key_masked: mask(&body.api_key),
                created_at: now,
                updated_at: now,
            },
            MAX_ACCOUNTS_PER_USER,
            NewAuditEntry::new(
                now,
                "account_added",
                Some(user.id),
                json!({ "broker": body.broker }),
                &context,
            ),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(AccountView::from(&created))).into_response())
}

/// `GET /accounts`.
#[utoipa::path(get, path = "/accounts", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = AccountList), (status = 401, body = crate::error::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<AccountList>, ApiError> {
    let accounts = state.stores.data.accounts_of(principal.user_id).await?;
    Ok(Json(AccountList {
        items: accounts.iter().map(AccountView::from).collect(),
    }))
}

async fn owned(
    state: &AppState,
    principal: &Principal,
    id: i64,
) -> Result<TradingAccount, ApiError> {
    state
        .stores
        .data
        .account(principal.user_id, id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// `GET /accounts/{id}`.
#[utoipa::path(get, path = "/accounts/{id}", tag = "accounts", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Account id")),
    responses((status = 200, body = AccountView), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody),
              (status = 404, description = "No such account of the caller", body = crate::error::ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    IdPath(id): IdPath,
) -> Result<Json<AccountView>, ApiError> {
    let account = owned(&state, &principal, id).await?;
    Ok(Json(AccountView::from(&account)))
}

/// `PATCH /accounts/{id}`.
#[utoipa::path(patch, path = "/accounts/{id}", tag = "accounts", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Account id")), request_body = AccountChange,
    responses((status = 200, body = AccountView),
              (status = 400, description = "Invalid fields; a new host_url without api_key", body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody),
              (status = 404, description = "No such account of the caller", body = crate::error::ErrorBody)))]
pub async fn patch(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    IdPath(id): IdPath,
    ApiJson(body): ApiJson<AccountChange>,
) -> Result<Json<AccountView>, ApiError> {
    let mut problems = Problems::default();
    let mut changed = Vec::new();
    if let Some(name) = &body.name {
        problems.extend("name", check_label(name, 64));
        changed.push("name");
    }
    if let Some(broker) = &body.broker {
        problems.extend("broker", check_label(broker, 32));
        changed.push("broker");
    }
    if let Some(key) = &body.api_key {
        problems.extend("api_key", check_key(key));
        changed.push("api_key");
    }
    if let Some(url) = &body.host_url {
        check_host_url(&state, url, &mut problems).await;
        changed.push("host_url");
    }
    if changed.is_empty() {
        return Err(ApiError::invalid(
            "Nothing to change: give name, broker, host_url or api_key",
        ));
    }
    let account = owned(&state, &principal, id).await?;
    // The stored key was given for one broker; sending it to another takes the owner
    // giving it again. A respelling of the same host (case, trailing slash, default port)
    // is not a move.
    let moves = body
        .host_url
        .as_deref()
        .is_some_and(|url| canonical_host_url(url) != canonical_host_url(&account.host_url));
    if moves && body.api_key.is_none() {
        problems.add(
            "api_key",
            "required when host_url changes: the stored key is never sent to a new host",
        );
    }
    problems.finish()?;
    let host_url = body.host_url.as_deref().unwrap_or(&account.host_url);
    let api_key = body.api_key.as_ref().map(|key| {
        (
            state
                .keyring
                .encrypt(key.as_bytes(), &account_key_aad(&account.uid, host_url)),
            mask(key),
        )
    });
    let updated = state
        .stores
        .data
        .update_account(
            principal.user_id,
            id,
            AccountPatch {
                name: body.name,
                broker: body.broker,
                host_url: body.host_url,
                api_key,
            },
            NewAuditEntry::new(
                state.now(),
                "account_updated",
                Some(principal.user_id),
                json!({ "account_id": id, "changed": changed }),
                &context,
            ),
        )
        .await?;
    Ok(Json(AccountView::from(&updated)))
}

/// `DELETE /accounts/{id}`.
#[utoipa::path(delete, path = "/accounts/{id}", tag = "accounts", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Account id")),
    responses((status = 204, description = "Deleted"), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody),
              (status = 404, description = "No such account of the caller", body = crate::error::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    IdPath(id): IdPath,
) -> Result<Response, ApiError> {
    state
        .stores
        .data
        .delete_account(
            principal.user_id,
            id,
            NewAuditEntry::new(
                state.now(),
                "account_deleted",
                Some(principal.user_id),
                json!({ "account_id": id }),
                &context,
            ),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /accounts/{id}/refresh`: the account's funds, from its broker.
#[utoipa::path(post, path = "/accounts/{id}/refresh", tag = "accounts", security(("bearer" = [])),
    params(("id" = i64, Path, description = "Account id")),
    responses((status = 200, body = Funds, description = "The broker's `data`"),
              (status = 400, body = crate::error::ErrorBody), (status = 401, body = crate::error::ErrorBody),
              (status = 404, description = "No such account of the caller", body = crate::error::ErrorBody),
              (status = 409, description = "The stored key is sealed for another row or host; nothing was sent", body = crate::error::ErrorBody),
              (status = 502, description = "Broker unreachable or answered with an error", body = crate::error::ErrorBody),
              (status = 503, description = "The broker host's circuit is open (Retry-After)", body = crate::error::ErrorBody),
              (status = 504, description = "The broker did not answer in time", body = crate::error::ErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    principal: Principal,
    context: RequestContext,
    IdPath(id): IdPath,
) -> Result<Json<Funds>, ApiError> {
    let account = owned(&state, &principal, id).await?;
    let opened = open_account_key(
        &state.keyring,
        &account.api_key,
        &account.uid,
        &account.host_url,
        state.config.encryption_legacy_host_binding,
    )
    .map_err(|error| match error {
        // Sealed for another row or another host: nothing is sent anywhere.
        DecryptError::Authentication => {
            tracing::warn!(
                account_id = account.id,
                "the broker key does not belong to this account's host; not sent"
            );
            ApiError::Conflict(
                "The stored broker key does not belong to this account's host; \
                 set api_key again"
                    .into(),
            )
        }
        error => ApiError::internal(anyhow::anyhow!(
            "the broker key of account {} cannot be opened: {error}",
            account.id
        )),
    })?;
    if let Some(rebound) = &opened.rebound {
        // Sealed before keys were bound to their host: store it bound, to the host the
        // row names now, from now on; logged and audited with that host.
        if state
            .stores
            .data
            .reseal(
                SealedKind::AccountKey,
                account.id,
                &account.api_key,
                rebound,
            )
            .await?
        {
            crate::sealing::audit_rebound(
                &*state.stores.data,
                account.id,
                &account.host_url,
                state.clock.unix(),
                &context,
            )
            .await?;
        }
    }
    let key = std::str::from_utf8(&opened.plaintext).map_err(|_| {
        ApiError::internal(anyhow::anyhow!(
            "the broker key of account {} is not text",
            account.id
        ))
    })?;
    let (result, transition) = state.brokers.funds(&account.host_url, key).await;
    if transition == Some(Transition::Opened) {
        let label = UpstreamLabel { upstream: "broker" };
        state.metrics.breaker_opens.get_or_create(&label).inc();
        let entry = NewAuditEntry::new(
            state.now(),
            "circuit_opened",
            Some(principal.user_id),
            json!({ "upstream": "broker", "account_id": account.id }),
            &context,
        );
        if let Err(error) = state.stores.data.append_audit(entry).await {
            tracing::warn!(%error, "could not audit an opened circuit");
        }
    }
    Ok(Json(Funds { data: result? }))
}
