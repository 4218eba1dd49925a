//! Security headers on every response, refusals included (SPEC §6).

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// `[headers]` as written.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHeaders {
    /// The `X-XSS-Protection` value sent on every response (default `0`).
    pub x_xss_protection: String,
}

impl Default for RawHeaders {
    fn default() -> Self {
        Self {
            x_xss_protection: "0".into(),
        }
    }
}

/// Response header settings.
#[derive(Debug, Clone)]
pub struct HeadersConfig {
    /// Value of `X-XSS-Protection`.
    pub x_xss_protection: String,
}

impl HeadersConfig {
    /// Checks `[headers]`, adding what is wrong to `problems`.
    pub fn from_raw(raw: RawHeaders, problems: &mut crate::settings::Problems) -> Self {
        if HeaderValue::from_str(&raw.x_xss_protection).is_err() {
            problems.add("headers.x_xss_protection", "is not a valid header value");
        }
        Self {
            x_xss_protection: raw.x_xss_protection,
        }
    }
}

/// The headers, built once from configuration.
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    fixed: Vec<(HeaderName, HeaderValue)>,
}

impl SecurityHeaders {
    /// Builds the header set; HSTS only when TLS is in front.
    pub fn new(x_xss_protection: &str, tls: bool) -> Self {
        let mut fixed = vec![
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("strict-origin-when-cross-origin"),
            ),
            (
                header::X_XSS_PROTECTION,
                HeaderValue::from_str(x_xss_protection)
                    .unwrap_or_else(|_| HeaderValue::from_static("0")),
            ),
        ];
        if tls {
            fixed.push((
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static("max-age=31536000; includeSubDomains"),
            ));
        }
        Self { fixed }
    }
}

/// Whether responses on this path carry personal or account data and must never be cached,
/// whatever the upstream says. Decided on the path's canonical form, which is what routes
/// and handlers serve (`/%61ccounts` is `/accounts`), without regard to case, as routes may
/// be; a path with no canonical form is refused, and private to be safe.
pub fn is_private(path: &str) -> bool {
    crate::routes::path::canonical(path).map_or(true, |path| is_private_canonical(&path))
}

/// [`is_private`] for a path already in canonical form.
pub fn is_private_canonical(path: &str) -> bool {
    ["/auth", "/users", "/admin", "/accounts"]
        .iter()
        .any(
            |prefix| match (path.get(..prefix.len()), path.get(prefix.len()..)) {
                (Some(head), Some(rest)) => {
                    head.eq_ignore_ascii_case(prefix) && (rest.is_empty() || rest.starts_with('/'))
                }
                _ => false,
            },
        )
}

/// Caching instructions addressed to CDNs, which take precedence there over `Cache-Control`.
const CDN_CACHE_HEADERS: [&str; 3] = [
    "cdn-cache-control",
    "surrogate-control",
    "cloudflare-cdn-cache-control",
];

/// Whether a request presents a credential of any kind (valid or not). A response to such
/// a request is someone's own data (their orders, their positions) wherever it was served
/// from: no cache may keep it, whatever the upstream said, since a cookie does not stop a
/// shared cache the way `Authorization` does.
pub fn carries_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION)
        || headers.contains_key(header::COOKIE)
        || headers.contains_key("x-api-key")
}

const X_POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");

impl SecurityHeaders {
    /// Puts the headers on a response; `private` for a path whose answers must never be
    /// cached. Also for answers made outside the router (the listener's own refusals).
    pub fn decorate(&self, headers: &mut HeaderMap, private: bool) {
        for (name, value) in &self.fixed {
            headers.insert(name.clone(), value.clone());
        }
        if !headers.contains_key(header::CONTENT_SECURITY_POLICY) {
            let is_json = headers
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
                .is_none_or(|value| {
                    value.starts_with("application/json") || value.starts_with("text/plain")
                });
            let policy = if is_json {
                "default-src 'none'; frame-ancestors 'none'"
            } else {
                "default-src 'self'"
            };
            headers.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(policy),
            );
        }
        // Private paths are never cached, whatever a handler or upstream said; elsewhere an
        // upstream's own caching policy stands, and a response without one (a refusal, an
        // error, a backend that did not say) is not stored either.
        if private || !headers.contains_key(header::CACHE_CONTROL) {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        if private {
            // CDNs read these before `Cache-Control`.
            for name in CDN_CACHE_HEADERS {
                headers.remove(name);
            }
        }
        headers.remove(header::SERVER);
        headers.remove(X_POWERED_BY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_paths_are_private_and_lookalikes_are_not() {
        for path in [
            "/auth/login",
            "/users/me",
            "/admin/users",
            "/auth",
            "/accounts",
            "/accounts/7/refresh",
            "/Users/me",
            "/ACCOUNTS",
            "/%61ccounts",
            "/%41DMIN/users",
            "/users%2Fme",
        ] {
            assert!(is_private(path), "{path}");
        }
        for path in [
            "/orders",
            "/authority",
            "/usersfoo",
            "/accountsx",
            "/",
            "/a",
        ] {
            assert!(!is_private(path), "{path}");
        }
    }
}
