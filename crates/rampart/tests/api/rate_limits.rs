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
    app.flush_audit().await;
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
            // A child process starting up: poll until it accepts.
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

/// Trusts the test client as a proxy, so that each case can speak for its own client
/// address through `X-Forwarded-For`.
const TRUSTED_LOOPBACK: &str = r#"["::1/128", "127.0.0.0/8"]"#;

/// The refused-credential body every failure gets, whatever its reason.
async fn uniform_401(response: reqwest::Response, description: &str) -> Value {
    assert_eq!(response.status(), 401, "{description}");
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"rampart\", error=\"invalid_token\"",
        "{description}"
    );
    let body = assert_error(response, 401, "unauthorized").await;
    json!({ "error": body["error"], "message": body["message"] })
}

/// Sends `attempt` as the client `ip` `budget` times, each refused with the same 401, then
/// once more, refused with 429 because the anonymous budget is spent.
pub async fn assert_failures_spend_the_budget(
    ip: &str,
    budget: usize,
    description: &str,
    attempt: &dyn Fn() -> reqwest::RequestBuilder,
) -> Value {
    let mut seen: Option<Value> = None;
    for i in 0..budget {
        let response = attempt()
            .header("x-forwarded-for", ip)
            .send()
            .await
            .unwrap();
        let body = uniform_401(response, &format!("{description}, attempt {i}")).await;
        if let Some(seen) = &seen {
            assert_eq!(&body, seen, "{description}: one body for every failure");
        }
        seen = Some(body);
    }
    let refused = attempt()
        .header("x-forwarded-for", ip)
        .send()
        .await
        .unwrap();
    assert_eq!(
        param(&structured_list(&refused, "ratelimit"), "anonymous", "r"),
        0,
        "{description}"
    );
    assert_error(refused, 429, "rate_limited").await;
    seen.expect("at least one attempt")
}

/// The value of one series in the `/metrics` text.
pub fn series(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {name} in\n{metrics}"))
}

