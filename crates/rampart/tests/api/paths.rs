//! Route matching on one canonical form of the path, which is also what the backend, the
//! identity API and the signature policy go by (SPEC §3 "Paths").

use rampart::clock::Clock;
use reqwest::Method;
use serde_json::Value;

use crate::api_keys::{Signed, create_key, nonce, signature};
use crate::backend;
use crate::gateway::{example_setup, routes_setup};
use crate::helpers::{Backend, TestApp, assert_error, spawn_app_with};

/// Sends a request with its target exactly as written (an HTTP client library would
/// resolve dot segments itself) and returns the status and body.
pub async fn raw_request(
    app: &TestApp,
    method: &str,
    target: &str,
    token: Option<&str>,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let authorization = token
        .map(|token| format!("Authorization: Bearer {token}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host}\r\n{authorization}Content-Length: 0\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    // A chunked body would carry sizes; the gateway's answers here have a length.
    let value = serde_json::from_str(&body).unwrap_or(Value::String(body));
    (status, value)
}

const ROUTES: &str = "[[routes]]\npath = \"/api/*\"\nupstream = \"app\"\nroles = [\"viewer\", \"admin\"]\n\
                      [[routes]]\npath = \"/api/admin/*\"\nupstream = \"app\"\nroles = [\"admin\"]\n";

async fn a_respelled_path_never_escapes_a_protected_prefix(backend: Backend) {
    let upstream = backend::start().await;
    let Some(app) = spawn_app_with(backend, routes_setup(&upstream, ROUTES, "")).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let viewer = app.user("viewer_1").await;
    // Decoded, these are the admin prefix: the admin route's policy applies.
    for target in [
        "/api/%61dmin/users",
        "/api/%61%64%6D%69%6E/users",
        "/api/adm%69n",
    ] {
        let (status, body) = raw_request(&app, "GET", target, Some(&viewer.access_token)).await;
        assert_eq!(status, 403, "{target}: {body}");
        assert_eq!(body["error"], "forbidden", "{target}: {body}");
        let (status, body) = raw_request(&app, "GET", target, Some(&admin.access_token)).await;
        assert_eq!(status, 200, "{target}: {body}");
        assert!(
            body["path"].as_str().unwrap().starts_with("/api/admin"),
            "the backend gets the form the decision was made on: {body}"
        );
    }
    // No safe canonical form: refused for everyone, before any backend.
    for target in [
        "/api/admin;x/users",
        "/api/admin%3Bx/users",
        "/api/admin%3bx",
        "/api/;/admin/users",
        "/api/%2561dmin/users",
        "/api/%252e%252e/admin",
        "/api/%25%36%31dmin",
        "/api/./admin/users",
        "/api/%2e/admin/users",
        "/api/x/%2E%2E/admin/users",
        "/api/x/../admin/users",
        "/api//admin/users",
        "/api/x%2F..%2Fadmin",
        "/api/x%5c..%5cadmin",
        "/api/x\\..\\admin",
        "/api/x%00",
        "/api/x%0d%0aX-Rampart-Role:%20admin",
        "/api/%",
        "/api/%4",
        "/api/%zz",
        "/api/%C3%A9",
        "/api/%FF",
    ] {
        for token in [&viewer.access_token, &admin.access_token] {
            let (status, body) = raw_request(&app, "GET", target, Some(token)).await;
            assert_eq!(status, 400, "{target}: {body}");
            assert_eq!(body["error"], "invalid_request", "{target}: {body}");
        }
    }
    assert_eq!(
        upstream.hits(),
        3,
        "only the admin's requests reached the backend"
    );
    // The canonical path is forwarded, the query as sent.
    let (status, body) = raw_request(
        &app,
        "GET",
        "/api/%7euser/%3a%40/%61?q=%61&x=%2e%2e",
        Some(&viewer.access_token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["path"], "/api/~user/%3A%40/a", "{body}");
    assert_eq!(body["query"], "q=%61&x=%2e%2e", "{body}");
    assert_eq!(
        body["target"], "/api/~user/%3A%40/a?q=%61&x=%2e%2e",
        "{body}"
    );
}

async fn a_case_insensitive_route_refuses_case_respellings_of_a_protected_route(backend: Backend) {
    let upstream = backend::start().await;
    let routes = "[[routes]]\npath = \"/api/*\"\nupstream = \"app\"\nroles = [\"viewer\", \"admin\"]\n\
                  case_sensitive = false\n\
                  [[routes]]\npath = \"/api/admin/*\"\nupstream = \"app\"\nroles = [\"admin\"]\n";
    let Some(app) = spawn_app_with(backend, routes_setup(&upstream, routes, "")).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let viewer = app.user("viewer_1").await;
    for target in [
        "/api/ADMIN/users",
        "/API/Admin",
        "/api/aDmIn/x",
        "/api/%41DMIN/x",
    ] {
        for token in [&viewer.access_token, &admin.access_token] {
            let (status, body) = raw_request(&app, "GET", target, Some(token)).await;
            assert_eq!(status, 400, "{target}: {body}");
            assert_eq!(body["error"], "invalid_request", "{target}: {body}");
        }
    }
    assert_eq!(upstream.hits(), 0);
    // Any case of the open prefix is that route, and the backend gets the spelling sent.
    let (status, body) = raw_request(&app, "GET", "/API/Orders", Some(&viewer.access_token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["path"], "/API/Orders");
    let (status, _) = raw_request(&app, "GET", "/api/admin/x", Some(&viewer.access_token)).await;
    assert_eq!(status, 403);
}

async fn the_identity_api_and_signed_routes_go_by_the_canonical_path(backend: Backend) {
    let upstream = backend::start().await;
    let Some(app) = spawn_app_with(backend, example_setup(&upstream)).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let viewer = app.user("viewer_1").await;
    let (status, body) = raw_request(&app, "GET", "/users/%6De", Some(&viewer.access_token)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["username"], "viewer_1");
    // Responses on private paths are never cached, whatever the spelling.
    let response = app
        .client
        .get(app.url("/%75sers/%6De"))
        .bearer_auth(&viewer.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let (status, body) =
        raw_request(&app, "GET", "/%61dmin/users", Some(&viewer.access_token)).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = raw_request(&app, "GET", "/users/me;x", Some(&viewer.access_token)).await;
    assert_eq!(status, 400);

    // The client signs the path it sends; the route is chosen on its canonical form, so a
    // respelling of the signed route still needs a signature.
    let key = create_key(&app, &admin, "bot").await;
    let body = br#"{"symbol":"INFY","side":"BUY","quantity":1}"#;
    let unsigned = app
        .client
        .post(app.url("/%6Frders"))
        .header("x-api-key", &key.key)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_error(unsigned, 401, "unauthorized").await;
    let signed = Signed::new(&app, Method::POST, "/%6Frders", body, &key)
        .send(&app)
        .await;
    assert_eq!(
        signed.status(),
        200,
        "the spelling sent is the spelling signed"
    );
    let echo: Value = signed.json().await.unwrap();
    assert_eq!(echo["path"], "/orders");
    // Other spellings, a query too: each verifies as sent, though the route resolution
    // has rewritten the target by the time the signature is checked.
    for spelling in ["/%6frders", "/o%72d%65rs", "/%6Frders?b=2&a=%31"] {
        let response = Signed::new(&app, Method::POST, spelling, body, &key)
            .send(&app)
            .await;
        assert_eq!(response.status(), 200, "{spelling}");
        let echo: Value = response.json().await.unwrap();
        assert_eq!(echo["path"], "/orders", "{spelling}");
    }
    // Signed over the canonical spelling while sending another: refused.
    // A signature over another spelling than the one sent does not hold.
    let timestamp = app.clock.unix().to_string();
    let nonce = nonce();
    let other = signature(&key.secret, "POST", "/orders", &timestamp, &nonce, body);
    let response = app
        .client
        .post(app.url("/%6Frders"))
        .header("x-api-key", &key.key)
        .header("x-timestamp", &timestamp)
        .header("x-nonce", &nonce)
        .header("x-signature", &other)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "unauthorized").await;
    assert_eq!(upstream.hits(), 4);
}

crate::on_databases!(
    a_respelled_path_never_escapes_a_protected_prefix,
    a_case_insensitive_route_refuses_case_respellings_of_a_protected_route,
    the_identity_api_and_signed_routes_go_by_the_canonical_path,
);
