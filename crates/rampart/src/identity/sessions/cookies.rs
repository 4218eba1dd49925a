//! The session cookies: the access cookie, the refresh cookie, and their deletion.

use cookie::{Cookie, SameSite};
use http::{HeaderMap, HeaderValue, header};

use crate::authentication::{self, REFRESH_COOKIE};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{Family, User};

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
pub(super) fn clearing_cookies() -> HeaderMap {
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
