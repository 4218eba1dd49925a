//! The route table of `[[routes]]`: which policy applies to a request, and where it goes.
//!
//! A route's path is exact (`/orders`) or a prefix when it ends in `/*` (`/orders/*`
//! matches `/orders` and everything below it). The most specific route wins: an exact
//! match first, then the longest prefix. Routes without an `upstream` are served by
//! Rampart itself (the identity API) under the route's policy.
//!
//! Routes are matched on the canonical form of the path ([`path::canonical`]), which then
//! replaces the request's own spelling, so every later layer, handler and backend sees the
//! path the decision was made on; a path with no safe canonical form is refused with 400.
//! A route with `case_sensitive = false` matches regardless of ASCII case; a request it
//! would take that is a case respelling of a more specific route is refused with 400, so
//! a protected prefix cannot be escaped by changing case.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;

use crate::rate_limit::Quota;
use crate::upstream::{Upstream, UpstreamConfig};

mod config;
mod identity_limits;
mod trie;
pub use crate::upstream::HealthCheck;
pub use config::{RawRateLimit, RawRoute, RouteConfig};
pub use identity_limits::{BUILTIN as IDENTITY_LIMITS, Builtin, IdentityLimit};
pub mod path;

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

/// One segment of a route's path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Must equal the path's segment.
    Literal(String),
    /// `{name}`: any one non-empty segment.
    Param,
}

/// One configured route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The path as configured: the metric label.
    pub name: &'static str,
    /// The rate-limit policy name of the route's own limit (no braces or quotes, so it fits
    /// a header string and a Redis hash tag): `route:<METHODS> <path>`.
    pub policy_name: String,
    /// The path without `/*`.
    pub base: String,
    segments: Vec<Segment>,
    /// Whether everything below `base` matches.
    pub prefix: bool,
    /// Allowed methods; empty = all.
    pub methods: Vec<Method>,
    /// Upstream name, or `None` for Rampart itself.
    pub upstream: Option<Arc<str>>,
    /// Who may use it.
    pub access: Access,
    /// Its own limit, on top of the caller's tier.
    pub rate_limit: Option<Quota>,
    /// The limiter's policy for `rate_limit`.
    pub limit_policy: Option<crate::rate_limit::PolicyId>,
    /// Whose budget `rate_limit` is.
    pub per: crate::rate_limit::Per,
    /// API-key requests must be signed.
    pub signed: bool,
    /// Largest body accepted.
    pub max_body: usize,
    /// `false`: the path matches regardless of ASCII case.
    pub case_sensitive: bool,
    /// Whether WebSocket upgrades are tunnelled to the upstream.
    pub websocket: bool,
}

impl Route {
    fn params(&self) -> usize {
        self.segments
            .iter()
            .filter(|segment| **segment == Segment::Param)
            .count()
    }

    fn matches_path(&self, path: &str, ignore_case: bool) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        if self.segments.is_empty() {
            // `/*` matches everything; `/` only itself.
            return self.prefix || rest.is_empty();
        }
        let mut parts = rest.split('/');
        for segment in &self.segments {
            match (segment, parts.next()) {
                (Segment::Literal(literal), Some(part))
                    if part == literal || (ignore_case && part.eq_ignore_ascii_case(literal)) => {}
                (Segment::Param, Some(part)) if !part.is_empty() => {}
                _ => return false,
            }
        }
        // An exact route ends here; a prefix route takes anything below.
        self.prefix || parts.next().is_none()
    }

    /// Whether the method is allowed here. `HEAD` is allowed wherever `GET` is (it is
    /// answered by the same handler), so its policy is GET's.
    pub fn allows(&self, method: &Method) -> bool {
        self.methods.is_empty()
            || self.methods.contains(method)
            || (method == Method::HEAD && self.methods.contains(&Method::GET))
    }
}

/// What a request matched.
#[derive(Debug, Clone)]
pub enum Matched<'a> {
    /// A route whose path and method match.
    Route(&'a Arc<Route>),
    /// Routes match the path, but none allows the method.
    WrongMethod {
        /// The methods they allow.
        allowed: Vec<Method>,
        /// Whether any of them goes to an upstream (else Rampart serves the path itself,
        /// and may serve other methods there outside the table).
        proxied: bool,
    },
    /// The route that would take the path ignores case, and the path is a case respelling
    /// of a more specific route: refused rather than let past that route's policy.
    Respelled,
    /// No route.
    None,
}

