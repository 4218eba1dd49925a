//! The generic cell rate algorithm and the time it runs on.
//!
//! The in-memory limiter is a GCRA of our own rather than a crate's (such as `governor`)
//! because it must keep exactly the semantics, rounding and key layout of the Redis Lua
//! script in [`super::redis`]: an instance that falls back to memory when Redis fails, or
//! a test that compares the two, must see the same decisions and the same header values.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::{Decision, Quota};

/// A monotonic clock that moves only when told to, for tests of in-memory limiting.
#[derive(Debug, Clone, Default)]
pub struct ManualTime {
    pub(super) nanos: Arc<AtomicU64>,
}

impl ManualTime {
    /// A clock at its origin.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // `fetch_update` with a closure that always returns `Some` cannot fail.
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |now| {
                Some(now.saturating_add(by))
            });
    }
}

/// Where the limiter reads time: nanoseconds since the limiter was built.
#[derive(Debug, Clone)]
pub(super) enum TimeSource {
    // The CPU's invariant time-stamp counter where there is one (about 10 ns a read here,
    // against 22 ns for `clock_gettime`, the largest single cost of an in-memory decision),
    // else the OS monotonic clock. Tests move time through `Manual`, not a paused runtime.
    Counter { clock: quanta::Clock, origin: u64 },
    Manual(ManualTime),
}

impl TimeSource {
    pub(super) fn counter() -> Self {
        let clock = quanta::Clock::new();
        let origin = clock.raw();
        Self::Counter { clock, origin }
    }

    pub(super) fn now(&self) -> u64 {
        match self {
            Self::Counter { clock, origin } => clock.delta_as_nanos(*origin, clock.raw()),
            Self::Manual(time) => time.nanos.load(Ordering::SeqCst),
        }
    }
}

/// The generic cell rate algorithm over integer time in `unit_nanos` units.
///
/// The state per key is one number, the theoretical arrival time (`tat`): the moment the
/// bucket will be full again. A request is allowed when, after adding its `interval`,
/// `tat` is at most `window` (a full bucket's worth of time) ahead of now. The Lua script
/// below is the same arithmetic.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gcra {
    pub(super) interval: u64,
    pub(super) window: u64,
    pub(super) capacity: u32,
    pub(super) unit_nanos: u64,
}

impl Gcra {
    pub(super) fn new(quota: &Quota, unit_nanos: u64) -> Self {
        let interval = quota.interval_in(unit_nanos);
        let capacity = quota.burst();
        Self {
            interval,
            window: interval * u64::from(capacity),
            capacity,
            unit_nanos,
        }
    }

    pub(super) fn duration(&self, units: u64) -> Duration {
        Duration::from_nanos(units.saturating_mul(self.unit_nanos))
    }

    /// Decides one request at `now` against the stored `tat`; returns the decision and,
    /// when allowed, the new `tat` to store. A refused request does not change the state.
    pub(super) fn decide(&self, tat: Option<u64>, now: u64) -> (Decision, Option<u64>) {
        let tat = tat.map_or(now, |tat| tat.max(now));
        let new_tat = tat.saturating_add(self.interval);
        let allow_at = new_tat.saturating_sub(self.window);
        if now < allow_at {
            let decision = Decision {
                allowed: false,
                limit: self.capacity,
                remaining: 0,
                reset: self.duration(tat - now),
                retry_after: Some(self.duration(allow_at - now)),
            };
            return (decision, None);
        }
        let used = new_tat - now;
        let remaining =
            (self.window.saturating_sub(used) / self.interval).min(u64::from(self.capacity));
        let decision = Decision {
            allowed: true,
            limit: self.capacity,
            remaining: u32::try_from(remaining).unwrap_or(self.capacity),
            reset: self.duration(used),
            retry_after: None,
        };
        (decision, Some(new_tat))
    }
}
