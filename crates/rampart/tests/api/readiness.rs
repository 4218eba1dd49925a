//! `/readyz` and request-path store calls when a store stops answering: the probe answers
//! 503 within about a second, and requests fail instead of queueing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::helpers::{Backend, Setup, postgres_schema, redis_reachable, redis_url, spawn_app_with};

/// A TCP relay to a store that can be made to hang: open connections are cut, and new ones
/// are accepted but never answered (a dropped network path, a server that stopped).
struct Relay {
    address: std::net::SocketAddr,
    hanging: Arc<AtomicBool>,
    connections: Arc<std::sync::Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let hanging = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let accept = tokio::spawn({
            let hanging = Arc::clone(&hanging);
            let connections = Arc::clone(&connections);
            async move {
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        return;
                    };
                    let hanging = hanging.load(Ordering::SeqCst);
                    let target = target.clone();
                    connections.lock().unwrap().spawn(async move {
                        if hanging {
                            // Holds the connection open, silent.
                            let _held = &client;
                            std::future::pending::<()>().await;
                        }
                        let Ok(mut server) = TcpStream::connect(&target).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    });
                }
            }
        });
        Self {
            address,
            hanging,
            connections,
            accept,
        }
    }

    /// Cuts every open connection; later ones hang.
    fn hang(&self) {
        self.hanging.store(true, Ordering::SeqCst);
        self.connections.lock().unwrap().abort_all();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
        self.connections.lock().unwrap().abort_all();
    }
}

/// `url` with its host and port replaced by `address`.
fn through(url: &str, address: std::net::SocketAddr) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_ip_host(address.ip()).unwrap();
    url.set_port(Some(address.port())).unwrap();
    url.to_string()
}

fn host_port(url: &str) -> String {
    let url = url::Url::parse(url).unwrap();
    format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap()
    )
}

async fn readyz(app: &crate::helpers::TestApp) -> (u16, Value, Duration) {
    let started = Instant::now();
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.json().await.unwrap();
    (status, body, started.elapsed())
}

#[tokio::test]
async fn readiness_fails_within_a_second_when_postgres_hangs() {
    let Some(schema_url) = postgres_schema().await else {
        return;
    };
    let relay = Relay::start(host_port(&schema_url)).await;
    let url = through(&schema_url, relay.address);
    let setup = Setup::default().env("RAMPART_DATABASE__URL", &url);
    let Some(app) = spawn_app_with(Backend::Sqlite, setup).await else {
        return;
    };
    let (status, body, _) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");

    relay.hang();
    let (status, body, took) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["database"], false, "{body}");
    assert_eq!(
        body["checks"]["session_store"], false,
        "sessions live in PostgreSQL too"
    );
    assert!(took < Duration::from_millis(1800), "/readyz took {took:?}");

    // A request that needs the database fails within the pool's acquire timeout.
    let started = Instant::now();
    let response = app
        .client
        .post(app.url("/auth/login"))
        .json(&serde_json::json!({ "username": "nobody", "password": "Whatever1!" }))
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(response.status().is_server_error(), "{}", response.status());
    assert!(took < Duration::from_secs(5), "a login took {took:?}");
}

#[tokio::test]
async fn readiness_fails_within_a_second_when_redis_hangs() {
    if !redis_reachable().await {
        return;
    }
    let relay = Relay::start(host_port(&redis_url())).await;
    let url = through(&redis_url(), relay.address);
    let setup = Setup::default().env("RAMPART_TOKENS__STORE", &url);
    let Some(app) = spawn_app_with(Backend::Sqlite, setup).await else {
        return;
    };
    let (status, body, _) = readyz(&app).await;
    assert_eq!(status, 200, "{body}");

    relay.hang();
    for _ in 0..2 {
        let (status, body, took) = readyz(&app).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["checks"]["database"], true, "{body}");
        assert_eq!(body["checks"]["session_store"], false, "{body}");
        assert!(took < Duration::from_millis(1800), "/readyz took {took:?}");
    }
}

#[tokio::test]
async fn readiness_fails_at_once_when_postgres_is_down() {
    let Some(schema_url) = postgres_schema().await else {
        return;
    };
    let relay = Relay::start(host_port(&schema_url)).await;
    let url = through(&schema_url, relay.address);
    let setup = Setup::default().env("RAMPART_DATABASE__URL", &url);
    let Some(app) = spawn_app_with(Backend::Sqlite, setup).await else {
        return;
    };
    // Nothing listens on the relay's port any more: connections are refused.
    drop(relay);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, body, took) = readyz(&app).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["checks"]["database"], false, "{body}");
    assert!(took < Duration::from_millis(1800), "/readyz took {took:?}");
}
