//! The route table of `[[routes]]`: which policy applies to a request, and where it goes.
//!
//! A route's path is exact (`/orders`) or a prefix when it ends in `/*` (`/orders/*`
//! matches `/orders` and everything below it). The most specific route wins: an exact
//! match first, then the longest prefix. Routes without an `upstream` are served by
//! Rampart itself (the identity API) under the route's policy.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::Method;

use crate::config::{RawRateLimit, RawRoute, RawUpstream, parse_duration, parse_size};

/// Who may use a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// Anyone, authenticated or not.
    Public,
    /// Any authenticated user.
    Authenticated,
    /// Users whose role is listed.
    Roles(Vec<String>),
    /// Users whose role grants this permission.
    Permission(String),
}

/// A route's own rate limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteLimit {
    /// Quota text, e.g. `50/min`.
    pub rate: String,
    /// Burst capacity, when it differs from the quota.
    pub burst: Option<u32>,
}

/// One configured route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The path as configured: the metric label and policy name.
    pub name: &'static str,
    /// The path without `/*`.
    pub base: String,
    /// Whether everything below `base` matches.
    pub prefix: bool,
    /// Allowed methods; empty = all.
    pub methods: Vec<Method>,
    /// Upstream name, or `None` for Rampart itself.
    pub upstream: Option<Arc<str>>,
    /// Who may use it.
    pub access: Access,
    /// Its own limit, on top of the caller's tier.
    pub rate_limit: Option<RouteLimit>,
    /// API-key requests must be signed.
    pub signed: bool,
    /// Largest body accepted.
    pub max_body: usize,
}

impl Route {
    fn matches_path(&self, path: &str) -> bool {
        if self.prefix {
            path == self.base
                || path
                    .strip_prefix(self.base.as_str())
                    .is_some_and(|rest| rest.starts_with('/') || self.base.ends_with('/'))
        } else {
            path == self.base
        }
    }

    /// Whether the method is allowed here.
    pub fn allows(&self, method: &Method) -> bool {
        self.methods.is_empty() || self.methods.contains(method)
    }
}

/// An upstream service.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Its configured name (the metric label).
    pub name: &'static str,
    /// Base URL.
    pub url: http::Uri,
    /// Time allowed for the response head.
    pub timeout: Duration,
}

/// What a request matched.
#[derive(Debug, Clone, Copy)]
pub enum Matched<'a> {
    /// A route whose path and method match.
    Route(&'a Route),
    /// Routes match the path, but none allows the method.
    WrongMethod,
    /// No route.
    None,
}

/// Every route, ready for lookup.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
}

/// Labels must be `'static`; route and upstream names come from configuration once.
fn leak(text: &str) -> &'static str {
    Box::leak(text.to_owned().into_boxed_str())
}

impl RouteTable {
    /// Builds the table from validated configuration.
    ///
    /// # Errors
    /// A value that configuration validation should already have refused.
    pub fn new(
        routes: &[RawRoute],
        upstreams: &BTreeMap<String, RawUpstream>,
        default_max_body: usize,
    ) -> Result<Self, String> {
        let mut table = Self::default();
        for (name, upstream) in upstreams {
            table.upstreams.insert(
                name.clone(),
                Arc::new(Upstream {
                    name: leak(name),
                    url: upstream
                        .url
                        .parse()
                        .map_err(|_| format!("upstreams.{name}.url"))?,
                    timeout: parse_duration(&upstream.timeout)?,
                }),
            );
        }
        for raw in routes {
            let (base, prefix) = match raw.path.strip_suffix("/*") {
                Some(base) => (if base.is_empty() { "/" } else { base }.to_owned(), true),
                None => (raw.path.clone(), false),
            };
            let access = if !raw.auth {
                Access::Public
            } else if let Some(roles) = &raw.roles {
                Access::Roles(roles.0.clone())
            } else if let Some(permission) = &raw.permission {
                Access::Permission(permission.clone())
            } else {
                Access::Authenticated
            };
            let methods = raw
                .methods
                .0
                .iter()
                .map(|method| {
                    Method::from_bytes(method.as_bytes())
                        .map_err(|_| format!("{}: method {method}", raw.path))
                })
                .collect::<Result<Vec<_>, _>>()?;
            table.routes.push(Route {
                name: leak(&raw.path),
                base,
                prefix,
                methods,
                upstream: raw.upstream.as_deref().map(Arc::from),
                access,
                rate_limit: raw.rate_limit.as_ref().map(|limit| match limit {
                    RawRateLimit::Plain(rate) => RouteLimit {
                        rate: rate.clone(),
                        burst: None,
                    },
                    RawRateLimit::WithBurst { rate, burst } => RouteLimit {
                        rate: rate.clone(),
                        burst: Some(*burst),
                    },
                }),
                signed: raw.signed,
                max_body: match &raw.max_body {
                    Some(size) => parse_size(size)?,
                    None => default_max_body,
                },
            });
        }
        // Most specific first: exact before prefix, longer before shorter.
        table
            .routes
            .sort_by_key(|route| (route.prefix, std::cmp::Reverse(route.base.len())));
        Ok(table)
    }

    /// Every route.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The most specific route for a request.
    pub fn lookup(&self, method: &Method, path: &str) -> Matched<'_> {
        let mut path_matched = false;
        for route in &self.routes {
            if route.matches_path(path) {
                if route.allows(method) {
                    return Matched::Route(route);
                }
                path_matched = true;
            }
        }
        if path_matched {
            Matched::WrongMethod
        } else {
            Matched::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::List;

    fn route(path: &str, methods: &[&str], upstream: Option<&str>) -> RawRoute {
        RawRoute {
            path: path.into(),
            methods: List(methods.iter().map(|m| (*m).to_owned()).collect()),
            upstream: upstream.map(str::to_owned),
            roles: None,
            permission: None,
            rate_limit: None,
            signed: false,
            max_body: None,
            auth: true,
        }
    }

    fn table() -> RouteTable {
        let upstreams = BTreeMap::from([(
            "orders".to_owned(),
            RawUpstream {
                url: "http://127.0.0.1:9000".into(),
                timeout: "5s".into(),
                circuit_breaker: None,
            },
        )]);
        RouteTable::new(
            &[
                route("/orders/*", &["GET"], Some("orders")),
                route("/orders", &["POST"], Some("orders")),
                route("/orders/special", &["GET"], Some("orders")),
                route("/users/me", &["GET"], None),
            ],
            &upstreams,
            1024,
        )
        .unwrap()
    }

    #[test]
    fn the_most_specific_route_wins() {
        let table = table();
        let name = |method: Method, path: &str| match table.lookup(&method, path) {
            Matched::Route(route) => route.name,
            Matched::WrongMethod => "405",
            Matched::None => "none",
        };
        assert_eq!(name(Method::POST, "/orders"), "/orders");
        assert_eq!(name(Method::GET, "/orders"), "/orders/*");
        assert_eq!(name(Method::GET, "/orders/17"), "/orders/*");
        assert_eq!(name(Method::GET, "/orders/special"), "/orders/special");
        assert_eq!(name(Method::DELETE, "/orders/17"), "405");
        assert_eq!(name(Method::GET, "/ordersx"), "none");
        assert_eq!(name(Method::GET, "/users/me"), "/users/me");
        assert_eq!(name(Method::GET, "/users/me/x"), "none");
    }
}
