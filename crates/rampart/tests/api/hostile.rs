//! A batch of hostile inputs to every endpoint: each gets a clear JSON answer, never a 500.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{Backend, spawn_app_with};

async fn no_hostile_input_produces_a_500_or_a_non_json_refusal(backend: Backend) {
    // The shipped routes, in front of a real backend, so proxied routes are in the batch.
    let upstream = crate::backend::start().await;
    let Some(app) = spawn_app_with(backend, crate::gateway::example_setup(&upstream)).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let endpoints = [
        (Method::POST, "/auth/register"),
        (Method::POST, "/auth/login"),
        (Method::POST, "/auth/refresh"),
        (Method::POST, "/auth/logout"),
        (Method::POST, "/auth/logout-all"),
        (Method::GET, "/users/me"),
        (Method::PUT, "/users/me/password"),
        (Method::GET, "/users/me/export"),
        (Method::GET, "/users/1"),
        (Method::GET, "/admin/users"),
        (Method::PATCH, "/admin/users/1"),
        (Method::POST, "/admin/users/1/unlock"),
        (Method::GET, "/admin/audit"),
        (Method::GET, "/admin/audit/export"),
        (Method::POST, "/users/me/api-keys"),
        (Method::GET, "/users/me/api-keys"),
        (Method::DELETE, "/users/me/api-keys/1"),
        (Method::POST, "/accounts"),
        (Method::GET, "/accounts"),
        (Method::GET, "/accounts/1"),
        (Method::PATCH, "/accounts/1"),
        (Method::DELETE, "/accounts/1"),
        (Method::POST, "/accounts/1/refresh"),
        (Method::DELETE, "/users/me"),
        (Method::GET, "/orders"),
        (Method::POST, "/orders"),
        (Method::GET, "/positions"),
    ];
    let big = "x".repeat(2 * 1024 * 1024);
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("application/json", b"".to_vec()),
        ("application/json", b"{".to_vec()),
        ("application/json", b"null".to_vec()),
        ("application/json", b"[]".to_vec()),
        ("application/json", b"\"string\"".to_vec()),
        (
            "application/json",
            b"{\"username\": 1, \"password\": []}".to_vec(),
        ),
        (
            "application/json",
            b"{\"username\": \"\\u0000\", \"password\": \"\\ud800\"}".to_vec(),
        ),
        (
            "application/json",
            b"{\"refresh_token\": \"..\", \"role\": \"admin\", \"disabled\": \"yes\"}".to_vec(),
        ),
        (
            "application/json",
            format!(
                "{{\"username\": \"{}\", \"password\": \"{}\"}}",
                "a".repeat(100_000),
                "b".repeat(100_000)
            )
            .into_bytes(),
        ),
        ("application/json", b"{\"a\":".repeat(10_000)),
        ("application/json", vec![0xff, 0xfe, 0x00, 0x01]),
        ("application/json", big.clone().into_bytes()),
        ("text/plain", b"username=admin".to_vec()),
        (
            "application/x-www-form-urlencoded",
            b"username=admin&password=x".to_vec(),
        ),
    ];
    let tokens = [
        String::new(),
        "garbage".to_owned(),
        admin.access_token.clone(),
        format!("{}x", admin.access_token),
        "a.b.c".to_owned(),
        // Not bearer tokens: API-key credentials, plain and with a broken signature.
        "apikey:rk_0123456789abcdef_zz".to_owned(),
        "signed:rk_\u{0}_%%".to_owned(),
    ];
    // A fresh connection per request: an early answer to an oversized upload closes its
    // connection, which a pooled client would otherwise reuse.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut checked = 0;
    for (method, path) in &endpoints {
        for (content_type, body) in &bodies {
            for token in &tokens {
                let mut request = client
                    .request(method.clone(), app.url(path))
                    .header("content-type", *content_type)
                    .header("x-request-id", "bad id with spaces")
                    .header(
                        "cookie",
                        "__Host-access_token=%%%; __Secure-refresh_token=\"quoted\"",
                    )
                    .header("x-forwarded-for", "not-an-ip, 999.1.1.1")
                    .body(body.clone());
                if let Some(key) = token.strip_prefix("apikey:") {
                    request = request.header("x-api-key", key);
                } else if let Some(key) = token.strip_prefix("signed:") {
                    request = request
                        .header("x-api-key", key.replace('\u{0}', ""))
                        .header("x-timestamp", "not-a-time")
                        .header("x-nonce", "short")
                        .header("x-signature", "zz");
                } else if !token.is_empty() {
                    request = request.header("authorization", format!("Bearer {token}"));
                }
                let response = match request.send().await {
                    Ok(response) => response,
                    // A handler that needs no body may answer before a 2 MiB upload is
                    // done and close the connection; the client then sees a broken write.
                    Err(error) if body.len() > 1024 * 1024 && error.is_request() => {
                        checked += 1;
                        continue;
                    }
                    Err(error) => panic!("{method} {path}: {error}"),
                };
                let status = response.status().as_u16();
                assert!(status < 500, "{method} {path} answered {status}");
                if status >= 400 {
                    let content_type = response.headers()["content-type"]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    assert!(
                        content_type.starts_with("application/json"),
                        "{method} {path}: {content_type}"
                    );
                    let request_id = response.headers()["x-request-id"]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    assert_ne!(request_id, "bad id with spaces");
                    let body: serde_json::Value = response.json().await.unwrap();
                    assert!(body["error"].is_string(), "{body}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, endpoints.len() * bodies.len() * tokens.len());
    // Still exactly one user, still an admin, still able to log in (the batch included
    // logout-all with the admin's token, so it logs in afresh).
    // The failed logins of the batch locked this IP out; let the window pass.
    app.clock.advance(std::time::Duration::from_secs(3601));
    // And the route limits of the example (login 10/min) refill.
    app.limiter_time
        .advance(std::time::Duration::from_secs(3601));
    let admin = app.login("admin_1").await;
    let users: serde_json::Value = app
        .get_with("/admin/users", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(users["total"], 1);
    assert_eq!(users["items"][0]["role"], "admin");
    let weird_paths = [
        "/users/-1",
        "/users/99999999999999999999",
        "/admin/users/0/unlock",
        "/%2e%2e/etc/passwd",
        "/users/me/../../admin/users",
    ];
    for path in weird_paths {
        let response = app.get_with(path, &admin.access_token).await;
        assert!(response.status().as_u16() < 500, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
    }
    let _ = json!({});
}

crate::on_databases!(no_hostile_input_produces_a_500_or_a_non_json_refusal);

/// The endpoints of the shipped configuration, for the spellings below.
const ENDPOINTS: [(&str, &str); 14] = [
    ("POST", "/auth/register"),
    ("POST", "/auth/login"),
    ("POST", "/auth/refresh"),
    ("GET", "/users/me"),
    ("PUT", "/users/me/password"),
    ("GET", "/users/1"),
    ("PATCH", "/admin/users/1"),
    ("POST", "/admin/users/1/unlock"),
    ("POST", "/users/me/api-keys"),
    ("POST", "/accounts"),
    ("PATCH", "/accounts/1"),
    ("GET", "/orders"),
    ("POST", "/orders"),
    ("GET", "/positions"),
];

/// Spellings of `path` with no safe canonical form.
fn unsafe_spellings(path: &str) -> Vec<String> {
    let rest = &path[1..];
    vec![
        format!("{path};x"),
        format!("{path}%3Bx"),
        format!("{path}%3b"),
        format!("/%25{:02X}{}", rest.as_bytes()[0], &rest[1..]),
        format!("/./{rest}"),
        format!("/%2e/{rest}"),
        format!("/x/%2E%2E/{rest}"),
        format!("//{rest}"),
        format!("{path}%2F.."),
        format!("{path}%00"),
        format!("{path}%"),
        format!("{path}%C3%A9"),
    ]
}

/// Spellings of `path` whose canonical form is `path` itself.
fn equivalent_spellings(path: &str) -> Vec<String> {
    let rest = &path[1..];
    vec![
        format!("/%{:02x}{}", rest.as_bytes()[0], &rest[1..]),
        format!("/%{:02X}{}", rest.as_bytes()[0], &rest[1..]),
    ]
}

async fn hostile_framings_spellings_and_headers_get_clear_answers(backend: Backend) {
    let upstream = crate::backend::start().await;
    let Some(app) = spawn_app_with(backend, crate::gateway::example_setup(&upstream)).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let bearer = format!("Bearer {}", admin.access_token);
    // HTTP/2 bodies without a declared length, in pieces, to every endpoint.
    let bodies: Vec<Vec<Vec<u8>>> = vec![
        vec![b"[\"admin_1\",".to_vec(), b" \"x\"]".to_vec()],
        vec![b"{\"username\":".to_vec(), b" 1}".to_vec()],
        vec![b"null".to_vec()],
        vec![vec![0xff, 0xfe], vec![0x00]],
        vec![b"{\"cmd\":\"x; ".to_vec(), b"rm -rf /\"}".to_vec()],
        (0..5).map(|_| vec![b'x'; 512 * 1024]).collect(),
    ];
    for (method, path) in ENDPOINTS {
        for body in &bodies {
            let answer = crate::bodies::h2c(
                &app,
                method,
                path,
                &[
                    ("content-type", "application/json"),
                    ("authorization", &bearer),
                ],
                body.clone(),
            )
            .await;
            let (status, json) = answer.unwrap_or_else(|error| panic!("{method} {path}: {error}"));
            assert!(status < 500, "{method} {path} answered {status}: {json}");
            if status >= 400 {
                assert!(json["error"].is_string(), "{method} {path}: {json}");
            }
            // Route limits (register 5/min) come first and may refuse before the body.
            if body.len() == 5 && status != 429 {
                assert_eq!(status, 413, "{method} {path}: an oversized h2 body");
            }
        }
    }
    // Respelled paths: refused when unsafe, the same endpoint when equivalent.
    for (method, path) in ENDPOINTS {
        for spelling in unsafe_spellings(path) {
            let (status, json) =
                crate::paths::raw_request(&app, method, &spelling, Some(&admin.access_token)).await;
            assert_eq!(status, 400, "{method} {spelling}: {json}");
            assert_eq!(
                json["error"], "invalid_request",
                "{method} {spelling}: {json}"
            );
        }
        for spelling in equivalent_spellings(path) {
            // A fresh budget for each pair, so only the spelling can make a difference.
            app.limiter_time
                .advance(std::time::Duration::from_secs(3601));
            let (expected, _) =
                crate::paths::raw_request(&app, method, path, Some(&admin.access_token)).await;
            let (status, json) =
                crate::paths::raw_request(&app, method, &spelling, Some(&admin.access_token)).await;
            assert!(status < 500, "{method} {spelling}: {json}");
            assert_eq!(
                status, expected,
                "{method} {spelling} differs from {path}: {json}"
            );
        }
    }
    // Override, identity and underscore headers: never a 500, never at the backend.
    let claims = [
        ("x-http-method-override", "DELETE"),
        ("x-original-url", "/admin/users"),
        ("x-rewrite-url", "/admin/users"),
        ("x-real-ip", "6.6.6.6"),
        ("true-client-ip", "6.6.6.6"),
        ("x-forwarded-for", "6.6.6.6, \u{7f}"),
        ("x-remote-user", "admin"),
        ("x-user-id", "1"),
        ("x_rampart_user_id", "1"),
        ("x_forwarded_for", "6.6.6.6"),
        ("x_api_key", "rk_0123456789abcdef_zz"),
    ];
    for (method, path) in ENDPOINTS {
        let mut request = app
            .client
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                app.url(path),
            )
            .bearer_auth(&admin.access_token)
            .json(&json!({"symbol": "INFY", "side": "BUY", "quantity": 1}));
        for (name, value) in claims {
            if let Ok(value) = reqwest::header::HeaderValue::from_str(value) {
                request = request.header(name, value);
            }
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        assert!(status < 500, "{method} {path} answered {status}");
        if path == "/orders" || path == "/positions" {
            let echo: serde_json::Value = response.json().await.unwrap();
            let headers = echo["headers"].as_object().unwrap();
            assert!(
                headers.keys().all(|name| !name.contains('_')),
                "{method} {path}: {echo}"
            );
            let values = echo["headers"].to_string();
            for needle in ["DELETE", "6.6.6.6", "/admin/users"] {
                assert!(
                    !values.contains(needle),
                    "{method} {path}: {needle} in {values}"
                );
            }
            assert_eq!(echo["method"], method);
        }
    }
}

mod spellings {
    use super::hostile_framings_spellings_and_headers_get_clear_answers;
    crate::on_databases!(hostile_framings_spellings_and_headers_get_clear_answers);
}
