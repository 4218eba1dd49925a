//! The shipped Prometheus alert rules are valid for `promtool`, fire as their unit tests say,
//! and name only metrics Rampart exports.

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
        let family = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            exported.contains(&format!("# TYPE {family} ")),
            "{name} is not a metric Rampart exports:\n{exported}"
        );
        checked += 1;
    }
    assert!(checked >= 6, "the rules name the metrics they alert on");
}
