//! Per-upstream circuit breaker (SPEC §3 "Circuit breaker").
//!
//! Sits after input validation, just before a request is forwarded: the pipeline asks the
//! upstream's [`CircuitBreaker`] for a [`Permit`], forwards, and reports the outcome on the
//! permit. After `failures` failures within `window` the circuit opens and [`CircuitBreaker::acquire`]
//! refuses at once with [`Open`] (503 `service_unavailable` + `Retry-After`) without touching
//! the backend; after `open_for` it lets `half_open_requests` probes through, and the first
//! probe to report closes the circuit (success) or opens it again (failure).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long a client is told to wait while every half-open probe slot is taken: a probe is
/// under way and will settle the circuit soon.
const PROBE_BUSY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// When a circuit opens and how it recovers; an upstream's `circuit_breaker` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Failures within `window` that open the circuit (0 is treated as 1).
    pub failures: u32,
    /// The sliding window failures are counted in.
    pub window: Duration,
    /// How long an open circuit refuses before it lets probes through.
    pub open_for: Duration,
    /// Concurrent probes allowed while half-open (0 is treated as 1).
    pub half_open_requests: u32,
}

impl Default for Settings {
    /// The SPEC defaults: 5 failures within 30 s open the circuit for 30 s, then 1 probe.
    fn default() -> Self {
        Self {
            failures: 5,
            window: Duration::from_secs(30),
            open_for: Duration::from_secs(30),
            half_open_requests: 1,
        }
    }
}

/// An upstream's `circuit_breaker` table as written.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    /// Failures within `window` that open the circuit.
    #[serde(default = "default_failures")]
    pub failures: u32,
    /// How long a failure counts.
    #[serde(default = "default_window")]
    pub window: String,
    /// How long an open circuit refuses before it probes.
    #[serde(default = "default_window")]
    pub open_for: String,
    /// Probes let through while half-open.
    #[serde(default = "default_half_open")]
    pub half_open_requests: u32,
}

fn default_failures() -> u32 {
    5
}
fn default_window() -> String {
    "30s".into()
}
fn default_half_open() -> u32 {
    1
}

impl Settings {
    /// Checks the `circuit_breaker` table at `key`, adding every problem to `problems`.
    pub fn from_raw(
        raw: &RawSettings,
        key: &str,
        problems: &mut crate::settings::Problems,
    ) -> Self {
        let defaults = Self::default();
        let mut duration = |field: &str, text: &str, default: Duration| {
            crate::settings::parse_duration(text).unwrap_or_else(|message| {
                problems.add(&format!("{key}.{field}"), message);
                default
            })
        };
        let window = duration("window", &raw.window, defaults.window);
        let open_for = duration("open_for", &raw.open_for, defaults.open_for);
        if raw.failures == 0 || raw.half_open_requests == 0 {
            problems.add(key, "failures and half_open_requests must be at least 1");
        }
        Self {
            failures: raw.failures,
            window,
            open_for,
            half_open_requests: raw.half_open_requests,
        }
    }
}

/// Where a circuit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Requests flow; failures are being counted.
    Closed,
    /// Requests are refused without touching the backend.
    Open,
    /// A limited number of probes may pass to test the backend.
    HalfOpen,
}

impl State {
    /// The value of the `rampart_circuit_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }

    /// The state's name, as written in logs and audit details.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    fn tag(self) -> u64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// A change of state, reported exactly once to the call that caused it, so the caller can
/// update the gauge, count `rampart_circuit_breaker_opens_total` and write `circuit_opened`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// The circuit opened (from closed, or again from half-open).
    Opened,
    /// `open_for` had passed; this request is the first probe.
    HalfOpened,
    /// A probe succeeded; the circuit closed.
    Closed,
}

impl Transition {
    /// The state the circuit is in after this transition.
    pub fn state(self) -> State {
        match self {
            Self::Opened => State::Open,
            Self::HalfOpened => State::HalfOpen,
            Self::Closed => State::Closed,
        }
    }
}

/// The circuit refused the request: answer 503 `service_unavailable` with `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("upstream unavailable; retry after {retry_after:?}")]
pub struct Open {
    /// How long until the circuit lets a probe through (or, while half-open with every probe
    /// slot taken, a short wait for the probe under way).
    pub retry_after: Duration,
}

