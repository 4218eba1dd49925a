//! The upstream client: each target keeps its own keep-alive connections, and a request
//! drives its connection itself.
//!
//! HTTP/1.1 connections are hyper's `client::conn::http1` handles, kept idle on a stack
//! per target (last in, first out, so the warmest connection is reused). A request takes
//! one, and its own task polls the connection while the request goes out and while the
//! response body streams back (the body owns the connection until it ends, then puts it
//! back): no connection task, no channel hop, one wake-up per read. HTTP/2 targets (`h2c://`
//! with prior knowledge, or `https://` when ALPN picks `h2`) share one multiplexed
//! connection per target, driven by its own task as HTTP/2 needs.
//!
//! A connection taken from the stack that turns out closed gives the request back unsent
//! (hyper's `try_send_request`), and it goes out on the next one or a new connection. A
//! failure to connect gives it back too, so the caller may try another target.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use super::WatchedBody;
use crate::circuit_breaker::{CircuitBreaker, Settings};

/// A connection to a target, in the clear or over TLS.
pub(crate) type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// An error from connecting or exchanging.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle HTTP/1.1 connections kept per target.
const MAX_IDLE: usize = 256;

/// How long an HTTP/1.1 connection is kept unused before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a TCP connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How a target is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// `http://`: HTTP/1.1.
    Http1,
    /// `h2c://`: HTTP/2 with prior knowledge, in the clear.
    H2c,
    /// `https://`: HTTP/2 or HTTP/1.1, as ALPN decides.
    Https,
}

/// One backend of an upstream: its address, connections, circuit breaker and health.
pub struct Target {
    /// The URL as configured (for logs; it comes from configuration, never from a client).
    pub url: Box<str>,
    pub(crate) protocol: Protocol,
    scheme: Scheme,
    authority: Authority,
    /// `Host` for HTTP/1.1 requests.
    host: HeaderValue,
    /// The base path without its trailing `/`; `None` when there is none.
    base: Option<Box<str>>,
    /// What the connector is given: scheme and authority.
    connect_uri: Uri,
    /// This target's own circuit breaker (passive ejection).
    pub breaker: CircuitBreaker,
    /// `false` while the target fails its active health check.
    healthy: AtomicBool,
    /// Requests sent and not yet finished (their response body included).
    in_flight: AtomicUsize,
    /// Boxed: a connection moves between this stack, the request and its response body,
    /// and a pointer is cheaper to move than the connection's state.
    /// Oldest at the front; each with when it went idle.
    idle: Mutex<VecDeque<(Instant, Box<H1>)>>,
    h2: Mutex<Option<http2::SendRequest<WatchedBody>>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("healthy", &self.is_healthy())
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Target {
    /// A target for a URL that configuration validation accepted (`http`, `https` or
    /// `h2c`, with a host).
    pub fn new(url: &Uri, breaker: Settings) -> Self {
        let (protocol, scheme) = match url.scheme_str() {
            Some("https") => (Protocol::Https, Scheme::HTTPS),
            Some("h2c") => (Protocol::H2c, Scheme::HTTP),
            _ => (Protocol::Http1, Scheme::HTTP),
        };
        let authority = url
            .authority()
            .cloned()
            .unwrap_or_else(|| Authority::from_static("localhost"));
        let host = HeaderValue::from_str(authority.as_str())
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let base = url.path().trim_end_matches('/');
        let connect_uri = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .unwrap_or_default();
        Self {
            url: url.to_string().into_boxed_str(),
            protocol,
            scheme,
            authority,
            host,
            base: (!base.is_empty()).then(|| base.into()),
            connect_uri,
            breaker: CircuitBreaker::new(breaker),
            healthy: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            idle: Mutex::new(VecDeque::new()),
            h2: Mutex::new(None),
        }
    }

    /// Whether the target passes its health check (always, without one).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Records a health-check result; `true` when it changed the target's health.
    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    /// Requests under way to this target.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The request target for `path` on this target: the base path, then the path and
    /// query; origin-form for HTTP/1.1, absolute for HTTP/2.
    pub(crate) fn uri_for(&self, path: &PathAndQuery, version: Version) -> Option<Uri> {
        let path_and_query = match &self.base {
            None => path.clone(),
            Some(base) => format!("{base}{}", path.as_str()).parse().ok()?,
        };
        let mut parts = http::uri::Parts::default();
        if version == Version::HTTP_2 {
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
        }
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).ok()
    }

