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
}
