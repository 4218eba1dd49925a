//! The built-in limits of the identity routes (SPEC §3): `POST /auth/register` 5/min,
//! `POST /auth/login` 10/min and `POST /auth/refresh` 20/min per client address, and
//! `POST /accounts/{id}/refresh` 20/min per user.
//!
//! They apply whatever `[[routes]]` says. A `[[routes]]` entry for the same path and
//! method replaces one with its own `rate_limit`; an entry without a `rate_limit` leaves
//! it in force. Registration, login and refresh are where anonymous callers come in, so
//! their limits (built-in or configured) are always per address: a credential never buys a
//! fresh budget there.

use http::Method;

use super::{RouteTable, Segment, policy_name};
use crate::rate_limit::{Per, Policies, PolicyId, Quota};

/// A built-in limit as shipped.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// The route pattern (`POST` only).
    pub path: &'static str,
    /// Its quota.
    pub rate: &'static str,
    /// Whose budget it is.
    pub per: Per,
}

/// The identity routes' limits, all for `POST`.
pub const BUILTIN: [Builtin; 4] = [
    Builtin {
        path: "/auth/register",
        rate: "5/min",
        per: Per::Ip,
    },
    Builtin {
        path: "/auth/login",
        rate: "10/min",
        per: Per::Ip,
    },
    Builtin {
        path: "/auth/refresh",
        rate: "20/min",
        per: Per::Ip,
    },
    Builtin {
        path: "/accounts/{id}/refresh",
        rate: "20/min",
        per: Per::User,
    },
];

/// A built-in limit in force (no `[[routes]]` entry replaced it).
#[derive(Debug, Clone)]
pub struct IdentityLimit {
    /// The route pattern.
    pub path: &'static str,
    segments: Vec<Segment>,
    /// The limiter's policy.
    pub policy: PolicyId,
    /// Whose budget it is.
    pub per: Per,
}

fn segments(path: &str) -> Vec<Segment> {
    path.split('/')
        .filter(|part| !part.is_empty())
        .map(|part| {
            if part.starts_with('{') && part.ends_with('}') {
                Segment::Param
            } else {
                Segment::Literal(part.to_owned())
            }
        })
        .collect()
}

/// Whether `path` matches the exact pattern `segments`.
fn matches(segments: &[Segment], path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let mut parts = rest.split('/');
    segments
        .iter()
        .all(|segment| match (segment, parts.next()) {
            (Segment::Literal(literal), Some(part)) => part == literal,
            (Segment::Param, Some(part)) => !part.is_empty(),
            (_, None) => false,
        })
        && parts.next().is_none()
}

/// Whether a configured route (exact, with `segments` and `methods`) stands for `builtin`.
fn covers(segments: &[Segment], prefix: bool, methods: &[Method], builtin: &Builtin) -> bool {
    !prefix
        && (methods.is_empty() || methods.contains(&Method::POST))
        && segments == self::segments(builtin.path).as_slice()
}

/// Whose budget a configured route's own limit is: its `per`, except on an identity route
/// whose built-in limit is per address, which stays per address.
pub(super) fn route_per(
    configured: Per,
    segments: &[Segment],
    prefix: bool,
    methods: &[Method],
) -> Per {
    let anonymous_entry = BUILTIN
        .iter()
        .any(|builtin| builtin.per == Per::Ip && covers(segments, prefix, methods, builtin));
    if anonymous_entry {
        return Per::Ip;
    }
    configured
}

impl RouteTable {
    /// Registers in `policies` each built-in identity limit that no configured route with
    /// its own `rate_limit` replaces. Called once at start-up, after [`RouteTable::new`].
    ///
    /// # Errors
    /// A policy that cannot be registered (a programming error).
    pub fn add_identity_limits(&mut self, policies: &mut Policies) -> Result<(), String> {
        for builtin in &BUILTIN {
            let replaced = self.routes.iter().any(|route| {
                route.limit_policy.is_some()
                    && covers(&route.segments, route.prefix, &route.methods, builtin)
            });
            if replaced {
                continue;
            }
            let quota = Quota::parse(builtin.rate).map_err(|error| error.to_string())?;
            let name = policy_name(&[Method::POST], builtin.path);
            // A configured route of the same name without a limit registered nothing, so
            // the name is free unless an odd configuration took it; then it is marked.
            let policy = match policies.add(&name, quota) {
                Ok(policy) => policy,
                Err(_) => policies
                    .add(&format!("{name} built-in"), quota)
                    .map_err(|error| error.to_string())?,
            };
            self.identity_limits.push(IdentityLimit {
                path: builtin.path,
                segments: segments(builtin.path),
                policy,
                per: builtin.per,
            });
        }
        Ok(())
    }

    /// The built-in limits in force.
    pub fn identity_limits(&self) -> &[IdentityLimit] {
        &self.identity_limits
    }

