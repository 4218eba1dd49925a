//! Per-connection deadlines: what a connection is doing, and the socket that reports it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::Limits;

// Per-connection deadlines

/// What a connection is doing, for its deadline. Times are milliseconds after `started`.
#[derive(Debug)]
pub(super) struct Activity {
    pub(super) started: Instant,
    /// Requests being served (HTTP/2: open streams).
    pub(super) in_flight: AtomicUsize,
    /// Whether any request head was ever complete.
    pub(super) served: AtomicBool,
    pub(super) http2: AtomicBool,
    /// Since when no request has been in flight.
    pub(super) idle_since: AtomicU64,
    /// When the first byte arrived since the connection went idle, plus one; 0 for none.
    pub(super) head_since: AtomicU64,
    /// When a write found the socket full, plus one; 0 while writes go through.
    pub(super) write_blocked_since: AtomicU64,
    /// An HTTP/2 stream was ended because the client did not take its response, and none
    /// is left in flight: the connection is closed.
    pub(super) stalled: AtomicBool,
    /// Wakes the connection's watchdog when its deadline may have moved earlier.
    pub(super) changed: Notify,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Expired {
    /// No request for `idle_timeout`.
    Idle,
    /// A head (or the TLS handshake and first head) not complete in time.
    Head,
    /// The client stopped reading.
    Write,
    /// Every stream in flight was ended because the client did not take its response.
    Stalled,
}

impl Expired {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle_timeout",
            Self::Head => "header_read_timeout",
            Self::Write => "client stopped reading (idle_timeout)",
            Self::Stalled => "client stopped taking its responses (idle_timeout)",
        }
    }
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            started: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(0),
            write_blocked_since: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            changed: Notify::new(),
        }
    }

    pub(super) fn now(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX / 2)
    }

    /// A request head is complete; the guard ends it when its response is done.
    pub(super) fn begin(self: &Arc<Self>, http2: bool) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(0, Ordering::Release);
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Release);
        }
        if http2 && !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Release);
        }
        InFlight(Arc::clone(self))
    }

    pub(super) fn on_read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == 0
            && self.served.load(Ordering::Relaxed)
        {
            // No wake-up (it would cost every keep-alive request one): the watchdog looks
            // again within `header_read_timeout` of arming, so this deadline still holds.
            self.head_since.store(self.now() + 1, Ordering::Release);
        }
    }

    pub(super) fn on_write(&self, blocked: bool) {
        self.mark(&self.write_blocked_since, blocked);
    }

    /// Starts (or clears) a "since" clock.
    pub(super) fn mark(&self, clock: &AtomicU64, stuck: bool) {
        let since = clock.load(Ordering::Relaxed);
        if stuck && since == 0 {
            clock.store(self.now() + 1, Ordering::Relaxed);
            self.changed.notify_one();
        } else if !stuck && since != 0 {
            clock.store(0, Ordering::Relaxed);
        }
    }

    /// The time the connection is closed at unless something happens, and why.
    pub(super) fn next(&self, limits: &Limits) -> Option<(u64, Expired)> {
        let millis =
            |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX / 4);
        let read = if self.in_flight.load(Ordering::Acquire) > 0 {
            None
        } else if self.stalled.load(Ordering::Acquire) {
            Some((0, Expired::Stalled))
        } else if !self.served.load(Ordering::Acquire) {
            Some((millis(limits.header_read_timeout), Expired::Head))
        } else {
            match self.head_since.load(Ordering::Acquire) {
                since if since != 0 && !self.http2.load(Ordering::Relaxed) => Some((
                    (since - 1).saturating_add(millis(limits.header_read_timeout)),
                    Expired::Head,
                )),
                _ => Some((
                    self.idle_since
                        .load(Ordering::Acquire)
                        .saturating_add(millis(limits.idle_timeout)),
                    Expired::Idle,
                )),
            }
        };
        let stalled = |clock: &AtomicU64, why: Expired| match clock.load(Ordering::Relaxed) {
            0 => None,
            since => Some(((since - 1).saturating_add(millis(limits.idle_timeout)), why)),
        };
        match (read, stalled(&self.write_blocked_since, Expired::Write)) {
            (Some(read), Some(write)) => Some(if write.0 < read.0 { write } else { read }),
            (read, write) => read.or(write),
        }
    }

    pub(super) fn deadline(&self, limits: &Limits) -> Option<Duration> {
        self.next(limits).map(|(at, _)| Duration::from_millis(at))
    }

    pub(super) fn expired(&self, limits: &Limits) -> Option<Expired> {
        self.next(limits)
            .filter(|(at, _)| *at <= self.now())
            .map(|(_, why)| why)
    }
}

/// A request in flight; dropped with its response body.
pub(super) struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            // No wake-up: while requests are in flight the watchdog's timer stays armed
            // `idle_timeout` ahead, never later than the idle deadline this starts.
            activity.idle_since.store(activity.now(), Ordering::Release);
        }
    }
}

/// The socket, reporting reads and stalled writes to the connection's [`Activity`].
pub(super) struct Tracked {
    pub(super) inner: TcpStream,
    pub(super) activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        result
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.on_write(result.is_pending());
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.on_write(result.is_pending());
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::test_limits as limits;

    #[tokio::test(start_paused = true)]
    async fn deadlines_follow_the_connection() {
        let limits = limits();
        let activity = Arc::new(Activity::new());
        // A fresh connection must bring its first head within header_read_timeout.
        assert_eq!(activity.deadline(&limits), Some(Duration::from_secs(10)));
        let guard = activity.begin(false);
        assert_eq!(
            activity.deadline(&limits),
            None,
            "in flight: no read deadline"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(guard);
        assert_eq!(activity.deadline(&limits), Some(Duration::from_secs(65)));
        tokio::time::advance(Duration::from_secs(20)).await;
        activity.on_read();
        assert_eq!(activity.deadline(&limits), Some(Duration::from_secs(35)));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(matches!(activity.expired(&limits), Some(Expired::Head)));
        // A stalled write counts from when it stalled.
        let activity = Arc::new(Activity::new());
        let _guard = activity.begin(true);
        activity.on_write(true);
        assert_eq!(activity.deadline(&limits), Some(Duration::from_secs(60)));
        activity.on_write(false);
        assert_eq!(activity.deadline(&limits), None);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_bytes_between_streams_do_not_start_a_head_deadline() {
        let limits = limits();
        let activity = Arc::new(Activity::new());
        drop(activity.begin(true));
        tokio::time::advance(Duration::from_secs(1)).await;
        activity.on_read();
        assert_eq!(activity.deadline(&limits), Some(Duration::from_secs(60)));
    }
}