impl Open {
    /// `retry_after` in whole seconds, rounded up and at least 1, for the `Retry-After` header.
    pub fn retry_after_seconds(&self) -> u64 {
        let seconds = self.retry_after.as_secs();
        let rounded = if self.retry_after.subsec_nanos() > 0 {
            seconds.saturating_add(1)
        } else {
            seconds
        };
        rounded.max(1)
    }
}

/// One upstream's circuit breaker. Share it (`Arc`) between all requests to that upstream.
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: Settings,
    /// `generation << 2 | state tag`, mirrored from `inner` on every transition so that the
    /// closed state is admitted with one atomic load and no lock.
    snapshot: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: State,
    /// Bumped on every transition; permits from an earlier generation report nothing.
    generation: u64,
    /// Times of the failures within the window while closed, oldest first; never more
    /// than `failures` entries, so it stops growing after warm-up.
    failures: VecDeque<Instant>,
    /// When an open circuit starts letting probes through.
    open_until: Instant,
    /// Probe permits handed out and not yet reported or dropped.
    probes: u32,
}

impl Inner {
    fn enter(&mut self, state: State) {
        self.state = state;
        // Kept within the 62 bits `snapshot` has room for.
        self.generation = self.generation.wrapping_add(1) & (u64::MAX >> 2);
        self.failures.clear();
        self.probes = 0;
    }

    fn snapshot(&self) -> u64 {
        (self.generation << 2) | self.state.tag()
    }
}

impl CircuitBreaker {
    /// A closed circuit with `settings`.
    pub fn new(settings: Settings) -> Self {
        let failures = settings.failures.max(1);
        let now = Instant::now();
        let inner = Inner {
            state: State::Closed,
            generation: 0,
            // Sized for the usual small thresholds; a huge `failures` grows only as real
            // failures arrive.
            failures: VecDeque::with_capacity(usize::try_from(failures.min(64)).unwrap_or(64)),
            open_until: now,
            probes: 0,
        };
        Self {
            settings: Settings {
                failures,
                half_open_requests: settings.half_open_requests.max(1),
                ..settings
            },
            snapshot: AtomicU64::new(inner.snapshot()),
            inner: Mutex::new(inner),
        }
    }

