//! Upstreams with several targets, health checks, retries, HTTP/2 backends and WebSocket
//! tunnels (SPEC §3).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::response::IntoResponse;
use futures::{SinkExt, StreamExt};
use http::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

use crate::backend;
use crate::helpers::{Backend, Setup, TestApp, assert_error, spawn_app_with};

/// Routes `/app/*` (anonymous) to upstream `app` with `upstream` as its table body.
fn setup(upstream: &str) -> Setup {
    Setup::toml(&format!(
        "[[routes]]\npath = \"/app/*\"\nupstream = \"app\"\nauth = false\n\n\
         [upstreams.app]\n{upstream}\n"
    ))
}

fn targets(urls: &[&str]) -> String {
    let list: Vec<String> = urls.iter().map(|url| format!("\"{url}\"")).collect();
    format!("targets = [{}]", list.join(", "))
}

/// An address where nothing listens: connecting is refused.
async fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    address
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.client.get(app.url(path)).send().await.unwrap()
}

async fn sqlite_app(setup: Setup) -> TestApp {
    spawn_app_with(Backend::Sqlite, setup)
        .await
        .expect("SQLite is always there")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_spread_over_every_target() {
    let first = backend::start().await;
    let second = backend::start().await;
    let app = sqlite_app(setup(&targets(&[&first.address, &second.address]))).await;
    for _ in 0..20 {
        assert_eq!(get(&app, "/app/x").await.status(), 200);
    }
    assert_eq!(first.hits() + second.hits(), 20);
    assert!(
        first.hits() >= 5 && second.hits() >= 5,
        "both targets take requests: {} and {}",
        first.hits(),
        second.hits()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_target_with_fewer_outstanding_requests_gets_the_next() {
    let slow = backend::start().await;
    let fast = backend::start().await;
    let app = Arc::new(
        sqlite_app(setup(&format!(
            "{}\n\n[[routes]]\npath = \"/hang\"\nupstream = \"app\"\nauth = false\n",
            targets(&[&slow.address, &fast.address])
        )))
        .await,
    );
    // One request hangs on whichever target took it; while it is outstanding, every
    // request after it goes to the other one.
    let hanging = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let _ = app.client.get(app.url("/hang")).send().await;
        })
    };
    // Until a target has the hanging request.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while slow.hits() + fast.hits() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (busy, idle) = if slow.hits() == 1 {
        (&slow, &fast)
    } else {
        (&fast, &slow)
    };
    assert_eq!(busy.hits(), 1);
    assert_eq!(idle.hits(), 0);
    for _ in 0..10 {
        assert_eq!(get(&app, "/app/x").await.status(), 200);
    }
    assert_eq!(busy.hits(), 1, "the busy target got none of the 10");
    assert_eq!(idle.hits(), 10);
    hanging.abort();
}