    /// Points `request` at this target for `version`.
    fn aim<B>(&self, request: &mut Request<B>, path: &PathAndQuery, version: Version) -> bool {
        let Some(uri) = self.uri_for(path, version) else {
            return false;
        };
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        if version == Version::HTTP_2 {
            request.headers_mut().remove(header::HOST);
        } else {
            request
                .headers_mut()
                .insert(header::HOST, self.host.clone());
        }
        true
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<(Instant, Box<H1>)>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle HTTP/1.1 connection that is still open and ready (the warmest first).
    fn checkout(&self, context: &mut Context<'_>) -> Option<Box<H1>> {
        let now = Instant::now();
        loop {
            let mut connection = {
                let mut idle = self.idle();
                expire(&mut idle, now);
                idle.pop_back()?.1
            };
            if connection.reusable(context) {
                return Some(connection);
            }
        }
    }

    /// Keeps an HTTP/1.1 connection whose exchange is over, if it can take another.
    fn release(&self, mut connection: Box<H1>, context: &mut Context<'_>) {
        if connection.reusable(context) {
            let now = Instant::now();
            let mut idle = self.idle();
            expire(&mut idle, now);
            if idle.len() < MAX_IDLE {
                idle.push_back((now, connection));
            }
        }
    }

    fn h2_handle(&self) -> Option<http2::SendRequest<WatchedBody>> {
        let slot = self.h2.lock().unwrap_or_else(PoisonError::into_inner);
        slot.as_ref().filter(|handle| !handle.is_closed()).cloned()
    }

    fn set_h2_handle(&self, handle: Option<http2::SendRequest<WatchedBody>>) {
        *self.h2.lock().unwrap_or_else(PoisonError::into_inner) = handle;
    }

    /// Stops sharing this target's HTTP/2 connection after a request on it timed out: a
    /// stalled connection is not given new requests, the next one opens a fresh connection,
    /// and the old one closes once its last stream ends.
    pub(crate) fn forget_h2(&self) {
        if self.protocol != Protocol::Http1 {
            self.set_h2_handle(None);
        }
    }

    /// Sends `request` (its headers already prepared) for `path` to this target and waits
    /// for the response head.
    pub(crate) async fn send(
        self: &Arc<Self>,
        connector: &Connector,
        mut request: Request<WatchedBody>,
        path: &PathAndQuery,
    ) -> Result<(Response<Incoming>, Option<Box<H1>>), SendError> {
        if !self.aim(&mut request, path, Version::HTTP_11) {
            return Err(SendError::Path);
        }
        if self.protocol != Protocol::Http1
            && let Some(mut handle) = self.h2_handle()
        {
            self.aim(&mut request, path, Version::HTTP_2);
            match handle.try_send_request(request).await {
                Ok(response) => return Ok((response, None)),
                Err(mut error) => match error.take_message() {
                    // The connection was gone before the request went out.
                    Some(unsent) => {
                        self.set_h2_handle(None);
                        request = unsent;
                        self.aim(&mut request, path, Version::HTTP_11);
                    }
                    None => return Err(SendError::Failed(error.into_error())),
                },
            }
        }
        if self.protocol != Protocol::H2c {
            while let Some(connection) =
                poll_fn(|context| Poll::Ready(self.checkout(context))).await
            {
                match exchange_h1(connection, request).await {
                    Ok(done) => return Ok(done),
                    // Closed while idle: nothing was sent, so the next connection may have it.
                    Err((Some(unsent), _)) => request = unsent,
                    Err((None, error)) => return Err(SendError::Failed(error)),
                }
            }
        }
        // A new connection: its connect, TLS and handshake futures are large, and kept out
        // of the future of every request that reuses a connection.
        Box::pin(self.send_on_new_connection(connector, request, path)).await
    }

    /// [`Target::send`] on a connection opened for it.
    async fn send_on_new_connection(
        self: &Arc<Self>,
        connector: &Connector,
        mut request: Request<WatchedBody>,
        path: &PathAndQuery,
    ) -> Result<(Response<Incoming>, Option<Box<H1>>), SendError> {
        let stream = match connector.connect(self, false).await {
            Ok(stream) => stream,
            Err(error) => return Err(SendError::Connect(error, Box::new(request))),
        };
        if self.protocol == Protocol::H2c || stream.connected().is_negotiated_h2() {
            let (mut handle, connection) =
                match h2_builder().handshake::<_, WatchedBody>(stream).await {
                    Ok(handshake) => handshake,
                    Err(error) => return Err(SendError::Connect(error.into(), Box::new(request))),
                };
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(error = %error, "upstream HTTP/2 connection ended");
                }
            });
            self.set_h2_handle(Some(handle.clone()));
            self.aim(&mut request, path, Version::HTTP_2);
            return match handle.try_send_request(request).await {
                Ok(response) => Ok((response, None)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) => Err(SendError::Connect(
                        error.into_error().into(),
                        Box::new(unsent),
                    )),
                    None => Err(SendError::Failed(error.into_error())),
                },
            };
        }
        let (send, connection) = match http1::Builder::new()
            .handshake::<_, WatchedBody>(stream)
            .await
        {
            Ok(handshake) => handshake,
            Err(error) => return Err(SendError::Connect(error.into(), Box::new(request))),
        };
        let connection = Box::new(H1 {
            send,
            connection: Some(connection),
        });
        match exchange_h1(connection, request).await {
            Ok(done) => Ok(done),
            Err((Some(unsent), error)) => Err(SendError::Connect(error.into(), Box::new(unsent))),
            Err((None, error)) => Err(SendError::Failed(error)),
        }
    }
}