    /// The settings in force (with zero counts raised to 1).
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Asks to send one request to the upstream.
    ///
    /// Closed: always granted (one atomic load). Open: refused until `open_for` has passed; the
    /// first call after that turns the circuit half-open and gets the first probe
    /// ([`Permit::transition`] is `Some(HalfOpened)`). Half-open: granted while fewer than
    /// `half_open_requests` probes are outstanding.
    ///
    /// # Errors
    ///
    /// [`Open`] when the circuit is open, or half-open with every probe slot taken.
    pub fn acquire(&self) -> Result<Permit<'_>, Open> {
        let snapshot = self.snapshot.load(Ordering::Acquire);
        if snapshot & 0b11 == State::Closed.tag() {
            return Ok(Permit::new(self, snapshot >> 2, Kind::Normal, None));
        }
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.state {
            State::Closed => Ok(Permit::new(self, inner.generation, Kind::Normal, None)),
            State::Open if now < inner.open_until => Err(Open {
                retry_after: inner.open_until - now,
            }),
            State::Open => {
                inner.enter(State::HalfOpen);
                inner.probes = 1;
                self.publish(&inner);
                Ok(Permit::new(
                    self,
                    inner.generation,
                    Kind::Probe,
                    Some(Transition::HalfOpened),
                ))
            }
            State::HalfOpen if inner.probes < self.settings.half_open_requests => {
                inner.probes += 1;
                Ok(Permit::new(self, inner.generation, Kind::Probe, None))
            }
            State::HalfOpen => Err(Open {
                retry_after: PROBE_BUSY_RETRY_AFTER,
            }),
        }
    }

    /// The circuit's state now, for the gauge. An open circuit whose `open_for` has passed
    /// reads as half-open, although the switch itself happens at the next [`acquire`](Self::acquire).
    pub fn state(&self) -> State {
        let inner = self.lock();
        match inner.state {
            State::Open if Instant::now() >= inner.open_until => State::HalfOpen,
            state => state,
        }
    }

    /// The state as last published, read with one atomic load and no lock: an open circuit
    /// reads as open until a request turns it half-open.
    pub fn published_state(&self) -> State {
        match self.snapshot.load(Ordering::Acquire) & 0b11 {
            0 => State::Closed,
            1 => State::Open,
            _ => State::HalfOpen,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // No code panics while holding the lock, and `Inner` is consistent between
        // statements anyway, so a poisoned lock is still safe to use.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn publish(&self, inner: &Inner) {
        self.snapshot.store(inner.snapshot(), Ordering::Release);
    }

    fn open(&self, inner: &mut Inner, now: Instant) -> Transition {
        inner.enter(State::Open);
        // An absurd `open_for` must not panic on overflow: it opens for as long as the
        // clock can represent.
        inner.open_until = now
            .checked_add(self.settings.open_for)
            .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
            .unwrap_or(now);
        self.publish(inner);
        Transition::Opened
    }

    fn record_failure(&self, generation: u64, kind: Kind) -> Option<Transition> {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.generation != generation {
            // The circuit moved on while this request was in flight; its outcome describes
            // a state that no longer exists.
            return None;
        }
        match kind {
            Kind::Probe => Some(self.open(&mut inner, now)),
            Kind::Normal => {
                // A failure stays in the window while younger than `window`; failures at
                // the same instant as this one always count, even with a zero window.
                let window = self.settings.window;
                while let Some(&oldest) = inner.failures.front() {
                    let age = now.saturating_duration_since(oldest);
                    if age < window || age.is_zero() {
                        break;
                    }
                    inner.failures.pop_front();
                }
                inner.failures.push_back(now);
                let threshold = usize::try_from(self.settings.failures).unwrap_or(usize::MAX);
                (inner.failures.len() >= threshold).then(|| self.open(&mut inner, now))
            }
        }
    }

    fn record_success(&self, generation: u64, kind: Kind) -> Option<Transition> {
        match kind {
            // Failures are counted in a window, not consecutively: a success while closed
            // changes nothing, so it needs no lock.
            Kind::Normal => None,
            Kind::Probe => {
                let mut inner = self.lock();
                if inner.generation != generation {
                    return None;
                }
                inner.enter(State::Closed);
                self.publish(&inner);
                Some(Transition::Closed)
            }
        }
    }

    fn release(&self, generation: u64, kind: Kind) {
        if kind == Kind::Probe {
            let mut inner = self.lock();
            if inner.generation == generation {
                inner.probes = inner.probes.saturating_sub(1);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Admitted while closed.
    Normal,
    /// A half-open probe holding one of the `half_open_requests` slots.
    Probe,
}

/// Leave to send one request; report how it went with [`succeeded`](Self::succeeded) or
/// [`failed`](Self::failed). Dropping it unreported (the request was cancelled) counts as
/// neither and frees its probe slot.
#[derive(Debug)]
#[must_use = "report the outcome with `succeeded` or `failed`"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    generation: u64,
    /// `None` once the outcome has been reported.
    kind: Option<Kind>,
    transition: Option<Transition>,
}

impl<'a> Permit<'a> {
    fn new(
        breaker: &'a CircuitBreaker,
        generation: u64,
        kind: Kind,
        transition: Option<Transition>,
    ) -> Self {
        Self {
            breaker,
            generation,
            kind: Some(kind),
            transition,
        }
    }

    /// The transition that granting this permit caused: `Some(HalfOpened)` for the first
    /// probe after `open_for`, otherwise `None`.
    pub fn transition(&self) -> Option<Transition> {
        self.transition
    }

    /// Whether this permit is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.kind == Some(Kind::Probe)
    }

    /// The backend answered well. Returns `Some(Closed)` when this probe closed the circuit.
    pub fn succeeded(mut self) -> Option<Transition> {
        let kind = self.kind.take()?;
        self.breaker.record_success(self.generation, kind)
    }

    /// The backend failed (connect error, timeout, 5xx: the caller decides). Returns
    /// `Some(Opened)` when this failure opened the circuit; it is reported to exactly one
    /// caller per opening.
    pub fn failed(mut self) -> Option<Transition> {
        let kind = self.kind.take()?;
        self.breaker.record_failure(self.generation, kind)
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(kind) = self.kind.take() {
            self.breaker.release(self.generation, kind);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Barrier};

    use super::*;
    use tokio::time::advance;

    fn settings(failures: u32, window: u64, open_for: u64, half_open_requests: u32) -> Settings {
        Settings {
            failures,
            window: Duration::from_secs(window),
            open_for: Duration::from_secs(open_for),
            half_open_requests,
        }
    }

    fn fail(breaker: &CircuitBreaker) -> Option<Transition> {
        breaker.acquire().expect("circuit admits").failed()
    }

    fn open_breaker(settings: Settings) -> CircuitBreaker {
        let breaker = CircuitBreaker::new(settings);
        for _ in 1..settings.failures {
            assert_eq!(fail(&breaker), None);
        }
        assert_eq!(fail(&breaker), Some(Transition::Opened));
        breaker
    }

    #[test]
    fn defaults_are_the_spec_values() {
        assert_eq!(Settings::default(), settings(5, 30, 30, 1));
    }

    #[test]
    fn gauge_values_follow_the_spec() {
        assert_eq!(State::Closed.gauge_value(), 0);
        assert_eq!(State::Open.gauge_value(), 1);
        assert_eq!(State::HalfOpen.gauge_value(), 2);
    }

    #[test]
    fn retry_after_seconds_round_up_and_are_at_least_one() {
        let seconds = |millis| {
            Open {
                retry_after: Duration::from_millis(millis),
            }
            .retry_after_seconds()
        };
        assert_eq!(seconds(0), 1);
        assert_eq!(seconds(1), 1);
        assert_eq!(seconds(1_000), 1);
        assert_eq!(seconds(1_001), 2);
        assert_eq!(seconds(29_500), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn opens_exactly_at_the_nth_failure_within_the_window() {
        let breaker = CircuitBreaker::new(settings(5, 30, 30, 1));
        for failure in 1..5 {
            assert_eq!(fail(&breaker), None, "failure {failure} must not open");
            assert_eq!(breaker.state(), State::Closed);
            advance(Duration::from_secs(5)).await;
        }
        assert_eq!(fail(&breaker), Some(Transition::Opened));
        assert_eq!(breaker.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn successes_do_not_reset_the_failure_count() {
        let breaker = CircuitBreaker::new(settings(3, 30, 30, 1));
        for _ in 0..2 {
            assert_eq!(fail(&breaker), None);
            assert_eq!(breaker.acquire().unwrap().succeeded(), None);
        }
        assert_eq!(fail(&breaker), Some(Transition::Opened));
    }

    #[tokio::test(start_paused = true)]
    async fn failures_older_than_the_window_do_not_count() {
        let breaker = CircuitBreaker::new(settings(3, 30, 30, 1));
        assert_eq!(fail(&breaker), None);
        advance(Duration::from_secs(20)).await;
        assert_eq!(fail(&breaker), None);
        // The first failure is now exactly 30 s old: outside the window.
        advance(Duration::from_secs(10)).await;
        assert_eq!(fail(&breaker), None);
        assert_eq!(breaker.state(), State::Closed);
        // The second and third are 10 s and 0 s old; a fourth within the window opens.
        advance(Duration::from_secs(19)).await;
        assert_eq!(fail(&breaker), Some(Transition::Opened));
    }

    #[tokio::test(start_paused = true)]
    async fn a_single_failure_opens_when_failures_is_one_even_with_a_zero_window() {
        let breaker = CircuitBreaker::new(settings(1, 0, 30, 1));
        assert_eq!(fail(&breaker), Some(Transition::Opened));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_circuit_refuses_with_the_remaining_open_time() {
        let breaker = open_breaker(settings(2, 30, 30, 1));
        assert_eq!(
            breaker.acquire().unwrap_err(),
            Open {
                retry_after: Duration::from_secs(30)
            }
        );
        advance(Duration::from_millis(12_500)).await;
        let refused = breaker.acquire().unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(17_500));
        assert_eq!(refused.retry_after_seconds(), 18);
        assert_eq!(breaker.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn after_open_for_the_first_request_half_opens_the_circuit() {
        let breaker = open_breaker(settings(1, 30, 30, 1));
        advance(Duration::from_secs(30)).await;
        assert_eq!(breaker.state(), State::HalfOpen, "gauge reads half-open");
        let probe = breaker.acquire().expect("first probe is admitted");
        assert!(probe.is_probe());
        assert_eq!(probe.transition(), Some(Transition::HalfOpened));
        assert_eq!(breaker.state(), State::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_exactly_the_configured_number_of_concurrent_probes() {
        let breaker = open_breaker(settings(1, 30, 10, 3));
        advance(Duration::from_secs(10)).await;
        let probes: Vec<_> = (0..3)
            .map(|_| breaker.acquire().expect("probe slot free"))
            .collect();
        assert!(probes.iter().all(Permit::is_probe));
        let transitions: Vec<_> = probes.iter().filter_map(Permit::transition).collect();
        assert_eq!(transitions, [Transition::HalfOpened]);
        let refused = breaker.acquire().unwrap_err();
        assert_eq!(refused.retry_after, PROBE_BUSY_RETRY_AFTER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_successful_probe_closes_the_circuit() {
        let breaker = open_breaker(settings(2, 30, 10, 1));
        advance(Duration::from_secs(10)).await;
        let probe = breaker.acquire().unwrap();
        assert_eq!(probe.succeeded(), Some(Transition::Closed));
        assert_eq!(breaker.state(), State::Closed);
        let permit = breaker.acquire().expect("closed circuit admits");
        assert!(!permit.is_probe());
        // The count starts afresh: one failure is not enough to reopen.
        assert_eq!(permit.failed(), None);
        assert_eq!(fail(&breaker), Some(Transition::Opened));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_for_another_full_open_for() {
        let breaker = open_breaker(settings(2, 30, 10, 1));
        advance(Duration::from_secs(10)).await;
        let probe = breaker.acquire().unwrap();
        advance(Duration::from_secs(4)).await;
        assert_eq!(probe.failed(), Some(Transition::Opened));
        assert_eq!(breaker.state(), State::Open);
        assert_eq!(
            breaker.acquire().unwrap_err().retry_after,
            Duration::from_secs(10)
        );
        advance(Duration::from_secs(10)).await;
        assert_eq!(
            breaker.acquire().unwrap().transition(),
            Some(Transition::HalfOpened)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_frees_its_slot_and_counts_as_neither() {
        let breaker = open_breaker(settings(1, 30, 10, 1));
        advance(Duration::from_secs(10)).await;
        let probe = breaker.acquire().unwrap();
        assert!(breaker.acquire().is_err(), "the only slot is taken");
        drop(probe);
        assert_eq!(breaker.state(), State::HalfOpen);
        let next = breaker
            .acquire()
            .expect("slot freed by the cancelled probe");
        assert!(next.is_probe());
        assert_eq!(next.transition(), None, "still the same half-open period");
        assert_eq!(next.succeeded(), Some(Transition::Closed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_request_while_closed_counts_as_neither() {
        let breaker = CircuitBreaker::new(settings(2, 30, 10, 1));
        for _ in 0..10 {
            drop(breaker.acquire().unwrap());
        }
        assert_eq!(fail(&breaker), None);
        assert_eq!(fail(&breaker), Some(Transition::Opened));
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_first_probe_outcome_decides_and_late_ones_report_nothing() {
        let breaker = open_breaker(settings(1, 30, 10, 2));
        advance(Duration::from_secs(10)).await;
        let first = breaker.acquire().unwrap();
        let second = breaker.acquire().unwrap();
        assert_eq!(first.failed(), Some(Transition::Opened));
        assert_eq!(second.succeeded(), None, "a stale probe cannot close");
        assert_eq!(breaker.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_of_requests_admitted_before_an_opening_do_not_reopen() {
        let breaker = CircuitBreaker::new(settings(2, 30, 10, 1));
        let in_flight: Vec<_> = (0..5).map(|_| breaker.acquire().unwrap()).collect();
        let transitions: Vec<_> = in_flight.into_iter().filter_map(Permit::failed).collect();
        assert_eq!(
            transitions,
            [Transition::Opened],
            "reported once per opening"
        );
        assert_eq!(
            breaker.acquire().unwrap_err().retry_after,
            Duration::from_secs(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn extreme_settings_do_not_panic() {
        let breaker = CircuitBreaker::new(Settings {
            failures: u32::MAX,
            window: Duration::MAX,
            open_for: Duration::MAX,
            half_open_requests: u32::MAX,
        });
        assert_eq!(fail(&breaker), None);
        let breaker = open_breaker(Settings {
            failures: 1,
            window: Duration::MAX,
            open_for: Duration::MAX,
            half_open_requests: u32::MAX,
        });
        assert!(breaker.acquire().unwrap_err().retry_after > Duration::from_secs(3600));
    }

    #[test]
    fn zero_counts_in_settings_are_raised_to_one() {
        let breaker = CircuitBreaker::new(settings(0, 30, 30, 0));
        assert_eq!(breaker.settings().failures, 1);
        assert_eq!(breaker.settings().half_open_requests, 1);
    }

    #[test]
    fn many_threads_failing_at_once_open_the_circuit_exactly_once() {
        const THREADS: usize = 32;
        let breaker = Arc::new(CircuitBreaker::new(settings(5, 30, 30, 1)));
        let barrier = Arc::new(Barrier::new(THREADS));
        let opened: usize = (0..THREADS)
            .map(|_| {
                let (breaker, barrier) = (Arc::clone(&breaker), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    let permit = breaker.acquire().expect("closed circuit admits");
                    barrier.wait();
                    permit.failed() == Some(Transition::Opened)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| usize::from(thread.join().unwrap()))
            .sum();
        assert_eq!(opened, 1);
        assert_eq!(breaker.state(), State::Open);
    }

    #[test]
    fn many_threads_racing_for_probes_get_exactly_the_configured_number() {
        const THREADS: usize = 32;
        // `open_for` zero: the circuit is ready to half-open as soon as it opens.
        let breaker = Arc::new(open_breaker(settings(1, 30, 0, 3)));
        let barrier = Arc::new(Barrier::new(THREADS));
        let results: Vec<(bool, Option<Transition>)> = (0..THREADS)
            .map(|_| {
                let (breaker, barrier) = (Arc::clone(&breaker), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    let permit = breaker.acquire();
                    let outcome = (
                        permit.is_ok(),
                        permit.as_ref().ok().and_then(Permit::transition),
                    );
                    // Hold every permit until all threads have tried.
                    barrier.wait();
                    outcome
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|thread| thread.join().unwrap())
            .collect();
        let admitted = results.iter().filter(|(admitted, _)| *admitted).count();
        let half_opened = results.iter().filter(|(_, t)| t.is_some()).count();
        assert_eq!(admitted, 3);
        assert_eq!(half_opened, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_tasks_never_hold_more_probes_than_allowed_in_one_half_open_period() {
        use std::collections::HashMap;
        use std::sync::atomic::AtomicU32;
        const K: u32 = 2;
        let breaker = Arc::new(CircuitBreaker::new(settings(3, 30, 0, K)));
        // Probes held per half-open period (generation). A probe from an earlier period no
        // longer holds a slot once the circuit has moved on.
        let held = Arc::new(Mutex::new(HashMap::<u64, u32>::new()));
        let opens = Arc::new(AtomicU32::new(0));
        let closes = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..64u32)
            .map(|task| {
                let (breaker, held) = (Arc::clone(&breaker), Arc::clone(&held));
                let (opens, closes) = (Arc::clone(&opens), Arc::clone(&closes));
                tokio::spawn(async move {
                    for round in 0..200u32 {
                        let Ok(permit) = breaker.acquire() else {
                            tokio::task::yield_now().await;
                            continue;
                        };
                        let probe = permit.is_probe().then_some(permit.generation);
                        if let Some(generation) = probe {
                            let mut held = held.lock().unwrap();
                            let count = held.entry(generation).or_default();
                            *count += 1;
                            assert!(*count <= K, "{count} probes held in one period");
                        }
                        tokio::task::yield_now().await;
                        if let Some(generation) = probe {
                            *held.lock().unwrap().entry(generation).or_default() -= 1;
                        }
                        let transition = match (task + round) % 3 {
                            0 => permit.failed(),
                            1 => permit.succeeded(),
                            _ => {
                                drop(permit);
                                None
                            }
                        };
                        match transition {
                            Some(Transition::Opened) => opens.fetch_add(1, Ordering::SeqCst),
                            Some(Transition::Closed) => closes.fetch_add(1, Ordering::SeqCst),
                            _ => 0,
                        };
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        let (opens, closes) = (opens.load(Ordering::SeqCst), closes.load(Ordering::SeqCst));
        assert!(opens > 0, "the workload opens the circuit");
        // Every close ends an opening (a failed probe reopens without a close in between).
        assert!(closes <= opens, "{opens} opens, {closes} closes");
    }
}
