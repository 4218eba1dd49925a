//! The identity API that Rampart serves itself (SPEC §2): registration, login, tokens,
//! the user's own account, and administration.
//!
//! Handlers validate everything they are given before changing anything, and every
//! security event is audited in the same transaction as the change it records.

pub mod accounts;
pub mod admin;
pub mod api_keys;
pub mod sessions;
pub mod users;

use std::collections::BTreeMap;

use axum::extract::FromRequestParts;
use axum::routing::{MethodRouter, get, post};
use axum::{Router, middleware};
use http::request::Parts;
use serde::Serialize;

use crate::audit::RequestContext;
use crate::authentication::Principal;
use crate::client_ip::ClientIp;
use crate::error::{ApiError, FieldErrors};
use crate::request::{RequestId, RouteName};
use crate::state::AppState;
use crate::store::User;

/// Loads the caller; a deleted user's token is refused.
pub(crate) async fn current_user(
    state: &AppState,
    principal: &Principal,
) -> Result<User, ApiError> {
    state
        .stores
        .data
        .user_by_id(principal.user_id)
        .await?
        .ok_or_else(ApiError::invalid_token)
}

/// A user as the API shows it: never a hash.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserView {
    /// Numeric id.
    pub id: i64,
    /// Username.
    pub username: String,
    /// Email.
    pub email: String,
    /// Role.
    pub role: String,
    /// Rate-limit tier.
    pub tier: String,
    /// Whether logins are refused.
    pub disabled: bool,
    /// RFC 3339.
    pub created_at: String,
}

impl From<&User> for UserView {
    fn from(user: &User) -> Self {
        Self {
            id: user.id,
            username: user.username.clone(),
            email: user.email.clone(),
            role: user.role.clone(),
            tier: user.tier.clone(),
            disabled: user.disabled,
            created_at: crate::time_format::rfc3339(user.created_at),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestContext {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            ip: parts
                .extensions
                .get::<ClientIp>()
                .map(|ip| ip.0.to_string()),
            user_agent: parts
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned),
            request_id: parts
                .extensions
                .get::<RequestId>()
                .map_or_else(|| "-".to_owned(), |id| id.0.to_string()),
        })
    }
}

/// An authenticated admin; 403 `forbidden` for anyone else.
#[derive(Debug, Clone)]
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if &*principal.role == "admin" {
            return Ok(Self(principal));
        }
        let context = RequestContext::from_request_parts(parts, state)
            .await
            .unwrap_or_else(|never| match never {});
        let entry = crate::audit::NewAuditEntry::new(
            state.now(),
            "unauthorized_access",
            Some(principal.user_id),
            serde_json::json!({ "path": parts.uri.path(), "method": parts.method.as_str() }),
            &context,
        );
        if let Err(error) = state.stores.data.append_audit(entry).await {
            tracing::warn!(error = %error, "could not audit a refused request");
        }
        Err(ApiError::forbidden())
    }
}

/// Collects field problems; `finish` turns them into a 400 if there are any.
#[derive(Debug, Default)]
pub struct Problems(FieldErrors);

impl Problems {
    /// Records a problem with `field`.
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0
            .entry(field.to_owned())
            .or_default()
            .push(message.into());
    }

    /// Records several problems with `field`.
    pub fn extend(&mut self, field: &str, messages: Vec<String>) {
        for message in messages {
            self.add(field, message);
        }
    }

    /// `Ok` when nothing was recorded.
    ///
    /// # Errors
    /// 400 `invalid_request` listing every field's problems.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ApiError::invalid_fields(self.0))
        }
    }
}

/// Problems with a username: 3–20 characters of `[A-Za-z0-9_]`.
pub fn check_username(username: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if !(3..=20).contains(&username.chars().count()) {
        problems.push("must be 3 to 20 characters".to_owned());
    }
    if !username
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        problems.push("may contain only letters, digits and _".to_owned());
    }
    problems
}