/// How often an HTTP/2 connection to a target is pinged, and how long a ping may go
/// unanswered before the connection is closed as dead.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// HTTP/2 to a target: pinged while open, idle or not, so a stalled connection is closed
/// (and replaced by the next request) rather than shared forever.
fn h2_builder() -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    builder
}

/// Drops the connections idle for longer than [`IDLE_TIMEOUT`]: the oldest are at the
/// front, so each is looked at once (amortised O(1) per checkin and checkout). Dropping
/// one closes it.
fn expire<T>(idle: &mut VecDeque<(Instant, T)>, now: Instant) {
    while idle
        .front()
        .is_some_and(|(since, _)| now.saturating_duration_since(*since) > IDLE_TIMEOUT)
    {
        idle.pop_front();
    }
}

/// Why a request did not get a response head from a target.
pub(crate) enum SendError {
    /// Nothing of the request reached the target (connect or handshake failure); here it is
    /// back, to send elsewhere.
    Connect(BoxError, Box<Request<WatchedBody>>),
    /// The exchange failed after the request was handed to the connection.
    Failed(hyper::Error),
    /// The base path and the request's path make no valid target.
    Path,
}

/// Sends on an HTTP/1.1 connection, polling the connection in this task until the response
/// head arrives. An error with the request means none of it was written.
async fn exchange_h1(
    mut connection: Box<H1>,
    request: Request<WatchedBody>,
) -> Result<(Response<Incoming>, Option<Box<H1>>), (Option<Request<WatchedBody>>, hyper::Error)> {
    let mut sent = pin!(connection.send.try_send_request(request));
    let result = poll_fn(|context| {
        connection.drive(context);
        sent.as_mut().poll(context)
    })
    .await;
    match result {
        Ok(response) => Ok((response, Some(connection))),
        Err(mut error) => {
            let unsent = error.take_message();
            Err((unsent, error.into_error()))
        }
    }
}

