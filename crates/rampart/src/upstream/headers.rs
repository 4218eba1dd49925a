//! Which request headers a backend may get as the client sent them (SPEC §3 "Forwarding").
//!
//! Three sets are removed before a request is forwarded:
//! - always, whatever the configuration: the client's credentials (`Authorization`,
//!   `Cookie`, `X-API-Key`, `X-CSRF-Token`), any `X-Rampart-*` header, and any header whose
//!   name contains `_` (WSGI and CGI servers fold `_` and `-` into one variable, so
//!   `X_Rampart_User_Id` would read as `X-Rampart-User-Id`);
//! - the built-in list, [`BUILT_IN`] plus every `X-Forwarded-*`: headers a backend or its
//!   framework may read as the caller's method, URL or identity, which only the gateway may
//!   state. An upstream's `pass_request_headers` lets named entries through;
//! - each upstream's own `strip_request_headers`.
//!
//! The sets are built once per upstream at start-up; the hot path only looks names up.

use std::collections::HashSet;

use http::header::{self, HeaderMap, HeaderName};

/// Client-set override and identity headers removed unless an upstream passes them.
/// `X-Forwarded-*` is matched as a prefix on top of these.
pub const BUILT_IN: [&str; 22] = [
    // Method and URL overrides honoured by many frameworks and proxies.
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-original-uri",
    "x-original-method",
    "x-rewrite-url",
    // Client address claims; Rampart states the client's address itself.
    "x-real-ip",
    "true-client-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-remote-addr",
    "x-remote-ip",
    "x-originating-ip",
    "forwarded",
    // Identity claims of authenticating proxies.
    "x-remote-user",
    "remote-user",
    "x-user-id",
    "x-user",
    "x-authenticated-user",
];

const FORWARDED_PREFIX: &str = "x-forwarded-";
const RAMPART_PREFIX: &str = "x-rampart-";

/// Headers that never reach a backend as the client sent them.
const ALWAYS: [HeaderName; 4] = [
    header::AUTHORIZATION,
    header::COOKIE,
    HeaderName::from_static("x-api-key"),
    HeaderName::from_static("x-csrf-token"),
];

fn always_stripped(name: &str) -> bool {
    name.contains('_')
        || name.starts_with(RAMPART_PREFIX)
        || ALWAYS.iter().any(|always| always.as_str() == name)
}

fn built_in(name: &str) -> bool {
    name.starts_with(FORWARDED_PREFIX) || BUILT_IN.contains(&name)
}

/// One upstream's request-header policy, built once from its configuration.
#[derive(Debug, Clone, Default)]
pub struct ForwardPolicy {
    /// Built-in entries this upstream gets as sent.
    pass: HashSet<HeaderName>,
    /// Built-in entries (exact names) and the upstream's own additions.
    strip: HashSet<HeaderName>,
}

impl ForwardPolicy {
    /// The policy for an upstream's `strip_request_headers` and `pass_request_headers`.
    ///
    /// # Errors
    /// A name that configuration validation ([`check`]) refuses.
    pub fn new(strip: &[String], pass: &[String]) -> Result<Self, String> {
        if let Some(problem) = check(strip, pass).into_iter().next() {
            return Err(problem.1);
        }
        let parse = |name: &String| {
            HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| name.clone())
        };
        let pass: HashSet<HeaderName> = pass.iter().map(parse).collect::<Result<_, _>>()?;
        let mut set: HashSet<HeaderName> = BUILT_IN
            .iter()
            .map(|name| HeaderName::from_static(name))
            .filter(|name| !pass.contains(name))
            .collect();
        for name in strip {
            set.insert(parse(name)?);
        }
        Ok(Self { pass, strip: set })
    }

    /// Whether a request header stops at the gateway.
    pub fn strips(&self, name: &HeaderName) -> bool {
        let text = name.as_str();
        always_stripped(text)
            || self.strip.contains(name)
            || (text.starts_with(FORWARDED_PREFIX) && !self.pass.contains(name))
    }

    /// Removes every header this policy strips.
    pub fn apply(&self, headers: &mut HeaderMap) {
        // No allocation unless there is something to remove.
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| self.strips(name))
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(name);
        }
    }
}

