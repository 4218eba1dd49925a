//! The same pipeline over HTTP/1.1 and over HTTP/2 with prior knowledge (h2c): each stage's
//! answer is the same whichever protocol carried the request — the 401 JSON refusal, the
//! 403 of a role check, the 429 with its rate-limit fields, the proxied 200 with the
//! caller's identity headers, and the 413 of a body over its route's limit.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;

use crate::backend;
use crate::gateway::routes_setup;
use crate::helpers::{Backend, TestApp, spawn_app_with};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    H2c,
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
}

/// Sends one request on a fresh connection of `protocol`.
async fn send(
    app: &TestApp,
    protocol: Protocol,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let host = app.address.trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&host).await.unwrap();
    let uri = match protocol {
        Protocol::Http1 => path.to_owned(),
        Protocol::H2c => format!("http://{host}{path}"),
    };
    let mut request = http::Request::builder().method(method).uri(uri);
    if protocol == Protocol::Http1 {
        request = request.header("host", &host);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(Bytes::from(body))).unwrap();
    let response = match protocol {
        Protocol::Http1 => {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        }
        Protocol::H2c => {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            sender.send_request(request).await.unwrap()
        }
    };
    let expected = match protocol {
        Protocol::Http1 => http::Version::HTTP_11,
        Protocol::H2c => http::Version::HTTP_2,
    };
    assert_eq!(response.version(), expected, "{protocol:?}");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// A refusal's SPEC §1 body, its request id and the security headers.
fn assert_refusal(answer: &Answer, status: u16, code: &str, protocol: Protocol) {
    assert_eq!(
        answer.status, status,
        "{protocol:?} {code}: {}",
        answer.body
    );
    assert_eq!(answer.body["error"], code, "{protocol:?}: {}", answer.body);
    assert!(answer.body["message"].is_string(), "{protocol:?}");
    let id = answer.headers["x-request-id"].to_str().unwrap();
    assert_eq!(answer.body["request_id"], id, "{protocol:?}");
    assert!(
        answer.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "{protocol:?}"
    );
    assert_eq!(
        answer.headers["x-content-type-options"], "nosniff",
        "{protocol:?}"
    );
    assert_eq!(answer.headers["cache-control"], "no-store", "{protocol:?}");
}

const ROUTES: &str = "[[routes]]\npath = \"/desk/*\"\nupstream = \"app\"\nroles = [\"trader\"]\n\
                      [[routes]]\npath = \"/open/*\"\nupstream = \"app\"\nmax_body = \"1KiB\"\n\
                      [[routes]]\npath = \"/limited\"\nupstream = \"app\"\nauth = false\nrate_limit = \"2/min\"\n";

async fn each_stage_answers_alike_over_http1_and_h2c(backend: Backend) {
    for protocol in [Protocol::Http1, Protocol::H2c] {
        let upstream = backend::start().await;
        let Some(app) = spawn_app_with(backend, routes_setup(&upstream, ROUTES, "")).await else {
            return;
        };
        app.user("admin_1").await;
        let viewer = app.user("viewer_1").await;
        let bearer = format!("Bearer {}", viewer.access_token);

        // Authentication: no credentials on a route that needs them.
        let anonymous = send(&app, protocol, "GET", "/desk/book", &[], Vec::new()).await;
        assert_refusal(&anonymous, 401, "unauthorized", protocol);
        assert!(
            anonymous.headers.contains_key("www-authenticate"),
            "{protocol:?}"
        );
        // A token that does not verify.
        let forged = send(
            &app,
            protocol,
            "GET",
            "/desk/book",
            &[("authorization", "Bearer not.a.token")],
            Vec::new(),
        )
        .await;
        assert_refusal(&forged, 401, "unauthorized", protocol);

        // Authorization: a viewer on a traders' route.
        let viewer_on_desk = send(
            &app,
            protocol,
            "GET",
            "/desk/book",
            &[("authorization", &bearer)],
            Vec::new(),
        )
        .await;
        assert_refusal(&viewer_on_desk, 403, "forbidden", protocol);

        // Proxied, with the caller's identity and the request id for the backend.
        let hits_before = upstream.hits.load(std::sync::atomic::Ordering::SeqCst);
        let proxied = send(
            &app,
            protocol,
            "GET",
            "/open/orders?page=2",
            &[("authorization", &bearer), ("x-request-id", "trace-42")],
            Vec::new(),
        )
        .await;
        assert_eq!(proxied.status, 200, "{protocol:?}: {}", proxied.body);
        let seen = &proxied.body["headers"];
        assert_eq!(
            seen["x-rampart-user-id"][0],
            viewer.user_id.to_string(),
            "{protocol:?}: {seen}"
        );
        assert_eq!(seen["x-rampart-username"][0], "viewer_1", "{protocol:?}");
        assert_eq!(seen["x-rampart-role"][0], "viewer", "{protocol:?}");
        assert_eq!(seen["x-request-id"][0], "trace-42", "{protocol:?}");
        assert!(seen.get("authorization").is_none(), "{protocol:?}: {seen}");
        assert_eq!(
            proxied.body["target"], "/open/orders?page=2",
            "{protocol:?}"
        );
        assert_eq!(proxied.headers["x-request-id"], "trace-42", "{protocol:?}");
        assert!(proxied.headers.contains_key("ratelimit"), "{protocol:?}");
        assert!(
            proxied.headers.contains_key("ratelimit-policy"),
            "{protocol:?}"
        );
        assert_eq!(proxied.headers["cache-control"], "no-store", "{protocol:?}");
        assert_eq!(
            upstream.hits.load(std::sync::atomic::Ordering::SeqCst),
            hits_before + 1,
            "{protocol:?}"
        );

        // Body policy: over the route's 1 KiB, refused before the backend sees it.
        let too_large = send(
            &app,
            protocol,
            "POST",
            "/open/orders",
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
            vec![b' '; 4096],
        )
        .await;
        assert_refusal(&too_large, 413, "payload_too_large", protocol);
        assert_eq!(
            upstream.hits.load(std::sync::atomic::Ordering::SeqCst),
            hits_before + 1,
            "{protocol:?}: the backend never saw the large body"
        );

        // The route's own limit: the third request in the minute is refused.
        for _ in 0..2 {
            let allowed = send(&app, protocol, "GET", "/limited", &[], Vec::new()).await;
            assert_eq!(allowed.status, 200, "{protocol:?}: {}", allowed.body);
        }
        let limited = send(&app, protocol, "GET", "/limited", &[], Vec::new()).await;
        assert_refusal(&limited, 429, "rate_limited", protocol);
        let retry_after: u64 = limited.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            (1..=60).contains(&retry_after),
            "{protocol:?}: {retry_after}"
        );
        let policies: Vec<&str> = limited
            .headers
            .get_all("ratelimit-policy")
            .iter()
            .map(|value| value.to_str().unwrap())
            .collect();
        assert!(
            policies.iter().any(|policy| policy.contains("q=2;w=60")),
            "{protocol:?}: {policies:?}"
        );
        assert!(limited.headers.contains_key("ratelimit"), "{protocol:?}");
    }
}

crate::on_databases!(each_stage_answers_alike_over_http1_and_h2c);
