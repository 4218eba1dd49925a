//! `[upstreams.NAME]`: an upstream's targets, timeouts, header lists, health checks and
//! circuit breaker, checked once at start-up.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use crate::circuit_breaker;
use crate::settings::{List, Problems, parse_duration};

/// The largest `retries` accepted: more attempts than this only delay the 502.
pub const MAX_RETRIES: u32 = 5;

/// The largest number of `targets` in one upstream.
pub const MAX_TARGETS: usize = 64;

/// One `[upstreams.NAME]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// One backend; or `targets`, several (exactly one of the two).
    #[serde(default)]
    pub url: Option<String>,
    /// Several backends, balanced by least outstanding requests.
    #[serde(default)]
    pub targets: Option<List>,
    /// How long to wait for the response head (a duration).
    #[serde(default = "default_timeout")]
    pub timeout: String,
    /// The circuit breaker's settings; absent: the defaults.
    #[serde(default)]
    pub circuit_breaker: Option<circuit_breaker::RawSettings>,
    /// Request headers removed on top of the built-in list.
    #[serde(default)]
    pub strip_request_headers: List,
    /// Headers of the built-in strip list that this upstream gets as the client sent them.
    #[serde(default)]
    pub pass_request_headers: List,
    /// Active health checks of every target.
    #[serde(default)]
    pub health_check: Option<RawHealthCheck>,
    /// Further attempts, on another target where there is one, after a connect failure
    /// (idempotent methods without a body only).
    #[serde(default)]
    pub retries: u32,
}

fn default_timeout() -> String {
    "5s".into()
}

impl RawUpstream {
    /// The backend URLs as written: `url`, or every entry of `targets`.
    pub fn target_urls(&self) -> Vec<&str> {
        match (&self.url, &self.targets) {
            (Some(url), _) => vec![url.as_str()],
            (None, Some(targets)) => targets.0.iter().map(String::as_str).collect(),
            (None, None) => Vec::new(),
        }
    }
}

/// An upstream's `health_check` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Path asked of each target; a 2xx or 3xx answer passes.
    pub path: String,
    /// Time between checks (default 5 s).
    #[serde(default = "default_health_interval")]
    pub interval: String,
}

fn default_health_interval() -> String {
    "5s".into()
}

/// An upstream's `health_check`.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// The path (and query) asked for with `GET`.
    pub path: http::uri::PathAndQuery,
    /// Time between checks of one target.
    pub interval: Duration,
}

/// One upstream, checked: what [`crate::routes::RouteTable::new`] builds it from.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Its backends: `url`, or each of `targets`; never empty.
    pub targets: Vec<http::Uri>,
    /// Time allowed for the response head.
    pub timeout: Duration,
    /// Circuit-breaker settings, for each target.
    pub circuit_breaker: circuit_breaker::Settings,
    /// Which request headers stop at the gateway.
    pub forward: super::headers::ForwardPolicy,
    /// Active health checks of each target, if configured.
    pub health_check: Option<HealthCheck>,
    /// Further attempts after a connect failure (idempotent methods without a body).
    pub retries: u32,
}

impl UpstreamConfig {
    /// Checks `[upstreams.NAME]`, adding every problem to `problems`.
    pub fn from_raw(name: &str, raw: &RawUpstream, problems: &mut Problems) -> Self {
        let key = format!("upstreams.{name}");
        match (&raw.url, &raw.targets) {
            (Some(_), Some(_)) => problems.add(
                &format!("{key}.targets"),
                "give either url or targets, not both",
            ),
            (None, None) => problems.add(&format!("{key}.url"), "url or targets is required"),
            (None, Some(targets)) if targets.0.is_empty() => {
                problems.add(&format!("{key}.targets"), "lists no target");
            }
            (None, Some(targets)) if targets.0.len() > MAX_TARGETS => problems.add(
                &format!("{key}.targets"),
                format!("lists more than {MAX_TARGETS} targets"),
            ),
            _ => {}
        }
        let field = if raw.url.is_some() { "url" } else { "targets" };
        let mut seen = HashSet::new();
        let mut targets = Vec::new();
        for url in raw.target_urls() {
            match check_target_url(url) {
                Err(message) => problems.add(&format!("{key}.{field}"), message),
                Ok(_) if !seen.insert(url) => {
                    problems.add(
                        &format!("{key}.{field}"),
                        format!("`{url}` is listed twice"),
                    );
                }
                Ok(uri) => targets.push(uri),
            }
        }
        let health_check = raw.health_check.as_ref().map(|check| {
            let path = match check.path.parse::<http::uri::PathAndQuery>() {
                Ok(path) if check.path.starts_with('/') => path,
                _ => {
                    problems.add(
                        &format!("{key}.health_check.path"),
                        format!("`{}` is not a path such as /healthz", check.path),
                    );
                    http::uri::PathAndQuery::from_static("/")
                }
            };
            let interval = parse_duration(&check.interval).unwrap_or_else(|message| {
                problems.add(&format!("{key}.health_check.interval"), message);
                Duration::from_secs(5)
            });
            HealthCheck { path, interval }
        });
        if raw.retries > MAX_RETRIES {
            problems.add(
                &format!("{key}.retries"),
                format!("must be at most {MAX_RETRIES}"),
            );
        }
        let timeout = parse_duration(&raw.timeout).unwrap_or_else(|message| {
            problems.add(&format!("{key}.timeout"), message);
            Duration::from_secs(5)
        });
        let header_problems =
            super::headers::check(&raw.strip_request_headers.0, &raw.pass_request_headers.0);
        let forward = if header_problems.is_empty() {
            super::headers::ForwardPolicy::new(
                &raw.strip_request_headers.0,
                &raw.pass_request_headers.0,
            )
            .unwrap_or_else(|message| {
                problems.add(&key, message);
                super::headers::ForwardPolicy::default()
            })
        } else {
            for (field, message) in header_problems {
                problems.add(&format!("{key}.{field}"), message);
            }
            super::headers::ForwardPolicy::default()
        };
        let circuit_breaker = match &raw.circuit_breaker {
            Some(breaker) => circuit_breaker::Settings::from_raw(
                breaker,
                &format!("{key}.circuit_breaker"),
                problems,
            ),
            None => circuit_breaker::Settings::default(),
        };
        Self {
            targets,
            timeout,
            circuit_breaker,
            forward,
            health_check,
            retries: raw.retries,
        }
    }

