//! Picking a target: least outstanding requests among the healthy targets whose circuit
//! is closed (ties rotate), else a half-open probe; and the upstream's circuit as its
//! targets' circuits and health add up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use super::Upstream;
use super::client::Target;
use crate::circuit_breaker::{Permit, State};

/// The balancer's state shared by an upstream's requests.
#[derive(Debug, Default)]
pub struct Balancer {
    /// Where the next scan of the targets starts, so that ties rotate.
    next: AtomicUsize,
    /// The upstream's circuit as the gauge shows it (`State::gauge_value`).
    state: AtomicU8,
}

impl Balancer {
    /// Records the upstream's circuit state; returns it when it changed.
    pub(crate) fn settle(&self, targets: &[Arc<Target>]) -> Option<State> {
        let state = upstream_state(targets);
        let value = u8::try_from(state.gauge_value()).unwrap_or(0);
        (self.state.swap(value, Ordering::AcqRel) != value).then_some(state)
    }

    /// Whether the gauge shows the upstream's circuit other than closed.
    pub(crate) fn shown_closed(&self) -> bool {
        self.state.load(Ordering::Relaxed) == 0
    }
}

/// The upstream's circuit, from its targets': closed while any healthy target's is
/// closed, open when every target is out (its circuit open or failing its health check),
/// half-open otherwise.
pub(crate) fn upstream_state(targets: &[Arc<Target>]) -> State {
    let mut any_half_open = false;
    for target in targets {
        if !target.is_healthy() {
            continue;
        }
        match target.breaker.published_state() {
            State::Closed => return State::Closed,
            State::HalfOpen => any_half_open = true,
            State::Open => {}
        }
    }
    if any_half_open {
        State::HalfOpen
    } else {
        State::Open
    }
}

/// No target can take the request now.
pub(crate) struct Unavailable {
    /// When to try again.
    pub(crate) retry_after: Duration,
}

/// The target for the next request: among healthy targets whose circuit is closed, the
/// one with the fewest outstanding requests (ties rotate); failing that, a half-open probe
/// or a circuit whose `open_for` has passed. `avoid` (a target that just failed to connect)
/// is passed over while another is available.
pub(crate) fn pick<'a>(
    upstream: &'a Upstream,
    avoid: Option<&Target>,
) -> Result<(&'a Arc<Target>, Permit<'a>), Unavailable> {
    let targets = &*upstream.targets;
    if let [target] = targets {
        if !target.is_healthy() {
            return Err(unhealthy(upstream));
        }
        return target
            .breaker
            .acquire()
            .map(|permit| (target, permit))
            .map_err(|open| Unavailable {
                retry_after: Duration::from_secs(open.retry_after_seconds()),
            });
    }
    let count = targets.len();
    let start = upstream.balancer.next.fetch_add(1, Ordering::Relaxed) % count;
    let avoided = |target: &Target| avoid.is_some_and(|avoid| std::ptr::eq(avoid, target));
    for pass_avoided in [false, true] {
        let mut best: Option<&Arc<Target>> = None;
        let mut any_healthy = false;
        for offset in 0..count {
            let target = &targets[(start + offset) % count];
            if !target.is_healthy() || (!pass_avoided && avoided(target)) {
                continue;
            }
            any_healthy = true;
            if target.breaker.published_state() == State::Closed
                && best.is_none_or(|best| target.in_flight() < best.in_flight())
            {
                best = Some(target);
            }
        }
        if let Some(target) = best
            && let Ok(permit) = target.breaker.acquire()
        {
            return Ok((target, permit));
        }
        let mut retry_after: Option<Duration> = None;
        for offset in 0..count {
            let target = &targets[(start + offset) % count];
            if !target.is_healthy() || (!pass_avoided && avoided(target)) {
                continue;
            }
            match target.breaker.acquire() {
                Ok(permit) => return Ok((target, permit)),
                Err(open) => {
                    let wait = Duration::from_secs(open.retry_after_seconds());
                    retry_after = Some(retry_after.map_or(wait, |least| least.min(wait)));
                }
            }
        }
        if let Some(retry_after) = retry_after {
            return Err(Unavailable { retry_after });
        }
        if !any_healthy && pass_avoided {
            return Err(unhealthy(upstream));
        }
    }
    Err(unhealthy(upstream))
}

fn unhealthy(upstream: &Upstream) -> Unavailable {
    let interval = upstream
        .health_check
        .as_ref()
        .map_or(Duration::from_secs(1), |check| check.interval);
    Unavailable {
        retry_after: Duration::from_secs(interval.as_secs().max(1)),
    }
}
