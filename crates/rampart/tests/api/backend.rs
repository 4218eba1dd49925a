//! A backend for gateway tests, on 127.0.0.1:0: it echoes what it received (method, target,
//! path, query, every header line, body), and can be told to fail, hang or answer with a
//! status of the test's choosing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::StatusCode;
use serde_json::{Value, json};

#[derive(Clone, Default)]
pub struct Backend {
    /// Requests received.
    pub hits: Arc<AtomicU64>,
    /// The largest request body received whole.
    pub largest_body: Arc<AtomicU64>,
    /// Whether `/flaky` answers 500.
    pub failing: Arc<AtomicBool>,
    pub address: String,
}

async fn echo(State(backend): State<Backend>, request: Request) -> Response {
    backend.hits.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body: Bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => {
            backend
                .largest_body
                .fetch_max(body.len() as u64, Ordering::SeqCst);
            body
        }
        // The gateway cut the body off.
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    };
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .keys()
        .map(|name| {
            let values: Vec<Value> = parts
                .headers
                .get_all(name)
                .iter()
                .map(|value| Value::from(value.to_str().unwrap_or("<binary>")))
                .collect();
            (name.as_str().to_owned(), Value::Array(values))
        })
        .collect();
    let mut response = axum::Json(json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        // The request target exactly as it arrived, for tests about respellings.
        "target": parts.uri.path_and_query().map(|target| target.as_str()),
        "query": parts.uri.query(),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "body_length": body.len(),
    }))
    .into_response();
    if parts.uri.query() == Some("cacheable") {
        response
            .headers_mut()
            .insert("cache-control", "public, max-age=60".parse().unwrap());
        response
            .headers_mut()
            .insert("cdn-cache-control", "max-age=600".parse().unwrap());
    }
    response
        .headers_mut()
        .insert("server", "test-backend/1.2.3".parse().unwrap());
    response
        .headers_mut()
        .insert("connection", "x-backend-private".parse().unwrap());
    response
        .headers_mut()
        .insert("x-backend-private", "secret".parse().unwrap());
    response
}

async fn status(State(backend): State<Backend>, Path(code): Path<u16>) -> Response {
    backend.hits.fetch_add(1, Ordering::SeqCst);
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::IM_A_TEAPOT);
    (
        status,
        [("content-type", "application/json")],
        json!({ "backend_says": code }).to_string(),
    )
        .into_response()
}

async fn flaky(State(backend): State<Backend>) -> Response {
    backend.hits.fetch_add(1, Ordering::SeqCst);
    if backend.failing.load(Ordering::SeqCst) {
        (StatusCode::INTERNAL_SERVER_ERROR, "backend down").into_response()
    } else {
        axum::Json(json!({ "ok": true })).into_response()
    }
}

/// A backend with CORS fields of its own, granting any origin with credentials.
async fn cors_echo(State(backend): State<Backend>) -> Response {
    backend.hits.fetch_add(1, Ordering::SeqCst);
    (
        [
            ("access-control-allow-origin", "https://evil.example.com"),
            ("access-control-allow-credentials", "true"),
        ],
        "{}",
    )
        .into_response()
}

async fn hang(State(backend): State<Backend>) -> Response {
    backend.hits.fetch_add(1, Ordering::SeqCst);
    // Longer than any test runs: the request stays outstanding until the client gives up.
    tokio::time::sleep(Duration::from_secs(30)).await;
    "too late".into_response()
}

async fn large(State(backend): State<Backend>, Path(size): Path<usize>) -> Response {
    backend.hits.fetch_add(1, Ordering::SeqCst);
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let chunks = size.div_ceil(chunk.len());
    let stream = futures::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::convert::Infallible>(chunk.clone())),
    );
    axum::body::Body::from_stream(stream).into_response()
}

/// Starts the backend; it runs until the test's runtime ends.
pub async fn start() -> Backend {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut backend = Backend {
        address: format!("http://{}", listener.local_addr().unwrap()),
        ..Backend::default()
    };
    backend.address = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/status/{code}", any(status))
        .route("/flaky", any(flaky))
        .route("/hang", any(hang))
        .route("/cors-echo", any(cors_echo))
        .route("/large/{size}", any(large))
        .fallback(echo)
        .with_state(backend.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    backend
}

impl Backend {
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}
