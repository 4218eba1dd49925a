//! The gateway in front of a real backend: the shipped route matrix, header handling,
//! circuit breaking, timeouts, body limits and intrusion detection.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::backend;
use crate::helpers::{Backend, Setup, assert_error, spawn_app_with};

/// The shipped example configuration, with its upstreams pointed at `backend`.
pub fn example_setup(backend: &backend::Backend) -> Setup {
    Setup::toml(include_str!("../../../../config/rampart.example.toml"))
        .env("RAMPART_UPSTREAMS__ORDERS__URL", &backend.address)
        .env("RAMPART_UPSTREAMS__POSITIONS__URL", &backend.address)
}

/// Routes of the test's own, all to `backend` as upstream `app`.
pub fn routes_setup(backend: &backend::Backend, routes: &str, upstream_extra: &str) -> Setup {
    Setup::toml(&format!(
        "{routes}\n[upstreams.app]\nurl = \"{}\"\ntimeout = \"2s\"\n{upstream_extra}\n",
        backend.address
    ))
}

async fn promote(app: &crate::helpers::TestApp, admin: &str, id: i64, role: &str) {
    let response = app
        .send_with(
            Method::PATCH,
            &format!("/admin/users/{id}"),
            admin,
            Some(json!({ "role": role })),
        )
        .await;
    assert_eq!(response.status(), 200, "promoting {id} to {role}");
}

async fn the_shipped_route_matrix_holds_for_every_role(backend: Backend) {
    let upstream = backend::start().await;
    let Some(app) = spawn_app_with(backend, example_setup(&upstream)).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let trader_id = app.register("trader_1").await["id"].as_i64().unwrap();
    app.register("viewer_1").await;
    promote(&app, &admin.access_token, trader_id, "trader").await;
    let trader = app.login("trader_1").await;
    let viewer = app.login("viewer_1").await;

    let by_id = format!("/users/{trader_id}");
    // (method, path, admin, trader, viewer) — the table of SPEC §3.
    let matrix: Vec<(Method, &str, u16, u16, u16)> = vec![
        (Method::GET, "/users/me", 200, 200, 200),
        (Method::GET, &by_id, 200, 403, 403),
        (Method::GET, "/orders", 200, 200, 403),
        (Method::POST, "/orders", 200, 200, 403),
        (Method::GET, "/positions", 200, 200, 200),
        (Method::GET, "/admin/users", 200, 403, 403),
    ];
    for (method, path, for_admin, for_trader, for_viewer) in matrix {
        for (who, token, expected) in [
            ("admin", &admin.access_token, for_admin),
            ("trader", &trader.access_token, for_trader),
            ("viewer", &viewer.access_token, for_viewer),
        ] {
            let body = (method == Method::POST).then(|| json!({ "symbol": "INFY", "qty": 1 }));
            let response = app.send_with(method.clone(), path, token, body).await;
            assert_eq!(
                response.status().as_u16(),
                expected,
                "{who} {method} {path}"
            );
            if expected == 403 {
                assert_error(response, 403, "forbidden").await;
            }
        }
        let anonymous = app
            .client
            .request(method.clone(), app.url(path))
            .send()
            .await
            .unwrap();
        assert_error(anonymous, 401, "unauthorized").await;
    }
    // Only the allowed calls reached the backend: 4 proxied routes' worth of 200s.
    assert_eq!(
        upstream.hits(),
        2 + 2 + 3,
        "refused requests never reach the backend"
    );
    // Refusals are audited in the background.
    app.flush_audit().await;
    let audit: Value = app
        .get_with(
            "/admin/audit?action=unauthorized_access",
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        audit["items"].as_array().unwrap().len(),
        6,
        "every 403 is audited as unauthorized_access: {audit}"
    );
}

