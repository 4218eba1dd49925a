//! `[[routes]]`: each route as written, and checked against the upstreams and roles it
//! names.

use std::collections::BTreeMap;

use http::Method;
use serde::Deserialize;

use super::Access;
use crate::rate_limit::{Per, Quota, QuotaError};
use crate::settings::{List, Problems, parse_size};
use crate::upstream::UpstreamConfig;

/// One `[[routes]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Exact, or a prefix when it ends in `/*`.
    pub path: String,
    /// Methods matched; empty: any.
    #[serde(default)]
    pub methods: List,
    /// The upstream that serves the route; absent: served by Rampart itself.
    pub upstream: Option<String>,
    /// Roles allowed in.
    pub roles: Option<List>,
    /// The permission a caller's role must grant, instead of `roles`.
    pub permission: Option<String>,
    /// The route's own quota, on top of the tier's.
    pub rate_limit: Option<RawRateLimit>,
    /// Whether API-key requests must be HMAC-signed.
    #[serde(default)]
    pub signed: bool,
    /// The route's body limit (a size); absent: `server.max_body`.
    pub max_body: Option<String>,
    /// `false`: open to anyone, no credential needed.
    #[serde(default = "default_true")]
    pub auth: bool,
    /// Whose budget the route's own limit is: "ip", "user" (default) or "key".
    #[serde(default = "default_per")]
    pub per: String,
    /// `false`: match the path without regard to ASCII case.
    #[serde(default = "default_true")]
    pub case_sensitive: bool,
    /// Whether WebSocket upgrades on this route are tunnelled to the upstream.
    #[serde(default)]
    pub websocket: bool,
}

fn default_per() -> String {
    "user".into()
}

fn default_true() -> bool {
    true
}

/// A route's `rate_limit`: `"50/min"` or `{ rate = "10/s", burst = 100 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawRateLimit {
    /// A rate alone: `"N/s"`, `"N/min"` or `"N/h"`.
    Plain(String),
    /// A rate and a larger burst.
    WithBurst {
        /// Refills the bucket: `"N/s"`, `"N/min"` or `"N/h"`.
        rate: String,
        /// Requests the bucket holds.
        burst: u32,
    },
}

impl RawRateLimit {
    /// The quota, parsed by the limiter's own [`Quota::parse`] (or [`Quota::with_burst`]).
    ///
    /// # Errors
    /// What is wrong with the rate or the burst.
    pub fn quota(&self) -> Result<Quota, QuotaError> {
        match self {
            Self::Plain(rate) => Quota::parse(rate),
            Self::WithBurst { rate, burst } => Quota::with_burst(rate, *burst),
        }
    }
}

/// One route, checked: what [`super::RouteTable::new`] builds a [`super::Route`] from.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// The path pattern as configured (`/orders`, `/orders/*`, `/users/{id}`).
    pub path: String,
    /// Allowed methods; empty = all.
    pub methods: Vec<Method>,
    /// Upstream name (defined), or `None` for Rampart itself.
    pub upstream: Option<String>,
    /// Who may use it.
    pub access: Access,
    /// Its own limit, on top of the caller's tier.
    pub rate_limit: Option<Quota>,
    /// API-key requests must be signed.
    pub signed: bool,
    /// Largest body accepted; `None`: `server.max_body`.
    pub max_body: Option<usize>,
    /// Whose budget `rate_limit` is.
    pub per: Per,
    /// `false`: the path matches regardless of ASCII case.
    pub case_sensitive: bool,
    /// Whether WebSocket upgrades are tunnelled to the upstream.
    pub websocket: bool,
}

impl RouteConfig {
    /// A route of `path` open to any authenticated user, with nothing else set.
    pub fn new(path: &str) -> Self {
        Self {
            path: path.to_owned(),
            methods: Vec::new(),
            upstream: None,
            access: Access::Authenticated,
            rate_limit: None,
            signed: false,
            max_body: None,
            per: Per::User,
            case_sensitive: true,
            websocket: false,
        }
    }

