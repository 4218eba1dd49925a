//! Security headers on every response, refusals included (SPEC §6).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderName, HeaderValue, header};

use crate::state::AppState;

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

/// Whether responses on this path must never be cached.
fn is_private(path: &str) -> bool {
    ["/auth", "/users", "/admin"].iter().any(|prefix| {
        path.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Adds the security headers to the response.
pub async fn apply(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // Decided on the canonical path, which is what the handlers serve (`/%75sers/me` is
    // `/users/me`); a path with no canonical form is refused, and private to be safe.
    let private =
        crate::routes::path::canonical(request.uri().path()).map_or(true, |path| is_private(&path));
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in &state.security_headers.fixed {
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
    if private {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    headers.remove(header::SERVER);
    headers.remove("x-powered-by");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_paths_are_private_and_lookalikes_are_not() {
        for path in ["/auth/login", "/users/me", "/admin/users", "/auth"] {
            assert!(is_private(path), "{path}");
        }
        for path in ["/orders", "/authority", "/usersfoo", "/"] {
            assert!(!is_private(path), "{path}");
        }
    }
}