async fn the_backend_gets_the_callers_identity_and_never_its_credentials(backend: Backend) {
    let upstream = backend::start().await;
    let Some(app) = spawn_app_with(backend, example_setup(&upstream)).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let response = app
        .client
        .get(app.url("/orders?side=buy"))
        .bearer_auth(&admin.access_token)
        .header("cookie", "__Host-access_token=stolen; other=1")
        .header("x-csrf-token", "csrf")
        .header("x-rampart-user-id", "999")
        .header("x-rampart-role", "admin")
        .header("x-rampart-anything", "x")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("connection", "x-hop")
        .header("x-hop", "private to this hop")
        .header("x-request-id", "client-chosen-id-1")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-request-id"],
        "client-chosen-id-1",
        "a well-formed client request id is kept"
    );
    assert!(
        response.headers().get("server").is_none(),
        "no backend banner"
    );
    assert!(
        response.headers().get("x-backend-private").is_none(),
        "hop-by-hop headers the backend names in Connection are dropped"
    );
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    let echo: Value = response.json().await.unwrap();
    let headers = &echo["headers"];
    for gone in [
        "authorization",
        "cookie",
        "x-csrf-token",
        "x-rampart-anything",
        "x-hop",
        "connection",
    ] {
        assert!(
            headers.get(gone).is_none(),
            "{gone} reached the backend: {echo}"
        );
    }
    assert_eq!(echo["path"], "/orders");
    assert_eq!(echo["query"], "side=buy");
    assert_eq!(
        headers["x-rampart-user-id"],
        json!([admin.user_id.to_string()])
    );
    assert_eq!(headers["x-rampart-username"], json!(["admin_1"]));
    assert_eq!(headers["x-rampart-role"], json!(["admin"]));
    assert_eq!(headers["x-request-id"], json!(["client-chosen-id-1"]));
    assert_eq!(headers["x-forwarded-for"], json!(["127.0.0.1"]));
    assert_eq!(
        headers["forwarded"][0]
            .as_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap(),
        "for=127.0.0.1"
    );
    assert_eq!(headers["x-custom"], json!(["kept"]));
}