/// An HTTP/1.1 connection and its handle.
pub(crate) struct H1 {
    send: http1::SendRequest<WatchedBody>,
    /// `None` once the connection has ended.
    connection: Option<http1::Connection<Stream, WatchedBody>>,
}

impl H1 {
    /// Lets the connection read and write; `false` once it has ended.
    fn drive(&mut self, context: &mut Context<'_>) -> bool {
        let Some(connection) = self.connection.as_mut() else {
            return false;
        };
        match Pin::new(connection).poll(context) {
            Poll::Pending => true,
            Poll::Ready(result) => {
                if let Err(error) = result {
                    tracing::debug!(error = %error, "upstream connection ended");
                }
                self.connection = None;
                false
            }
        }
    }

    /// Whether the connection is open and can take a request now.
    fn reusable(&mut self, context: &mut Context<'_>) -> bool {
        self.drive(context) && self.send.is_ready()
    }
}

/// Counts a request against its target's outstanding requests until dropped.
pub(crate) struct InFlight(Arc<Target>);

impl InFlight {
    pub(crate) fn new(target: &Arc<Target>) -> Self {
        target.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(target))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body from a target. Over HTTP/1.1 it owns the connection, drives it while it
/// streams, and gives it back to the target's idle stack once the body has ended.
pub(crate) struct UpstreamBody {
    body: Incoming,
    connection: Option<Box<H1>>,
    in_flight: InFlight,
    ended: bool,
}

impl UpstreamBody {
    pub(crate) fn new(body: Incoming, connection: Option<Box<H1>>, in_flight: InFlight) -> Self {
        Self {
            body,
            connection,
            in_flight,
            ended: false,
        }
    }
}

impl hyper::body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(connection) = this.connection.as_mut() {
            connection.drive(context);
        }
        let poll = Pin::new(&mut this.body).poll_frame(context);
        match &poll {
            Poll::Ready(None) => {
                this.ended = true;
                if let Some(connection) = this.connection.take() {
                    this.in_flight.0.release(connection, context);
                }
            }
            Poll::Ready(Some(Err(_))) => this.connection = None,
            _ => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body that ended (or was empty, and so never read) leaves its connection
        // ready for the next request; one dropped half-way closes it.
        if let Some(connection) = self.connection.take()
            && (self.ended || hyper::body::Body::is_end_stream(&self.body))
        {
            let mut context = Context::from_waker(Waker::noop());
            self.in_flight.0.release(connection, &mut context);
        }
    }
}

/// Opens connections to targets: TCP, then TLS for `https://` with the webpki roots.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    /// ALPN offers `h2` and `http/1.1`.
    any: HttpsConnector<HttpConnector>,
    /// ALPN offers `http/1.1` only (WebSocket tunnels).
    http1: HttpsConnector<HttpConnector>,
}

impl Connector {
    pub(crate) fn new() -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let builder = || {
            HttpsConnectorBuilder::new()
                .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
                .expect("ring's default provider supports rustls' default protocol versions")
                .https_or_http()
                .enable_http1()
        };
        Self {
            any: builder().enable_http2().wrap_connector(tcp.clone()),
            http1: builder().wrap_connector(tcp),
        }
    }

    /// A new connection to `target`; over TLS with ALPN `http/1.1` only when `http1_only`.
    pub(crate) async fn connect(
        &self,
        target: &Target,
        http1_only: bool,
    ) -> Result<Stream, BoxError> {
        let connector = if http1_only { &self.http1 } else { &self.any };
        tower::ServiceExt::oneshot(connector.clone(), target.connect_uri.clone()).await
    }
}