    /// Whether any target speaks HTTP/2 in the clear (`h2c://`), which a WebSocket tunnel
    /// (HTTP/1.1) cannot use.
    pub fn has_h2c_target(&self) -> bool {
        self.targets.iter().any(|uri| {
            uri.scheme_str()
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("h2c"))
        })
    }
}

/// Whether `url` is a target an upstream can be sent to: `http://`, `https://` or `h2c://`
/// (HTTP/2 with prior knowledge, in the clear) and a host.
///
/// # Errors
/// What is wrong with it.
pub fn check_target_url(url: &str) -> Result<http::Uri, String> {
    match url.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https" | "h2c"))
                && uri.host().is_some_and(|host| !host.is_empty())
                && uri.query().is_none() =>
        {
            if uri
                .authority()
                .is_some_and(|authority| authority.as_str().contains('@'))
            {
                // Not echoed: the text before `@` is a credential.
                return Err("a target URL must not carry user information (user:password@)".into());
            }
            Ok(uri)
        }
        _ => Err(format!(
            "`{}` is not an http(s) URL (or h2c:// for HTTP/2 in the clear)",
            // Text before an `@` may be a credential: not echoed.
            if url.contains('@') { "the URL" } else { url }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (UpstreamConfig, Vec<String>) {
        let raw: RawUpstream = toml::from_str(text).unwrap();
        let mut problems = Problems::default();
        let upstream = UpstreamConfig::from_raw("orders", &raw, &mut problems);
        let listed = match problems.into_result(()) {
            Ok(()) => Vec::new(),
            Err(error) => error.problems,
        };
        (upstream, listed)
    }

    #[test]
    fn an_upstream_is_typed_once() {
        let (upstream, problems) = check(
            "targets = [\"http://10.0.0.1:80\", \"h2c://10.0.0.2:80\"]\ntimeout = \"2s\"\n\
             retries = 2\nhealth_check = { path = \"/healthz\", interval = \"10s\" }\n\
             circuit_breaker = { failures = 3, window = \"10s\", open_for = \"1min\" }\n",
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(upstream.targets.len(), 2);
        assert!(upstream.has_h2c_target());
        assert_eq!(upstream.timeout, Duration::from_secs(2));
        assert_eq!(upstream.retries, 2);
        let check = upstream.health_check.expect("a health check");
        assert_eq!(check.path, "/healthz");
        assert_eq!(check.interval, Duration::from_secs(10));
        assert_eq!(upstream.circuit_breaker.failures, 3);
        assert_eq!(upstream.circuit_breaker.open_for, Duration::from_secs(60));
    }

    #[test]
    fn every_problem_of_an_upstream_is_reported_each_under_its_key() {
        let (_, problems) = check(
            "targets = [\"ftp://x\", \"http://a:1\", \"http://a:1\", \"http://u:p@b:1\"]\n\
             timeout = \"soon\"\nretries = 9\n\
             health_check = { path = \"healthz\", interval = \"0s\" }\n\
             circuit_breaker = { failures = 0, window = \"x\" }\n\
             strip_request_headers = [\"bad header\"]\n",
        );
        for expected in [
            "upstreams.orders.targets: `ftp://x` is not an http(s) URL",
            "upstreams.orders.targets: `http://a:1` is listed twice",
            "upstreams.orders.targets: a target URL must not carry user information",
            "upstreams.orders.timeout: `soon` is not a duration",
            "upstreams.orders.retries: must be at most 5",
            "upstreams.orders.health_check.path: `healthz` is not a path",
            "upstreams.orders.health_check.interval: `0s` must be longer than zero",
            "upstreams.orders.circuit_breaker.window: `x` is not a duration",
            "upstreams.orders.circuit_breaker: failures and half_open_requests must be at least 1",
            "upstreams.orders.strip_request_headers: `bad header` is not a header name",
        ] {
            assert!(
                problems.iter().any(|problem| problem.starts_with(expected)),
                "{expected} missing from {problems:?}"
            );
        }
        assert!(
            !problems.iter().any(|problem| problem.contains("u:p")),
            "{problems:?}"
        );
    }
}