    /// The built-in limit that applies to a request, if any.
    pub fn identity_limit(&self, method: &Method, path: &str) -> Option<&IdentityLimit> {
        if *method != Method::POST {
            return None;
        }
        self.identity_limits
            .iter()
            .find(|limit| matches(&limit.segments, path))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::routes::{Access, RouteConfig};

    fn route(path: &str, methods: &[&str], rate: Option<&str>, per: &str) -> RouteConfig {
        RouteConfig {
            methods: methods
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
                .collect(),
            access: Access::Public,
            rate_limit: rate.map(|rate| Quota::parse(rate).unwrap()),
            per: Per::parse(per).unwrap(),
            ..RouteConfig::new(path)
        }
    }

    fn table(routes: &[RouteConfig]) -> (RouteTable, Policies) {
        let mut policies = Policies::new();
        let mut table = RouteTable::new(routes, &BTreeMap::new(), 1024, &mut policies).unwrap();
        table.add_identity_limits(&mut policies).unwrap();
        (table, policies)
    }

    fn limited(table: &RouteTable) -> Vec<&'static str> {
        table
            .identity_limits()
            .iter()
            .map(|limit| limit.path)
            .collect()
    }

    #[test]
    fn the_shipped_example_reproduces_the_documented_limits() {
        let config = crate::config::Config::load(&crate::config::Sources {
            file_path: None,
            file: Some(crate::demo::EXAMPLE_CONFIG.to_owned()),
            ..Default::default()
        })
        .unwrap();
        let mut policies = Policies::new();
        let mut table =
            RouteTable::new(&config.routes, &config.upstreams, 1024, &mut policies).unwrap();
        table.add_identity_limits(&mut policies).unwrap();
        let limiter = crate::rate_limit::RateLimiter::memory(policies);
        let limit = |method: &str, path: &str| {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            let route = table
                .routes()
                .iter()
                .find(|route| route.name == path && route.allows(&method))
                .unwrap_or_else(|| panic!("{method} {path} is in the example"));
            let quota = route.limit_policy.and_then(|policy| limiter.quota(policy));
            (quota.map(ToString::to_string), route.per)
        };
        // SPEC §3's table.
        for (method, path, rate, per) in [
            ("POST", "/auth/register", "5/min", Per::Ip),
            ("POST", "/auth/login", "10/min", Per::Ip),
            ("POST", "/auth/refresh", "20/min", Per::Ip),
            ("GET", "/users/me", "100/min", Per::User),
            ("GET", "/users/{id}", "100/min", Per::User),
            ("GET", "/orders", "100/min", Per::User),
            ("POST", "/orders", "50/min", Per::User),
            ("GET", "/positions", "100/min", Per::User),
            ("GET", "/admin/users", "100/min", Per::User),
            ("POST", "/accounts/{id}/refresh", "20/min", Per::User),
        ] {
            assert_eq!(
                limit(method, path),
                (Some(rate.to_owned()), per),
                "{method} {path}"
            );
        }
        assert!(
            table.identity_limits().is_empty(),
            "the example states every built-in limit itself"
        );
    }

    #[test]
    fn without_routes_every_builtin_limit_is_in_force() {
        let (table, _) = table(&[]);
        assert_eq!(
            limited(&table),
            [
                "/auth/register",
                "/auth/login",
                "/auth/refresh",
                "/accounts/{id}/refresh"
            ]
        );
        let find = |method: Method, path: &str| {
            table
                .identity_limit(&method, path)
                .map(|limit| (limit.path, limit.per))
        };
        assert_eq!(
            find(Method::POST, "/auth/register"),
            Some(("/auth/register", Per::Ip))
        );
        assert_eq!(
            find(Method::POST, "/accounts/17/refresh"),
            Some(("/accounts/{id}/refresh", Per::User))
        );
        assert_eq!(find(Method::GET, "/auth/register"), None);
        assert_eq!(find(Method::POST, "/auth/register/x"), None);
        assert_eq!(find(Method::POST, "/auth/registerx"), None);
        assert_eq!(find(Method::POST, "/accounts//refresh"), None);
        assert_eq!(find(Method::POST, "/auth"), None);
    }

    #[test]
    fn an_entry_with_its_own_limit_replaces_a_builtin_and_one_without_keeps_it() {
        let (table, _) = table(&[
            route("/auth/register", &["POST"], Some("2/min"), "user"),
            route("/auth/login", &["POST"], None, "user"),
            route("/accounts/{account}/refresh", &[], Some("3/min"), "ip"),
            route("/auth/*", &[], Some("100/min"), "user"),
            route("/auth/refresh", &["GET"], Some("1/min"), "user"),
        ]);
        assert_eq!(limited(&table), ["/auth/login", "/auth/refresh"]);
        let per = |path: &str| {
            table
                .routes()
                .iter()
                .find(|route| route.name == path)
                .map(|route| route.per)
                .unwrap()
        };
        // Anonymous entry points stay per address whatever the entry says.
        assert_eq!(per("/auth/register"), Per::Ip);
        assert_eq!(per("/auth/login"), Per::Ip);
        assert_eq!(per("/accounts/{account}/refresh"), Per::Ip);
        assert_eq!(per("/auth/*"), Per::User);
        assert_eq!(
            per("/auth/refresh"),
            Per::User,
            "GET is not the built-in's method"
        );
    }
}
