//! The shipped Prometheus alert rules are valid for `promtool`, fire as their unit tests say,
//! and name only metrics Rampart exports.

// Test code: a failed unwrap is a failed test, helpers included.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../config/prometheus")
}

fn promtool(args: &[&str]) -> Option<std::process::Output> {
    match Command::new("promtool")
        .args(args)
        .current_dir(rules_dir())
        .output()
    {
        Ok(output) => Some(output),
        Err(error) => {
            assert!(
                std::env::var("CI").is_err(),
                "promtool is needed to check the alert rules in CI: {error}"
            );
            eprintln!(
                "\n!!! SKIPPED: promtool not found ({error}); install the `prometheus` package \
                 to check the alert rules !!!\n"
            );
            None
        }
    }
}

#[test]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    for args in [
        &["check", "rules", "rampart-alerts.yml"][..],
        &["test", "rules", "rampart-alerts.test.yml"][..],
    ] {
        let Some(output) = promtool(args) else { return };
        assert!(
            output.status.success(),
            "promtool {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_alert_rules_name_only_exported_metrics() {
    let rules = std::fs::read_to_string(rules_dir().join("rampart-alerts.yml")).unwrap();
    use rampart::metrics::{PatternLabel, PolicyLabel, ReasonLabel, UpstreamLabel};
    // Labelled families show only once they have a series.
    let metrics = rampart::metrics::Metrics::new();
    let upstream = UpstreamLabel { upstream: "orders" };
    metrics
        .rate_limit_hits
        .get_or_create(&PolicyLabel {
            policy: "anonymous",
        })
        .inc();
    metrics
        .jwt_failures
        .get_or_create(&ReasonLabel {
            reason: "bad_signature",
        })
        .inc();
    metrics
        .auth_failures
        .get_or_create(&ReasonLabel { reason: "api_key" })
        .inc();
    metrics.breaker_opens.get_or_create(&upstream).inc();
    metrics.breaker_state.get_or_create(&upstream).set(1);
    metrics
        .suspicious_requests
        .get_or_create(&PatternLabel { pattern: "xss" })
        .inc();
    let exported = metrics.render();
    let regex = regex::Regex::new(r"\brampart_[a-z_]+\b").unwrap();
    let mut checked = 0;
    for name in regex.find_iter(&rules).map(|m| m.as_str()) {
        assert!(
            exported.contains(&format!("# TYPE {name} ")),
            "{name} is not a metric Rampart exports:\n{exported}"
        );
        checked += 1;
    }
    assert!(checked >= 6, "the rules name the metrics they alert on");
}

#[test]
fn the_metrics_text_passes_promtool_check_metrics() {
    use rampart::metrics::{RequestLabels, UpstreamLabel, UpstreamStatusLabels};
    let metrics = rampart::metrics::Metrics::new();
    metrics.failed_logins.inc();
    let upstream = UpstreamLabel { upstream: "orders" };
    metrics.breaker_state.get_or_create(&upstream).set(0);
    metrics
        .upstream_duration
        .get_or_create(&upstream)
        .observe(0.01);
    metrics
        .upstream_requests
        .get_or_create(&UpstreamStatusLabels {
            upstream: "orders",
            status: 200,
        })
        .inc();
    metrics
        .http_requests
        .get_or_create(&RequestLabels {
            route: "/orders",
            method: "GET",
            status: 200,
        })
        .inc();
    let text = metrics.render();
    assert!(
        !text.contains("# EOF"),
        "Prometheus text 0.0.4, not OpenMetrics"
    );
    for expected in [
        "# TYPE rampart_failed_login_attempts_total counter\nrampart_failed_login_attempts_total 1\n",
        "# TYPE rampart_http_requests_in_flight gauge\nrampart_http_requests_in_flight 0\n",
        "rampart_build_info{version=\"",
        "rampart_upstream_requests_total{upstream=\"orders\",status=\"200\"} 1\n",
    ] {
        assert!(text.contains(expected), "{expected} missing from\n{text}");
    }
    if cfg!(target_os = "linux") {
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                text.contains(&format!("\n{name} ")),
                "{name} missing from\n{text}"
            );
        }
    }
    let Some(mut child) = spawn_promtool(&["check", "metrics"]) else {
        return;
    };
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}\n{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn spawn_promtool(args: &[&str]) -> Option<std::process::Child> {
    match Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(child) => Some(child),
        Err(error) => {
            assert!(
                std::env::var("CI").is_err(),
                "promtool is needed to check the metrics text in CI: {error}"
            );
            eprintln!("\n!!! SKIPPED: promtool not found ({error}) !!!\n");
            None
        }
    }
}
