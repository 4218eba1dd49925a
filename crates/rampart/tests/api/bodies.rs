//! Request bodies: the size limit and intrusion detection hold for every framing
//! (HTTP/1.1 with a length or chunked, HTTP/2 with or without a declared length), and only
//! JSON objects are bodies, whatever endpoint takes them.

use std::sync::atomic::Ordering;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend;
use crate::gateway::routes_setup;
use crate::helpers::{Backend, STRONG_PASSWORD, TestApp, assert_error, spawn_app, spawn_app_with};

/// Sends one request over HTTP/2 with prior knowledge (h2c), its body as DATA frames
/// without a declared length unless `headers` declares one. `Err` when the stream was
/// reset instead of answered.
pub async fn h2c(
    app: &TestApp,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    chunks: Vec<Vec<u8>>,
) -> Result<(u16, Value), String> {
    let host = app.address.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&host).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .map_err(|error| error.to_string())?;
    tokio::spawn(connection);
    let frames =
        futures::stream::iter(chunks.into_iter().map(|chunk| {
            Ok::<_, std::convert::Infallible>(Frame::data(bytes::Bytes::from(chunk)))
        }));
    let mut request = http::Request::builder()
        .method(method)
        .uri(format!("http://{host}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(StreamBody::new(frames)).unwrap())
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|error| error.to_string())?
        .to_bytes();
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

fn chunks(count: usize, size: usize) -> Vec<Vec<u8>> {
    (0..count).map(|_| vec![b'a'; size]).collect()
}

const ROUTES: &str = "[[routes]]\npath = \"/small\"\nupstream = \"app\"\nauth = false\nmax_body = \"1KiB\"\n\
                      [[routes]]\npath = \"/echo/*\"\nupstream = \"app\"\nauth = false\n";

async fn body_rules_hold_for_http2_bodies_with_and_without_a_length(backend: Backend) {
    let upstream = backend::start().await;
    for mode in ["detect", "block", "off"] {
        let setup = routes_setup(&upstream, ROUTES, "").env("RAMPART_INTRUSION__MODE", mode);
        let Some(app) = spawn_app_with(backend, setup).await else {
            return;
        };
        let hits = upstream.hits();
        // Over the route's limit, no length declared: refused, and nothing reaches the
        // backend, not even a part.
        for (count, size) in [(4, 512), (1, 2048), (64, 64), (1, 2 * 1024 * 1024)] {
            let (status, body) = h2c(&app, "POST", "/small", &[], chunks(count, size))
                .await
                .unwrap();
            assert_eq!(status, 413, "{mode} {count}x{size}: {body}");
            assert_eq!(body["error"], "payload_too_large", "{mode}: {body}");
        }
        // Over the server's limit on a route without its own.
        let (status, _) = h2c(&app, "POST", "/echo/x", &[], chunks(3, 512 * 1024))
            .await
            .unwrap();
        assert_eq!(status, 413, "{mode}");
        assert_eq!(
            upstream.hits(),
            hits,
            "{mode}: an oversized body reached the backend"
        );
        // A declared length that lies is caught while the body streams.
        let answer = h2c(
            &app,
            "POST",
            "/small",
            &[("content-length", "10")],
            chunks(4, 512),
        )
        .await;
        if let Ok((status, body)) = &answer {
            assert!((400..500).contains(status), "{mode}: {status} {body}");
        }
        if mode == "off" {
            for _ in 0..6 {
                let answer = h2c(
                    &app,
                    "POST",
                    "/small",
                    &[("content-length", "10")],
                    chunks(4, 512),
                )
                .await;
                if let Ok((status, body)) = &answer {
                    assert!((400..500).contains(status), "{mode}: {status} {body}");
                }
            }
            // A declared length within the limit streams: the backend may see the head,
            // never the body whole, and the circuit does not count the client's fault.
            assert!(
                upstream.largest_body.load(Ordering::SeqCst) < 2048,
                "{mode}: a lying length reached the backend whole"
            );
        } else {
            assert_eq!(
                upstream.hits(),
                hits,
                "{mode}: a lying length reached the backend"
            );
        }
        // Within the limit, the backend gets the body whole.
        let (status, body) = h2c(&app, "POST", "/small", &[], chunks(4, 250))
            .await
            .unwrap();
        assert_eq!(status, 200, "{mode}: {body}");
        assert_eq!(body["body_length"], 1000, "{mode}: {body}");
        // Intrusion detection reads bodies without a length too.
        let attack = br#"{"cmd":"x; rm -rf /"}"#.to_vec();
        let (status, _) = h2c(
            &app,
            "POST",
            "/echo/run",
            &[("content-type", "application/json")],
            vec![attack[..5].to_vec(), attack[5..].to_vec()],
        )
        .await
        .unwrap();
        assert_eq!(status, if mode == "block" { 400 } else { 200 }, "{mode}");
        // Every pattern's series exists from start-up; a match makes one of them non-zero.
        let counted = app.metrics().await.lines().any(|line| {
            line.starts_with("rampart_suspicious_requests_total{pattern=")
                && line
                    .rsplit(' ')
                    .next()
                    .and_then(|value| value.parse::<f64>().ok())
                    .is_some_and(|value| value > 0.0)
        });
        assert_eq!(counted, mode != "off", "{mode}");
    }
    assert!(
        upstream.largest_body.load(Ordering::SeqCst) <= 1024 * 1024,
        "no oversized body reached the backend whole"
    );
}

async fn chunked_http1_bodies_are_limited_and_scanned(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(&upstream, ROUTES, "").env("RAMPART_INTRUSION__MODE", "block");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let stream = |parts: Vec<Vec<u8>>| {
        reqwest::Body::wrap_stream(futures::stream::iter(
            parts
                .into_iter()
                .map(|part| Ok::<_, std::io::Error>(bytes::Bytes::from(part))),
        ))
    };
    let response = app
        .client
        .post(app.url("/small"))
        .body(stream(chunks(8, 256)))
        .send()
        .await
        .unwrap();
    assert_error(response, 413, "payload_too_large").await;
    let response = app
        .client
        .post(app.url("/echo/run"))
        .body(stream(vec![
            b"{\"cmd\":\"x; ".to_vec(),
            b"rm -rf /\"}".to_vec(),
        ]))
        .send()
        .await
        .unwrap();
    assert_error(response, 400, "invalid_request").await;
    assert_eq!(upstream.hits(), 0);
}

async fn the_identity_api_limits_and_reads_http2_bodies_without_a_length(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let json = [("content-type", "application/json")];
    // Larger than server.max_body, no length declared.
    let (status, body) = h2c(&app, "POST", "/auth/register", &json, chunks(3, 512 * 1024))
        .await
        .unwrap();
    assert_eq!(status, 413, "{body}");
    let (status, body) = h2c(
        &app,
        "POST",
        "/auth/register",
        &json,
        vec![
            br#"["alice_1", "alice@example.com", "#.to_vec(),
            format!("\"{STRONG_PASSWORD}\"]").into_bytes(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    let registration = json!({
        "username": "alice_1",
        "email": "alice@example.com",
        "password": STRONG_PASSWORD,
    })
    .to_string()
    .into_bytes();
    let (status, body) = h2c(
        &app,
        "POST",
        "/auth/register",
        &json,
        vec![registration[..10].to_vec(), registration[10..].to_vec()],
    )
    .await
    .unwrap();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["role"], "admin");
}

async fn json_that_is_not_an_object_is_refused_by_every_endpoint_with_a_body(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let viewer_id = app.register("viewer_1").await["id"].as_i64().unwrap();
    let endpoints = [
        (Method::POST, "/auth/register".to_owned()),
        (Method::POST, "/auth/login".to_owned()),
        (Method::POST, "/auth/refresh".to_owned()),
        (Method::PUT, "/users/me/password".to_owned()),
        (Method::DELETE, "/users/me".to_owned()),
        (Method::POST, "/users/me/api-keys".to_owned()),
        (Method::POST, "/accounts".to_owned()),
        (Method::PATCH, "/accounts/1".to_owned()),
        (Method::PATCH, format!("/admin/users/{viewer_id}")),
        (Method::POST, format!("/admin/users/{viewer_id}/unlock")),
    ];
    let bodies = [
        // Positional forms of the fields each endpoint names.
        json!(["viewer_2", "viewer_2@example.com", STRONG_PASSWORD]),
        json!(["admin_1", STRONG_PASSWORD]),
        json!([admin.refresh_token]),
        json!([STRONG_PASSWORD, "N3w!Passw0rd#x"]),
        json!(["admin"]),
        json!([]),
        json!("admin_1"),
        json!(17),
        json!(true),
        Value::Null,
    ];
    for (method, path) in &endpoints {
        for body in &bodies {
            let response = app
                .client
                .request(method.clone(), app.url(path))
                .bearer_auth(&admin.access_token)
                .json(body)
                .send()
                .await
                .unwrap();
            let error = assert_error(response, 400, "invalid_request").await;
            assert!(
                error["message"].as_str().unwrap().contains("object"),
                "{method} {path} {body}: {error}"
            );
        }
    }
    // Nothing changed: no third user, the admin's password and role stand.
    let users: Value = app
        .get_with("/admin/users", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(users["total"], 2, "{users}");
    assert_eq!(users["items"][1]["role"], "viewer", "{users}");
    app.login("admin_1").await;
    let keys: Value = app
        .get_with("/users/me/api-keys", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(keys["items"].as_array().unwrap().len(), 0);
}

/// `Content-Encoding` values that are not `identity`, one header line per `\n`.
const ENCODED: [&str; 9] = [
    "gzip",
    "deflate",
    "br",
    "zstd",
    "GZIP",
    "identity, gzip",
    "identity\ngzip",
    "x-custom",
    "",
];

async fn compressed_bodies_are_refused_while_detection_is_on(backend: Backend) {
    let upstream = backend::start().await;
    for mode in ["detect", "block", "off"] {
        let setup = routes_setup(&upstream, ROUTES, "").env("RAMPART_INTRUSION__MODE", mode);
        let Some(app) = spawn_app_with(backend, setup).await else {
            return;
        };
        let encoded = |request: reqwest::RequestBuilder, encoding: &str| {
            encoding.split('\n').fold(request, |request, line| {
                request.header("content-encoding", line)
            })
        };
        for encoding in ENCODED {
            // A proxied route, with a body an intrusion scan would have caught.
            let hits = upstream.hits();
            let request = app
                .client
                .post(app.url("/echo/x"))
                .header("content-type", "application/json")
                .body(r#"{"q":"1' OR '1'='1"}"#);
            let response = encoded(request, encoding).send().await.unwrap();
            // The identity API.
            let login = app
                .client
                .post(app.url("/auth/register"))
                .header("content-type", "application/json")
                .body(r#"{"username":"x"}"#);
            let login = encoded(login, encoding).send().await.unwrap();
            // HTTP/2, no length declared.
            let lines: Vec<(&str, &str)> = encoding
                .split('\n')
                .map(|line| ("content-encoding", line))
                .collect();
            let (h2_status, h2_body) = h2c(&app, "POST", "/echo/x", &lines, chunks(2, 10))
                .await
                .unwrap();
            if mode == "off" {
                assert_eq!(response.status(), 200, "{mode} {encoding:?}");
                assert_eq!(upstream.hits(), hits + 2, "{mode} {encoding:?}");
                // Read as sent, and refused for what it says.
                assert_eq!(login.status(), 400, "{mode} {encoding:?}: register");
                assert_eq!(h2_status, 200, "{mode} {encoding:?}: h2");
            } else {
                assert_error(response, 415, "unsupported_media_type").await;
                assert_error(login, 415, "unsupported_media_type").await;
                assert_eq!(h2_status, 415, "{mode} {encoding:?}: h2");
                assert_eq!(h2_body["error"], "unsupported_media_type", "{h2_body}");
                assert_eq!(
                    upstream.hits(),
                    hits,
                    "{mode} {encoding:?}: nothing reached the backend"
                );
            }
        }
        // `identity` is the body as sent.
        for encoding in ["identity", "Identity", "identity, identity"] {
            let response = app
                .client
                .post(app.url("/echo/x"))
                .header("content-type", "application/json")
                .header("content-encoding", encoding)
                .body(r#"{"a":1}"#)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "{mode} {encoding}");
        }
    }
}

crate::on_databases!(
    json_that_is_not_an_object_is_refused_by_every_endpoint_with_a_body,
    body_rules_hold_for_http2_bodies_with_and_without_a_length,
    chunked_http1_bodies_are_limited_and_scanned,
    the_identity_api_limits_and_reads_http2_bodies_without_a_length,
    compressed_bodies_are_refused_while_detection_is_on,
);
