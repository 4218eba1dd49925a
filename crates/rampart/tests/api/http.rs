//! The HTTP skeleton: error bodies, request ids, security headers, CORS, operations.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Backend, STRONG_PASSWORD, Setup, assert_error, spawn_app, spawn_app_with};

const SECURITY_HEADERS: [(&str, &str); 5] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("x-xss-protection", "0"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
];

async fn every_response_carries_the_security_headers_refusals_included(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let responses = vec![
        app.client.get(app.url("/healthz")).send().await.unwrap(),
        app.client
            .get(app.url("/no/such/path"))
            .send()
            .await
            .unwrap(),
        app.client
            .delete(app.url("/auth/login"))
            .send()
            .await
            .unwrap(),
        app.client.get(app.url("/users/me")).send().await.unwrap(),
        app.post("/auth/login", &json!({})).await,
    ];
    for response in responses {
        for (name, value) in SECURITY_HEADERS {
            assert_eq!(
                response.headers()[name],
                value,
                "{name} on {}",
                response.url()
            );
        }
        assert!(response.headers().get("server").is_none());
        assert!(
            response
                .headers()
                .get("strict-transport-security")
                .is_none(),
            "no HSTS on plain HTTP"
        );
    }
    let auth = app.post("/auth/login", &json!({})).await;
    assert_eq!(auth.headers()["cache-control"], "no-store");
    // Nothing said otherwise, so nothing is stored.
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.headers()["cache-control"], "no-store");
}

async fn hsts_and_the_legacy_xss_header_are_one_setting_away(backend: Backend) {
    let setup = Setup::toml(
        "[server]\nbehind_tls = true\n[headers]\nx_xss_protection = \"1; mode=block\"\n",
    );
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
    assert_eq!(response.headers()["x-xss-protection"], "1; mode=block");
}

async fn framework_rejections_become_json_errors(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    assert_error(
        app.client.get(app.url("/nowhere")).send().await.unwrap(),
        404,
        "not_found",
    )
    .await;
    let wrong_method = app
        .client
        .delete(app.url("/auth/login"))
        .send()
        .await
        .unwrap();
    assert!(wrong_method.headers().get("allow").is_some());
    assert_error(wrong_method, 405, "invalid_request").await;
    let wrong_type = app
        .client
        .post(app.url("/auth/login"))
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_error(wrong_type, 415, "unsupported_media_type").await;
    let malformed = app
        .client
        .post(app.url("/auth/login"))
        .header("content-type", "application/json")
        .body("{\"username\":")
        .send()
        .await
        .unwrap();
    assert_error(malformed, 400, "invalid_request").await;
    let too_large = app
        .client
        .post(app.url("/auth/register"))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"username\":\"{}\"}}",
            "a".repeat(2 * 1024 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_error(too_large, 413, "payload_too_large").await;
}

async fn a_well_formed_client_request_id_is_kept_and_others_replaced(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let kept = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "abc-123.XYZ")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "abc-123.XYZ");
    let replaced = app
        .client
        .get(app.url("/nowhere"))
        .header("x-request-id", "<script>")
        .send()
        .await
        .unwrap();
    let id = replaced.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 26, "a fresh ULID: {id}");
    let body: Value = replaced.json().await.unwrap();
    assert_eq!(body["request_id"], id.as_str());
}

async fn cors_answers_only_listed_origins(backend: Backend) {
    let setup = Setup::toml("[cors]\nallowed_origins = [\"https://app.example.com\"]\n");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let allowed = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/auth/login"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-credentials"],
        "true"
    );
    let refused = app
        .client
        .get(app.url("/healthz"))
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert!(
        refused
            .headers()
            .get("access-control-allow-credentials")
            .is_none(),
        "credentials are granted only beside an allowed origin"
    );
}