/// Every route, ready for lookup.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    /// The routes by path segment, so that a lookup costs the same however many there are.
    index: trie::Index,
    /// The built-in identity limits in force.
    identity_limits: Vec<IdentityLimit>,
    /// Whether any route ignores case (else lookups never compare without case).
    any_case_insensitive: bool,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
}

/// Labels must be `'static`; route and upstream names come from configuration once.
fn leak(text: &str) -> &'static str {
    Box::leak(text.to_owned().into_boxed_str())
}

fn policy_name(methods: &[Method], path: &str) -> String {
    let methods = if methods.is_empty() {
        "*".to_owned()
    } else {
        methods
            .iter()
            .map(Method::as_str)
            .collect::<Vec<_>>()
            .join(",")
    };
    let path: String = path
        .chars()
        .filter_map(|c| match c {
            '{' => Some(':'),
            '}' => None,
            c if c.is_ascii_graphic() && c != '"' && c != '\\' => Some(c),
            _ => Some('_'),
        })
        .collect();
    let mut name = format!("route:{methods} {path}");
    name.truncate(100);
    name
}

impl RouteTable {
    /// Builds the table from checked configuration, registering each route's own limit
    /// in `policies`.
    ///
    /// # Errors
    /// A route names an upstream that is not in `upstreams`, or a policy cannot be
    /// registered: both programming errors, as configuration checking refuses the first and
    /// policy names are made unique here.
    pub fn new(
        routes: &[RouteConfig],
        upstreams: &BTreeMap<String, UpstreamConfig>,
        default_max_body: usize,
        policies: &mut crate::rate_limit::Policies,
    ) -> Result<Self, String> {
        let mut table = Self::default();
        for (name, upstream) in upstreams {
            let targets: Arc<[_]> = upstream
                .targets
                .iter()
                .map(|uri| Arc::new(crate::upstream::Target::new(uri, upstream.circuit_breaker)))
                .collect();
            if targets.is_empty() {
                return Err(format!("upstreams.{name}: url or targets is required"));
            }
            table.upstreams.insert(
                name.clone(),
                Arc::new(Upstream {
                    name: leak(name),
                    targets,
                    timeout: upstream.timeout,
                    circuit_breaker: upstream.circuit_breaker,
                    forward: upstream.forward.clone(),
                    health_check: upstream.health_check.clone(),
                    retries: upstream.retries,
                    balancer: Arc::default(),
                }),
            );
        }
        let mut policy_names = std::collections::HashSet::new();
        for configured in routes {
            let (base, prefix) = match configured.path.strip_suffix("/*") {
                Some(base) => (if base.is_empty() { "/" } else { base }.to_owned(), true),
                None => (configured.path.clone(), false),
            };
            let segments: Vec<Segment> = base
                .trim_start_matches('/')
                .split('/')
                .filter(|part| !part.is_empty())
                .map(|part| {
                    if part.starts_with('{') && part.ends_with('}') {
                        Segment::Param
                    } else {
                        Segment::Literal(part.to_owned())
                    }
                })
                .collect();
            if let Some(upstream) = &configured.upstream
                && !table.upstreams.contains_key(upstream)
            {
                return Err(format!(
                    "{}: upstream `{upstream}` is not defined",
                    configured.path
                ));
            }
            let methods = configured.methods.clone();
            let mut policy = policy_name(&methods, &configured.path);
            let mut suffix = 2;
            while !policy_names.insert(policy.clone()) {
                policy = format!("{} #{suffix}", policy_name(&methods, &configured.path));
                suffix += 1;
            }
            let limit_policy = match configured.rate_limit {
                None => None,
                Some(quota) => Some(
                    policies
                        .add(&policy, quota)
                        .map_err(|error| error.to_string())?,
                ),
            };
            let per = identity_limits::route_per(configured.per, &segments, prefix, &methods);
            table.routes.push(Arc::new(Route {
                limit_policy,
                per,
                name: leak(&configured.path),
                policy_name: policy,
                base,
                segments,
                prefix,
                methods,
                upstream: configured.upstream.as_deref().map(Arc::from),
                access: configured.access.clone(),
                rate_limit: configured.rate_limit,
                signed: configured.signed,
                max_body: configured.max_body.unwrap_or(default_max_body),
                case_sensitive: configured.case_sensitive,
                websocket: configured.websocket,
            }));
            table.any_case_insensitive |= !configured.case_sensitive;
        }
        // Most specific first: exact before prefix, fewer parameters before more, longer
        // before shorter.
        table.routes.sort_by_key(|route| {
            (
                route.prefix,
                route.params(),
                std::cmp::Reverse(route.segments.len()),
                std::cmp::Reverse(route.base.len()),
            )
        });
        table.index = trie::Index::new(&table.routes, table.any_case_insensitive);
        Ok(table)
    }