/// Problems with an email address: one `@`, a plausible local part and a domain with a
/// dot, no spaces or control characters, at most 254 characters.
pub fn check_email(email: &str) -> Vec<String> {
    let valid = email.len() <= 254
        && email.split('@').count() == 2
        && email.split_once('@').is_some_and(|(local, domain)| {
            let local_ok = (1..=64).contains(&local.len())
                && !local.starts_with('.')
                && !local.ends_with('.')
                && !local.contains("..")
                && local
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c));
            let labels: Vec<&str> = domain.split('.').collect();
            let domain_ok = labels.len() >= 2
                && labels.iter().all(|label| {
                    (1..=63).contains(&label.len())
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
                && labels.last().is_some_and(|tld| {
                    tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())
                });
            local_ok && domain_ok
        });
    if valid {
        Vec::new()
    } else {
        vec!["must be a valid email address of at most 254 characters".to_owned()]
    }
}

/// Problems with a label (an API key's or account's name, a broker): 1 to `max`
/// characters of ASCII letters, digits, space and `_ - . ( )`, not starting or ending
/// with a space.
pub fn check_label(label: &str, max: usize) -> Vec<String> {
    let mut problems = Vec::new();
    if !(1..=max).contains(&label.chars().count()) {
        problems.push(format!("must be 1 to {max} characters"));
    }
    if !label
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || " _-.()".contains(c))
    {
        problems.push("may contain only letters, digits, spaces and _ - . ( )".to_owned());
    }
    if label.starts_with(' ') || label.ends_with(' ') {
        problems.push("must not start or end with a space".to_owned());
    }
    problems
}

/// Tags a route's responses with its pattern for metric labels.
fn named(path: &'static str, route: MethodRouter<AppState>) -> MethodRouter<AppState> {
    route.layer(middleware::map_response(
        move |mut response: axum::response::Response| async move {
            response.extensions_mut().insert(RouteName(path));
            response
        },
    ))
}

/// The identity API's paths, as [`routes`] serves them.
pub fn paths() -> Vec<&'static str> {
    table().into_keys().collect()
}

/// The identity API's routes.
pub fn routes() -> Router<AppState> {
    table()
        .into_iter()
        .fold(Router::new(), |router, (path, route)| {
            router.route(path, named(path, route))
        })
}

/// Every identity path with its handlers.
fn table() -> BTreeMap<&'static str, MethodRouter<AppState>> {
    BTreeMap::from([
        ("/auth/register", post(sessions::register)),
        ("/auth/login", post(sessions::login)),
        ("/auth/refresh", post(sessions::refresh)),
        ("/auth/logout", post(sessions::logout)),
        ("/auth/logout-all", post(sessions::logout_all)),
        ("/users/me", get(users::me).delete(users::delete_me)),
        (
            "/users/me/password",
            axum::routing::put(users::change_password),
        ),
        ("/users/me/export", get(users::export)),
        (
            "/users/me/api-keys",
            get(api_keys::list).post(api_keys::create),
        ),
        (
            "/users/me/api-keys/{id}",
            axum::routing::delete(api_keys::delete),
        ),
        ("/accounts", get(accounts::list).post(accounts::create)),
        (
            "/accounts/{id}",
            get(accounts::get)
                .patch(accounts::patch)
                .delete(accounts::delete),
        ),
        ("/accounts/{id}/refresh", post(accounts::refresh)),
        ("/users/{id}", get(users::by_id)),
        ("/admin/users", get(admin::list_users)),
        ("/admin/users/{id}", axum::routing::patch(admin::patch_user)),
        ("/admin/users/{id}/unlock", post(admin::unlock)),
        ("/admin/audit", get(admin::audit)),
        ("/admin/audit/export", get(admin::export_audit)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_documented_alphabet() {
        for good in ["alice_1", "Bob", "a_b", "abcdefghijklmnopqrst"] {
            assert!(check_username(good).is_empty(), "{good}");
        }
        for bad in [
            "al",
            "alice-1",
            "al ice",
            "ålice",
            "abcdefghijklmnopqrstu",
            "",
        ] {
            assert!(!check_username(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn emails_are_checked_for_shape() {
        for good in ["alice@example.com", "a.b+c@sub.example.co", "x@y.io"] {
            assert!(check_email(good).is_empty(), "{good}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "alice@example",
            "alice@@example.com",
            "al ice@example.com",
            "alice@exa_mple.com",
            "alice@-example.com",
            ".alice@example.com",
            "alice\n@example.com",
            long.as_str(),
        ] {
            assert!(!check_email(bad).is_empty(), "{bad:?}");
        }
    }
}