/// A backend that reads a request head, counts it and closes the connection unanswered:
/// the request reached it, so it must never be sent again.
async fn slammer() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buffer = [0u8; 1024];
                while !head.windows(4).any(|window| window == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => return,
                        Ok(read) => head.extend_from_slice(&buffer[..read]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let _ = stream.shutdown().await;
            });
        }
    });
    (address, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_target_is_retried_elsewhere_for_a_get_and_never_for_a_post() {
    let dead = dead_address().await;
    let live = backend::start().await;
    // A breaker that never opens, so the dead target keeps being picked.
    let app = sqlite_app(setup(&format!(
        "{}\nretries = 1\n\
         circuit_breaker = {{ failures = 1000, window = \"30s\", open_for = \"30s\" }}",
        targets(&[&dead, &live.address])
    )))
    .await;
    for _ in 0..10 {
        assert_eq!(
            get(&app, "/app/x").await.status(),
            200,
            "a GET whose target refused the connection went to the other"
        );
    }
    assert_eq!(live.hits(), 10);
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE] {
        let response = app
            .client
            .request(method.clone(), app.url("/app/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method} without a body is retried");
    }

    let before = live.hits();
    let mut answered = 0;
    let mut refused = 0;
    for n in 0..10 {
        let response = app
            .client
            .post(app.url("/app/orders"))
            .json(&json!({ "n": n }))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => answered += 1,
            502 => {
                refused += 1;
                assert_error(response, 502, "bad_gateway").await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "a POST is never retried on another target");
    assert_eq!(
        live.hits() - before,
        answered,
        "every POST the live target saw, it saw once"
    );
    // A PUT with a body is not retried either.
    let mut put_refused = 0;
    for _ in 0..6 {
        let response = app
            .client
            .put(app.url("/app/x"))
            .body("payload")
            .send()
            .await
            .unwrap();
        if response.status() == 502 {
            put_refused += 1;
        }
    }
    assert!(put_refused > 0, "a PUT with a body is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_reached_a_target_is_never_sent_again() {
    let (slammer, received) = slammer().await;
    let live = backend::start().await;
    let app = sqlite_app(setup(&format!(
        "{}\nretries = 3\n\
         circuit_breaker = {{ failures = 1000, window = \"30s\", open_for = \"30s\" }}",
        targets(&[&slammer, &live.address])
    )))
    .await;
    let mut failed = 0;
    for _ in 0..10 {
        let response = get(&app, "/app/x").await;
        match response.status().as_u16() {
            200 => {}
            502 => failed += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(failed > 0, "the slammer was picked");
    assert_eq!(
        received.load(Ordering::SeqCst),
        failed,
        "each request that reached the slammer was answered 502, not retried"
    );
    assert_eq!(live.hits(), 10 - failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_circuit_opens_only_when_every_target_is_ejected() {
    let first = dead_address().await;
    let second = dead_address().await;
    let app = sqlite_app(setup(&format!(
        "{}\ncircuit_breaker = {{ failures = 2, window = \"30s\", open_for = \"30s\" }}",
        targets(&[&first, &second])
    )))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(get(&app, "/app/x").await.status().as_u16());
    }
    assert_eq!(&statuses[..4], &[502, 502, 502, 502], "{statuses:?}");
    assert_eq!(&statuses[4..], &[503, 503], "{statuses:?}");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("rampart_circuit_breaker_state{upstream=\"app\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rampart_circuit_breaker_opens_total{upstream=\"app\"} 1"),
        "{metrics}"
    );
    assert!(
        !metrics.contains("127.0.0.1"),
        "no target address in any label"
    );
}

/// A backend whose `/healthz` answers 200 or 503 as the test says; everything else 200.
#[derive(Clone, Default)]
struct Checked {
    healthy: Arc<AtomicBool>,
    hits: Arc<AtomicU64>,
    address: String,
}

async fn checked_backend() -> Checked {
    async fn health(State(backend): State<Checked>) -> StatusCode {
        if backend.healthy.load(Ordering::SeqCst) {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }
    async fn other(State(backend): State<Checked>) -> &'static str {
        backend.hits.fetch_add(1, Ordering::SeqCst);
        "ok"
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = Checked {
        healthy: Arc::new(AtomicBool::new(true)),
        address: format!("http://{}", listener.local_addr().unwrap()),
        ..Checked::default()
    };
    let app = Router::new()
        .route("/healthz", axum::routing::get(health))
        .fallback(other)
        .with_state(backend.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    backend
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_failing_its_health_check_is_taken_out_until_it_passes() {
    let first = checked_backend().await;
    let second = checked_backend().await;
    let app = sqlite_app(setup(&format!(
        "{}\nhealth_check = {{ path = \"/healthz\", interval = \"200ms\" }}",
        targets(&[&first.address, &second.address])
    )))
    .await;
    // The checks run every 200 ms of real time, on the gateway's own timer.
    let settle = || tokio::time::sleep(Duration::from_millis(800));
    first.healthy.store(false, Ordering::SeqCst);
    settle().await;
    let before = first.hits.load(Ordering::SeqCst);
    for _ in 0..10 {
        assert_eq!(get(&app, "/app/x").await.status(), 200);
    }
    assert_eq!(
        first.hits.load(Ordering::SeqCst),
        before,
        "a target failing its check takes nothing"
    );

    first.healthy.store(true, Ordering::SeqCst);
    settle().await;
    for _ in 0..10 {
        assert_eq!(get(&app, "/app/x").await.status(), 200);
    }
    assert!(
        first.hits.load(Ordering::SeqCst) > before,
        "it is back once its check passes"
    );

    first.healthy.store(false, Ordering::SeqCst);
    second.healthy.store(false, Ordering::SeqCst);
    settle().await;
    let response = get(&app, "/app/x").await;
    assert!(response.headers().contains_key("retry-after"));
    assert_error(response, 503, "service_unavailable").await;
    // Every target out by its health check shows as an open circuit, as an ejection would.
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("rampart_circuit_breaker_state{upstream=\"app\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rampart_circuit_breaker_opens_total{upstream=\"app\"} 1"),
        "{metrics}"
    );
    first.healthy.store(true, Ordering::SeqCst);
    settle().await;
    assert_eq!(get(&app, "/app/x").await.status(), 200);
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("rampart_circuit_breaker_state{upstream=\"app\"} 0"),
        "{metrics}"
    );
}

/// An HTTP/2-only backend (no HTTP/1.1 at all) that echoes the version, method and body.
async fn h2c_backend() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&connections);
    let app = Router::new().fallback(|request: Request| async move {
        let version = format!("{:?}", request.version());
        let method = request.method().to_string();
        let host = request
            .headers()
            .get("x-forwarded-host")
            .map(|value| value.to_str().unwrap_or("").to_owned());
        let body = axum::body::to_bytes(request.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        axum::Json(json!({
            "version": version,
            "method": method,
            "body_length": body.len(),
            "forwarded_host": host,
        }))
        .into_response()
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("h2c://{address}"), connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upstream_is_spoken_to_over_http2() {
    let (address, connections) = h2c_backend().await;
    let app = sqlite_app(setup(&format!("url = \"{address}\""))).await;
    let response = get(&app, "/app/x").await;
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["version"], "HTTP/2.0", "{echo}");
    // Many at once share one connection; a streamed body arrives whole.
    let mut tasks = Vec::new();
    let app = Arc::new(app);
    for n in 0..20 {
        let app = Arc::clone(&app);
        tasks.push(tokio::spawn(async move {
            let response = app
                .client
                .post(app.url("/app/orders"))
                .body(vec![b'x'; 1000 + n])
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let echo: Value = response.json().await.unwrap();
            assert_eq!(echo["body_length"], 1000 + n, "{echo}");
            assert_eq!(echo["method"], "POST");
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one multiplexed connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_h2c_connection_is_replaced_after_a_timeout() {
    // The first connection takes requests and never answers; later ones answer at once.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let stalled = count.fetch_add(1, Ordering::SeqCst) == 0;
            let app = Router::new().fallback(move || async move {
                if stalled {
                    std::future::pending::<()>().await;
                }
                "ok"
            });
            let service = hyper_util::service::TowerToHyperService::new(app);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let app = sqlite_app(setup(&format!(
        "url = \"h2c://{address}\"\ntimeout = \"500ms\""
    )))
    .await;
    assert_error(get(&app, "/app/x").await, 504, "gateway_timeout").await;
    let response = get(&app, "/app/x").await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_to_a_target_are_reused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&connections);
    let echo = Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let service = hyper_util::service::TowerToHyperService::new(echo.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let app = sqlite_app(setup(&format!("url = \"{address}\""))).await;
    for _ in 0..20 {
        let response = get(&app, "/app/x").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "ok");
        // HEAD and empty answers leave the connection reusable too.
        let response = app.client.head(app.url("/app/x")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "sequential requests reuse one connection"
    );
}

/// A WebSocket backend that echoes every message and reports the headers it was sent.
// The handshake callback's error type is tungstenite's.
#[allow(clippy::result_large_err)]
async fn websocket_backend() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                let callback =
                    |request: &tungstenite::handshake::server::Request,
                     response: tungstenite::handshake::server::Response| {
                        let user = request
                            .headers()
                            .get("x-rampart-user-id")
                            .and_then(|value| value.to_str().ok())
                            .unwrap_or("-");
                        let auth = request.headers().contains_key("authorization");
                        log.lock().unwrap().push(format!("user={user} auth={auth}"));
                        Ok(response)
                    };
                let Ok(mut socket) = tokio_tungstenite::accept_hdr_async(stream, callback).await
                else {
                    return;
                };
                while let Some(Ok(message)) = socket.next().await {
                    if message.is_text() || message.is_binary() {
                        if socket.send(message).await.is_err() {
                            return;
                        }
                    } else if message.is_close() {
                        return;
                    }
                }
            });
        }
    });
    (address, seen)
}

fn websocket_setup(backend: &str) -> Setup {
    Setup::toml(&format!(
        "[[routes]]\npath = \"/stream\"\nmethods = [\"GET\"]\nupstream = \"ws\"\nwebsocket = true\n\n\
         [[routes]]\npath = \"/plain\"\nmethods = [\"GET\"]\nupstream = \"ws\"\n\n\
         [upstreams.ws]\nurl = \"{backend}\"\n"
    ))
}

async fn connect(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    tungstenite::Error,
> {
    let url = app.url(path).replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().unwrap();
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

fn refused_with(result: Result<impl Sized, tungstenite::Error>) -> u16 {
    match result {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("not an HTTP refusal: {other}"),
        Ok(_) => panic!("the handshake succeeded"),
    }
}

async fn a_websocket_is_tunnelled_for_its_caller_until_the_login_is_revoked(backend: Backend) {
    let (address, seen) = websocket_backend().await;
    let Some(app) = spawn_app_with(backend, websocket_setup(&address)).await else {
        return;
    };
    assert_eq!(refused_with(connect(&app, "/stream", None).await), 401);
    assert_eq!(
        refused_with(connect(&app, "/stream", Some("not-a-token")).await),
        401
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "no refused handshake reached the backend"
    );

    let session = app.user("streamer").await;
    let mut socket = connect(&app, "/stream", Some(&session.access_token))
        .await
        .expect("an authenticated handshake is tunnelled");
    for text in ["quote INFY", "order 17 filled"] {
        socket.send(Message::text(text)).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .expect("an echo")
            .expect("open")
            .unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), text);
    }
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [format!("user={} auth=false", session.user_id)],
        "the backend gets the identity, never the credential"
    );

    let logout = app
        .send_with(
            reqwest::Method::POST,
            "/auth/logout",
            &session.access_token,
            None,
        )
        .await;
    assert!(logout.status().is_success(), "{}", logout.status());
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(message)) if message.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the tunnel closes once the login is revoked"
    );
    assert_eq!(
        refused_with(connect(&app, "/stream", Some(&session.access_token)).await),
        401,
        "and the revoked token opens no new one"
    );
}

/// Waits (at most `within`) for the socket to be closed; `false` if it stays open.
async fn closes_within(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    within: Duration,
) -> bool {
    tokio::time::timeout(within, async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(message)) if message.is_close() => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tunnels_are_limited_per_client_and_closed_when_idle() {
    let (address, seen) = websocket_backend().await;
    let app = sqlite_app(
        Setup::toml(&format!(
            "[[routes]]\npath = \"/stream\"\nupstream = \"ws\"\nwebsocket = true\nauth = false\n\n\
             [upstreams.ws]\nurl = \"{address}\"\n"
        ))
        .env("RAMPART_SERVER__IDLE_TIMEOUT", "1s")
        .env("RAMPART_SERVER__MAX_CONNECTIONS_PER_IP", "2"),
    )
    .await;
    let mut busy = connect(&app, "/stream", None)
        .await
        .expect("a first tunnel");
    let mut quiet = connect(&app, "/stream", None)
        .await
        .expect("a second tunnel");
    assert_eq!(refused_with(connect(&app, "/stream", None).await), 503);
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "the refused handshake never reached the backend"
    );
    // A tunnel with traffic outlives the idle timeout; one without is closed by it.
    for n in 0..8 {
        let text = format!("tick {n}");
        busy.send(Message::text(text.clone())).await.unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), busy.next())
            .await
            .expect("an echo")
            .expect("open")
            .unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), text);
        // The idle timeout is the tunnel's own real-time timer.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(
        closes_within(&mut quiet, Duration::from_secs(1)).await,
        "the idle tunnel is closed"
    );
    // Its place is free again.
    let _third = connect(&app, "/stream", None)
        .await
        .expect("a closed tunnel no longer counts");
    assert!(
        closes_within(&mut busy, Duration::from_secs(3)).await,
        "a tunnel that falls quiet is closed too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_opened_with_an_api_key_closes_when_the_key_is_deleted() {
    let (address, seen) = websocket_backend().await;
    let app = sqlite_app(websocket_setup(&address)).await;
    let session = app.user("keyed").await;
    let key = crate::api_keys::create_key(&app, &session, "stream").await;
    let open = || async {
        let url = app.url("/stream").replacen("http://", "ws://", 1);
        let mut request = url.into_client_request().unwrap();
        request
            .headers_mut()
            .insert("x-api-key", key.key.parse().unwrap());
        tokio_tungstenite::connect_async(request)
            .await
            .map(|(socket, _)| socket)
    };
    let mut socket = open().await.expect("a key opens a tunnel");
    assert!(
        !closes_within(&mut socket, Duration::from_millis(2500)).await,
        "the tunnel stays open while the key holds"
    );
    assert_eq!(seen.lock().unwrap().len(), 1);
    let deleted = app
        .send_with(
            reqwest::Method::DELETE,
            &format!("/users/me/api-keys/{}", key.id),
            &session.access_token,
            None,
        )
        .await;
    assert!(deleted.status().is_success(), "{}", deleted.status());
    assert!(
        closes_within(&mut socket, Duration::from_secs(5)).await,
        "the tunnel closes once its key is deleted"
    );
    assert_eq!(refused_with(open().await), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_opened_with_an_access_token_closes_when_it_expires() {
    let (address, _seen) = websocket_backend().await;
    let app = sqlite_app(websocket_setup(&address)).await;
    let session = app.user("brief").await;
    let mut socket = connect(&app, "/stream", Some(&session.access_token))
        .await
        .expect("a fresh token opens a tunnel");
    assert!(
        !closes_within(&mut socket, Duration::from_millis(1500)).await,
        "the tunnel stays open while the token holds"
    );
    // Past the token's lifetime (an hour) and the verification leeway.
    app.clock.advance(Duration::from_secs(3600 + 60));
    assert!(
        closes_within(&mut socket, Duration::from_secs(5)).await,
        "the tunnel closes once its access token has expired"
    );
}

async fn an_upgrade_on_a_route_without_websocket_is_not_tunnelled(backend: Backend) {
    let upstream = backend::start().await;
    let Some(app) = spawn_app_with(backend, websocket_setup(&upstream.address)).await else {
        return;
    };
    let session = app.user("plain").await;
    let status = refused_with(connect(&app, "/plain", Some(&session.access_token)).await);
    assert_eq!(status, 200, "answered as a plain GET, not switched");
    let response = app
        .client
        .get(app.url("/plain"))
        .bearer_auth(&session.access_token)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-version", "13")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.unwrap();
    let headers = echo["headers"].as_object().unwrap();
    assert!(!headers.contains_key("upgrade"), "{echo}");
    assert!(
        !headers
            .get("connection")
            .is_some_and(|value| value.to_string().to_ascii_lowercase().contains("upgrade")),
        "{echo}"
    );
}

crate::on_session_stores!(a_websocket_is_tunnelled_for_its_caller_until_the_login_is_revoked);

mod plain {
    crate::on_databases!(an_upgrade_on_a_route_without_websocket_is_not_tunnelled);
    use super::an_upgrade_on_a_route_without_websocket_is_not_tunnelled;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_keys_are_checked_at_start_up() {
    use rampart::config::{Config, Sources};
    let load = |upstream: &str| {
        Config::load(&Sources {
            file_path: None,
            file: Some(format!(
                "[[routes]]\npath = \"/app\"\nupstream = \"app\"\n[upstreams.app]\n{upstream}\n"
            )),
            env: Default::default(),
            data_dir: Some(std::env::temp_dir()),
        })
        .err()
        .map(|error| error.to_string())
    };
    for (upstream, key) in [
        ("", "upstreams.app.url"),
        (
            "url = \"http://a\"\ntargets = [\"http://b\"]",
            "upstreams.app.targets",
        ),
        ("targets = []", "upstreams.app.targets"),
        ("targets = [\"ftp://a\"]", "upstreams.app.targets"),
        (
            "targets = [\"http://a:1\", \"http://a:1\"]",
            "upstreams.app.targets",
        ),
        ("url = \"http://a\"\nretries = 99", "upstreams.app.retries"),
        (
            "url = \"http://a\"\nhealth_check = { path = \"healthz\" }",
            "upstreams.app.health_check.path",
        ),
        (
            "url = \"http://a\"\nhealth_check = { path = \"/healthz\", interval = \"soon\" }",
            "upstreams.app.health_check.interval",
        ),
        (
            "url = \"http://a\"\nhealth_check = { path = \"/h\", every = \"1s\" }",
            "every",
        ),
    ] {
        let error = load(upstream).unwrap_or_else(|| panic!("accepted: {upstream}"));
        assert!(error.contains(key), "{upstream}: {error}");
    }
    // User information in a target would be sent as the Host and logged: refused, and the
    // credential is not repeated in the message.
    for upstream in [
        "url = \"http://user:s3cret@127.0.0.1:9000\"",
        "targets = [\"http://127.0.0.1:9001\", \"https://user:s3cret@b.example/api\"]",
        "url = \"h2c://:s3cret@127.0.0.1:9000\"",
        "url = \"http://s3cret@127.0.0.1:9000\"",
        "url = \"ftp://user:s3cret@127.0.0.1:9000\"",
    ] {
        let error = load(upstream).unwrap_or_else(|| panic!("accepted: {upstream}"));
        assert!(error.contains("upstreams.app."), "{upstream}: {error}");
        assert!(!error.contains("s3cret"), "{upstream}: {error}");
    }
    // A WebSocket route needs HTTP/1.1 to its backend, which an h2c:// target does not speak.
    let websocket = |upstream: &str| {
        Config::load(&Sources {
            file_path: None,
            file: Some(format!(
                "[[routes]]\npath = \"/stream\"\nupstream = \"ws\"\nwebsocket = true\n\
                 [upstreams.ws]\n{upstream}\n"
            )),
            env: Default::default(),
            data_dir: Some(std::env::temp_dir()),
        })
        .err()
        .map(|error| error.to_string())
    };
    for upstream in [
        "url = \"h2c://127.0.0.1:9000\"",
        "targets = [\"http://127.0.0.1:9001\", \"h2c://127.0.0.1:9000\"]",
    ] {
        let error = websocket(upstream).unwrap_or_else(|| panic!("accepted: {upstream}"));
        assert!(error.contains("routes[0] (/stream).websocket"), "{error}");
        assert!(error.contains("h2c"), "{error}");
    }
    assert_eq!(websocket("url = \"http://127.0.0.1:9000\""), None);
    for upstream in [
        "url = \"h2c://127.0.0.1:9000\"",
        "targets = [\"http://127.0.0.1:9000\", \"https://b.example/api\"]\nretries = 2\n\
         health_check = { path = \"/healthz\", interval = \"5s\" }",
    ] {
        assert_eq!(load(upstream), None, "{upstream}");
    }
}
