//! Authentication: who is asking, from a bearer token, the session cookie or an API key.
//!
//! [`identify`] runs before rate limiting (the limiter needs the caller's tier) and never
//! refuses by itself: it records an [`Authentication`] in the request. Handlers and the
//! authorization layer ask for a [`Principal`], which answers 401 (or 403 `csrf_failed`)
//! when there is none. Cookie-authenticated unsafe requests must carry `X-CSRF-Token`. API
//! keys and signed requests ([`api_key`]) that do not hold are refused (401) on every route.
//!
//! Every refused credential is a [`Failure`]: counted in
//! `rampart_auth_failures_total{reason}`, audited as `auth_failed` (one row per client and
//! minute), and, being anonymous, it spends the client's anonymous budget at the rate
//! limiter. An API key costs a database lookup to check, so it is charged to that budget
//! before the lookup (and given the charge back when it holds): a client whose budget is
//! spent gets 429 before its key is looked up, however many guesses it has in flight. A key
//! that authenticated in the last ten minutes ([`verified`]) is looked up and checked as
//! usual but spared that charge, so junk from a shared address cannot lock it out. Answers
//! given here after the key held (a signed body too large or unreadable) are charged too.
//!
//! [`identify`]: crate::gateway::identify::identify
//! [`verified`]: crate::verified_keys

pub mod api_key;

use std::sync::Arc;

use axum::extract::FromRequestParts;
use http::request::Parts;
use http::{HeaderMap, Method, header};

use crate::audit::record_in_background;
use crate::error::ApiError;
use crate::metrics::ReasonLabel;
use crate::state::AppState;
use crate::tokens::Rejected;

/// The access-token cookie.
pub const ACCESS_COOKIE: &str = "__Host-access_token";
/// The refresh-token cookie.
pub const REFRESH_COOKIE: &str = "__Secure-refresh_token";
/// The CSRF header.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Bearer`.
    Bearer,
    /// The session cookie.
    Cookie,
    /// `X-API-Key`.
    ApiKey,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// User id.
    pub user_id: i64,
    /// Username.
    pub username: Arc<str>,
    /// Role.
    pub role: Arc<str>,
    /// Rate-limit tier.
    pub tier: Arc<str>,
    /// The login (token family) of a token or cookie; empty for API keys.
    pub family_id: Arc<str>,
    /// How it authenticated.
    pub credential: Credential,
    /// Whether this is an API-key request with a correct HMAC signature (always `false`
    /// for tokens and cookies).
    pub signed: bool,
}

impl Principal {
    /// Refuses API keys (403): a key (a program's credential, perhaps stolen) never reaches
    /// session management, its own keys, the password, MFA or the account's deletion
    /// (SPEC §11), so a leaked key can neither make itself permanent nor lock the owner out.
    ///
    /// # Errors
    /// 403 `forbidden` for an API key.
    pub fn require_session(&self) -> Result<(), ApiError> {
        if self.credential == Credential::ApiKey {
            return Err(ApiError::Forbidden(
                "This needs a login session, not an API key".into(),
            ));
        }
        Ok(())
    }
}

/// Why credentials that were presented are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A token or cookie that is invalid, expired or revoked: refused (401) wherever a
    /// principal is needed.
    InvalidToken,
    /// An API key or signature that does not hold: refused (401) on every route.
    InvalidKey,
    /// Cookie session without the right CSRF token.
    CsrfFailed,
}

/// What kind of presented credential failed: the `reason` of
/// `rampart_auth_failures_total` and of `auth_failed` audit rows. Clients never see it;
/// they get one 401 for every kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// An `Authorization` header that is not a valid, current access token.
    Bearer,
    /// A session cookie that is not a valid, current access token.
    Cookie,
    /// An API key that is malformed, unknown, expired, or whose owner is disabled or gone.
    ApiKey,
    /// Signing headers that are incomplete, malformed or do not verify.
    Signature,
    /// A signed request's timestamp that is malformed or too far from the gateway's clock.
    Timestamp,
    /// A nonce of the wrong length or alphabet.
    Nonce,
    /// A nonce already seen: a replayed request.
    Replay,
    /// `Authorization` and `X-API-Key` together.
    Ambiguous,
    /// A valid session cookie on an unsafe request without its current `X-CSRF-Token`
    /// (answered 403 `csrf_failed`): a forged cross-site request, or a stolen cookie.
    Csrf,
}

