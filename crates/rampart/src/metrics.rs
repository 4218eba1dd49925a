//! Prometheus metrics of SPEC §8, one registry per running gateway.
//!
//! Labels are only ever static text chosen by Rampart or its configuration (route
//! patterns, upstream names, reasons): never a raw path, IP or username, so a client
//! cannot grow the series count.

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
#[allow(missing_docs)]
pub struct Metrics {
    registry: Registry,
    pub failed_logins: Counter,
    pub rate_limit_hits: Family<PolicyLabel, Counter>,
    pub jwt_failures: Family<ReasonLabel, Counter>,
    pub auth_failures: Family<ReasonLabel, Counter>,
    pub breaker_opens: Family<UpstreamLabel, Counter>,
    pub breaker_state: Family<UpstreamLabel, Gauge>,
    pub suspicious_requests: Family<PatternLabel, Counter>,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_duration: HistogramFamily<RouteLabel>,
    pub upstream_duration: HistogramFamily<UpstreamLabel>,
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
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        let mut text = String::with_capacity(8 * 1024);
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
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
