//! The listener, from the outside: raw TCP and TLS clients against slow heads, idle
//! keep-alives, the connection cap, oversized heads, shutdown and certificate reloads.
//!
//! The listener does not depend on the database, so these run on SQLite only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart::app::Application;
use rampart::config::{Config, Sources};
use rampart::server::Tls;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

struct Server {
    address: SocketAddr,
    tls: Option<Arc<Tls>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn config(server: &str) -> anyhow::Result<Config> {
    config_on("127.0.0.1:0", server)
}

fn config_on(listen: &str, server: &str) -> anyhow::Result<Config> {
    let data_dir = std::env::temp_dir().join(format!("rampart-test-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&data_dir)?;
    let env = HashMap::from([
        ("RAMPART_SERVER__LISTEN".to_owned(), listen.to_owned()),
        (
            "RAMPART_DATABASE__URL".to_owned(),
            format!("sqlite://{}", data_dir.join("rampart.db").display()),
        ),
    ]);
    Ok(Config::load(&Sources {
        file_path: None,
        file: Some(format!("[server]\n{server}\n")),
        env,
        data_dir: Some(data_dir),
    })?)
}

async fn serve(server: &str) -> Server {
    serve_on("127.0.0.1:0", server).await
}

async fn serve_on(listen: &str, server: &str) -> Server {
    let app = Application::build(config_on(listen, server).expect("valid configuration"))
        .await
        .expect("gateway starts");
    let address = app.local_addr().expect("bound");
    let tls = app.tls();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let done = tokio::spawn(async move {
        app.run_until(async move {
            let _ = stopped.await;
        })
        .await
        .expect("served");
    });
    Server {
        address,
        tls,
        stop: Some(stop),
        done,
    }
}

/// A response read off a raw connection.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// Reads one HTTP/1.1 response (with Content-Length); `None` if the connection closed first.
async fn read_answer<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Answer> {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
        }
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: HashMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|length| length.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end..].to_vec();
    while body.len() < length {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(read) => body.extend_from_slice(&chunk[..read]),
        }
    }
    Some(Answer {
        status,
        headers,
        body,
    })
}

/// Waits for the server to close the connection; the time it took, or `None` if it stayed
/// open for `patience`.
async fn closed_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    patience: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    tokio::time::timeout(patience, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
    .map(|()| started.elapsed())
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: gateway\r\n\r\n")
}

async fn connect(server: &Server) -> TcpStream {
    TcpStream::connect(server.address).await.expect("connect")
}

const SECURITY_HEADERS: [&str; 5] = [
    "x-content-type-options",
    "x-frame-options",
    "referrer-policy",
    "x-xss-protection",
    "content-security-policy",
];

// ---------------------------------------------------------------------------------------
// Slow heads and idle connections

