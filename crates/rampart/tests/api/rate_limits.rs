//! Rate limits (SPEC §4): tiers per IP and per user, route limits on top, the IETF
//! `RateLimit` fields, a budget shared through Redis, and what happens when Redis fails.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::backend;
use crate::gateway::routes_setup;
use crate::helpers::{Backend, Setup, TestApp, assert_error, redis_url, spawn_app_with};

const ECHO: &str = "[[routes]]\npath = \"/echo/*\"\nupstream = \"app\"\nauth = false\n\
                    [[routes]]\npath = \"/echo/limited\"\nupstream = \"app\"\nauth = false\n\
                    rate_limit = \"2/min\"\n";

/// One policy's entry in a `RateLimit` or `RateLimit-Policy` field: name and parameters.
type PolicyItem = (String, BTreeMap<String, i64>);

/// Parses every line of a Structured Fields List header (RFC 9651), as a client would.
fn structured_list(response: &reqwest::Response, name: &str) -> Vec<PolicyItem> {
    let joined = response
        .headers()
        .get_all(name)
        .iter()
        .map(|value| value.to_str().expect("ASCII"))
        .collect::<Vec<_>>()
        .join(", ");
    let list: sfv::List = sfv::Parser::new(&joined)
        .parse()
        .unwrap_or_else(|error| panic!("{name}: {joined:?} is not a structured list: {error}"));
    list.into_iter()
        .map(|entry| match entry {
            sfv::ListEntry::Item(item) => {
                let policy = item
                    .bare_item
                    .as_string()
                    .expect("policy names are strings")
                    .as_str()
                    .to_owned();
                let params = item
                    .params
                    .iter()
                    .map(|(key, value)| {
                        let value = value.as_integer().expect("integer parameters");
                        (key.as_str().to_owned(), i64::from(value))
                    })
                    .collect();
                (policy, params)
            }
            sfv::ListEntry::InnerList(_) => panic!("{name}: unexpected inner list"),
        })
        .collect()
}

fn param(items: &[PolicyItem], policy: &str, key: &str) -> i64 {
    items
        .iter()
        .find(|(name, _)| name == policy)
        .unwrap_or_else(|| panic!("no {policy} in {items:?}"))
        .1[key]
}

async fn get(app: &TestApp, path: &str) -> reqwest::Response {
    app.client.get(app.url(path)).send().await.unwrap()
}

async fn audit(app: &TestApp, token: &str, action: &str) -> Vec<Value> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let body: Value = app
        .get_with(&format!("/admin/audit?action={action}"), token)
        .await
        .json()
        .await
        .unwrap();
    body["items"].as_array().unwrap().clone()
}

async fn anonymous_callers_are_limited_per_ip_whatever_they_claim(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(&upstream, ECHO, "").env("RAMPART_RATE_LIMITS__ANONYMOUS", "5/min");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    // The admin's own requests are counted per user, not against the IP.
    app.register("admin_1").await;
    let admin = app.login("admin_1").await;
    let first = get(&app, "/echo/a").await;
    assert_eq!(first.status(), 200);
    let policies = structured_list(&first, "ratelimit-policy");
    assert_eq!(param(&policies, "anonymous", "q"), 5);
    assert_eq!(param(&policies, "anonymous", "w"), 60);
    let limits = structured_list(&first, "ratelimit");
    // Two of the five went to registering and logging in.
    assert_eq!(param(&limits, "anonymous", "r"), 2);
    assert!((1..=60).contains(&param(&limits, "anonymous", "t")));

    assert_eq!(get(&app, "/echo/b").await.status(), 200);
    assert_eq!(get(&app, "/echo/c").await.status(), 200);
    let refused = get(&app, "/echo/d").await;
    assert_eq!(
        refused.headers()["retry-after"],
        "12",
        "one request per 12 s"
    );
    let limits = structured_list(&refused, "ratelimit");
    assert_eq!(param(&limits, "anonymous", "r"), 0);
    assert_error(refused, 429, "rate_limited").await;

    // A client cannot pick its IP: the peer is not a trusted proxy.
    for spoofed in ["1.2.3.4", "10.0.0.1, 1.2.3.4", "::1"] {
        let response = app
            .client
            .get(app.url("/echo/e"))
            .header("x-forwarded-for", spoofed)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 429, "X-Forwarded-For: {spoofed}");
    }
    // Probes and scrapers never spend a budget.
    assert_eq!(get(&app, "/healthz").await.status(), 200);
    assert_eq!(get(&app, "/metrics").await.status(), 200);

    // The bucket refills evenly: one more request every 12 s.
    app.limiter_time.advance(Duration::from_secs(12));
    assert_eq!(get(&app, "/echo/f").await.status(), 200);
    assert_eq!(get(&app, "/echo/g").await.status(), 429);

    for _ in 0..20 {
        get(&app, "/echo/flood").await;
    }
    let rows = audit(&app, &admin.access_token, "rate_limit_exceeded").await;
    assert_eq!(rows.len(), 1, "a flood is one audit row a minute: {rows:?}");
    assert_eq!(rows[0]["details"]["policy"], "anonymous");
    let metrics = app.metrics().await;
    assert!(
        metrics.contains("rampart_rate_limit_hits_total{policy=\"anonymous\"} 25"),
        "{metrics}"
    );
}

