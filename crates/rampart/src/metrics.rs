//! Prometheus metrics of SPEC §8, one registry per running gateway.
//!
//! Labels are only ever static text chosen by Rampart or its configuration (route
//! patterns, upstream names, reasons): never a raw path, IP or username, so a client
//! cannot grow the series count.
//!
//! The body is the Prometheus text format 0.0.4 (what Prometheus scrapes and what
//! `promtool check metrics` reads), not OpenMetrics: counters are described under their
//! `_total` name, and there is no `# EOF`. The standard `process_*` series are read from
//! `/proc/self` at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `{route, method, status}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The matched route pattern (or a fixed name such as `unmatched`).
    pub route: &'static str,
    /// The HTTP method, or `OTHER`.
    pub method: &'static str,
    /// The response status.
    pub status: u16,
}

/// `{route}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    /// The matched route pattern.
    pub route: &'static str,
}

/// `{policy}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    /// The rate-limit policy name.
    pub policy: &'static str,
}

/// `{reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why a token or credential was refused.
    pub reason: &'static str,
}

/// `{upstream}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    /// The upstream's configured name.
    pub upstream: &'static str,
}

/// `{upstream, status}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamStatusLabels {
    /// The upstream's configured name.
    pub upstream: &'static str,
    /// The status the proxied request was answered with: the upstream's own, or the one
    /// Rampart answered for it (502 unreachable, 503 circuit open, 504 timed out).
    pub status: u16,
}

/// `{version}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    /// The running build's crate version.
    pub version: &'static str,
}

/// `{pattern}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PatternLabel {
    /// The intrusion pattern's name.
    pub pattern: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ])
}

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `rampart_failed_login_attempts`.
    pub failed_logins: Counter,
    /// `rampart_rate_limit_hits`, by policy.
    pub rate_limit_hits: Family<PolicyLabel, Counter>,
    /// `rampart_jwt_validation_failures`, by reason.
    pub jwt_failures: Family<ReasonLabel, Counter>,
    /// `rampart_auth_failures`, by kind of credential.
    pub auth_failures: Family<ReasonLabel, Counter>,
    /// `rampart_circuit_breaker_opens`, by upstream.
    pub breaker_opens: Family<UpstreamLabel, Counter>,
    /// `rampart_circuit_breaker_state`: 0 closed, 1 open, 2 half-open.
    pub breaker_state: Family<UpstreamLabel, Gauge>,
    /// `rampart_suspicious_requests`, by pattern.
    pub suspicious_requests: Family<PatternLabel, Counter>,
    /// `rampart_http_requests`, by route, method and status.
    pub http_requests: Family<RequestLabels, Counter>,
    /// `rampart_http_request_duration_seconds`, by route.
    pub http_duration: HistogramFamily<RouteLabel>,
    /// `rampart_upstream_duration_seconds`, by upstream.
    pub upstream_duration: HistogramFamily<UpstreamLabel>,
    /// `rampart_upstream_requests`, by upstream and status.
    pub upstream_requests: Family<UpstreamStatusLabels, Counter>,
    /// `rampart_http_requests_in_flight`.
    pub in_flight: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let failed_logins = Counter::default();
        registry.register(
            "rampart_failed_login_attempts",
            "Failed login attempts",
            failed_logins.clone(),
        );
        let rate_limit_hits = Family::<PolicyLabel, Counter>::default();
        registry.register(
            "rampart_rate_limit_hits",
            "Requests refused by a rate limit",
            rate_limit_hits.clone(),
        );
        let jwt_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "rampart_jwt_validation_failures",
            "Access tokens refused, by reason",
            jwt_failures.clone(),
        );
        let auth_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "rampart_auth_failures",
            "Presented credentials refused (token, cookie, API key, signature), by kind",
            auth_failures.clone(),
        );
        let breaker_opens = Family::<UpstreamLabel, Counter>::default();
        registry.register(
            "rampart_circuit_breaker_opens",
            "Times an upstream's circuit opened",
            breaker_opens.clone(),
        );
        let breaker_state = Family::<UpstreamLabel, Gauge>::default();
        registry.register(
            "rampart_circuit_breaker_state",
            "Circuit state: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        let suspicious_requests = Family::<PatternLabel, Counter>::default();
        registry.register(
            "rampart_suspicious_requests",
            "Requests matching an intrusion pattern",
            suspicious_requests.clone(),
        );
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "rampart_http_requests",
            "HTTP requests served",
            http_requests.clone(),
        );
        let http_duration: HistogramFamily<RouteLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "rampart_http_request_duration_seconds",
            "Time to answer a request",
            http_duration.clone(),
        );
        let upstream_duration: HistogramFamily<UpstreamLabel> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "rampart_upstream_duration_seconds",
            "Time an upstream took to answer",
            upstream_duration.clone(),
        );
        let upstream_requests = Family::<UpstreamStatusLabels, Counter>::default();
        registry.register(
            "rampart_upstream_requests",
            "Requests proxied to an upstream, by the status they were answered with",
            upstream_requests.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "rampart_http_requests_in_flight",
            "Requests being served now",
            in_flight.clone(),
        );
        let build_info = Family::<VersionLabel, Gauge>::default();
        build_info
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "rampart_build_info",
            "The running build (always 1)",
            build_info,
        );
        Self {
            registry,
            failed_logins,
            rate_limit_hits,
            jwt_failures,
            auth_failures,
            breaker_opens,
            breaker_state,
            suspicious_requests,
            http_requests,
            http_duration,
            upstream_duration,
            upstream_requests,
            in_flight,
        }
    }

    /// Counts a request as in flight until the guard is dropped (answered or abandoned):
    /// one atomic add each way, nothing allocated or locked.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// The registry and the process metrics in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut open_metrics = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode_registry(&mut open_metrics, &self.registry)
            .is_err()
        {
            open_metrics.clear();
        }
        let mut text = to_prometheus_text(&open_metrics);
        process::render(&mut text);
        text
    }
}