async fn the_backends_own_answers_pass_unchanged(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(
        &upstream,
        "[[routes]]\npath = \"/status/*\"\nupstream = \"app\"\nauth = false\n\
         [[routes]]\npath = \"/large/*\"\nupstream = \"app\"\nauth = false\n",
        "",
    );
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let response = app.client.get(app.url("/status/404")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({ "backend_says": 404 }),
        "a backend's error body is not rewritten"
    );
    let response = app.client.get(app.url("/status/201")).send().await.unwrap();
    assert_eq!(response.status(), 201);
    // A large body streams through whole.
    let size = 5 * 1024 * 1024;
    let response = app
        .client
        .get(app.url(&format!("/large/{size}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().len(), size);
}

async fn responses_with_personal_data_are_never_cached_and_backends_choose_their_own(
    backend: Backend,
) {
    let upstream = backend::start().await;
    let setup = routes_setup(
        &upstream,
        "[[routes]]\npath = \"/feed/*\"\nupstream = \"app\"\nauth = false\n\
         [[routes]]\npath = \"/admin/reports/*\"\nupstream = \"app\"\nauth = false\n",
        "",
    );
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let cache_control = |response: &reqwest::Response| {
        response
            .headers()
            .get("cache-control")
            .map(|value| value.to_str().unwrap().to_owned())
    };
    // The backend's own policy stands on a public path; without one, nothing is stored.
    let own = app
        .client
        .get(app.url("/feed/a?cacheable"))
        .send()
        .await
        .unwrap();
    assert_eq!(cache_control(&own).as_deref(), Some("public, max-age=60"));
    let silent = app.client.get(app.url("/feed/a")).send().await.unwrap();
    assert_eq!(cache_control(&silent).as_deref(), Some("no-store"));
    // An answer to a request with a credential is that caller's own, wherever it comes
    // from: never cacheable, and no CDN-specific policy survives it.
    for credential in [
        ("authorization", format!("Bearer {}", alice.access_token)),
        ("cookie", "__Host-access_token=x".to_owned()),
        ("x-api-key", "rk_x_y".to_owned()),
    ] {
        let response = app
            .client
            .get(app.url("/feed/a?cacheable"))
            .header(credential.0, credential.1.as_str())
            .send()
            .await
            .unwrap();
        assert_eq!(
            cache_control(&response).as_deref(),
            Some("no-store"),
            "{}",
            credential.0
        );
        assert!(response.headers().get("cdn-cache-control").is_none());
    }
    // Under a private prefix the backend cannot make a response cacheable.
    let private = app
        .client
        .get(app.url("/admin/reports/a?cacheable"))
        .send()
        .await
        .unwrap();
    assert_eq!(private.status(), 200);
    assert_eq!(cache_control(&private).as_deref(), Some("no-store"));
    // A percent-encoded spelling of a private path, served or not, is private too.
    let respelled = app
        .client
        .get(app.url("/%61dmin/reports/a?cacheable"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        cache_control(&respelled).as_deref(),
        Some("no-store"),
        "{}",
        respelled.status()
    );
    // Account and user data, answers and refusals alike.
    let answers = vec![
        app.get_with("/accounts", &alice.access_token).await,
        app.client.get(app.url("/accounts")).send().await.unwrap(),
        app.client.get(app.url("/accounts/1")).send().await.unwrap(),
        app.get_with("/accounts/999", &alice.access_token).await,
        app.get_with("/users/me", &alice.access_token).await,
        app.get_with("/users/me/export", &alice.access_token).await,
        app.client.get(app.url("/users/me")).send().await.unwrap(),
        app.get_with("/admin/users", &alice.access_token).await,
        app.post("/auth/login", &json!({})).await,
    ];
    for response in answers {
        assert_eq!(
            cache_control(&response).as_deref(),
            Some("no-store"),
            "{} {}",
            response.status(),
            response.url()
        );
    }
}

async fn a_hanging_backend_is_answered_504_within_its_timeout(backend: Backend) {
    let upstream = backend::start().await;
    let setup = Setup::toml(&format!(
        "[[routes]]\npath = \"/hang\"\nupstream = \"slow\"\nauth = false\n\
         [[routes]]\npath = \"/nowhere\"\nupstream = \"closed\"\nauth = false\n\
         [upstreams.slow]\nurl = \"{}\"\ntimeout = \"300ms\"\n\
         [upstreams.closed]\nurl = \"http://127.0.0.1:9\"\n",
        upstream.address
    ));
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let started = tokio::time::Instant::now();
    let response = app.client.get(app.url("/hang")).send().await.unwrap();
    assert_error(response, 504, "gateway_timeout").await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered within the timeout, took {:?}",
        started.elapsed()
    );
    let response = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_error(response, 502, "bad_gateway").await;
}

async fn the_circuit_opens_refuses_at_once_then_recovers(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(
        &upstream,
        "[[routes]]\npath = \"/flaky\"\nupstream = \"app\"\nauth = false\n",
        "circuit_breaker = { failures = 3, window = \"30s\", open_for = \"500ms\", half_open_requests = 1 }",
    );
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let get = || async { app.client.get(app.url("/flaky")).send().await.unwrap() };
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("rampart_circuit_breaker_state{upstream=\"app\"} 0"),
        "every circuit shows from the start: {metrics}"
    );
    for series in [
        "rampart_circuit_breaker_opens_total{upstream=\"app\"} 0",
        "rampart_circuit_breaker_opens_total{upstream=\"broker\"} 0",
        "rampart_rate_limit_hits_total{policy=\"anonymous\"} 0",
        "rampart_failed_login_attempts_total 0",
    ] {
        assert!(
            metrics.contains(series),
            "{series} from the start: {metrics}"
        );
    }
    upstream
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(
            get().await.status(),
            500,
            "the backend's 500 passes through"
        );
    }
    let hits = upstream.hits();
    let refused = get().await;
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    assert_error(refused, 503, "service_unavailable").await;
    assert_eq!(
        upstream.hits(),
        hits,
        "an open circuit does not touch the backend"
    );
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("rampart_circuit_breaker_state{upstream=\"app\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rampart_circuit_breaker_opens_total{upstream=\"app\"} 1"),
        "{metrics}"
    );

    // After open_for the next request is a probe; the backend is back, so it closes.
    // Real time: the breaker reads the runtime's clock, which cannot be paused while the
    // gateway serves this test over real sockets on a multi-threaded runtime.
    tokio::time::sleep(Duration::from_millis(600)).await;
    upstream
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(get().await.status(), 200, "the probe passes");
    assert_eq!(get().await.status(), 200, "closed again");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("rampart_circuit_breaker_state{upstream=\"app\"} 0"),
        "{metrics}"
    );

    // A failed probe opens it again at once.
    upstream
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..3 {
        get().await;
    }
    // open_for again, in real time as above.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(get().await.status(), 500, "the probe fails");
    assert_eq!(get().await.status(), 503, "and the circuit is open again");

    let admin = app.user("admin_1").await;
    app.flush_audit().await;
    let audit: Value = app
        .get_with("/admin/audit?action=circuit_opened", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        audit["items"].as_array().unwrap().len() >= 2,
        "each opening is audited: {audit}"
    );
}