    /// Every route.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// The most specific route for a request's canonical path.
    ///
    /// Only the routes whose pattern can match the path (without regard to case when any
    /// route ignores case) are visited, found segment by segment in the index, so the cost
    /// depends on the path, not on the size of the table.
    pub fn lookup(&self, method: &Method, path: &str) -> Matched<'_> {
        let mut candidates = trie::Candidates::new();
        self.index.candidates(path, &mut candidates);
        self.decide(
            method,
            path,
            candidates
                .sorted()
                .iter()
                .map(|&i| &self.routes[i as usize]),
        )
    }

    /// Picks among `routes`, most specific first: every route that can match the path
    /// (others are skipped, so the whole table is also a valid argument).
    fn decide<'a>(
        &self,
        method: &Method,
        path: &str,
        routes: impl Iterator<Item = &'a Arc<Route>>,
    ) -> Matched<'a> {
        let mut allowed: Vec<Method> = Vec::new();
        let mut path_matched = false;
        let mut proxied = false;
        // A more specific route matches the path only without regard to case.
        let mut respelled = false;
        for route in routes {
            let matched = route.matches_path(path, false)
                || (!route.case_sensitive && route.matches_path(path, true));
            if !matched {
                respelled |= self.any_case_insensitive && route.matches_path(path, true);
                continue;
            }
            if route.allows(method) {
                // The backend of a case-insensitive route would read the respelling as the
                // more specific route's path.
                if respelled && !route.case_sensitive {
                    return Matched::Respelled;
                }
                return Matched::Route(route);
            }
            path_matched = true;
            proxied |= route.upstream.is_some();
            allowed.extend(route.methods.iter().cloned());
        }
        if path_matched {
            Matched::WrongMethod { allowed, proxied }
        } else {
            Matched::None
        }
    }

    /// The same decision by scanning every route: the reference the index is tested against.
    #[cfg(test)]
    fn lookup_by_scan(&self, method: &Method, path: &str) -> Matched<'_> {
        self.decide(method, path, self.routes.iter())
    }
}