async fn refused_credentials_spend_the_anonymous_budget(backend: Backend, store: Option<String>) {
    let upstream = backend::start().await;
    let mut setup = routes_setup(&upstream, ECHO, "")
        .env("RAMPART_RATE_LIMITS__ANONYMOUS", "4/min")
        .env("RAMPART_SERVER__TRUSTED_PROXIES", TRUSTED_LOOPBACK);
    if let Some(store) = &store {
        setup = setup.env("RAMPART_RATE_LIMITS__STORE", store);
    }
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let revoked = app.login("admin_1").await;
    let logout = app
        .send_with(Method::POST, "/auth/logout", &revoked.access_token, None)
        .await;
    assert_eq!(logout.status(), 204);
    let key = crate::api_keys::create_key(&app, &admin, "bot").await;
    let unknown_key = format!("rk_{}_{}", "0".repeat(16), "1".repeat(64));
    let me = app.url("/users/me");
    let echo = app.url("/echo/x");
    let client = &app.client;

    type Attempt<'a> = Box<dyn Fn() -> reqwest::RequestBuilder + 'a>;
    let cases: [(&str, &str, &str, Attempt<'_>); 7] = [
        (
            "203.0.113.1",
            "bearer",
            "a bearer that is no JWT",
            Box::new(|| client.get(&me).bearer_auth("not-a-jwt")),
        ),
        (
            "203.0.113.2",
            "bearer",
            "another scheme",
            Box::new(|| {
                client
                    .get(&me)
                    .header("authorization", "Basic YWRtaW46cHc=")
            }),
        ),
        (
            "203.0.113.3",
            "bearer",
            "a revoked token",
            Box::new(|| client.get(&me).bearer_auth(&revoked.access_token)),
        ),
        (
            "203.0.113.4",
            "cookie",
            "a forged session cookie",
            Box::new(|| {
                client
                    .get(&me)
                    .header("cookie", "__Host-access_token=forged")
            }),
        ),
        (
            "203.0.113.5",
            "api_key",
            "a malformed API key",
            Box::new(|| client.get(&echo).header("x-api-key", "rk_nope")),
        ),
        (
            "203.0.113.6",
            "api_key",
            "an unknown API key on a public route",
            Box::new(|| client.get(&echo).header("x-api-key", &unknown_key)),
        ),
        (
            "203.0.113.7",
            "ambiguous",
            "a bearer and an API key together",
            Box::new(|| {
                client
                    .get(&me)
                    .bearer_auth(&admin.access_token)
                    .header("x-api-key", &key.key)
            }),
        ),
    ];
    let mut reference: Option<Value> = None;
    for (ip, _, description, attempt) in &cases {
        let body = assert_failures_spend_the_budget(ip, 4, description, attempt.as_ref()).await;
        if let Some(reference) = &reference {
            assert_eq!(
                &body, reference,
                "{description}: the same 401 as every other"
            );
        }
        reference = Some(body);
    }
    // Once the budget is spent, an API key is refused before it is looked up: even the
    // owner's valid key, not used before, from that address; from another it still works.
    let valid = || client.get(&me).header("x-api-key", &key.key);
    let refused = valid()
        .header("x-forwarded-for", "203.0.113.6")
        .send()
        .await
        .unwrap();
    assert_error(refused, 429, "rate_limited").await;
    let accepted = valid()
        .header("x-forwarded-for", "203.0.113.99")
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    // A valid key is charged only while it is looked up: many in a row cost nothing.
    for i in 0..10 {
        let response = valid()
            .header("x-forwarded-for", "203.0.113.98")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "valid key request {i}");
    }

    // Concurrent guesses: however many are in flight, the budget lets exactly four be
    // answered 401; the rest are 429.
    let guesses = (0..20).map(|_| {
        client
            .get(&echo)
            .header("x-api-key", &unknown_key)
            .header("x-forwarded-for", "203.0.113.50")
            .send()
    });
    let mut statuses: Vec<u16> = futures::future::join_all(guesses)
        .await
        .into_iter()
        .map(|response| response.unwrap().status().as_u16())
        .collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [[401; 4].as_slice(), &[429; 16]].concat());

    let metrics = app.metrics().await;
    // Tokens and cookies are checked (and counted) before the limiter refuses; API keys
    // are refused before they are checked.
    for (reason, expected) in [
        ("bearer", 15),
        ("cookie", 5),
        ("api_key", 12),
        ("ambiguous", 5),
    ] {
        assert_eq!(
            series(
                &metrics,
                &format!("rampart_auth_failures_total{{reason=\"{reason}\"}}")
            ),
            expected,
            "{reason}"
        );
    }
    assert_eq!(
        series(
            &metrics,
            "rampart_jwt_validation_failures_total{reason=\"malformed\"}"
        ),
        15,
        "the JWT reasons are still counted"
    );
    assert_eq!(
        series(
            &metrics,
            "rampart_jwt_validation_failures_total{reason=\"revoked\"}"
        ),
        5
    );
    let rows = audit(&app, &admin.access_token, "auth_failed").await;
    for (ip, reason, description, _) in &cases {
        let mine: Vec<&Value> = rows.iter().filter(|row| row["ip_address"] == *ip).collect();
        assert_eq!(
            mine.len(),
            1,
            "{description}: one row a minute per client: {rows:?}"
        );
        assert_eq!(mine[0]["details"]["reason"], *reason, "{description}");
        assert!(mine[0]["user_id"].is_null(), "{description}");
    }
    // A minute on, the next failure opens a new row standing for those held back.
    app.clock.advance(Duration::from_secs(61));
    let late = client
        .get(&me)
        .bearer_auth("not-a-jwt")
        .header("x-forwarded-for", "203.0.113.1")
        .send()
        .await
        .unwrap();
    assert_error(late, 429, "rate_limited").await;
    let rows = audit(&app, &admin.access_token, "auth_failed").await;
    let mine: Vec<&Value> = rows
        .iter()
        .filter(|row| row["ip_address"] == "203.0.113.1")
        .collect();
    assert_eq!(mine.len(), 2, "{rows:?}");
    assert!(
        mine.iter()
            .any(|row| row["details"]["failures_since_last_entry"] == 4),
        "{mine:?}"
    );
}