async fn bodies_over_the_route_limit_are_refused_413(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(
        &upstream,
        "[[routes]]\npath = \"/small\"\nupstream = \"app\"\nauth = false\nmax_body = \"1KiB\"\n",
        "",
    );
    for mode in ["detect", "off"] {
        let setup = setup.clone().env("RAMPART_INTRUSION__MODE", mode);
        let Some(app) = spawn_app_with(backend, setup).await else {
            return;
        };
        let response = app
            .client
            .post(app.url("/small"))
            .body(vec![b'a'; 2048])
            .send()
            .await
            .unwrap();
        assert_error(response, 413, "payload_too_large").await;
        // Without a length up front: cut off while it streams.
        let chunks = futures::stream::iter(
            (0..4).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a'; 512]))),
        );
        let response = app
            .client
            .post(app.url("/small"))
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_error(response, 413, "payload_too_large").await;
        let response = app
            .client
            .post(app.url("/small"))
            .body(vec![b'a'; 1000])
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "{mode}: a body within the limit passes"
        );
        let echo: Value = response.json().await.unwrap();
        assert_eq!(echo["body_length"], 1000);
    }
    assert_eq!(
        upstream
            .largest_body
            .load(std::sync::atomic::Ordering::SeqCst),
        1000,
        "no oversized body reaches the backend whole"
    );
}