/// The route a request matched, in the extensions of a request handed to Rampart's own
/// handlers (absent when none did).
#[derive(Debug, Clone)]
pub struct MatchedRoute(pub Arc<Route>);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn route(path: &str, methods: &[&str], upstream: Option<&str>) -> RouteConfig {
        RouteConfig {
            methods: methods
                .iter()
                .map(|m| Method::from_bytes(m.as_bytes()).unwrap())
                .collect(),
            upstream: upstream.map(str::to_owned),
            ..RouteConfig::new(path)
        }
    }

    fn orders_upstream() -> BTreeMap<String, UpstreamConfig> {
        BTreeMap::from([(
            "orders".to_owned(),
            UpstreamConfig {
                targets: vec!["http://127.0.0.1:9000".parse().unwrap()],
                timeout: Duration::from_secs(5),
                circuit_breaker: crate::circuit_breaker::Settings::default(),
                forward: crate::upstream::headers::ForwardPolicy::new(&[], &[]).unwrap(),
                health_check: None,
                retries: 0,
            },
        )])
    }

    fn table() -> RouteTable {
        let upstreams = orders_upstream();
        RouteTable::new(
            &[
                route("/orders/*", &["GET"], Some("orders")),
                route("/orders", &["POST"], Some("orders")),
                route("/orders/special", &["GET"], Some("orders")),
                route("/users/me", &["GET"], None),
                route("/users/{id}", &["GET"], None),
                route("/accounts/{id}/refresh", &["POST"], None),
                route("/accounts/{id}", &[], None),
            ],
            &upstreams,
            1024,
            &mut crate::rate_limit::Policies::new(),
        )
        .unwrap()
    }

    #[test]
    fn the_most_specific_route_wins() {
        let table = table();
        let name = |method: Method, path: &str| match table.lookup(&method, path) {
            Matched::Route(route) => route.name,
            Matched::WrongMethod { .. } => "405",
            Matched::Respelled => "respelled",
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
        assert_eq!(name(Method::GET, "/users/17"), "/users/{id}");
        assert_eq!(name(Method::GET, "/users/"), "none");
        assert_eq!(
            name(Method::POST, "/accounts/3/refresh"),
            "/accounts/{id}/refresh"
        );
        assert_eq!(name(Method::DELETE, "/accounts/3"), "/accounts/{id}");
        assert_eq!(name(Method::GET, "/accounts/3/other"), "none");
        // HEAD has GET's route and policy.
        assert_eq!(name(Method::HEAD, "/users/me"), "/users/me");
        assert_eq!(name(Method::HEAD, "/orders/17"), "/orders/*");
    }

    #[test]
    fn route_policy_names_fit_headers_and_redis_tags() {
        let table = table();
        for route in table.routes() {
            assert!(
                !route.policy_name.contains(['{', '}', '"', '\\']),
                "{}",
                route.policy_name
            );
        }
        let refresh = table
            .routes()
            .iter()
            .find(|route| route.name == "/accounts/{id}/refresh")
            .unwrap();
        assert_eq!(refresh.policy_name, "route:POST /accounts/:id/refresh");
    }

    fn case_table() -> RouteTable {
        let mut open = route("/api/*", &[], Some("orders"));
        open.case_sensitive = false;
        let mut reports = route("/api/reports/*", &["GET"], Some("orders"));
        reports.case_sensitive = false;
        let upstreams = orders_upstream();
        RouteTable::new(
            &[
                open,
                route("/api/admin/*", &[], Some("orders")),
                reports,
                route("/exact/Case/*", &[], Some("orders")),
            ],
            &upstreams,
            1024,
            &mut crate::rate_limit::Policies::new(),
        )
        .unwrap()
    }

    #[test]
    fn case_insensitive_routes_match_any_case_but_never_respell_a_protected_route() {
        let table = case_table();
        let name = |method: Method, path: &str| match table.lookup(&method, path) {
            Matched::Route(route) => route.name,
            Matched::WrongMethod { .. } => "405",
            Matched::Respelled => "respelled",
            Matched::None => "none",
        };
        assert_eq!(name(Method::GET, "/api/x"), "/api/*");
        assert_eq!(name(Method::GET, "/API/x"), "/api/*");
        assert_eq!(name(Method::GET, "/Api/Reports/1"), "/api/reports/*");
        assert_eq!(name(Method::POST, "/api/reports/1"), "/api/*");
        assert_eq!(name(Method::GET, "/api/admin/x"), "/api/admin/*");
        assert_eq!(name(Method::GET, "/api/admin"), "/api/admin/*");
        for respelled in ["/api/ADMIN/x", "/API/Admin", "/api/aDmIn/users/1"] {
            assert_eq!(name(Method::GET, respelled), "respelled", "{respelled}");
            assert_eq!(name(Method::DELETE, respelled), "respelled", "{respelled}");
        }
        // A case-sensitive route takes only its own spelling.
        assert_eq!(name(Method::GET, "/exact/Case/1"), "/exact/Case/*");
        assert_eq!(name(Method::GET, "/exact/case/1"), "none");
    }

    fn same(a: &Matched<'_>, b: &Matched<'_>) -> bool {
        match (a, b) {
            (Matched::Route(a), Matched::Route(b)) => Arc::ptr_eq(a, b),
            (
                Matched::WrongMethod { allowed, proxied },
                Matched::WrongMethod {
                    allowed: other,
                    proxied: other_proxied,
                },
            ) => allowed == other && proxied == other_proxied,
            (Matched::Respelled, Matched::Respelled) | (Matched::None, Matched::None) => true,
            _ => false,
        }
    }

    #[test]
    fn the_index_decides_as_a_scan_of_every_route_would() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        // Few spellings, so that generated routes overlap, nest and respell each other.
        let pattern_parts = ["a", "A", "b", "orders", "Orders", "{id}", "{x}", "17"];
        let path_parts = [
            "a", "A", "b", "B", "orders", "ORDERS", "oRdErs", "17", "x", "",
        ];
        let methods = [Method::GET, Method::POST, Method::DELETE, Method::PUT];
        let mut decided = [0usize; 4];
        for _ in 0..400 {
            let mut raw = Vec::new();
            for _ in 0..rng.random_range(1..24) {
                let depth = rng.random_range(0..4);
                let mut path: String = (0..depth)
                    .map(|_| {
                        format!(
                            "/{}",
                            pattern_parts[rng.random_range(0..pattern_parts.len())]
                        )
                    })
                    .collect();
                if rng.random_bool(0.5) {
                    path.push_str("/*");
                } else if path.is_empty() {
                    path.push('/');
                }
                let allowed: Vec<&str> = methods
                    .iter()
                    .filter(|_| rng.random_bool(0.3))
                    .map(Method::as_str)
                    .collect();
                let upstream = rng.random_bool(0.7).then_some("orders");
                let mut entry = route(&path, &allowed, upstream);
                entry.case_sensitive = rng.random_bool(0.6);
                raw.push(entry);
            }
            let table = RouteTable::new(
                &raw,
                &orders_upstream(),
                1024,
                &mut crate::rate_limit::Policies::new(),
            )
            .unwrap();
            for _ in 0..200 {
                let depth = rng.random_range(0..5);
                let mut path: String = (0..depth)
                    .map(|_| format!("/{}", path_parts[rng.random_range(0..path_parts.len())]))
                    .collect();
                if path.is_empty() {
                    path.push('/');
                }
                let method = &methods[rng.random_range(0..methods.len())];
                let indexed = table.lookup(method, &path);
                let scanned = table.lookup_by_scan(method, &path);
                assert!(
                    same(&indexed, &scanned),
                    "{method} {path}: {indexed:?} against {scanned:?} in {:?}",
                    raw.iter()
                        .map(|r| (&r.path, &r.methods, r.case_sensitive))
                        .collect::<Vec<_>>()
                );
                decided[match scanned {
                    Matched::Route(_) => 0,
                    Matched::WrongMethod { .. } => 1,
                    Matched::Respelled => 2,
                    Matched::None => 3,
                }] += 1;
            }
        }
        // Every kind of answer was exercised.
        assert!(decided.iter().all(|&count| count > 100), "{decided:?}");
    }

    #[test]
    fn a_table_of_two_thousand_routes_finds_the_same_routes_as_a_scan() {
        let mut raw: Vec<RouteConfig> = (0..2000)
            .map(|i| route(&format!("/service{i}/*"), &["GET"], Some("orders")))
            .collect();
        raw.push(route("/positions", &["GET"], Some("orders")));
        raw.push(route("/service7/special", &["POST"], Some("orders")));
        let table = RouteTable::new(
            &raw,
            &orders_upstream(),
            1024,
            &mut crate::rate_limit::Policies::new(),
        )
        .unwrap();
        for path in [
            "/positions",
            "/service7/special",
            "/service1999/x/y",
            "/service2000",
            "/",
        ] {
            for method in [Method::GET, Method::POST] {
                assert!(same(
                    &table.lookup(&method, path),
                    &table.lookup_by_scan(&method, path)
                ));
            }
        }
        let Matched::WrongMethod { allowed, .. } =
            table.lookup(&Method::DELETE, "/service7/special")
        else {
            panic!("405 expected");
        };
        assert_eq!(allowed, [Method::POST, Method::GET]);
    }
}