/// Sends `head` one byte every 100 ms; returns when the server closes the connection.
async fn trickle(stream: TcpStream, head: &'static [u8], patience: Duration) -> Option<Duration> {
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        for byte in head.iter().cycle() {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            // The slow client under test: a byte every 100 ms of real time.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let closed = closed_within(&mut reader, patience).await;
    writing.abort();
    closed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_is_cut_off_after_header_read_timeout() {
    let server = serve("header_read_timeout = \"600ms\"\nidle_timeout = \"30s\"").await;
    let head: &'static [u8] =
        b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    // The first request on a fresh connection.
    let closed = trickle(connect(&server).await, head, Duration::from_secs(5))
        .await
        .expect("a trickled head is cut off");
    assert!(closed >= Duration::from_millis(500), "{closed:?}");
    assert!(closed < Duration::from_millis(2000), "{closed:?}");

    // A connection that sends nothing at all.
    let mut silent = connect(&server).await;
    let closed = closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("a silent connection is cut off");
    assert!(closed >= Duration::from_millis(500), "{closed:?}");

    // A later request on a kept-alive connection: idle for longer than the head timeout
    // is fine, but once its head begins it must complete in time.
    let mut kept = connect(&server).await;
    kept.write_all(get("/healthz").as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut kept).await.expect("answered").status, 200);
    // The server's timeouts are hyper's timers on real time, against real sockets.
    tokio::time::sleep(Duration::from_millis(900)).await;
    kept.write_all(get("/healthz").as_bytes()).await.unwrap();
    assert_eq!(
        read_answer(&mut kept)
            .await
            .expect("still open after idling")
            .status,
        200
    );
    let closed = trickle(kept, head, Duration::from_secs(5))
        .await
        .expect("a trickled second head is cut off");
    assert!(closed < Duration::from_millis(2000), "{closed:?}");

    // The server still answers everyone else.
    let mut fresh = connect(&server).await;
    fresh.write_all(get("/healthz").as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut fresh).await.expect("answered").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_is_closed_after_idle_timeout() {
    let server = serve("header_read_timeout = \"300ms\"\nidle_timeout = \"1200ms\"").await;
    let mut stream = connect(&server).await;
    stream.write_all(get("/healthz").as_bytes()).await.unwrap();
    assert_eq!(
        read_answer(&mut stream).await.expect("answered").status,
        200
    );
    let closed = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive is closed");
    assert!(
        closed >= Duration::from_millis(1000),
        "held for idle_timeout, not header_read_timeout: {closed:?}"
    );
    assert!(closed < Duration::from_millis(3000), "{closed:?}");

    // HTTP/2 (h2c, prior knowledge): no open stream for idle_timeout ends the connection.
    let stream = connect(&server).await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    let started = Instant::now();
    let driver = tokio::spawn(connection);
    let response = sender
        .send_request(
            http::Request::get(format!("http://{}/healthz", server.address))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .expect("h2c answered");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    drop(response);
    tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("the idle HTTP/2 connection is closed")
        .unwrap()
        .ok();
    let held = started.elapsed();
    assert!(held >= Duration::from_millis(1000), "{held:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_h2c_connection_is_cut_off_like_an_http1_one() {
    let server = serve("header_read_timeout = \"500ms\"\nidle_timeout = \"30s\"").await;
    let mut stream = connect(&server).await;
    // The preface and nothing more.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let closed = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("cut off");
    assert!(closed < Duration::from_millis(2000), "{closed:?}");
}

// ---------------------------------------------------------------------------------------
// The connection cap

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_connections_new_ones_wait_and_none_is_cut_off_mid_request() {
    let server = serve("max_connections = 2").await;
    // A: a head half sent. B: a kept-alive connection that has been served.
    let mut first = connect(&server).await;
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n")
        .await
        .unwrap();
    let mut second = connect(&server).await;
    second.write_all(get("/healthz").as_bytes()).await.unwrap();
    assert_eq!(
        read_answer(&mut second).await.expect("answered").status,
        200
    );

    // C connects (the kernel's backlog takes it) but is not served.
    let mut third = connect(&server).await;
    third.write_all(get("/healthz").as_bytes()).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), read_answer(&mut third)).await;
    assert!(
        early.is_err(),
        "a third connection is not served: {early:?}"
    );

    // The two admitted connections are served to the end.
    first.write_all(b"\r\n").await.unwrap();
    assert_eq!(read_answer(&mut first).await.expect("answered").status, 200);
    second.write_all(get("/healthz").as_bytes()).await.unwrap();
    assert_eq!(
        read_answer(&mut second).await.expect("answered").status,
        200
    );

    // Once one closes, the waiting connection is served.
    drop(first);
    let answer = tokio::time::timeout(Duration::from_secs(3), read_answer(&mut third))
        .await
        .expect("served once a place is free")
        .expect("answered");
    assert_eq!(answer.status, 200);
}

// ---------------------------------------------------------------------------------------
// Oversized heads

/// A raw GET whose head is exactly `size` bytes, padded with `X-Pad` headers of at most
/// `chunk` bytes each.
fn head_of(size: usize, chunk: usize, request_id: Option<&str>) -> String {
    let mut head = String::from("GET /healthz HTTP/1.1\r\nHost: gateway\r\n");
    if let Some(id) = request_id {
        head.push_str(&format!("X-Request-Id: {id}\r\n"));
    }
    let mut index = 0;
    // Each padding line is "X-Pad-N: " + value + "\r\n".
    while head.len() + 2 < size {
        let name = format!("X-Pad-{index}: ");
        let room = size - 2 - head.len();
        if room < name.len() + 3 {
            // Too little room for another line: lengthen the previous one.
            let cut = head.len() - 2;
            head.insert_str(cut, &"p".repeat(room));
            break;
        }
        let value = (room - name.len() - 2).min(chunk);
        head.push_str(&name);
        head.push_str(&"p".repeat(value));
        head.push_str("\r\n");
        index += 1;
    }
    head.push_str("\r\n");
    assert_eq!(head.len(), size);
    head
}

async fn send_raw(server: &Server, request: &str) -> (Option<Answer>, TcpStream) {
    let mut stream = connect(server).await;
    // The server may refuse (and close) before an absurd head is all written.
    let _ = stream.write_all(request.as_bytes()).await;
    let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut stream))
        .await
        .expect("answered in time");
    (answer, stream)
}

