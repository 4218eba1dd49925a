//! Active health checks of each upstream target (`health_check = { path, interval }`).
//!
//! Every `interval`, each target of an upstream with a `health_check` is asked `GET path`
//! on a new connection; an answer of 2xx or 3xx within the interval (and the upstream's
//! `timeout`) passes. A target that fails is taken out of balancing at once and comes back
//! as soon as a check passes again; each change is logged. Targets start healthy, and the
//! first check runs at start-up.

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::Proxy;
use crate::routes::{HealthCheck, RouteTable};
use crate::upstream::client::{self, Target};

/// Starts the checks of every upstream that has a `health_check`, one task per target.
pub(crate) fn spawn(routes: &RouteTable, proxy: &Proxy) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for upstream in routes.upstreams.values() {
        let Some(check) = &upstream.health_check else {
            continue;
        };
        for target in upstream.targets.iter() {
            tasks.push(tokio::spawn(watch(
                upstream.name,
                Arc::clone(target),
                proxy.connector.clone(),
                check.clone(),
                upstream.timeout.min(check.interval),
            )));
        }
    }
    tasks
}

async fn watch(
    upstream: &'static str,
    target: Arc<Target>,
    connector: client::Connector,
    check: HealthCheck,
    timeout: std::time::Duration,
) {
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match client::check(&connector, &target, &check.path, timeout).await {
            Ok(()) => {
                if target.set_healthy(true) {
                    tracing::info!(
                        upstream,
                        target = &*target.url,
                        "target passes its health check again: back in balancing"
                    );
                }
            }
            Err(reason) => {
                if target.set_healthy(false) {
                    tracing::warn!(
                        upstream,
                        target = &*target.url,
                        reason,
                        "target failed its health check: taken out of balancing"
                    );
                }
            }
        }
    }
}