    /// Checks the `index`th route against the checked `upstreams` and the defined `roles`,
    /// adding every problem to `problems`.
    pub fn from_raw(
        index: usize,
        raw: RawRoute,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        roles: &BTreeMap<String, Vec<String>>,
        problems: &mut Problems,
    ) -> Self {
        let key = format!("routes[{index}] ({})", raw.path);
        if !raw.path.starts_with('/') {
            problems.add(&key, "path must start with /");
        }
        if let Some(name) = &raw.upstream {
            match upstreams.get(name) {
                None => problems.add(&key, format!("upstream `{name}` is not defined")),
                // Tunnels speak HTTP/1.1 to the backend; an h2c:// target has none.
                Some(upstream) if raw.websocket && upstream.has_h2c_target() => problems.add(
                    &format!("{key}.websocket"),
                    format!(
                        "upstream `{name}` has an h2c:// target, and WebSocket tunnels need HTTP/1.1"
                    ),
                ),
                Some(_) => {}
            }
        }
        if raw.roles.is_some() && raw.permission.is_some() {
            problems.add(&key, "give either roles or permission, not both");
        }
        for role in raw.roles.iter().flat_map(|roles| roles.0.iter()) {
            if !roles.contains_key(role) {
                problems.add(&key, format!("role `{role}` is not defined"));
            }
        }
        let mut methods = Vec::with_capacity(raw.methods.0.len());
        for method in &raw.methods.0 {
            match Method::from_bytes(method.as_bytes()) {
                Ok(parsed) if method.to_ascii_uppercase() == *method => methods.push(parsed),
                _ => problems.add(&key, format!("`{method}` is not an HTTP method")),
            }
        }
        let rate_limit = raw
            .rate_limit
            .as_ref()
            .and_then(|limit| match limit.quota() {
                Ok(quota) => Some(quota),
                Err(error) => {
                    problems.add(&format!("{key}.rate_limit"), error);
                    None
                }
            });
        let max_body = raw
            .max_body
            .as_deref()
            .and_then(|size| match parse_size(size) {
                Ok(size) => Some(size),
                Err(message) => {
                    problems.add(&format!("{key}.max_body"), message);
                    None
                }
            });
        let per = Per::parse(&raw.per).unwrap_or_else(|| {
            problems.add(
                &format!("{key}.per"),
                format!("`{}` is not one of ip, user, key", raw.per),
            );
            Per::User
        });
        let access = if !raw.auth {
            Access::Public
        } else if let Some(roles) = raw.roles {
            Access::Roles(roles.0)
        } else if let Some(permission) = raw.permission {
            Access::Permission(permission)
        } else {
            Access::Authenticated
        };
        Self {
            path: raw.path,
            methods,
            upstream: raw.upstream,
            access,
            rate_limit,
            signed: raw.signed,
            max_body,
            per,
            case_sensitive: raw.case_sensitive,
            websocket: raw.websocket,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawRoute {
        toml::from_str(text).unwrap()
    }

    fn check(text: &str) -> (RouteConfig, Vec<String>) {
        let upstreams = BTreeMap::from([(
            "orders".to_owned(),
            UpstreamConfig::from_raw(
                "orders",
                &toml::from_str("url = \"h2c://127.0.0.1:9\"").unwrap(),
                &mut Problems::default(),
            ),
        )]);
        let roles = crate::config::default_roles();
        let mut problems = Problems::default();
        let route = RouteConfig::from_raw(0, raw(text), &upstreams, &roles, &mut problems);
        let listed = match problems.into_result(()) {
            Ok(()) => Vec::new(),
            Err(error) => error.problems,
        };
        (route, listed)
    }

    #[test]
    fn a_route_is_typed_once_with_the_limiters_own_quota() {
        let (route, problems) = check(
            "path = \"/orders/*\"\nmethods = [\"GET\", \"POST\"]\nupstream = \"orders\"\n\
             roles = [\"trader\"]\nrate_limit = { rate = \"10/s\", burst = 20 }\n\
             max_body = \"64KiB\"\nper = \"key\"\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(route.methods, [Method::GET, Method::POST]);
        assert_eq!(route.access, Access::Roles(vec!["trader".into()]));
        assert_eq!(
            route.rate_limit,
            Some(Quota::with_burst("10/s", 20).unwrap())
        );
        assert_eq!(route.max_body, Some(64 * 1024));
        assert_eq!(route.per, Per::Key);
        let (route, _) = check("path = \"/open\"\nauth = false\n");
        assert_eq!(route.access, Access::Public);
    }

    #[test]
    fn every_problem_of_a_route_is_reported_each_under_its_key() {
        let (_, problems) = check(
            "path = \"orders\"\nmethods = [\"get\"]\nupstream = \"nowhere\"\n\
             roles = [\"wizard\"]\npermission = \"orders:read\"\nrate_limit = \"10/m\"\n\
             max_body = \"lots\"\nper = \"team\"\n",
        );
        for expected in [
            "routes[0] (orders): path must start with /",
            "routes[0] (orders): upstream `nowhere` is not defined",
            "routes[0] (orders): give either roles or permission, not both",
            "routes[0] (orders): role `wizard` is not defined",
            "routes[0] (orders): `get` is not an HTTP method",
            "routes[0] (orders).rate_limit: rate limit \"10/m\": unknown period; use s, min or h",
            "routes[0] (orders).max_body: `lots` is not a size",
            "routes[0] (orders).per: `team` is not one of ip, user, key",
        ] {
            assert!(
                problems.iter().any(|problem| problem.starts_with(expected)),
                "{expected} missing from {problems:?}"
            );
        }
        let (_, problems) = check("path = \"/ws\"\nupstream = \"orders\"\nwebsocket = true\n");
        assert_eq!(
            problems,
            [
                "routes[0] (/ws).websocket: upstream `orders` has an h2c:// target, and WebSocket \
              tunnels need HTTP/1.1"
            ]
        );
    }
}