impl Failure {
    /// Every kind, for metrics that exist from start-up.
    pub const ALL: [Self; 9] = [
        Self::Bearer,
        Self::Cookie,
        Self::ApiKey,
        Self::Signature,
        Self::Timestamp,
        Self::Nonce,
        Self::Replay,
        Self::Ambiguous,
        Self::Csrf,
    ];

    /// The metric label and audit `reason`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Bearer => "bearer",
            Self::Cookie => "cookie",
            Self::ApiKey => "api_key",
            Self::Signature => "signature",
            Self::Timestamp => "timestamp",
            Self::Nonce => "nonce",
            Self::Replay => "replay",
            Self::Ambiguous => "ambiguous",
            Self::Csrf => "csrf",
        }
    }
}

/// The outcome of [`identify`](crate::gateway::identify::identify), in the request's extensions.
#[derive(Debug, Clone)]
pub enum Authentication {
    /// No credentials.
    Anonymous,
    /// Valid credentials.
    Authenticated(Principal),
    /// Credentials that were refused.
    Refused(Refusal),
}

impl Authentication {
    /// The principal, if authenticated.
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Self::Authenticated(principal) => Some(principal),
            _ => None,
        }
    }
}

/// The value of a cookie, if present: the first one of that name across every `Cookie`
/// header. A header that is not visible ASCII is skipped, as is any pair without `=` or
/// with an empty name; the others still count. Values are borrowed from the header, so
/// nothing is allocated, and a request without cookies costs one header lookup.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(::cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == name)
        .and_then(|cookie| cookie.value_raw())
}

/// Whether a method changes state and so needs CSRF protection under cookies.
pub fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// [`crate::gateway::identify`]'s failure count and audit row, for a cookie refresh (`POST /auth/refresh`) refused for its CSRF
/// token, which the handler itself checks.
pub fn record_refresh_csrf_failure(
    state: &AppState,
    client: Option<crate::client_ip::ClientIp>,
    context: &crate::audit::RequestContext,
) {
    let ip = client.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |ip| ip.0);
    let keys =
        crate::rate_limit::CallerKeys::new(ip, state.config.rate_limits.ipv6_prefix, None, None);
    let reason = Failure::Csrf.label();
    state
        .metrics
        .auth_failures
        .get_or_create(&ReasonLabel { reason })
        .inc();
    let now = state.now();
    // The same key as the gateway's own `auth_failed` rows, so one client's failures are
    // counted together whichever way they came.
    let throttle_key = format!("auth_failed|{}", keys.ip());
    let row = crate::audit::throttle::Pending {
        action: "auth_failed",
        user_id: None,
        details: serde_json::json!({ "reason": reason, "route": null, "method": "POST" }),
        field: "failures_since_last_entry",
        context: context.clone(),
    };
    for entry in state.audit_throttle.rows(&throttle_key, now, row) {
        record_in_background(state.stores.data.clone(), entry);
    }
}