async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(&upstream, ECHO, "")
        .env("RAMPART_RATE_LIMITS__ANONYMOUS", "2/min")
        .env("RAMPART_SERVER__TRUSTED_PROXIES", "127.0.0.1/32");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let from = |chain: &'static str| {
        app.client
            .get(app.url("/echo/x"))
            .header("x-forwarded-for", chain)
            .send()
    };
    assert_eq!(from("203.0.113.7").await.unwrap().status(), 200);
    assert_eq!(from("203.0.113.7").await.unwrap().status(), 200);
    assert_eq!(from("203.0.113.7").await.unwrap().status(), 429);
    // The right-most untrusted entry is the client: what it prepends changes nothing.
    assert_eq!(
        from("198.51.100.1, 203.0.113.7").await.unwrap().status(),
        429
    );
    assert_eq!(from("198.51.100.9").await.unwrap().status(), 200);
}

async fn users_are_limited_by_tier_and_routes_add_their_own_limit(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(&upstream, ECHO, "")
        .env("RAMPART_RATE_LIMITS__STANDARD", "4/min")
        .env("RAMPART_RATE_LIMITS__PREMIUM", "8/min");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let premium_id = app.register("premium_1").await["id"].as_i64().unwrap();
    let patched = app
        .send_with(
            Method::PATCH,
            &format!("/admin/users/{premium_id}"),
            &admin.access_token,
            Some(json!({ "tier": "premium" })),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let premium = app.login("premium_1").await;
    app.register("standard_1").await;
    let standard = app.login("standard_1").await;

    // The admin has spent one of four on the PATCH.
    for _ in 0..3 {
        let response = app.get_with("/echo/x", &admin.access_token).await;
        assert_eq!(response.status(), 200);
    }
    let refused = app.get_with("/echo/x", &admin.access_token).await;
    assert_eq!(
        param(
            &structured_list(&refused, "ratelimit-policy"),
            "standard",
            "q"
        ),
        4
    );
    assert_error(refused, 429, "rate_limited").await;

    for i in 0..8 {
        let response = app.get_with("/echo/x", &premium.access_token).await;
        assert_eq!(response.status(), 200, "premium request {i}");
    }
    assert_eq!(
        app.get_with("/echo/x", &premium.access_token)
            .await
            .status(),
        429
    );

    // The route's own 2/min applies on top of the tier, per caller.
    for _ in 0..2 {
        let response = app.get_with("/echo/limited", &standard.access_token).await;
        assert_eq!(response.status(), 200);
    }
    let refused = app.get_with("/echo/limited", &standard.access_token).await;
    let policies = structured_list(&refused, "ratelimit-policy");
    assert_eq!(param(&policies, "standard", "q"), 4);
    assert_eq!(param(&policies, "route:* /echo/limited", "q"), 2);
    let limits = structured_list(&refused, "ratelimit");
    assert_eq!(param(&limits, "route:* /echo/limited", "r"), 0);
    assert_eq!(refused.headers()["retry-after"], "30");
    assert_error(refused, 429, "rate_limited").await;
    // The tier still has room for other routes.
    assert_eq!(
        app.get_with("/echo/other", &standard.access_token)
            .await
            .status(),
        200
    );
}

async fn two_instances_share_one_budget_through_redis(backend: Backend) {
    if !crate::helpers::redis_reachable().await {
        return;
    }
    let upstream = backend::start().await;
    let prefix = format!("rt:{}:", ulid::Ulid::new());
    let setup = Setup {
        redis_prefix: Some(prefix),
        ..routes_setup(&upstream, ECHO, "")
            .env("RAMPART_RATE_LIMITS__STORE", &redis_url())
            .env("RAMPART_RATE_LIMITS__ANONYMOUS", "6/min")
    };
    let Some(first) = spawn_app_with(backend, setup.clone()).await else {
        return;
    };
    let Some(second) = spawn_app_with(backend, setup).await else {
        return;
    };
    for i in 0..6 {
        let app = if i % 2 == 0 { &first } else { &second };
        assert_eq!(get(app, "/echo/x").await.status(), 200, "request {i}");
    }
    for app in [&first, &second] {
        let refused = get(app, "/echo/x").await;
        assert_eq!(
            param(&structured_list(&refused, "ratelimit"), "anonymous", "r"),
            0
        );
        assert_error(refused, 429, "rate_limited").await;
    }
}

/// A Redis server of the test's own, so that stopping it harms no other test.
struct OwnRedis {
    child: std::process::Child,
    url: String,
}

impl OwnRedis {
    async fn start() -> Option<Self> {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let child = match std::process::Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(error) => {
                assert!(
                    std::env::var("CI").is_err()
                        && std::env::var("RAMPART_TEST_SKIP_REDIS").is_ok(),
                    "redis-server is needed to test a Redis failure: {error}"
                );
                eprintln!("\n!!! SKIPPED: no redis-server binary ({error}) !!!\n");
                return None;
            }
        };
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Some(Self { child, url });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on port {port}");
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn when_redis_fails_on_store_error_decides(backend: Backend) {
    let upstream = backend::start().await;
    for policy in ["local", "deny"] {
        let Some(mut redis) = OwnRedis::start().await else {
            return;
        };
        let setup = routes_setup(&upstream, ECHO, "")
            .env("RAMPART_RATE_LIMITS__STORE", &redis.url)
            .env("RAMPART_RATE_LIMITS__ON_STORE_ERROR", policy)
            .env("RAMPART_RATE_LIMITS__ANONYMOUS", "3/min");
        let Some(app) = spawn_app_with(backend, setup).await else {
            return;
        };
        for _ in 0..3 {
            assert_eq!(get(&app, "/echo/x").await.status(), 200, "{policy}");
        }
        assert_eq!(
            get(&app, "/echo/x").await.status(),
            429,
            "{policy}: Redis decides"
        );
        redis.stop();
        match policy {
            "local" => {
                // This instance's own limiter takes over, with its own (fresh) buckets.
                for _ in 0..3 {
                    assert_eq!(get(&app, "/echo/x").await.status(), 200, "{policy}");
                }
                assert_eq!(get(&app, "/echo/x").await.status(), 429, "still limited");
            }
            _ => {
                let response = get(&app, "/echo/x").await;
                assert_error(response, 503, "service_unavailable").await;
            }
        }
        assert_eq!(get(&app, "/healthz").await.status(), 200);
    }
}

crate::on_databases!(
    anonymous_callers_are_limited_per_ip_whatever_they_claim,
    behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget,
    users_are_limited_by_tier_and_routes_add_their_own_limit,
    two_instances_share_one_budget_through_redis,
    when_redis_fails_on_store_error_decides,
);
