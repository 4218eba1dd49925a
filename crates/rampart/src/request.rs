//! Facts about a request that every floor shares: its id and the route that served it.
//! The gateway ([`crate::gateway`]) makes them.

use std::sync::Arc;

/// The request's id, in its extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// The route pattern that served a response, for metric labels; set by the router.
#[derive(Debug, Clone, Copy)]
pub struct RouteName(pub &'static str);

/// Whether a client-sent request id is safe to adopt: 1–128 characters of
/// `[A-Za-z0-9._:-]`.
pub fn is_well_formed_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Paths of the operations endpoints ([`crate::operations`]): probes, metrics, signing
/// keys, the API document and its documentation page with the page's assets. Ask
/// [`is_operations_path`] rather than this list.
const PATHS: [&str; 10] = [
    "/healthz",
    "/readyz",
    "/metrics",
    "/.well-known/jwks.json",
    "/openapi.json",
    "/docs",
    "/docs/swagger-ui-bundle.js",
    "/docs/swagger-ui.css",
    "/docs/docs.js",
    "/docs/LICENSE",
];

/// Every operations path, as [`crate::operations`] serves them.
pub fn operations_paths() -> &'static [&'static str] {
    &PATHS
}

/// The operations path `path` is, if it is one (compared exactly, on the canonical path).
pub fn operations_path(path: &str) -> Option<&'static str> {
    PATHS.iter().find(|known| **known == path).copied()
}

/// Whether `path` (canonical) is a probe, scraper or public document path (SPEC §8: the
/// API document and its documentation page are static and public like the probes), which
/// no route's policy, identity, rate limit or body policy applies to. The route stage asks
/// once per request and records the answer as `Context::operations`, which every later
/// stage reads.
pub fn is_operations_path(path: &str) -> bool {
    operations_path(path).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_request_ids_are_adopted() {
        assert!(is_well_formed_id("01J9ZQ5K3V0000000000000000"));
        assert!(is_well_formed_id("3f2c1b1e-9c1d-4e43-9d3c-2b7f1f9a2c11"));
        for bad in ["", "has space", "new\nline", "<script>", &"x".repeat(129)] {
            assert!(!is_well_formed_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn operations_paths_match_exactly() {
        for path in PATHS {
            assert!(is_operations_path(path), "{path}");
            assert_eq!(operations_path(path), Some(path));
        }
        for path in ["/healthz/", "/HEALTHZ", "/metrics/x", "/", "/readyz?x", ""] {
            assert!(!is_operations_path(path), "{path}");
        }
    }
}
