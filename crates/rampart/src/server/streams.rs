//! Per-request deadlines: a request body that stops arriving, and (HTTP/2) a response the
//! client does not take.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::response::IntoResponse;
use http::{HeaderValue, Response, Version, header};
use hyper::body::{Frame, Incoming, SizeHint};
use tokio::time::Instant;

use crate::error::{ApiError, REQUEST_ID};

use super::activity::{Activity, Expired, InFlight};
use super::far_future;

/// A response body that holds its request's place until it is sent (or dropped).
pub(super) struct Counted {
    pub(super) body: Body,
    pub(super) stream: Arc<StreamClock>,
    pub(super) _guard: InFlight,
}

impl HttpBody for Counted {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let result = Pin::new(&mut self.body).poll_frame(cx);
        match &result {
            // The frame is out; the next poll waits on the client's flow-control window.
            Poll::Ready(Some(Ok(_))) => self.stream.waiting_on_client(),
            // Waiting on the handler or upstream, or done: not the client's doing.
            _ => self.stream.not_waiting(),
        }
        result
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body with its own deadline: when its handler has waited `idle_timeout` for
/// bytes the client does not send, reading it fails (and the request is answered 408 if
/// nothing was sent yet). Other requests on the connection are not affected.
pub(super) struct Watched {
    pub(super) body: Incoming,
    pub(super) stream: Arc<StreamClock>,
    pub(super) idle_timeout: Duration,
    pub(super) timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the last poll found no bytes (the timer runs since then).
    pub(super) waiting: bool,
    pub(super) timed_out: bool,
}

/// The error a stalled request body fails with.
#[derive(Debug, thiserror::Error)]
#[error("the request body stopped arriving (server.idle_timeout)")]
pub struct BodyTimedOut;

impl HttpBody for Watched {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.timed_out {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Pending => {
                let idle_timeout = self.idle_timeout;
                let fresh = !std::mem::replace(&mut self.waiting, true);
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle_timeout)));
                if fresh {
                    timer.as_mut().reset(
                        Instant::now()
                            .checked_add(idle_timeout)
                            .unwrap_or_else(far_future),
                    );
                }
                if timer.as_mut().poll(cx).is_ready() {
                    self.timed_out = true;
                    self.stream.body_timed_out.store(true, Ordering::Release);
                    return Poll::Ready(Some(Err(Box::new(BodyTimedOut))));
                }
                Poll::Pending
            }
            Poll::Ready(result) => {
                self.waiting = false;
                Poll::Ready(result.map(|frame| frame.map_err(axum::BoxError::from)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.timed_out || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
/// The 408 that replaces the handler's answer when the request body stopped arriving.
pub(super) fn request_timed_out(response: Response<Body>, version: Version) -> Response<Body> {
    let id: Arc<str> = Arc::from(
        response
            .headers()
            .get("x-request-id")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("-"),
    );
    let (mut parts, _) = response.into_parts();
    let fresh = REQUEST_ID.sync_scope(id, || ApiError::RequestTimedOut.into_response());
    let (fresh_parts, body) = fresh.into_parts();
    parts.status = fresh_parts.status;
    for name in [header::CONTENT_TYPE, header::CONTENT_LENGTH] {
        parts.headers.remove(&name);
        if let Some(value) = fresh_parts.headers.get(&name) {
            parts.headers.insert(name, value.clone());
        }
    }
    parts.headers.remove(header::TRANSFER_ENCODING);
    if version < Version::HTTP_2 {
        // The rest of the body may still come: the connection cannot be reused.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Response::from_parts(parts, body)
}

// ---------------------------------------------------------------------------------------
// Per-stream deadlines (HTTP/2)

/// One request's clock: whether its response waits on the client, and whether its body
/// timed out.
#[derive(Debug)]
pub(super) struct StreamClock {
    pub(super) activity: Arc<Activity>,
    /// Since when the response body waits for the client to take what was sent (its
    /// flow-control window), plus one; 0 while it does not.
    pub(super) waiting_since: AtomicU64,
    pub(super) body_timed_out: AtomicBool,
}

impl StreamClock {
    pub(super) fn new(activity: Arc<Activity>) -> Self {
        Self {
            activity,
            waiting_since: AtomicU64::new(0),
            body_timed_out: AtomicBool::new(false),
        }
    }

    pub(super) fn waiting_on_client(&self) {
        self.waiting_since
            .store(self.activity.now() + 1, Ordering::Relaxed);
    }

    pub(super) fn not_waiting(&self) {
        if self.waiting_since.load(Ordering::Relaxed) != 0 {
            self.waiting_since.store(0, Ordering::Relaxed);
        }
    }

    /// When the stream is ended unless the client takes more of its response.
    pub(super) fn deadline(&self, idle_timeout: Duration) -> Instant {
        match self.waiting_since.load(Ordering::Relaxed) {
            0 => Instant::now()
                .checked_add(idle_timeout)
                .unwrap_or_else(far_future),
            since => self
                .activity
                .started
                .checked_add(Duration::from_millis(since - 1))
                .and_then(|at| at.checked_add(idle_timeout))
                .unwrap_or_else(far_future),
        }
    }
}

thread_local! {
    /// The stream hyper is about to spawn (set by the service, taken by the executor).
    pub(super) static NEXT_STREAM: std::cell::RefCell<Option<Arc<StreamClock>>> =
        const { std::cell::RefCell::new(None) };
}

/// Spawns each HTTP/2 stream with its idle deadline: a response the client does not take
/// (its flow-control window stays shut) for `idle_timeout` ends that stream with
/// RST_STREAM, as Envoy's `stream_idle_timeout` does.
#[derive(Debug, Clone, Copy)]
pub struct StreamExecutor {
    pub(super) idle_timeout: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        let Some(stream) = NEXT_STREAM.with(|next| next.borrow_mut().take()) else {
            tokio::spawn(future);
            return;
        };
        let idle_timeout = self.idle_timeout;
        tokio::spawn(async move {
            let cut = {
                let mut future = pin!(future);
                let mut timer = pin!(tokio::time::sleep(idle_timeout));
                loop {
                    tokio::select! {
                        biased;
                        () = future.as_mut() => break false,
                        () = timer.as_mut() => {
                            let at = stream.deadline(idle_timeout);
                            if at <= Instant::now() {
                                break true;
                            }
                            timer.as_mut().reset(at);
                        }
                    }
                }
            };
            // The stream's future is dropped: h2 resets the stream (CANCEL).
            if cut {
                let activity = &stream.activity;
                tracing::debug!(reason = Expired::Stalled.as_str(), "ending HTTP/2 stream");
                if activity.in_flight.load(Ordering::Acquire) == 0 {
                    activity.stalled.store(true, Ordering::Release);
                    activity.changed.notify_one();
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Limits;
    use crate::server::test_limits as limits;

    #[tokio::test(start_paused = true)]
    async fn extreme_timeouts_do_not_wrap() {
        let limits = Limits {
            header_read_timeout: Duration::MAX,
            idle_timeout: Duration::MAX,
            ..limits()
        };
        let activity = Arc::new(Activity::new());
        let far = activity.deadline(&limits).expect("a deadline");
        assert!(far >= Duration::from_secs(86_400 * 365 * 100));
        drop(activity.begin(false));
        activity.on_read();
        activity.on_write(true);
        assert!(activity.deadline(&limits).expect("a deadline") >= far / 2);
        assert!(activity.expired(&limits).is_none());
        let stream = StreamClock::new(Arc::clone(&activity));
        stream.waiting_on_client();
        assert!(stream.deadline(limits.idle_timeout) > Instant::now());
    }
}