/// Keeps one request counted in `rampart_http_requests_in_flight`.
#[derive(Debug)]
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The OpenMetrics text `prometheus_client` writes, as Prometheus text 0.0.4: a counter's
/// `# HELP`/`# TYPE` name its `_total` series, `# UNIT` and `# EOF` lines go. Gauges and
/// histograms are written alike in both formats.
fn to_prometheus_text(open_metrics: &str) -> String {
    use std::fmt::Write as _;
    let mut text = String::with_capacity(open_metrics.len() + 1024);
    let mut lines = open_metrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let counter = format!("# TYPE {name} counter");
            if lines.peek() == Some(&counter.as_str()) {
                lines.next();
                let _ = writeln!(
                    text,
                    "# HELP {name}_total {help}\n# TYPE {name}_total counter"
                );
                continue;
            }
        }
        text.push_str(line);
        text.push('\n');
    }
    text
}

/// The standard `process_*` metrics, read from `/proc/self` (Linux; elsewhere none).
mod process {
    use std::fmt::Write as _;

    /// Clock ticks a second in `/proc/*/stat` (`USER_HZ`, fixed by the kernel ABI).
    const TICKS_PER_SECOND: f64 = 100.0;

    pub(super) fn render(text: &mut String) {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        // Fields after the command name, which is in parentheses and may hold spaces:
        // field 3 (state) is at index 0.
        let fields: Vec<&str> = stat
            .as_deref()
            .and_then(|stat| stat.rsplit_once(')'))
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |number: usize| -> Option<f64> { fields.get(number - 3)?.parse().ok() };
        if let (Some(user), Some(system)) = (field(14), field(15)) {
            write(
                text,
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                (user + system) / TICKS_PER_SECOND,
            );
        }
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let kib = |key: &str| -> Option<f64> {
            let line = status.lines().find(|line| line.starts_with(key))?;
            let value: f64 = line[key.len()..].split_whitespace().next()?.parse().ok()?;
            Some(value * 1024.0)
        };
        if let Some(bytes) = kib("VmRSS:") {
            write(
                text,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                bytes,
            );
        }
        if let Some(bytes) = kib("VmSize:") {
            write(
                text,
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                bytes,
            );
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            write(
                text,
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                entries.count() as f64,
            );
        }
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let max_fds = limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .and_then(|line| line["Max open files".len()..].split_whitespace().next())
            .and_then(|soft| soft.parse::<f64>().ok());
        if let Some(max) = max_fds {
            write(
                text,
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                max,
            );
        }
        let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| {
            stat.lines()
                .find_map(|line| line.strip_prefix("btime "))
                .and_then(|seconds| seconds.trim().parse::<f64>().ok())
        });
        if let (Some(boot), Some(started)) = (boot, field(22)) {
            write(
                text,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                boot + started / TICKS_PER_SECOND,
            );
        }
    }

    fn write(text: &mut String, name: &str, kind: &str, help: &str, value: f64) {
        let _ = writeln!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

/// A method as a static label.
pub fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_metric_names_are_exported() {
        let metrics = Metrics::new();
        metrics.failed_logins.inc();
        metrics
            .jwt_failures
            .get_or_create(&ReasonLabel { reason: "expired" })
            .inc();
        metrics
            .http_requests
            .get_or_create(&RequestLabels {
                route: "/users/me",
                method: "GET",
                status: 200,
            })
            .inc();
        let text = metrics.render();
        for name in [
            "rampart_failed_login_attempts_total 1",
            "rampart_jwt_validation_failures_total{reason=\"expired\"} 1",
            "rampart_http_requests_total{route=\"/users/me\",method=\"GET\",status=\"200\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