async fn intrusion_patterns_are_detected_or_blocked(backend: Backend) {
    let upstream = backend::start().await;
    let routes = "[[routes]]\npath = \"/echo/*\"\nupstream = \"app\"\nauth = false\n";
    for (mode, expected) in [("detect", 200), ("block", 400), ("off", 200)] {
        let setup = routes_setup(&upstream, routes, "").env("RAMPART_INTRUSION__MODE", mode);
        let Some(app) = spawn_app_with(backend, setup).await else {
            return;
        };
        let attacks: Vec<reqwest::RequestBuilder> = vec![
            app.client
                .get(app.url("/echo/search?q=1%27%20OR%20%271%27%3D%271")),
            app.client
                .post(app.url("/echo/comment"))
                .body(r#"{"text":"<script>alert(1)</script>"}"#),
            app.client
                .get(app.url("/echo/file?name=..%2F..%2Fetc%2Fpasswd")),
            app.client
                .post(app.url("/echo/run"))
                .body(r#"{"cmd":"x; rm -rf /"}"#),
        ];
        for attack in attacks {
            let response = attack.send().await.unwrap();
            assert_eq!(response.status().as_u16(), expected, "{mode}");
            if expected == 400 {
                assert_error(response, 400, "invalid_request").await;
            }
        }
        let benign = app
            .client
            .post(app.url("/echo/order"))
            .body(r#"{"note":"select the best order and update my order"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(benign.status(), 200, "{mode}: ordinary text passes");
        let metrics = app.metrics().await;
        // Every pattern's series exists from start-up; only a match moves it off zero.
        let counted = metrics
            .lines()
            .filter(|line| line.starts_with("rampart_suspicious_requests_total{pattern="))
            .any(|line| !line.ends_with(" 0"));
        assert_eq!(counted, mode != "off", "{mode}: {metrics}");
        if mode == "detect" {
            let admin = app.user("admin_1").await;
            app.flush_audit().await;
            let audit: Value = app
                .get_with(
                    "/admin/audit?action=suspicious_request",
                    &admin.access_token,
                )
                .await
                .json()
                .await
                .unwrap();
            let items = audit["items"].as_array().unwrap();
            assert!(items.len() >= 4, "{audit}");
            assert!(
                !audit.to_string().contains("rm -rf"),
                "the matching text is never recorded: {audit}"
            );
        }
    }
}

async fn ambiguous_paths_and_unrouted_methods_are_refused(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(
        &upstream,
        "[[routes]]\npath = \"/orders\"\nmethods = [\"GET\"]\nupstream = \"app\"\nauth = false\n\
         [[routes]]\npath = \"/admin/*\"\nroles = [\"admin\"]\n",
        "",
    );
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    // Sent as written: an HTTP client library would resolve the dot segments itself.
    for path in [
        "/orders/../admin/users",
        "/orders/./x",
        "/orders/%2e%2e/admin/users",
        "/orders%2F..%2Fadmin",
        "//orders",
    ] {
        let (status, body) = crate::helpers::raw_get(&app.address, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("\"invalid_request\""), "{path}: {body}");
    }
    let response = app.client.delete(app.url("/orders")).send().await.unwrap();
    assert_eq!(response.headers()["allow"], "GET");
    assert_error(response, 405, "invalid_request").await;
    assert_eq!(upstream.hits(), 0);
}

async fn metrics_label_requests_by_route_pattern_never_by_raw_path(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(
        &upstream,
        "[[routes]]\npath = \"/orders/*\"\nupstream = \"app\"\nauth = false\n",
        "",
    );
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    for id in ["17", "secret-user-supplied-id"] {
        let response = app
            .client
            .get(app.url(&format!("/orders/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    app.client
        .get(app.url("/no/such/thing"))
        .send()
        .await
        .unwrap();
    let metrics = app.metrics().await;
    assert!(
        metrics.contains(
            "rampart_http_requests_total{route=\"/orders/*\",method=\"GET\",status=\"200\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("rampart_upstream_duration_seconds_count{upstream=\"app\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rampart_upstream_requests_total{upstream=\"app\",status=\"200\"} 2"),
        "{metrics}"
    );
    // The scrape itself is the one request in flight.
    assert!(
        metrics.contains("\nrampart_http_requests_in_flight 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "rampart_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )),
        "{metrics}"
    );
    assert!(!metrics.contains("secret-user-supplied-id"));
    assert!(!metrics.contains("/no/such/thing"));
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(!text.contains("# EOF"), "the text format, not OpenMetrics");
}

async fn the_demo_places_an_order_through_every_layer(backend: Backend) {
    let sample = rampart::demo::spawn(
        "127.0.0.1:0".parse().unwrap(),
        rampart::demo::trading_backend(),
    )
    .await
    .unwrap();
    let address = format!("http://{sample}");
    let setup = Setup::toml(rampart::demo::EXAMPLE_CONFIG)
        .env("RAMPART_UPSTREAMS__ORDERS__URL", &address)
        .env("RAMPART_UPSTREAMS__POSITIONS__URL", &address);
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let admin = app.user("alice_1").await;
    let order = json!({ "symbol": "INFY", "side": "BUY", "quantity": 10, "price": 1500.5 });
    let placed = app
        .send_with(Method::POST, "/orders", &admin.access_token, Some(order))
        .await;
    assert_eq!(placed.status(), 201);
    let placed: Value = placed.json().await.unwrap();
    assert_eq!(placed["placed_by"], "alice_1");
    assert_eq!(placed["user_id"], admin.user_id);
    let bad = json!({ "symbol": "INFY", "side": "HOLD", "quantity": 0 });
    let refused = app
        .send_with(Method::POST, "/orders", &admin.access_token, Some(bad))
        .await;
    assert_eq!(refused.status(), 400, "the sample backend validates orders");
    let positions: Value = app
        .get_with("/positions", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        positions["items"],
        json!([{ "symbol": "INFY", "quantity": 10 }])
    );
}

async fn programs_must_sign_on_signed_routes(backend: Backend) {
    use crate::api_keys::{Signed, create_key};
    let upstream = backend::start().await;
    let Some(app) = spawn_app_with(backend, example_setup(&upstream)).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let key = create_key(&app, &admin, "bot").await;
    let body = br#"{"symbol":"INFY","side":"BUY","quantity":1}"#;
    // GET /orders is not a signed route: the key alone will do.
    let listed = app
        .client
        .get(app.url("/orders"))
        .header("x-api-key", &key.key)
        .send()
        .await
        .unwrap();
    assert_eq!(listed.status(), 200);
    let unsigned = app
        .client
        .post(app.url("/orders"))
        .header("x-api-key", &key.key)
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_error(unsigned, 401, "unauthorized").await;
    let signed = Signed::new(&app, Method::POST, "/orders", body, &key)
        .send(&app)
        .await;
    assert_eq!(signed.status(), 200, "a signed order goes through");
    let echo: Value = signed.json().await.unwrap();
    assert_eq!(
        echo["headers"]["x-rampart-user-id"],
        json!([admin.user_id.to_string()])
    );
    // The backend can tell a program from a person (SPEC §3).
    assert_eq!(
        echo["headers"]["x-rampart-key-id"],
        json!([key.id.to_string()])
    );
    for gone in ["x-api-key", "authorization"] {
        assert!(
            echo["headers"].get(gone).is_none(),
            "{gone} reached the backend"
        );
    }
    // A bearer token needs no signature there.
    let bearer = app
        .send_with(
            Method::POST,
            "/orders",
            &admin.access_token,
            Some(json!({})),
        )
        .await;
    assert_eq!(bearer.status(), 200);
    let echo: Value = bearer.json().await.unwrap();
    assert!(echo["headers"].get("x-rampart-key-id").is_none(), "{echo}");
    assert_eq!(upstream.hits(), 3);
}

async fn probes_pass_a_catch_all_route_unauthenticated(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(
        &upstream,
        "[[routes]]\npath = \"/*\"\nroles = [\"admin\"]\nrate_limit = \"1/min\"\n",
        "",
    );
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    for _ in 0..3 {
        for path in ["/healthz", "/readyz", "/metrics"] {
            let response = app.client.get(app.url(path)).send().await.unwrap();
            assert_eq!(response.status(), 200, "{path}");
        }
    }
    let response = app.client.get(app.url("/users/me")).send().await.unwrap();
    assert_error(response, 401, "unauthorized").await;
}

async fn roles_can_be_redefined_and_added_in_config(backend: Backend) {
    let upstream = backend::start().await;
    // Viewers lose positions:read; a new role gets only that.
    let setup = example_setup(&upstream).env("RAMPART_ROLES__VIEWER", "users:read,orders:read");
    let mut setup = setup;
    setup
        .toml
        .push_str("\n[roles]\nanalyst = [\"users:read\", \"positions:read\"]\n");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let analyst_id = app.register("analyst_1").await["id"].as_i64().unwrap();
    promote(&app, &admin.access_token, analyst_id, "analyst").await;
    app.register("viewer_1").await;
    let analyst = app.login("analyst_1").await;
    let viewer = app.login("viewer_1").await;
    let positions = app.get_with("/positions", &analyst.access_token).await;
    assert_eq!(positions.status(), 200, "analyst has positions:read");
    let orders = app.get_with("/orders", &analyst.access_token).await;
    assert_error(orders, 403, "forbidden").await;
    let positions = app.get_with("/positions", &viewer.access_token).await;
    assert_error(positions, 403, "forbidden").await;
}

crate::on_databases!(
    responses_with_personal_data_are_never_cached_and_backends_choose_their_own,
    roles_can_be_redefined_and_added_in_config,
    probes_pass_a_catch_all_route_unauthenticated,
    programs_must_sign_on_signed_routes,
    the_demo_places_an_order_through_every_layer,
    the_shipped_route_matrix_holds_for_every_role,
    the_backend_gets_the_callers_identity_and_never_its_credentials,
    the_backends_own_answers_pass_unchanged,
    a_hanging_backend_is_answered_504_within_its_timeout,
    the_circuit_opens_refuses_at_once_then_recovers,
    bodies_over_the_route_limit_are_refused_413,
    intrusion_patterns_are_detected_or_blocked,
    ambiguous_paths_and_unrouted_methods_are_refused,
    metrics_label_requests_by_route_pattern_never_by_raw_path,
);