/// Checks the credentials in `headers`.
pub fn authenticate_headers(
    state: &AppState,
    method: &Method,
    headers: &HeaderMap,
) -> Authentication {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some(token) = token else {
            count_failure(state, Rejected::Malformed);
            return Authentication::Refused(Refusal::InvalidToken);
        };
        return verify(state, token, Credential::Bearer).0;
    }
    if let Some(token) = cookie(headers, ACCESS_COOKIE) {
        let (authentication, csrf_hash) = verify(state, token, Credential::Cookie);
        if let Authentication::Authenticated(principal) = &authentication
            && is_unsafe(method)
        {
            let presented = headers
                .get(CSRF_HEADER)
                .and_then(|value| value.to_str().ok())
                .unwrap_or_default();
            // The token's own CSRF hash: a refresh issues both anew, so the previous CSRF
            // token never matches the current cookie.
            if !state.tokens.csrf_matches_hash(
                &principal.family_id,
                csrf_hash.as_deref(),
                presented,
            ) {
                return Authentication::Refused(Refusal::CsrfFailed);
            }
        }
        return authentication;
    }
    Authentication::Anonymous
}

fn count_failure(state: &AppState, reason: Rejected) {
    state
        .metrics
        .jwt_failures
        .get_or_create(&ReasonLabel {
            reason: reason.label(),
        })
        .inc();
}

/// Verifies an access token; with the principal, the CSRF hash the token carries.
fn verify(
    state: &AppState,
    token: &str,
    credential: Credential,
) -> (Authentication, Option<String>) {
    let claims = match state.tokens.verify(token) {
        Ok(claims) => claims,
        Err(reason) => {
            count_failure(state, reason);
            return (Authentication::Refused(Refusal::InvalidToken), None);
        }
    };
    if state.revocations.is_revoked(&claims.sid) {
        count_failure(state, Rejected::Revoked);
        return (Authentication::Refused(Refusal::InvalidToken), None);
    }
    let authentication = Authentication::Authenticated(Principal {
        user_id: claims.user_id,
        username: Arc::from(claims.username),
        role: Arc::from(claims.role),
        tier: Arc::from(claims.tier),
        family_id: Arc::from(claims.sid),
        credential,
        signed: false,
    });
    (authentication, claims.csrf)
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Authentication>() {
            Some(Authentication::Authenticated(principal)) => Ok(principal.clone()),
            Some(Authentication::Refused(Refusal::CsrfFailed)) => Err(ApiError::CsrfFailed),
            Some(Authentication::Refused(Refusal::InvalidToken | Refusal::InvalidKey)) => {
                Err(ApiError::invalid_token())
            }
            Some(Authentication::Anonymous) | None => Err(ApiError::unauthenticated()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "a=1; __Host-access_token=tok; __Host-access_token_x=no"
                .parse()
                .unwrap(),
        );
        assert_eq!(cookie(&headers, ACCESS_COOKIE), Some("tok"));
        assert_eq!(cookie(&headers, "b"), None);
    }

    #[test]
    fn the_first_cookie_of_a_name_wins_and_malformed_pairs_are_skipped() {
        let mut headers = HeaderMap::new();
        for value in ["junk; =empty-name; ;; a=1", "a=2; b=x=y; q=\"quoted\""] {
            headers.append(header::COOKIE, value.parse().unwrap());
        }
        assert_eq!(cookie(&headers, "a"), Some("1"));
        assert_eq!(cookie(&headers, "b"), Some("x=y"));
        assert_eq!(cookie(&headers, "q"), Some("\"quoted\""));
        assert_eq!(cookie(&headers, "junk"), None);
        assert_eq!(cookie(&HeaderMap::new(), "a"), None);
    }

    #[test]
    fn a_cookie_header_that_is_not_text_is_skipped() {
        let mut headers = HeaderMap::new();
        headers.append(
            header::COOKIE,
            http::HeaderValue::from_bytes(b"a=\xff").unwrap(),
        );
        headers.append(header::COOKIE, "a=2".parse().unwrap());
        assert_eq!(cookie(&headers, "a"), Some("2"));
    }

    #[test]
    fn only_state_changing_methods_need_csrf() {
        assert!(is_unsafe(&Method::POST));
        assert!(is_unsafe(&Method::DELETE));
        assert!(!is_unsafe(&Method::GET));
        assert!(!is_unsafe(&Method::HEAD));
    }
}