async fn a_backends_own_cors_fields_never_reach_the_browser(backend: Backend) {
    // The backend echoes any Origin with credentials; Rampart's [cors] decides instead.
    let upstream = crate::backend::start().await;
    let setup = crate::gateway::routes_setup(
        &upstream,
        "[cors]\nallowed_origins = [\"https://app.example.com\"]\n\
         [[routes]]\npath = \"/cors-echo\"\nauth = false\nupstream = \"app\"\n",
        "",
    );
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let response = app
        .client
        .get(app.url("/cors-echo"))
        .header("origin", "https://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    assert!(
        response
            .headers()
            .get("access-control-allow-credentials")
            .is_none()
    );
    let response = app
        .client
        .get(app.url("/cors-echo"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
}

async fn connect_and_trace_are_refused(backend: Backend) {
    let upstream = crate::backend::start().await;
    let setup = crate::gateway::routes_setup(
        &upstream,
        "[[routes]]\npath = \"/pub/*\"\nauth = false\nupstream = \"app\"\n",
        "",
    );
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    for method in ["TRACE", "CONNECT"] {
        let response = app
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                app.url("/pub/x"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 405, "{method}");
        // RFC 9110: a 405 names what is allowed.
        assert!(response.headers().contains_key("allow"), "{method}");
    }
    assert_eq!(upstream.hits(), 0, "nothing reached the backend");
    // Rampart's own paths say what they allow too.
    let response = app
        .client
        .request(reqwest::Method::TRACE, app.url("/users/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    let allow = response.headers()["allow"].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("DELETE") && !allow.contains("TRACE"));
}

async fn metrics_are_served_only_to_allowed_networks(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.client.get(app.url("/healthz")).send().await.unwrap();
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "rampart_failed_login_attempts_total",
        "rampart_http_requests_total",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    let setup = Setup::toml("[metrics]\nallowed_networks = [\"10.0.0.0/8\"]\n");
    let Some(fenced) = spawn_app_with(backend, setup).await else {
        return;
    };
    let response = fenced
        .client
        .get(fenced.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "not_found").await;
}

async fn labels_never_carry_raw_paths_or_user_input(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for path in ["/secret-probe-1", "/users/12345", "/admin/users/777/unlock"] {
        app.client.get(app.url(path)).send().await.unwrap();
    }
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Only the label sets: sample values (durations) may hold any digits.
    let labels: String = text
        .lines()
        .filter_map(|line| Some(&line[line.find('{')?..=line.rfind('}')?]))
        .collect();
    assert!(!labels.contains("secret-probe"), "{text}");
    assert!(
        !labels.contains("12345") && !labels.contains("777"),
        "{text}"
    );
    assert!(text.contains("route=\"/users/{id}\""), "{text}");
}

async fn readiness_reports_the_stores(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let ready: Value = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
}

async fn shutdown_drains_requests_in_flight(backend: Backend) {
    let Some(mut app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    // A login spends a password hash: long enough to be in flight when shutdown begins.
    let client = app.client.clone();
    let url = app.url("/auth/login");
    let in_flight = tokio::spawn(async move {
        client
            .post(url)
            .json(&json!({"username": "alice_1", "password": STRONG_PASSWORD}))
            .send()
            .await
    });
    // Nothing signals that the request has reached the server; a moment gets it there.
    tokio::time::sleep(Duration::from_millis(20)).await;
    app.stop();
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request was answered");
    assert_eq!(response.status(), 200);
    // For the drain delay the listener still accepts, and /readyz fails.
    let readiness = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("still accepting during the drain delay");
    assert_eq!(readiness.status(), 503);
}

crate::on_databases!(
    every_response_carries_the_security_headers_refusals_included,
    hsts_and_the_legacy_xss_header_are_one_setting_away,
    framework_rejections_become_json_errors,
    a_well_formed_client_request_id_is_kept_and_others_replaced,
    cors_answers_only_listed_origins,
    a_backends_own_cors_fields_never_reach_the_browser,
    connect_and_trace_are_refused,
    metrics_are_served_only_to_allowed_networks,
    labels_never_carry_raw_paths_or_user_input,
    readiness_reports_the_stores,
    shutdown_drains_requests_in_flight,
);