/// Opens a new HTTP/1.1 connection to `target` for a WebSocket handshake and sends it;
/// the connection is handed over to hyper's upgrade when the backend answers 101.
pub(crate) async fn upgrade(
    connector: &Connector,
    target: &Target,
    mut request: Request<http_body_util::Empty<Bytes>>,
    path: &PathAndQuery,
) -> Result<Response<Incoming>, BoxError> {
    if !target.aim(&mut request, path, Version::HTTP_11) {
        return Err("the request path is not valid under the base path".into());
    }
    let stream = connector.connect(target, true).await?;
    let (mut send, connection) = http1::Builder::new().handshake(stream).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(error = %error, "upstream WebSocket handshake connection ended");
        }
    });
    Ok(send.send_request(request).await?)
}

/// One health check of `target`: `GET path` on a new connection, answered 2xx or 3xx
/// within `timeout`.
pub(crate) async fn check(
    connector: &Connector,
    target: &Target,
    path: &PathAndQuery,
    timeout: Duration,
) -> Result<(), String> {
    let attempt = async {
        let stream = connector
            .connect(target, false)
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let empty = http_body_util::Empty::<Bytes>::new();
        let status = if target.protocol == Protocol::H2c || stream.connected().is_negotiated_h2() {
            let (mut send, connection) = http2::Builder::new(TokioExecutor::new())
                .handshake(stream)
                .await
                .map_err(|error| error.to_string())?;
            let driver = tokio::spawn(connection);
            let mut request = Request::new(empty);
            target.aim(&mut request, path, Version::HTTP_2);
            let status = send.send_request(request).await.map(|r| r.status());
            driver.abort();
            status
        } else {
            let (mut send, connection) = http1::Builder::new()
                .handshake(stream)
                .await
                .map_err(|error| error.to_string())?;
            let driver = tokio::spawn(connection);
            let mut request = Request::new(empty);
            target.aim(&mut request, path, Version::HTTP_11);
            request
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            let status = send.send_request(request).await.map(|r| r.status());
            driver.abort();
            status
        }
        .map_err(|error| error.to_string())?;
        if status.is_success() || status.is_redirection() {
            Ok(())
        } else {
            Err(format!("answered {}", status.as_u16()))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_idle_past_the_timeout_are_dropped_oldest_first() {
        let start = Instant::now();
        let mut idle: VecDeque<(Instant, u32)> = VecDeque::new();
        idle.push_back((start, 1));
        idle.push_back((start + Duration::from_secs(30), 2));
        idle.push_back((start + Duration::from_secs(59), 3));
        expire(&mut idle, start + IDLE_TIMEOUT);
        assert_eq!(idle.len(), 3, "none idle for more than 60 s yet");
        expire(&mut idle, start + Duration::from_secs(91));
        assert_eq!(
            idle.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            [3],
            "the two idle for more than 60 s are gone, the warm one stays"
        );
        expire(&mut idle, start + Duration::from_secs(200));
        assert!(idle.is_empty());
    }

    #[test]
    fn the_target_uri_keeps_the_path_and_query_under_the_base_path() {
        let path: PathAndQuery = "/orders/7?side=buy".parse().unwrap();
        let target = |url: &str| Target::new(&url.parse().unwrap(), Settings::default());
        assert_eq!(
            target("http://127.0.0.1:9000")
                .uri_for(&path, Version::HTTP_11)
                .unwrap(),
            "/orders/7?side=buy"
        );
        assert_eq!(
            target("http://127.0.0.1:9000/api/")
                .uri_for(&path, Version::HTTP_11)
                .unwrap(),
            "/api/orders/7?side=buy"
        );
        assert_eq!(
            target("h2c://127.0.0.1:9000/api")
                .uri_for(&path, Version::HTTP_2)
                .unwrap(),
            "http://127.0.0.1:9000/api/orders/7?side=buy"
        );
        assert_eq!(
            target("https://a.example")
                .uri_for(&path, Version::HTTP_2)
                .unwrap(),
            "https://a.example/orders/7?side=buy"
        );
    }
}
