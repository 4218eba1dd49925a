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