/// Problems with an upstream's header lists, as `(field, message)`: names that are not
/// header names, and `pass_request_headers` entries that are not built-in entries or are
/// always stripped.
pub fn check(strip: &[String], pass: &[String]) -> Vec<(&'static str, String)> {
    let mut problems = Vec::new();
    for name in strip {
        if HeaderName::from_bytes(name.trim().as_bytes()).is_err() {
            problems.push((
                "strip_request_headers",
                format!("`{name}` is not a header name"),
            ));
        }
    }
    for name in pass {
        let Ok(header) = HeaderName::from_bytes(name.trim().as_bytes()) else {
            problems.push((
                "pass_request_headers",
                format!("`{name}` is not a header name"),
            ));
            continue;
        };
        let text = header.as_str();
        if always_stripped(text) {
            problems.push((
                "pass_request_headers",
                format!(
                    "`{name}` is always stripped: credentials, X-Rampart-* and names with `_` \
                     never reach a backend"
                ),
            ));
        } else if !built_in(text) {
            problems.push((
                "pass_request_headers",
                format!("`{name}` is not on the built-in strip list, so it passes already"),
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    fn forwarded(policy: &ForwardPolicy, sent: &[&str]) -> Vec<String> {
        let mut headers = HeaderMap::new();
        for name in sent {
            headers.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "1".parse().unwrap(),
            );
        }
        policy.apply(&mut headers);
        let mut left: Vec<String> = headers.keys().map(|name| name.to_string()).collect();
        left.sort();
        left
    }

    #[test]
    fn override_identity_and_underscore_headers_are_stripped_by_default() {
        let policy = ForwardPolicy::new(&[], &[]).unwrap();
        let sent = [
            "x-http-method-override",
            "x-method-override",
            "x-original-url",
            "x-rewrite-url",
            "x-real-ip",
            "true-client-ip",
            "x-forwarded-for",
            "x-forwarded-prefix",
            "x-forwarded-user",
            "x-remote-user",
            "x-user-id",
            "x-authenticated-user",
            "x_rampart_user_id",
            "x_forwarded_for",
            "content_type",
            "x-rampart-role",
            "authorization",
            "cookie",
            "x-api-key",
            "content-type",
            "x-custom",
        ];
        assert_eq!(forwarded(&policy, &sent), ["content-type", "x-custom"]);
    }

    #[test]
    fn an_upstream_adds_to_the_list_and_passes_named_built_in_entries() {
        let policy = ForwardPolicy::new(
            &names(&["X-Custom"]),
            &names(&["x-http-method-override", "X-Forwarded-Prefix"]),
        )
        .unwrap();
        assert_eq!(
            forwarded(
                &policy,
                &[
                    "x-custom",
                    "x-http-method-override",
                    "x-forwarded-prefix",
                    "x-forwarded-user",
                    "x-method-override",
                ]
            ),
            ["x-forwarded-prefix", "x-http-method-override"]
        );
    }

    #[test]
    fn credentials_rampart_and_underscore_names_cannot_be_passed() {
        for name in [
            "Authorization",
            "cookie",
            "X-API-Key",
            "x-csrf-token",
            "X-Rampart-User-Id",
            "x_real_ip",
            "x-custom",
            "bad header",
        ] {
            let problems = check(&[], &names(&[name]));
            assert_eq!(problems.len(), 1, "{name}");
            assert_eq!(problems[0].0, "pass_request_headers");
            assert!(ForwardPolicy::new(&[], &names(&[name])).is_err(), "{name}");
        }
        assert_eq!(check(&names(&["not a name"]), &[]).len(), 1);
        assert!(check(&names(&["x-custom"]), &names(&["x-real-ip"])).is_empty());
    }
}