async fn refused_credentials_spend_the_anonymous_budget_in_memory(backend: Backend) {
    refused_credentials_spend_the_anonymous_budget(backend, None).await;
}

async fn refused_credentials_spend_the_anonymous_budget_in_redis(backend: Backend) {
    if !crate::helpers::redis_reachable().await {
        return;
    }
    refused_credentials_spend_the_anonymous_budget(backend, Some(redis_url())).await;
}

fn register_body(username: &str) -> Value {
    json!({
        "username": username,
        "email": format!("{username}@example.com"),
        "password": crate::helpers::STRONG_PASSWORD,
    })
}

async fn register_with(app: &TestApp, username: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = app
        .client
        .post(app.url("/auth/register"))
        .json(&register_body(username));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// Registers in a chain, each registration carrying the previous user's valid token:
/// `allowed` succeed, the next is refused under the register route's limit.
async fn assert_registration_chain_is_limited(app: &TestApp, allowed: usize, policy: &str) {
    let mut token: Option<String> = None;
    for i in 0..allowed {
        let username = format!("chain_{i}");
        let response = register_with(app, &username, token.as_deref()).await;
        assert_eq!(response.status(), 201, "registration {i}");
        token = Some(app.login(&username).await.access_token);
    }
    let refused = register_with(app, "chain_last", token.as_deref()).await;
    assert_eq!(
        param(&structured_list(&refused, "ratelimit"), policy, "r"),
        0,
        "{policy}"
    );
    assert_error(refused, 429, "rate_limited").await;
}

async fn a_token_never_lifts_the_per_ip_limit_of_registration(backend: Backend) {
    let upstream = backend::start().await;
    // Built in, with no [[routes]] at all.
    let Some(app) = spawn_app_with(backend, Setup::default().with_identity_limits()).await else {
        return;
    };
    assert_registration_chain_is_limited(&app, 5, "route:POST /auth/register").await;
    // The shipped example, whose entry says the same.
    let Some(app) = spawn_app_with(backend, crate::gateway::example_setup(&upstream)).await else {
        return;
    };
    assert_registration_chain_is_limited(&app, 5, "route:POST /auth/register").await;
    // An entry that asks for per-user budgets on registration still gets one per address.
    let routes = "[[routes]]\npath = \"/auth/register\"\nmethods = [\"POST\"]\nauth = false\n\
                  rate_limit = \"3/min\"\nper = \"user\"\n";
    let setup = routes_setup(&upstream, routes, "").with_identity_limits();
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    assert_registration_chain_is_limited(&app, 3, "route:POST /auth/register").await;
    // Logging in with a token in hand is per address too: ten, then refused.
    let Some(app) = spawn_app_with(backend, Setup::default().with_identity_limits()).await else {
        return;
    };
    let session = app.user("alice_1").await;
    for i in 1..10 {
        let response = app
            .client
            .post(app.url("/auth/login"))
            .bearer_auth(&session.access_token)
            .json(&json!({ "username": "alice_1", "password": crate::helpers::STRONG_PASSWORD }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "login {i}");
    }
    let refused = app
        .client
        .post(app.url("/auth/login"))
        .bearer_auth(&session.access_token)
        .json(&json!({ "username": "alice_1", "password": crate::helpers::STRONG_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_error(refused, 429, "rate_limited").await;
}

/// Sends `POST path` `allowed` times expecting `status`, then once more expecting 429 under
/// `policy`.
async fn assert_post_limited(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    body: &Value,
    allowed: usize,
    status: u16,
    policy: &str,
) {
    let send = || {
        let mut request = app.client.post(app.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    for i in 0..allowed {
        let response = send().await.unwrap();
        assert_eq!(response.status(), status, "{path} {i}");
        let policies = structured_list(&response, "ratelimit-policy");
        assert_eq!(
            param(&policies, policy, "q"),
            i64::try_from(allowed).unwrap(),
            "{path}"
        );
    }
    let refused = send().await.unwrap();
    assert_eq!(
        param(&structured_list(&refused, "ratelimit"), policy, "r"),
        0,
        "{path}"
    );
    assert_error(refused, 429, "rate_limited").await;
}

async fn the_identity_routes_have_builtin_limits_whatever_the_routes_list(backend: Backend) {
    let upstream = backend::start().await;
    for (label, setup) in [
        ("no [[routes]]", Setup::default()),
        ("proxied routes only", routes_setup(&upstream, ECHO, "")),
    ] {
        let Some(app) = spawn_app_with(backend, setup.with_identity_limits()).await else {
            return;
        };
        let alice = app.user("alice_1").await;
        let bob = app.user("bob_1").await;
        // Two registrations and two logins are spent.
        for i in 0..3 {
            let response = app
                .post("/auth/register", &register_body(&format!("u_{i}")))
                .await;
            assert_eq!(response.status(), 201, "{label}: registration {i}");
        }
        assert_error(
            app.post("/auth/register", &register_body("u_last")).await,
            429,
            "rate_limited",
        )
        .await;
        let login = json!({ "username": "alice_1", "password": crate::helpers::STRONG_PASSWORD });
        for i in 0..8 {
            assert_eq!(
                app.post("/auth/login", &login).await.status(),
                200,
                "{label}: {i}"
            );
        }
        assert_error(app.post("/auth/login", &login).await, 429, "rate_limited").await;
        let refresh = json!({ "refresh_token": "not-a-refresh-token" });
        assert_post_limited(
            &app,
            "/auth/refresh",
            None,
            &refresh,
            20,
            401,
            "route:POST /auth/refresh",
        )
        .await;
        // Per user: Alice's spent budget leaves Bob's whole.
        assert_post_limited(
            &app,
            "/accounts/999/refresh",
            Some(&alice.access_token),
            &json!({}),
            20,
            404,
            "route:POST /accounts/:id/refresh",
        )
        .await;
        let response = app
            .send_with(
                Method::POST,
                "/accounts/998/refresh",
                &bob.access_token,
                None,
            )
            .await;
        assert_eq!(response.status(), 404, "{label}");
    }
}

async fn a_routes_entry_overrides_a_builtin_limit_but_never_drops_it(backend: Backend) {
    let upstream = backend::start().await;
    let routes = "[[routes]]\npath = \"/auth/register\"\nmethods = [\"POST\"]\nauth = false\n\
                  rate_limit = \"2/min\"\n\
                  [[routes]]\npath = \"/auth/login\"\nmethods = [\"POST\"]\nauth = false\n\
                  [[routes]]\npath = \"/accounts/{account}/refresh\"\nmethods = [\"POST\"]\n\
                  rate_limit = \"3/min\"\nper = \"ip\"\n";
    let setup = routes_setup(&upstream, routes, "").with_identity_limits();
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let second = app.login("alice_1").await.access_token;
    // The register entry's own 2/min replaces the built-in 5/min (one is spent).
    let response = app.post("/auth/register", &register_body("bob_1")).await;
    assert_eq!(response.status(), 201);
    assert_error(
        app.post("/auth/register", &register_body("carol_1")).await,
        429,
        "rate_limited",
    )
    .await;
    // The login entry has no limit of its own: the built-in 10/min stays (two are spent).
    let login = json!({ "username": "alice_1", "password": crate::helpers::STRONG_PASSWORD });
    for i in 0..8 {
        assert_eq!(
            app.post("/auth/login", &login).await.status(),
            200,
            "login {i}"
        );
    }
    assert_error(app.post("/auth/login", &login).await, 429, "rate_limited").await;
    // 3/min per address: two sessions of one address share it.
    for (i, token) in [&alice.access_token, &second, &alice.access_token]
        .into_iter()
        .enumerate()
    {
        let response = app
            .send_with(Method::POST, "/accounts/5/refresh", token, None)
            .await;
        assert_eq!(response.status(), 404, "refresh {i}");
    }
    let refused = app
        .send_with(Method::POST, "/accounts/5/refresh", &second, None)
        .await;
    assert_eq!(
        param(
            &structured_list(&refused, "ratelimit-policy"),
            "route:POST /accounts/:account/refresh",
            "q"
        ),
        3
    );
    assert_error(refused, 429, "rate_limited").await;
}

async fn per_ip_user_and_key_each_name_whose_budget_a_route_limit_is(backend: Backend) {
    let upstream = backend::start().await;
    let routes = "[[routes]]\npath = \"/echo/ip\"\nupstream = \"app\"\nauth = false\n\
                  rate_limit = \"2/min\"\nper = \"ip\"\n\
                  [[routes]]\npath = \"/echo/user\"\nupstream = \"app\"\nauth = false\n\
                  rate_limit = \"2/min\"\n\
                  [[routes]]\npath = \"/echo/key\"\nupstream = \"app\"\nauth = false\n\
                  rate_limit = \"2/min\"\nper = \"key\"\n";
    let Some(app) = spawn_app_with(backend, routes_setup(&upstream, routes, "")).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let bob = app.user("bob_1").await;
    let first_key = crate::api_keys::create_key(&app, &alice, "one").await;
    let second_key = crate::api_keys::create_key(&app, &alice, "two").await;
    let as_token = |path: &str, token: &str| app.client.get(app.url(path)).bearer_auth(token);
    let as_key = |path: &str, key: &str| app.client.get(app.url(path)).header("x-api-key", key);
    let anonymous = |path: &str| app.client.get(app.url(path));
    let status = |request: reqwest::RequestBuilder| async move {
        request.send().await.unwrap().status().as_u16()
    };

    // per = "ip": every caller of one address shares one budget.
    assert_eq!(status(as_token("/echo/ip", &alice.access_token)).await, 200);
    assert_eq!(status(as_token("/echo/ip", &bob.access_token)).await, 200);
    assert_eq!(status(as_key("/echo/ip", &first_key.key)).await, 429);
    assert_eq!(status(anonymous("/echo/ip")).await, 429);

    // per = "user" (the default): each user has one; anonymous callers share the address's.
    for _ in 0..2 {
        assert_eq!(
            status(as_token("/echo/user", &alice.access_token)).await,
            200
        );
    }
    assert_eq!(
        status(as_key("/echo/user", &first_key.key)).await,
        429,
        "a key is its user"
    );
    assert_eq!(status(as_token("/echo/user", &bob.access_token)).await, 200);
    for _ in 0..2 {
        assert_eq!(status(anonymous("/echo/user")).await, 200);
    }
    assert_eq!(status(anonymous("/echo/user")).await, 429);

    // per = "key": each API key has one; tokens fall back to the user's.
    for _ in 0..2 {
        assert_eq!(status(as_key("/echo/key", &first_key.key)).await, 200);
    }
    assert_eq!(status(as_key("/echo/key", &first_key.key)).await, 429);
    assert_eq!(status(as_key("/echo/key", &second_key.key)).await, 200);
    assert_eq!(
        status(as_token("/echo/key", &alice.access_token)).await,
        200
    );
    assert_eq!(
        status(as_token("/echo/key", &alice.access_token)).await,
        200
    );
    assert_eq!(
        status(as_token("/echo/key", &alice.access_token)).await,
        429
    );
}

async fn ipv6_clients_are_limited_per_prefix(backend: Backend, store: Option<String>) {
    let upstream = backend::start().await;
    for (prefix, shared) in [(None, true), (Some("128"), false), (Some("48"), true)] {
        let mut setup = routes_setup(&upstream, ECHO, "")
            .env("RAMPART_RATE_LIMITS__ANONYMOUS", "3/min")
            .env("RAMPART_SERVER__TRUSTED_PROXIES", TRUSTED_LOOPBACK);
        if let Some(prefix) = prefix {
            setup = setup.env("RAMPART_RATE_LIMITS__IPV6_PREFIX", prefix);
        }
        if let Some(store) = &store {
            setup = setup.env("RAMPART_RATE_LIMITS__STORE", store);
        }
        let Some(app) = spawn_app_with(backend, setup).await else {
            return;
        };
        let app = &app;
        let from = |ip: &'static str| async move {
            app.client
                .get(app.url("/echo/x"))
                .header("x-forwarded-for", ip)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        };
        // Three addresses of one /64 rotate through one budget.
        assert_eq!(from("2001:db8::1").await, 200, "{prefix:?}");
        assert_eq!(from("2001:db8::2").await, 200, "{prefix:?}");
        assert_eq!(from("2001:db8::ffff:1:2:3").await, 200, "{prefix:?}");
        let fourth = from("2001:db8::4").await;
        assert_eq!(
            fourth == 429,
            shared,
            "{prefix:?}: a fourth address of the /64"
        );
        // Another /64 of the same /48.
        let neighbour = from("2001:db8:0:1::1").await;
        assert_eq!(
            neighbour == 429,
            prefix == Some("48"),
            "{prefix:?}: the next /64"
        );
        // IPv4 clients are still limited per address.
        for _ in 0..3 {
            assert_eq!(from("198.51.100.1").await, 200, "{prefix:?}");
        }
        assert_eq!(from("198.51.100.1").await, 429, "{prefix:?}");
        assert_eq!(from("198.51.100.2").await, 200, "{prefix:?}");
    }
}

async fn ipv6_clients_are_limited_per_prefix_in_memory(backend: Backend) {
    ipv6_clients_are_limited_per_prefix(backend, None).await;
}

async fn ipv6_clients_are_limited_per_prefix_in_redis(backend: Backend) {
    if !crate::helpers::redis_reachable().await {
        return;
    }
    ipv6_clients_are_limited_per_prefix(backend, Some(redis_url())).await;
}

async fn the_metrics_alerts_use_exist_at_zero_from_start_up(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(&upstream, ECHO, "").with_identity_limits();
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let metrics = app.metrics().await;
    for policy in [
        "anonymous",
        "standard",
        "premium",
        "route:* /echo/limited",
        "route:POST /auth/register",
        "route:POST /auth/login",
        "route:POST /auth/refresh",
        "route:POST /accounts/:id/refresh",
    ] {
        let name = format!("rampart_rate_limit_hits_total{{policy=\"{policy}\"}}");
        assert_eq!(series(&metrics, &name), 0, "{name}");
    }
    for reason in [
        "malformed",
        "wrong_algorithm",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "invalid_claims",
        "revoked",
    ] {
        let name = format!("rampart_jwt_validation_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(series(&metrics, &name), 0, "{name}");
    }
    for reason in [
        "bearer",
        "cookie",
        "api_key",
        "signature",
        "timestamp",
        "nonce",
        "replay",
        "ambiguous",
        "csrf",
    ] {
        let name = format!("rampart_auth_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(series(&metrics, &name), 0, "{name}");
    }
    for pattern in [
        "sql_injection",
        "xss",
        "path_traversal",
        "command_injection",
    ] {
        let name = format!("rampart_suspicious_requests_total{{pattern=\"{pattern}\"}}");
        assert_eq!(series(&metrics, &name), 0, "{name}");
    }
    assert_eq!(
        series(
            &metrics,
            "rampart_circuit_breaker_opens_total{upstream=\"app\"}"
        ),
        0
    );
    assert_eq!(series(&metrics, "rampart_failed_login_attempts_total"), 0);
}

crate::on_databases!(
    refused_credentials_spend_the_anonymous_budget_in_memory,
    refused_credentials_spend_the_anonymous_budget_in_redis,
    a_token_never_lifts_the_per_ip_limit_of_registration,
    the_identity_routes_have_builtin_limits_whatever_the_routes_list,
    a_routes_entry_overrides_a_builtin_limit_but_never_drops_it,
    per_ip_user_and_key_each_name_whose_budget_a_route_limit_is,
    ipv6_clients_are_limited_per_prefix_in_memory,
    ipv6_clients_are_limited_per_prefix_in_redis,
    the_metrics_alerts_use_exist_at_zero_from_start_up,
    anonymous_callers_are_limited_per_ip_whatever_they_claim,
    behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget,
    users_are_limited_by_tier_and_routes_add_their_own_limit,
    two_instances_share_one_budget_through_redis,
    when_redis_fails_on_store_error_decides,
);