fn assert_headers_too_large(answer: &Answer) {
    assert_eq!(answer.status, 431, "{answer:?}");
    assert_eq!(answer.headers["content-type"], "application/json");
    let body = answer.json();
    assert_eq!(body["error"], "headers_too_large");
    let id = &answer.headers["x-request-id"];
    assert!(!id.is_empty());
    assert_eq!(body["request_id"], id.as_str());
    for name in SECURITY_HEADERS {
        assert!(answer.headers.contains_key(name), "{name} on a 431");
    }
    assert!(!answer.headers.contains_key("server"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_over_max_header_bytes_get_a_json_431_over_http1() {
    let server = serve("").await;
    let limit = 32 * 1024;
    // One large header, or many (up to 100 header fields are parsed).
    for chunk in [64 * 1024, 1000, 400] {
        let (answer, _) = send_raw(&server, &head_of(limit, chunk, None)).await;
        let answer = answer.expect("answered");
        assert_eq!(
            answer.status, 200,
            "exactly at the limit ({chunk}): {answer:?}"
        );
        let (answer, mut stream) = send_raw(&server, &head_of(limit + 1, chunk, None)).await;
        assert_headers_too_large(&answer.expect("answered"));
        assert!(
            closed_within(&mut stream, Duration::from_secs(2))
                .await
                .is_some(),
            "the connection is closed after a 431"
        );
    }
    // About 90 small header fields are served; more than 100 are refused by the parser,
    // whatever their size (a bare 431).
    let (answer, _) = send_raw(&server, &head_of(3000, 20, None)).await;
    assert_eq!(answer.expect("answered").status, 200);
    let (answer, _) = send_raw(&server, &head_of(4000, 20, None)).await;
    assert_eq!(answer.expect("answered").status, 431);
    // The client's own well-formed request id is kept on the refusal.
    let (answer, _) = send_raw(&server, &head_of(limit + 500, 4000, Some("trace-431"))).await;
    let answer = answer.expect("answered");
    assert_headers_too_large(&answer);
    assert_eq!(answer.headers["x-request-id"], "trace-431");
    // A long request target counts as well.
    let target = format!("/healthz?q={}", "a".repeat(limit));
    let (answer, _) = send_raw(&server, &get(&target)).await;
    assert_headers_too_large(&answer.expect("answered"));
    // A private path's refusal is not cacheable.
    let request = format!(
        "POST /auth/login HTTP/1.1\r\nHost: gateway\r\nX-Pad: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        "p".repeat(limit)
    );
    let (answer, _) = send_raw(&server, &request).await;
    let answer = answer.expect("answered");
    assert_headers_too_large(&answer);
    assert_eq!(answer.headers["cache-control"], "no-store");
    // An absurd head is stopped by the parser's own cap and never buffered whole.
    let (answer, _) = send_raw(&server, &head_of(400 * 1024, 8000, None)).await;
    if let Some(answer) = answer {
        assert_eq!(answer.status, 431, "{answer:?}");
    }
    // And the server serves on.
    let (answer, _) = send_raw(&server, &get("/healthz")).await;
    assert_eq!(answer.expect("answered").status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_over_max_header_bytes_get_a_json_431_over_h2c() {
    let server = serve("max_header_bytes = \"4KiB\"").await;
    let stream = connect(&server).await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    for (pad, expected) in [(100, 200), (3500, 200), (4200, 431), (6000, 431)] {
        let request = http::Request::get(format!("http://{}/healthz", server.address))
            .header("x-pad", "p".repeat(pad))
            .header("x-request-id", format!("h2-{pad}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let response = sender.send_request(request).await.expect("answered");
        assert_eq!(response.status(), expected, "padding {pad}");
        assert_eq!(
            response.headers()["x-request-id"],
            format!("h2-{pad}").as_str()
        );
        for name in SECURITY_HEADERS {
            assert!(response.headers().contains_key(name), "{name}");
        }
        let body: Value =
            serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        if expected == 431 {
            assert_eq!(body["error"], "headers_too_large");
            assert_eq!(body["request_id"], format!("h2-{pad}"));
        }
    }
    // The stream was refused, not the connection: it serves on.
    let response = sender
        .send_request(
            http::Request::get(format!("http://{}/healthz", server.address))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
}

// ---------------------------------------------------------------------------------------
// Shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_readyz_then_closes_everything_by_shutdown_timeout() {
    let mut server = serve("shutdown_timeout = \"1s\"\nheader_read_timeout = \"30s\"").await;
    // A request whose body will never be finished.
    let mut stuck = connect(&server).await;
    stuck
        .write_all(
            b"POST /auth/login HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user",
        )
        .await
        .unwrap();
    // A head half sent, finished only once shutdown has begun.
    let mut probe = connect(&server).await;
    probe
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: gateway\r\n")
        .await
        .unwrap();
    // A head half sent that is never finished.
    let mut slow = connect(&server).await;
    slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    // Nothing signals that the server has read those bytes, or that shutdown has begun:
    // a moment of real time for each.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    drop(server.stop.take());
    tokio::time::sleep(Duration::from_millis(100)).await;
    probe.write_all(b"\r\n").await.unwrap();
    let answer = read_answer(&mut probe)
        .await
        .expect("answered while draining");
    assert_eq!(answer.status, 503);
    assert_eq!(answer.json()["status"], "stopping");
    assert_eq!(answer.headers["connection"], "close");
    // During the drain delay (a third of shutdown_timeout) new connections are still
    // accepted, and told the same, over HTTP/1.1 and HTTP/2.
    let mut late = connect(&server).await;
    late.write_all(get("/readyz").as_bytes()).await.unwrap();
    let answer = read_answer(&mut late)
        .await
        .expect("answered while draining");
    assert_eq!(answer.status, 503);
    assert_eq!(answer.headers["connection"], "close");
    assert!(
        closed_within(&mut late, Duration::from_millis(500))
            .await
            .is_some()
    );
    let response = h2_get(
        connect(&server).await,
        format!("http://{}/readyz", server.address),
    )
    .await;
    assert_eq!(response.status(), 503);
    // The drain delay runs in real time on the server's own timer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(server.address).await.is_err(),
        "no longer accepting after the drain delay"
    );

    tokio::time::timeout(Duration::from_secs(3), &mut server.done)
        .await
        .expect("the server stops by shutdown_timeout")
        .unwrap();
    let stopped = started.elapsed();
    assert!(stopped >= Duration::from_millis(900), "{stopped:?}");
    assert!(stopped < Duration::from_millis(2500), "{stopped:?}");
    for stream in [&mut stuck, &mut slow] {
        assert!(
            closed_within(stream, Duration::from_millis(500))
                .await
                .is_some(),
            "every connection is closed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_nothing_open_ends_after_the_drain_delay() {
    let mut server = serve("shutdown_timeout = \"1500ms\"").await;
    let mut idle = connect(&server).await;
    idle.write_all(get("/healthz").as_bytes()).await.unwrap();
    assert_eq!(read_answer(&mut idle).await.expect("answered").status, 200);
    // An HTTP/2 connection between streams.
    let stream = connect(&server).await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    let h2 = tokio::spawn(connection);
    let response = sender
        .send_request(
            http::Request::get(format!("http://{}/healthz", server.address))
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .expect("answered");
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    drop(server.stop.take());
    // The HTTP/2 connection gets its GOAWAY as the drain delay begins.
    tokio::time::timeout(Duration::from_millis(400), h2)
        .await
        .expect("the HTTP/2 connection is closed (GOAWAY)")
        .unwrap()
        .ok();
    assert!(!server.done.is_finished(), "still in the drain delay");
    tokio::time::timeout(Duration::from_secs(2), &mut server.done)
        .await
        .expect("idle keep-alives do not hold shutdown")
        .unwrap();
    let stopped = started.elapsed();
    // The drain delay is a third of shutdown_timeout; nothing else holds it.
    assert!(stopped >= Duration::from_millis(450), "{stopped:?}");
    assert!(stopped < Duration::from_millis(1000), "{stopped:?}");
    assert!(
        closed_within(&mut idle, Duration::from_secs(1))
            .await
            .is_some()
    );
}

// ---------------------------------------------------------------------------------------
// TLS

struct Certificates {
    dir: PathBuf,
}

impl Certificates {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("rampart-tls-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// Writes a fresh self-signed certificate for `localhost`; returns its DER.
    fn issue(&self) -> rustls::pki_types::CertificateDer<'static> {
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(self.cert(), issued.cert.pem()).unwrap();
        std::fs::write(self.key(), issued.signing_key.serialize_pem()).unwrap();
        issued.cert.der().clone()
    }

    fn server_toml(&self, min_version: Option<&str>) -> String {
        let version = min_version.map_or(String::new(), |version| {
            format!(", min_version = \"{version}\"")
        });
        format!(
            "tls = {{ cert = \"{}\", key = \"{}\"{version} }}",
            self.cert().display(),
            self.key().display()
        )
    }
}

fn client_config(
    trusted: &[&rustls::pki_types::CertificateDer<'static>],
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in trusted {
        roots.add((*certificate).clone()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
    Arc::new(config)
}

async fn tls_connect(
    address: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let stream = TcpStream::connect(address).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await
}

const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
const ANY_TLS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

async fn h2_get<I>(io: I, url: String) -> http::Response<Bytes>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let response = sender
        .send_request(http::Request::get(url).body(Empty::<Bytes>::new()).unwrap())
        .await
        .expect("answered");
    let (parts, body) = response.into_parts();
    http::Response::from_parts(parts, body.collect().await.unwrap().to_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_served_with_tls13_by_default_and_alpn() {
    let certificates = Certificates::new();
    let der = certificates.issue();
    let server = serve(&certificates.server_toml(None)).await;

    // TLS 1.3, ALPN h2: HTTP/2 over TLS, with HSTS now that it is true.
    let stream = tls_connect(
        server.address,
        client_config(&[&der], ANY_TLS, &[b"h2", b"http/1.1"]),
    )
    .await
    .expect("TLS handshake");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let response = h2_get(stream, "https://localhost/healthz".to_owned()).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );

    // ALPN http/1.1: HTTP/1.1 over TLS.
    let mut stream = tls_connect(
        server.address,
        client_config(&[&der], ANY_TLS, &[b"http/1.1"]),
    )
    .await
    .expect("TLS handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    stream.write_all(get("/healthz").as_bytes()).await.unwrap();
    let answer = read_answer(&mut stream).await.expect("answered");
    assert_eq!(answer.status, 200);
    assert!(answer.headers.contains_key("strict-transport-security"));

    // A TLS 1.2-only client is refused under the default min_version 1.3.
    assert!(
        tls_connect(
            server.address,
            client_config(&[&der], TLS12, &[b"http/1.1"])
        )
        .await
        .is_err(),
        "TLS 1.2 refused"
    );

    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = connect(&server).await;
    plain.write_all(get("/healthz").as_bytes()).await.unwrap();
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), plain.read_to_end(&mut received)).await;
    assert!(!received.starts_with(b"HTTP/"), "no plain-text answer");

    // A TCP connection that never starts its handshake is cut off too.
    let server = serve(&format!(
        "{}\nheader_read_timeout = \"500ms\"",
        certificates.server_toml(None)
    ))
    .await;
    let mut silent = connect(&server).await;
    let closed = closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("a silent TLS connection is cut off");
    assert!(closed < Duration::from_millis(2000), "{closed:?}");
    // So is one that completes its handshake and then sends half a head.
    let mut stream = tls_connect(
        server.address,
        client_config(&[&der], ANY_TLS, &[b"http/1.1"]),
    )
    .await
    .expect("TLS handshake");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    let closed = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("a slow head over TLS is cut off");
    assert!(closed < Duration::from_millis(2000), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_min_version_12_admits_tls12_clients() {
    let certificates = Certificates::new();
    let der = certificates.issue();
    let server = serve(&certificates.server_toml(Some("1.2"))).await;
    let mut stream = tls_connect(
        server.address,
        client_config(&[&der], TLS12, &[b"http/1.1"]),
    )
    .await
    .expect("TLS 1.2 handshake");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    stream.write_all(get("/healthz").as_bytes()).await.unwrap();
    assert_eq!(
        read_answer(&mut stream).await.expect("answered").status,
        200
    );
    let stream = tls_connect(server.address, client_config(&[&der], TLS13, &[b"h2"]))
        .await
        .expect("TLS 1.3 handshake");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

async fn served_certificate(
    server: &Server,
    trusted: &[&rustls::pki_types::CertificateDer<'static>],
) -> rustls::pki_types::CertificateDer<'static> {
    let stream = tls_connect(
        server.address,
        client_config(trusted, TLS13, &[b"http/1.1"]),
    )
    .await
    .expect("TLS handshake");
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_serves_the_new_certificate_and_a_bad_one_keeps_the_old() {
    let certificates = Certificates::new();
    let first = certificates.issue();
    let server = serve(&certificates.server_toml(None)).await;
    let tls = server.tls.clone().expect("TLS is on");
    // A connection opened before the reload.
    let mut before = tls_connect(
        server.address,
        client_config(&[&first], TLS13, &[b"http/1.1"]),
    )
    .await
    .unwrap();

    let second = certificates.issue();
    tls.reload().expect("a good certificate reloads");
    let trusted = [&first, &second];
    assert_eq!(served_certificate(&server, &trusted).await, second);
    // The earlier connection is not dropped.
    before.write_all(get("/healthz").as_bytes()).await.unwrap();
    assert_eq!(
        read_answer(&mut before).await.expect("answered").status,
        200
    );

    // Garbage in the certificate file.
    let second_cert_pem = std::fs::read(certificates.cert()).unwrap();
    std::fs::write(certificates.cert(), b"not a certificate").unwrap();
    let error = tls.reload().expect_err("refused").to_string();
    assert!(error.contains("server.tls.cert"), "{error}");
    assert_eq!(served_certificate(&server, &trusted).await, second);

    // A key that does not belong to the certificate.
    std::fs::write(certificates.cert(), &second_cert_pem).unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(certificates.key(), other.serialize_pem()).unwrap();
    let error = tls.reload().expect_err("refused").to_string();
    assert!(error.contains("do not go together"), "{error}");
    assert_eq!(served_certificate(&server, &trusted).await, second);

    // A missing key file.
    std::fs::remove_file(certificates.key()).unwrap();
    let error = tls.reload().expect_err("refused").to_string();
    assert!(error.contains("server.tls.key"), "{error}");
    assert_eq!(served_certificate(&server, &trusted).await, second);
}

#[tokio::test]
async fn an_unusable_certificate_stops_start_up() {
    let certificates = Certificates::new();
    certificates.issue();
    std::fs::write(certificates.key(), b"-----BEGIN PRIVATE KEY-----\nnope\n").unwrap();
    let error = Application::build(config(&certificates.server_toml(None)).unwrap())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("server.tls.key"), "{error}");
    let missing = Path::new("/nonexistent/cert.pem");
    let toml = format!(
        "tls = {{ cert = \"{}\", key = \"{}\" }}",
        missing.display(),
        certificates.key().display()
    );
    let error = Application::build(config(&toml).unwrap())
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(error.contains("server.tls.cert"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_request_body_is_answered_408_after_idle_timeout() {
    let server = serve("header_read_timeout = \"300ms\"\nidle_timeout = \"1s\"").await;
    for request in [
        // Half a JSON body of the length announced.
        &b"POST /auth/login HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user"[..],
        // A chunked body that never ends.
        &b"POST /auth/login HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"use\r\n"[..],
        // No body byte at all.
        &b"POST /auth/login HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n"[..],
    ] {
        let mut stream = connect(&server).await;
        let started = Instant::now();
        stream.write_all(request).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut stream))
            .await
            .expect("a stalled body is cut off")
            .expect("and answered");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(800), "{took:?}");
        assert!(took < Duration::from_millis(3000), "{took:?}");
        assert_eq!(answer.status, 408);
        let body = answer.json();
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(body["message"], "Request timed out");
        assert_eq!(answer.headers.get("connection").map(String::as_str), Some("close"));
        assert!(answer.headers.contains_key("x-request-id"));
        assert!(
            closed_within(&mut stream, Duration::from_secs(2))
                .await
                .is_some()
        );
    }
}

/// An h2c connection from the `h2` crate, for frames hyper's client would not send.
async fn raw_h2(
    server: &Server,
    initial_window: u32,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let stream = connect(server).await;
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(initial_window)
        .handshake::<_, Bytes>(stream)
        .await
        .expect("h2c handshake");
    (sender, tokio::spawn(connection))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_whose_window_stays_shut_is_reset_after_idle_timeout() {
    let server = serve("idle_timeout = \"1s\"").await;
    let (sender, mut connection) = raw_h2(&server, 0).await;
    let started = Instant::now();
    let mut bodies = Vec::new();
    for _ in 0..5 {
        let mut sender = sender.clone().ready().await.expect("ready");
        let (response, _) = sender
            .send_request(
                http::Request::get(format!("http://{}/healthz", server.address))
                    .body(())
                    .unwrap(),
                true,
            )
            .expect("sent");
        let response = response.await.expect("headers are not flow-controlled");
        assert_eq!(response.status(), 200);
        bodies.push(response.into_body());
    }
    for mut body in bodies {
        let data = tokio::time::timeout(Duration::from_secs(5), body.data())
            .await
            .expect("a stalled stream is ended");
        let error = data.expect("with a reset").expect_err("not with data");
        assert_eq!(error.reason(), Some(h2::Reason::CANCEL), "{error}");
    }
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert!(took < Duration::from_millis(3500), "{took:?}");
    // Every stream was stalled: the connection goes too.
    tokio::time::timeout(Duration::from_secs(3), &mut connection)
        .await
        .expect("the connection is closed")
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_body_that_stalls_fails_alone() {
    let server = serve("idle_timeout = \"1s\"").await;
    let (sender, connection) = raw_h2(&server, 65_535).await;
    let mut stalled_sender = sender.clone().ready().await.expect("ready");
    let (stalled, mut body) = stalled_sender
        .send_request(
            http::Request::post(format!("http://{}/auth/login", server.address))
                .header("content-type", "application/json")
                .body(())
                .unwrap(),
            false,
        )
        .expect("sent");
    body.send_data(Bytes::from_static(b"{\"username\":"), false)
        .unwrap();
    let started = Instant::now();
    // Meanwhile another stream on the same connection keeps making progress.
    let busy = {
        let sender = sender.clone();
        let address = server.address;
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..15 {
                let mut sender = sender.clone().ready().await.expect("ready");
                let (response, _) = sender
                    .send_request(
                        http::Request::get(format!("http://{address}/healthz"))
                            .body(())
                            .unwrap(),
                        true,
                    )
                    .expect("sent");
                let response = response.await.expect("answered");
                statuses.push(response.status().as_u16());
                let mut body = response.into_body();
                while let Some(chunk) = body.data().await {
                    let chunk = chunk.expect("body");
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                // Spread over real time, as the server's timers see it.
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            statuses
        })
    };
    let response = tokio::time::timeout(Duration::from_secs(5), stalled)
        .await
        .expect("the stalled request is answered")
        .expect("with a response, not a reset");
    let took = started.elapsed();
    assert_eq!(response.status(), 408);
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    let mut answer = response.into_body();
    let mut json = Vec::new();
    while let Some(chunk) = answer.data().await {
        json.extend_from_slice(&chunk.expect("body"));
    }
    let json: Value = serde_json::from_slice(&json).expect("JSON");
    assert_eq!(json["error"], "invalid_request");
    assert_eq!(json["message"], "Request timed out");
    let statuses = busy.await.unwrap();
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");
    assert!(!connection.is_finished(), "the connection stays open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_hold_on_ipv6_too() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine; skipped");
        return;
    }
    let server = serve_on("[::1]:0", "header_read_timeout = \"500ms\"").await;
    let closed = trickle(
        connect(&server).await,
        b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        Duration::from_secs(5),
    )
    .await
    .expect("a trickled head is cut off");
    assert!(closed < Duration::from_millis(2000), "{closed:?}");
    let (answer, _) = send_raw(&server, &head_of(32 * 1024 + 1, 4000, None)).await;
    assert_headers_too_large(&answer.expect("answered"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_an_http2_stream_in_flight() {
    use futures::StreamExt;
    let mut server = serve("shutdown_timeout = \"5s\"").await;
    let stream = connect(&server).await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    let (mut body, chunks) = futures::channel::mpsc::channel::<Bytes>(4);
    let request = http::Request::post(format!("http://{}/auth/login", server.address))
        .header("content-type", "application/json")
        .body(http_body_util::StreamBody::new(chunks.map(|chunk| {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk))
        })))
        .unwrap();
    let answer = tokio::spawn(async move { sender.send_request(request).await });
    body.try_send(Bytes::from_static(b"{\"username\":"))
        .unwrap();
    // Nothing signals that the first chunk has arrived, or that shutdown has begun: a
    // moment of real time for each.
    tokio::time::sleep(Duration::from_millis(100)).await;

    drop(server.stop.take());
    tokio::time::sleep(Duration::from_millis(200)).await;
    body.try_send(Bytes::from_static(
        b"\"nobody_1\",\"password\":\"Wrong-123\"}",
    ))
    .unwrap();
    drop(body);
    let response = tokio::time::timeout(Duration::from_secs(3), answer)
        .await
        .expect("answered in time")
        .unwrap()
        .expect("the stream in flight is answered");
    assert_eq!(response.status(), 401);
    tokio::time::timeout(Duration::from_secs(3), &mut server.done)
        .await
        .expect("then the server stops")
        .unwrap();
}

/// Serves `/healthz` on `stream`; `None` when the server closed it instead.
async fn served(stream: &mut TcpStream) -> Option<u16> {
    stream.write_all(get("/healthz").as_bytes()).await.ok()?;
    tokio::time::timeout(Duration::from_secs(3), read_answer(stream))
        .await
        .expect("answered or closed in time")
        .map(|answer| answer.status)
}

async fn one_client_holds_at_most(server: &Server, cap: usize) {
    let mut held = Vec::new();
    for _ in 0..cap {
        let mut stream = connect(server).await;
        assert_eq!(served(&mut stream).await, Some(200));
        held.push(stream);
    }
    // Over the cap: closed before a byte is read.
    for _ in 0..3 {
        let mut over = connect(server).await;
        assert_eq!(served(&mut over).await, None, "over the per-address cap");
    }
    // A place given back is taken again.
    drop(held.pop());
    // Nothing signals that the server has seen the connection close.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = connect(server).await;
    assert_eq!(served(&mut again).await, Some(200));
    // And the connections held were never disturbed.
    for stream in &mut held {
        assert_eq!(served(stream).await, Some(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let server = serve("max_connections_per_ip = 3").await;
    one_client_holds_at_most(&server, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ipv6_network_cannot_take_every_connection() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("no IPv6 loopback on this machine; skipped");
        return;
    }
    let server = serve_on("[::1]:0", "max_connections_per_ip = 2").await;
    one_client_holds_at_most(&server, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_is_not_held_to_the_per_address_cap() {
    let server = serve("max_connections_per_ip = 1\ntrusted_proxies = [\"127.0.0.1/32\"]").await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = connect(&server).await;
        assert_eq!(served(&mut stream).await, Some(200));
        held.push(stream);
    }
}
