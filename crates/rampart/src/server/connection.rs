//! One accepted connection: its TLS handshake, HTTP/1.1 or HTTP/2 serving, its deadline
//! watchdog and its part in a shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{HeaderValue, Request, Version, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, watch};

use super::activity::{Activity, Expired, Tracked};
use super::limits::ClientSlot;
use super::refusal::{head_size, headers_too_large};
use super::streams::{Counted, NEXT_STREAM, StreamClock, Watched, request_timed_out};
use super::{Phase, Shared, far_future};

pub(super) async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<Phase>,
    _places: (OwnedSemaphorePermit, Option<ClientSlot>),
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let io = Tracked {
        inner: stream,
        activity: Arc::clone(&activity),
    };
    let Some(tls) = shared.tls.clone() else {
        return serve_http(io, peer, &shared, activity, stopped).await;
    };
    let handshake = tokio::time::timeout_at(
        activity
            .started
            .checked_add(shared.limits.header_read_timeout)
            .unwrap_or_else(far_future),
        tls.acceptor.accept(io),
    );
    let stream = tokio::select! {
        result = handshake => match result {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(client = %peer.ip(), error = %error, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(client = %peer.ip(), "TLS handshake not complete in time");
                return;
            }
        },
        () = stop_requested(&mut stopped) => return,
    };
    serve_http(stream, peer, &shared, activity, stopped).await;
}

pub(super) async fn serve_http<I>(
    io: I,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    activity: Arc<Activity>,
    mut stopped: watch::Receiver<Phase>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let shared = Arc::clone(shared);
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let http2 = request.version() == Version::HTTP_2;
            let guard = activity.begin(http2);
            let stream = Arc::new(StreamClock::new(Arc::clone(&activity)));
            if http2 {
                // hyper spawns this stream's task right after this call, on this thread.
                NEXT_STREAM.with(|next| *next.borrow_mut() = Some(Arc::clone(&stream)));
            }
            let size = head_size(&request);
            let refusal = (size > shared.limits.max_header_bytes)
                .then(|| headers_too_large(&shared.state, &request, size, peer));
            let gateway = shared.gateway.clone();
            let idle_timeout = shared.limits.idle_timeout;
            let stopping = shared.stopping.clone();
            async move {
                let response = match refusal {
                    Some(response) => response,
                    None => {
                        let version = request.version();
                        let mut request = request.map(|body| {
                            Body::new(Watched {
                                body,
                                stream: Arc::clone(&stream),
                                idle_timeout,
                                timer: None,
                                waiting: false,
                                timed_out: false,
                            })
                        });
                        request.extensions_mut().insert(ConnectInfo(peer));
                        // Boxed once here: hyper moves this future between its own states,
                        // and a pointer moves for less than the pipeline's whole state.
                        let response = Box::pin(gateway.handle(request)).await;
                        let mut response = if stream.body_timed_out.load(Ordering::Acquire) {
                            request_timed_out(response, version)
                        } else {
                            response
                        };
                        if version < Version::HTTP_2 && stopping.is_stopping() {
                            response
                                .headers_mut()
                                .insert(header::CONNECTION, HeaderValue::from_static("close"));
                        }
                        response
                    }
                };
                stream.waiting_on_client();
                Ok::<_, Infallible>(response.map(|body| Counted {
                    body,
                    stream,
                    _guard: guard,
                }))
            }
        })
    };
    let limits = shared.limits;
    let mut connection = pin!(
        shared
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
    );
    let mut timer = pin!(tokio::time::sleep_until(activity.started));
    let mut draining = false;
    let mut armed = None;
    loop {
        // While requests are in flight there is no read deadline; the timer still looks
        // again `idle_timeout` on, so that the end of a request needs no wake-up.
        // A head may also begin without waking this loop: looking again within
        // `header_read_timeout` keeps its deadline exact.
        let now = Duration::from_millis(activity.now());
        let deadline = Some(
            activity
                .deadline(&limits)
                .unwrap_or_else(|| now.saturating_add(limits.idle_timeout))
                .min(now.saturating_add(limits.header_read_timeout)),
        );
        if deadline != armed {
            if let Some(at) = deadline {
                timer
                    .as_mut()
                    .reset(activity.started.checked_add(at).unwrap_or_else(far_future));
            }
            armed = deadline;
        }
        tokio::select! {
            biased;
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(client = %peer.ip(), error = %error, "connection ended");
                }
                return;
            }
            changed = stopped.changed(), if !draining => {
                let phase = if changed.is_ok() { *stopped.borrow_and_update() } else { Phase::Closing };
                // HTTP/1.1 answers carry `Connection: close` from Draining on (see the
                // service); HTTP/2 gets its GOAWAY now.
                if phase == Phase::Closing
                    || (phase == Phase::Draining && activity.http2.load(Ordering::Relaxed))
                {
                    draining = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            () = activity.changed.notified() => {}
            () = timer.as_mut(), if deadline.is_some() => {
                let Some(expired) = activity.expired(&limits) else {
                    // The deadline moved: arm the timer afresh.
                    armed = None;
                    continue;
                };
                tracing::debug!(client = %peer.ip(), reason = expired.as_str(), "closing connection");
                if let Expired::Idle = expired {
                    // Nothing in flight: say goodbye properly (HTTP/2 GOAWAY).
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection.as_mut()).await;
                }
                return;
            }
        }
    }
}

/// Completes once shutdown begins (or the server is gone).
pub(super) async fn stop_requested(stopped: &mut watch::Receiver<Phase>) {
    let _ = stopped
        .wait_for(|phase| *phase == Phase::Closing)
        .await
        .map(|_| ());
}
