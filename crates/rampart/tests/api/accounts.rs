//! Trading accounts: ownership, sealed broker keys, the SSRF policy, broker refresh and
//! its circuit breaker, and key rotation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rampart::audit::RequestContext;
use rampart::clock::{Clock, ManualClock};
use rampart::config::{Config, Sources};
use rampart::store::SealedKind;
use reqwest::Method;
use serde_json::{Value, json};

use crate::api_keys::{Signed, create_key};
use crate::helpers::{Backend, Session, Setup, TestApp, assert_error, spawn_app, spawn_app_with};

const LOOPBACK_BROKERS: &str =
    "[accounts]\nallow_http = true\nallowed_networks = [\"127.0.0.1/32\"]\n";
const PUBLIC_HOST: &str = "https://[2606:4700::1111]";

/// A stand-in OpenAlgo broker on 127.0.0.1 that records what it was sent.
struct Broker {
    url: String,
    received: Arc<Mutex<Vec<Value>>>,
    hits: Arc<AtomicUsize>,
    answer: Arc<Mutex<(u16, Value)>>,
}

async fn broker() -> Broker {
    let received = Arc::new(Mutex::new(Vec::new()));
    let hits = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(Mutex::new((
        200,
        json!({ "status": "success", "data": { "availablecash": "1000.00", "utiliseddebits": "0.00" } }),
    )));
    let (r, h, a) = (received.clone(), hits.clone(), answer.clone());
    let app = axum::Router::new().route(
        "/api/v1/funds",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let (r, h, a) = (r.clone(), h.clone(), a.clone());
            async move {
                h.fetch_add(1, Ordering::SeqCst);
                r.lock().unwrap().push(body);
                let (status, answer) = a.lock().unwrap().clone();
                (
                    http::StatusCode::from_u16(status).unwrap(),
                    axum::Json(answer),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Broker {
        url,
        received,
        hits,
        answer,
    }
}

async fn add_account(app: &TestApp, session: &Session, host_url: &str, api_key: &str) -> Value {
    let response = app
        .send_with(
            Method::POST,
            "/accounts",
            &session.access_token,
            Some(json!({
                "name": "Main (NSE)", "broker": "zerodha", "host_url": host_url, "api_key": api_key,
            })),
        )
        .await;
    assert_eq!(response.status(), 201, "adding an account");
    response.json().await.unwrap()
}

/// Every byte the database holds that could contain a secret, as text.
async fn database_text(app: &TestApp) -> String {
    if app.database_url.starts_with("sqlite:") {
        let path = app.data_dir.join("rampart.db");
        let mut bytes = std::fs::read(&path).unwrap();
        for suffix in ["-wal", "-journal"] {
            if let Ok(more) = std::fs::read(format!("{}{suffix}", path.display())) {
                bytes.extend(more);
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&app.database_url)
            .await
            .unwrap();
        let mut text = String::new();
        for table in ["trading_accounts", "api_keys", "audit_log", "users"] {
            let rows: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT string_agg(t::text, '|') FROM {table} t"
            )))
            .fetch_one(&mut connection)
            .await
            .unwrap();
            text.push_str(&rows.unwrap_or_default());
        }
        text
    }
}

async fn accounts_belong_to_their_owner_alone(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("alice_1").await;
    let bob = app.user("bob_1").await;
    let created = add_account(&app, &bob, PUBLIC_HOST, "abcd1234567890wxyz").await;
    assert_eq!(created["api_key_masked"], "abcd...wxyz");
    assert_eq!(created["host_url"], PUBLIC_HOST);
    assert_eq!(created["broker"], "zerodha");
    assert!(created["created_at"].is_string());
    let id = created["id"].as_i64().unwrap();
    let path = format!("/accounts/{id}");

    let listed: Value = app
        .get_with("/accounts", &bob.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    let listed: Value = app
        .get_with("/accounts", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["items"],
        json!([]),
        "an admin does not see others' accounts"
    );

    for (method, target, body) in [
        (Method::GET, path.clone(), None),
        (
            Method::PATCH,
            path.clone(),
            Some(json!({ "name": "stolen" })),
        ),
        (Method::DELETE, path.clone(), None),
        (Method::POST, format!("{path}/refresh"), None),
    ] {
        let response = app
            .send_with(method.clone(), &target, &admin.access_token, body)
            .await;
        assert_error(response, 404, "not_found").await;
    }
    let unknown = app.get_with("/accounts/999999", &bob.access_token).await;
    assert_error(unknown, 404, "not_found").await;

    let patched = app
        .send_with(
            Method::PATCH,
            &path,
            &bob.access_token,
            Some(json!({ "name": "Renamed", "api_key": "short" })),
        )
        .await;
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["name"], "Renamed");
    assert_eq!(patched["api_key_masked"], "***");
    let fetched: Value = app
        .get_with(&path, &bob.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["name"], "Renamed");
    assert_eq!(fetched["broker"], "zerodha");

    let deleted = app
        .send_with(Method::DELETE, &path, &bob.access_token, None)
        .await;
    assert_eq!(deleted.status(), 204);
    assert_error(
        app.get_with(&path, &bob.access_token).await,
        404,
        "not_found",
    )
    .await;

    let audit: Value = app
        .get_with("/admin/audit?limit=100", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item["action"].as_str().unwrap())
        .collect();
    for action in ["account_added", "account_updated", "account_deleted"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

async fn the_broker_key_is_never_stored_or_shown_in_the_clear(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let key = "PLAINbrokerKEY-6f1e2d3c4b5a";
    let replaced = "SECONDbrokerKEY-a1b2c3d4e5f6";
    let mut shown = Vec::new();
    let created = add_account(&app, &alice, PUBLIC_HOST, key).await;
    shown.push(created.to_string());
    let id = created["id"].as_i64().unwrap();
    let path = format!("/accounts/{id}");
    for response in [
        app.get_with("/accounts", &alice.access_token).await,
        app.get_with(&path, &alice.access_token).await,
        app.send_with(
            Method::PATCH,
            &path,
            &alice.access_token,
            Some(json!({ "api_key": replaced })),
        )
        .await,
        app.get_with("/users/me/export", &alice.access_token).await,
        app.get_with("/admin/audit?limit=100", &alice.access_token)
            .await,
    ] {
        assert!(response.status().is_success());
        shown.push(response.text().await.unwrap());
    }
    let api_key = create_key(&app, &alice, "bot").await;
    let stored = database_text(&app).await;
    for secret in [key, replaced, &api_key.secret, &api_key.key] {
        assert!(
            !stored.contains(secret),
            "the database holds a secret in the clear"
        );
        for body in &shown {
            assert!(!body.contains(secret), "a response shows a secret: {body}");
        }
    }
    assert!(
        stored.contains(&api_key::hash(&api_key.key)),
        "the key is kept as its hash"
    );
}

mod api_key {
    use sha2::{Digest, Sha256};

    pub fn hash(key: &str) -> String {
        hex::encode(Sha256::digest(key.as_bytes()))
    }
}

async fn host_urls_that_break_the_policy_are_refused_before_anything_is_stored(backend: Backend) {
    let Some(app) = spawn_app_with(backend, Setup::toml("[accounts]\nallow_http = true\n")).await
    else {
        return;
    };
    let alice = app.user("alice_1").await;
    let too_long = format!("{PUBLIC_HOST}/{}", "a".repeat(2100));
    let urls = [
        "ftp://[2606:4700::1111]/",
        "http://127.0.0.1",
        "http://127.1",
        "http://2130706433",
        "http://0x7f000001",
        "http://0177.0.0.1",
        "http://0.0.0.0",
        "http://localhost:8080",
        "http://user@[2606:4700::1111]",
        "http://user:pass@[2606:4700::1111]",
        "http://[::ffff:127.0.0.1]",
        "http://[::1]",
        "http://169.254.169.254/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]",
        "http://10.0.0.1",
        "http://172.16.5.4",
        "http://192.168.1.1",
        "http://100.64.0.1",
        "http://224.0.0.1",
        "https://[2606:4700::1111]/?x=1",
        "https://[2606:4700::1111]/#top",
        " https://[2606:4700::1111]",
        "https://[2606:4700::1111]\n",
        "not a url",
        "",
        too_long.as_str(),
    ];
    for url in urls {
        let response = app
            .send_with(
                Method::POST,
                "/accounts",
                &alice.access_token,
                Some(json!({ "name": "main", "broker": "zerodha", "host_url": url, "api_key": "abcdefghijklmnop" })),
            )
            .await;
        assert_eq!(response.status(), 400, "{url:?}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], "invalid_request", "{url:?}");
        assert!(error["fields"]["host_url"].is_array(), "{url:?}: {error}");
        assert!(!error.to_string().contains("127.0.0.1") || url.contains("127.0.0.1"));
    }
    let listed: Value = app
        .get_with("/accounts", &alice.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"], json!([]), "nothing was stored");

    // A PATCH to a refused URL changes nothing.
    let created = add_account(&app, &alice, PUBLIC_HOST, "abcdefghijklmnop").await;
    let path = format!("/accounts/{}", created["id"]);
    let refused = app
        .send_with(
            Method::PATCH,
            &path,
            &alice.access_token,
            Some(json!({ "host_url": "http://169.254.169.254/" })),
        )
        .await;
    let error = assert_error(refused, 400, "invalid_request").await;
    assert!(error["fields"]["host_url"].is_array());
    let fetched: Value = app
        .get_with(&path, &alice.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["host_url"], PUBLIC_HOST);

    // Without allow_http, plain http is refused even for a public address.
    let Some(strict) = spawn_app(backend).await else {
        return;
    };
    let owner = strict.user("alice_1").await;
    let response = strict
        .send_with(
            Method::POST,
            "/accounts",
            &owner.access_token,
            Some(json!({ "name": "main", "broker": "zerodha", "host_url": "http://[2606:4700::1111]", "api_key": "abcdefghijklmnop" })),
        )
        .await;
    let error = assert_error(response, 400, "invalid_request").await;
    assert!(error["fields"]["host_url"].is_array());
}

async fn an_internal_name_and_a_missing_name_are_refused_alike(backend: Backend) {
    let Some(app) = spawn_app_with(backend, Setup::toml("[accounts]\nallow_http = true\n")).await
    else {
        return;
    };
    let alice = app.user("alice_1").await;
    let mut answers = Vec::new();
    for url in [
        "http://localhost",
        "http://127.0.0.1",
        "http://10.0.0.1",
        "http://no-such-host.invalid",
        "http://intranet.invalid:8443",
    ] {
        let response = app
            .send_with(
                Method::POST,
                "/accounts",
                &alice.access_token,
                Some(json!({ "name": "main", "broker": "zerodha", "host_url": url, "api_key": "abcdefghijklmnop" })),
            )
            .await;
        let error = assert_error(response, 400, "invalid_request").await;
        answers.push((url, error["fields"].clone()));
    }
    for (url, fields) in &answers {
        assert_eq!(
            fields,
            &json!({ "host_url": [rampart::outbound::NOT_PUBLIC] }),
            "{url}: a refusal must not tell a private address from a name that does not resolve"
        );
    }
}

async fn bad_account_fields_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let good = json!({ "name": "main", "broker": "zerodha", "host_url": PUBLIC_HOST, "api_key": "abcdefghijklmnop" });
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let cases = [
        (with("name", json!("")), Some("name")),
        (with("name", json!("x".repeat(65))), Some("name")),
        (with("name", json!("<img src=x>")), Some("name")),
        (with("name", json!("main\u{0}")), Some("name")),
        (with("broker", json!("x".repeat(33))), Some("broker")),
        (with("broker", json!("zero;dha")), Some("broker")),
        (with("api_key", json!("")), Some("api_key")),
        (with("api_key", json!("has space inside")), Some("api_key")),
        (with("api_key", json!("ключ-ключ-ключ")), Some("api_key")),
        (with("api_key", json!("k".repeat(513))), Some("api_key")),
        (with("api_key", json!(12345)), None),
        (with("owner_id", json!(1)), None),
        (json!({ "name": "main" }), None),
        (json!([]), None),
    ];
    for (body, field) in cases {
        let response = app
            .send_with(
                Method::POST,
                "/accounts",
                &alice.access_token,
                Some(body.clone()),
            )
            .await;
        let error = assert_error(response, 400, "invalid_request").await;
        if let Some(field) = field {
            assert!(error["fields"][field].is_array(), "{body}: {error}");
        }
    }
    let created = add_account(&app, &alice, PUBLIC_HOST, "abcdefghijklmnop").await;
    let path = format!("/accounts/{}", created["id"]);
    for body in [json!({}), json!({ "uid": "x" }), json!({ "name": "" })] {
        let response = app
            .send_with(Method::PATCH, &path, &alice.access_token, Some(body))
            .await;
        assert_error(response, 400, "invalid_request").await;
    }
    let listed: Value = app
        .get_with("/accounts", &alice.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
}

async fn refresh_asks_the_broker_with_the_decrypted_key(backend: Backend) {
    let Some(app) = spawn_app_with(backend, Setup::toml(LOOPBACK_BROKERS)).await else {
        return;
    };
    let broker = broker().await;
    let alice = app.user("alice_1").await;
    let created = add_account(&app, &alice, &broker.url, "LIVEkey-0123456789abcdef").await;
    let path = format!("/accounts/{}/refresh", created["id"]);
    let response = app
        .send_with(Method::POST, &path, &alice.access_token, None)
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({ "data": { "availablecash": "1000.00", "utiliseddebits": "0.00" } })
    );
    assert_eq!(
        broker.received.lock().unwrap().as_slice(),
        [json!({ "apikey": "LIVEkey-0123456789abcdef" })]
    );

    // A broker that refuses is a bad gateway, and so is one that is gone.
    *broker.answer.lock().unwrap() = (
        403,
        json!({ "status": "error", "message": "Invalid openalgo apikey" }),
    );
    let refused = app
        .send_with(Method::POST, &path, &alice.access_token, None)
        .await;
    assert_error(refused, 502, "bad_gateway").await;
    *broker.answer.lock().unwrap() = (200, json!({ "status": "error", "message": "nope" }));
    let refused = app
        .send_with(Method::POST, &path, &alice.access_token, None)
        .await;
    assert_error(refused, 502, "bad_gateway").await;

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let gone = add_account(&app, &alice, &closed, "abcdefghijklmnop").await;
    let response = app
        .send_with(
            Method::POST,
            &format!("/accounts/{}/refresh", gone["id"]),
            &alice.access_token,
            None,
        )
        .await;
    assert_error(response, 502, "bad_gateway").await;
}

async fn a_failing_broker_opens_its_circuit(backend: Backend) {
    let Some(app) = spawn_app_with(backend, Setup::toml(LOOPBACK_BROKERS)).await else {
        return;
    };
    let broker = broker().await;
    *broker.answer.lock().unwrap() = (500, json!({ "status": "error" }));
    let alice = app.user("alice_1").await;
    let created = add_account(&app, &alice, &broker.url, "abcdefghijklmnop").await;
    let path = format!("/accounts/{}/refresh", created["id"]);
    for attempt in 0..5 {
        let response = app
            .send_with(Method::POST, &path, &alice.access_token, None)
            .await;
        assert_eq!(response.status(), 502, "attempt {attempt}");
    }
    let response = app
        .send_with(Method::POST, &path, &alice.access_token, None)
        .await;
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    assert_error(response, 503, "service_unavailable").await;
    assert!(retry_after.is_some_and(|seconds| (1..=30).contains(&seconds)));
    assert_eq!(
        broker.hits.load(Ordering::SeqCst),
        5,
        "an open circuit does not call the broker"
    );
    let audit: Value = app
        .get_with("/admin/audit?action=circuit_opened", &alice.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"].as_array().unwrap().len(), 1);
}

fn load(app: &TestApp, toml: &str, keys: &str) -> Config {
    let env = HashMap::from([
        (
            "RAMPART_SERVER__LISTEN".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
        ("RAMPART_DATABASE__URL".to_owned(), app.database_url.clone()),
        ("RAMPART_ENCRYPTION__KEYS".to_owned(), keys.to_owned()),
    ]);
    Config::load(&Sources {
        file_path: None,
        file: Some(toml.to_owned()),
        env,
        data_dir: Some(app.data_dir.clone()),
    })
    .unwrap()
}

async fn rotation_reseals_every_secret_and_reports_what_does_not_open(backend: Backend) {
    let k1 = rampart::secrets::generate_key_entry("k1");
    let k2 = rampart::secrets::generate_key_entry("k2");
    let Some(first) = spawn_app_with(
        backend,
        Setup::toml(LOOPBACK_BROKERS).env("RAMPART_ENCRYPTION__KEYS", &k1),
    )
    .await
    else {
        return;
    };
    let broker = broker().await;
    let alice = first.user("alice_1").await;
    let account = add_account(&first, &alice, &broker.url, "ROTATEDkey-0123456789").await;
    let broken = add_account(&first, &alice, &broker.url, "BROKENkey-0123456789").await;
    let key = create_key(&first, &alice, "bot").await;

    let both = crate::helpers::start(
        load(&first, LOOPBACK_BROKERS, &format!("{k2},{k1}")),
        first.data_dir.clone(),
        first.database_url.clone(),
        String::new(),
        ManualClock::new(),
    )
    .await;
    let store = &both.state.stores.data;
    let broken_id = broken["id"].as_i64().unwrap();
    let sealed = store
        .sealed_values(SealedKind::AccountKey, 0, 10)
        .await
        .unwrap();
    let original = sealed
        .iter()
        .find(|value| value.id == broken_id)
        .unwrap()
        .sealed
        .clone();
    let mut corrupted = original.clone();
    let last = corrupted.pop().unwrap();
    corrupted.push(if last == 'A' { 'B' } else { 'A' });
    store
        .tamper_sealed_for_test(SealedKind::AccountKey, broken_id, &corrupted)
        .await
        .unwrap();

    let context = RequestContext::default();
    let now = both.clock.unix();
    let report = rampart::sealing::rotate_all(&**store, &both.state.keyring, true, now, &context)
        .await
        .unwrap();
    assert_eq!(report.rotated, 2, "{report:?}");
    assert_eq!(report.current, 0, "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert_eq!(report.failed[0].kind, SealedKind::AccountKey);
    assert_eq!(report.failed[0].id, broken_id);
    // Run again: nothing left to do, the broken row is still reported and untouched.
    let again = rampart::sealing::rotate_all(&**store, &both.state.keyring, true, now, &context)
        .await
        .unwrap();
    assert_eq!(
        (again.rotated, again.current, again.failed.len()),
        (0, 2, 1)
    );
    let sealed = store
        .sealed_values(SealedKind::AccountKey, 0, 10)
        .await
        .unwrap();
    for value in &sealed {
        if value.id == broken_id {
            assert_eq!(
                value.sealed, corrupted,
                "a value that does not open is left as it is"
            );
        } else {
            assert!(value.sealed.starts_with("v1:k2:"), "{}", value.sealed);
        }
    }
    let audit = store
        .list_audit(&rampart::store::AuditFilter {
            action: Some("secrets_rotated".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(audit.len(), 2);
    assert!(
        audit[0].details.contains("\"rotated\":0"),
        "{}",
        audit[0].details
    );

    // With k1 gone, everything that was rotated still opens.
    let only_k2 = crate::helpers::start(
        load(&first, LOOPBACK_BROKERS, &k2),
        first.data_dir.clone(),
        first.database_url.clone(),
        String::new(),
        ManualClock::new(),
    )
    .await;
    let token = only_k2.login("alice_1").await.access_token;
    let refreshed = only_k2
        .send_with(
            Method::POST,
            &format!("/accounts/{}/refresh", account["id"]),
            &token,
            None,
        )
        .await;
    assert_eq!(refreshed.status(), 200);
    assert_eq!(
        broker.received.lock().unwrap().last().unwrap(),
        &json!({ "apikey": "ROTATEDkey-0123456789" })
    );
    let signed = Signed::new(&only_k2, Method::GET, "/users/me", b"", &key);
    assert_eq!(signed.send(&only_k2).await.status(), 200);
    let export = only_k2.get_with("/users/me/export", &token).await;
    assert_eq!(export.status(), 200);
    let failed = only_k2
        .send_with(
            Method::POST,
            &format!("/accounts/{}/refresh", broken["id"]),
            &token,
            None,
        )
        .await;
    assert_error(failed, 500, "internal").await;
}

/// Runs `sql` on the gateway's database behind its back.
pub async fn execute_behind_the_gateway(app: &TestApp, sql: &str) {
    use sqlx::Connection;
    if app.database_url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(&app.database_url)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut connection)
            .await
            .unwrap();
    } else {
        let mut connection = sqlx::PgConnection::connect(&app.database_url)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut connection)
            .await
            .unwrap();
    }
}

async fn sealed_account_key(app: &TestApp, id: i64) -> rampart::store::SealedValue {
    app.state
        .stores
        .data
        .sealed_values(SealedKind::AccountKey, id - 1, 1)
        .await
        .unwrap()
        .remove(0)
}

async fn moving_an_account_to_another_host_takes_its_key_again(backend: Backend) {
    let Some(app) = spawn_app_with(backend, Setup::toml(LOOPBACK_BROKERS)).await else {
        return;
    };
    let home = broker().await;
    let elsewhere = broker().await;
    let alice = app.user("alice_1").await;
    let created = add_account(&app, &alice, &home.url, "HOMEkey-0123456789abcdef").await;
    let path = format!("/accounts/{}", created["id"]);

    // The same move, from a bearer token, a browser session and an API key.
    let login: Value = app
        .post(
            "/auth/login",
            &json!({"username": "alice_1", "password": crate::helpers::STRONG_PASSWORD, "cookie": true}),
        )
        .await
        .json()
        .await
        .unwrap();
    let csrf = login["csrf_token"].as_str().unwrap().to_owned();
    let cookie = format!(
        "__Host-access_token={}",
        login["access_token"].as_str().unwrap()
    );
    let key = create_key(&app, &alice, "bot").await;
    let move_only = json!({ "host_url": elsewhere.url });
    let attempts = [
        (
            "bearer",
            app.client
                .patch(app.url(&path))
                .bearer_auth(&alice.access_token)
                .json(&move_only),
        ),
        (
            "session",
            app.client
                .patch(app.url(&path))
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf)
                .json(&move_only),
        ),
        (
            "api key",
            app.client
                .patch(app.url(&path))
                .header("x-api-key", &key.key)
                .json(&move_only),
        ),
        (
            "bearer, with a name",
            app.client
                .patch(app.url(&path))
                .bearer_auth(&alice.access_token)
                .json(&json!({ "host_url": format!("{}/", elsewhere.url), "name": "moved" })),
        ),
    ];
    for (how, request) in attempts {
        let response = request.send().await.unwrap();
        let error = assert_error(response, 400, "invalid_request").await;
        assert!(error["fields"]["api_key"].is_array(), "{how}: {error}");
    }
    let fetched: Value = app
        .get_with(&path, &alice.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["host_url"], home.url, "nothing changed");
    assert_eq!(fetched["name"], "Main (NSE)", "nothing changed");
    let refresh = format!("{path}/refresh");
    let response = app
        .send_with(Method::POST, &refresh, &alice.access_token, None)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(elsewhere.hits.load(Ordering::SeqCst), 0);

    // A respelling of the same host is no move: case, trailing slash, default port.
    let respelled = [
        format!("{}/", home.url),
        home.url.replace("http://", "HTTP://"),
        format!("{}//", home.url),
    ];
    for host_url in &respelled {
        let response = app
            .send_with(
                Method::PATCH,
                &path,
                &alice.access_token,
                Some(json!({ "host_url": host_url })),
            )
            .await;
        assert_eq!(response.status(), 200, "{host_url}");
        let response = app
            .send_with(Method::POST, &refresh, &alice.access_token, None)
            .await;
        assert_eq!(response.status(), 200, "{host_url}");
    }
    assert_eq!(home.hits.load(Ordering::SeqCst), 4);

    // With the key given again, the account moves, and only the new key goes there.
    let response = app
        .send_with(
            Method::PATCH,
            &path,
            &alice.access_token,
            Some(json!({ "host_url": elsewhere.url, "api_key": "NEWkey-0123456789abcdef" })),
        )
        .await;
    assert_eq!(response.status(), 200);
    let response = app
        .send_with(Method::POST, &refresh, &alice.access_token, None)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        elsewhere.received.lock().unwrap().as_slice(),
        [json!({ "apikey": "NEWkey-0123456789abcdef" })]
    );
    assert!(
        home.received
            .lock()
            .unwrap()
            .iter()
            .all(|body| body["apikey"] == "HOMEkey-0123456789abcdef")
    );
}

async fn a_key_moved_behind_the_gateways_back_is_never_sent(backend: Backend) {
    let Some(app) = spawn_app_with(backend, Setup::toml(LOOPBACK_BROKERS)).await else {
        return;
    };
    let home = broker().await;
    let elsewhere = broker().await;
    let alice = app.user("alice_1").await;
    let first = add_account(&app, &alice, &home.url, "HOMEkey-0123456789abcdef").await;
    let second = add_account(&app, &alice, &elsewhere.url, "OTHERkey-0123456789abcd").await;
    let (first_id, second_id) = (
        first["id"].as_i64().unwrap(),
        second["id"].as_i64().unwrap(),
    );
    let token = alice.access_token.clone();
    let refresh = |id: i64| {
        let request = app
            .client
            .post(app.url(&format!("/accounts/{id}/refresh")))
            .bearer_auth(token.clone());
        async move { request.send().await.unwrap() }
    };

    // A ciphertext copied onto another row (another host) does not open there.
    let sealed = sealed_account_key(&app, first_id).await;
    app.state
        .stores
        .data
        .tamper_sealed_for_test(SealedKind::AccountKey, second_id, &sealed.sealed)
        .await
        .unwrap();
    let error = assert_error(refresh(second_id).await, 409, "conflict").await;
    assert!(
        error["message"].as_str().unwrap().contains("api_key"),
        "the message says what to do: {error}"
    );
    assert_eq!(elsewhere.hits.load(Ordering::SeqCst), 0);

    // A host changed in the database, with or without a new spelling of the path.
    for host_url in [elsewhere.url.clone(), format!("{}/api/../", elsewhere.url)] {
        execute_behind_the_gateway(
            &app,
            &format!("UPDATE trading_accounts SET host_url = '{host_url}' WHERE id = {first_id}"),
        )
        .await;
        assert_error(refresh(first_id).await, 409, "conflict").await;
    }
    assert_eq!(elsewhere.hits.load(Ordering::SeqCst), 0, "nothing was sent");
    // Put back, the key opens again.
    execute_behind_the_gateway(
        &app,
        &format!(
            "UPDATE trading_accounts SET host_url = '{}' WHERE id = {first_id}",
            home.url
        ),
    )
    .await;
    assert_eq!(refresh(first_id).await.status(), 200);
    assert_eq!(
        home.received.lock().unwrap().as_slice(),
        [json!({ "apikey": "HOMEkey-0123456789abcdef" })]
    );
}

async fn keys_sealed_before_host_binding_open_and_are_bound_when_touched(backend: Backend) {
    let Some(app) = spawn_app_with(backend, Setup::toml(LOOPBACK_BROKERS)).await else {
        return;
    };
    let home = broker().await;
    let elsewhere = broker().await;
    let alice = app.user("alice_1").await;
    let store = &app.state.stores.data;
    let ring = &app.state.keyring;
    let mut ids = Vec::new();
    for key in ["LEGACYkey-used-0123456", "LEGACYkey-rotated-0123"] {
        let created = add_account(&app, &alice, &home.url, key).await;
        let id = created["id"].as_i64().unwrap();
        // Sealed the way earlier releases did: bound to the row only.
        let value = sealed_account_key(&app, id).await;
        let legacy = ring.encrypt(
            key.as_bytes(),
            &rampart::sealing::legacy_account_key_aad(&value.binding),
        );
        store
            .tamper_sealed_for_test(SealedKind::AccountKey, id, &legacy)
            .await
            .unwrap();
        ids.push((id, legacy));
    }
    let bound = |value: &rampart::store::SealedValue| {
        rampart::sealing::open_account_key(
            ring,
            &value.sealed,
            &value.binding,
            value.host_url.as_deref().unwrap(),
            false,
        )
        .is_ok_and(|opened| opened.rebound.is_none())
    };

    // Used: it opens, is sent, and is stored bound to its host.
    let (used, legacy) = &ids[0];
    let response = app
        .send_with(
            Method::POST,
            &format!("/accounts/{used}/refresh"),
            &alice.access_token,
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
    let value = sealed_account_key(&app, *used).await;
    assert_ne!(&value.sealed, legacy);
    assert!(bound(&value));

    // Rotated: `rampart keys rotate` binds it, even though its key is already current.
    let (rotated, _) = &ids[1];
    assert!(!bound(&sealed_account_key(&app, *rotated).await));
    let report = rampart::sealing::rotate_all(
        &**store,
        ring,
        true,
        app.clock.unix(),
        &RequestContext::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        (report.rotated, report.rebound, report.failed.len()),
        (1, 1, 0),
        "{report:?}"
    );
    assert!(bound(&sealed_account_key(&app, *rotated).await));
    // Each re-bind is audited with the host it was bound to.
    let rebound = rebound_entries(&app).await;
    assert_eq!(rebound.len(), 2, "{rebound:?}");
    for (entry, (id, _)) in rebound.iter().rev().zip(&ids) {
        assert_eq!(entry["account_id"], *id);
        assert_eq!(
            entry["host_url"].as_str().unwrap(),
            rampart::sealing::canonical_host_url(&home.url)
        );
    }

    // Bound now, neither moves with its row's host.
    for (id, _) in &ids {
        execute_behind_the_gateway(
            &app,
            &format!(
                "UPDATE trading_accounts SET host_url = '{}' WHERE id = {id}",
                elsewhere.url
            ),
        )
        .await;
        let response = app
            .send_with(
                Method::POST,
                &format!("/accounts/{id}/refresh"),
                &alice.access_token,
                None,
            )
            .await;
        assert_error(response, 409, "conflict").await;
    }
    assert_eq!(elsewhere.hits.load(Ordering::SeqCst), 0);
}

async fn rebound_entries(app: &TestApp) -> Vec<Value> {
    app.state
        .stores
        .data
        .list_audit(&rampart::store::AuditFilter {
            action: Some(rampart::sealing::REBOUND.into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap()
        .iter()
        .map(|record| serde_json::from_str(&record.details).unwrap())
        .collect()
}

async fn legacy_keys_are_refused_when_legacy_host_binding_is_off(backend: Backend) {
    let setup =
        Setup::toml(LOOPBACK_BROKERS).env("RAMPART_ENCRYPTION__LEGACY_HOST_BINDING", "false");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    assert!(!app.state.config.encryption_legacy_host_binding);
    let home = broker().await;
    let alice = app.user("alice_1").await;
    let store = &app.state.stores.data;
    let ring = &app.state.keyring;
    let created = add_account(&app, &alice, &home.url, "LEGACYkey-refused-0123").await;
    let id = created["id"].as_i64().unwrap();
    let value = sealed_account_key(&app, id).await;
    let legacy = ring.encrypt(
        b"LEGACYkey-refused-0123",
        &rampart::sealing::legacy_account_key_aad(&value.binding),
    );
    store
        .tamper_sealed_for_test(SealedKind::AccountKey, id, &legacy)
        .await
        .unwrap();
    let response = app
        .send_with(
            Method::POST,
            &format!("/accounts/{id}/refresh"),
            &alice.access_token,
            None,
        )
        .await;
    assert_error(response, 409, "conflict").await;
    assert_eq!(home.hits.load(Ordering::SeqCst), 0, "nothing was sent");
    assert_eq!(
        sealed_account_key(&app, id).await.sealed,
        legacy,
        "left as it is"
    );
    let report = rampart::sealing::rotate_all(
        &**store,
        ring,
        false,
        app.clock.unix(),
        &RequestContext::default(),
    )
    .await
    .unwrap();
    assert_eq!((report.rebound, report.failed.len()), (0, 1), "{report:?}");
    assert_eq!(sealed_account_key(&app, id).await.sealed, legacy);
    assert!(rebound_entries(&app).await.is_empty());
    // Setting the key again stores it bound; it is sent.
    let response = app
        .send_with(
            Method::PATCH,
            &format!("/accounts/{id}"),
            &alice.access_token,
            Some(json!({ "api_key": "NEWkey-0123456789abcdef" })),
        )
        .await;
    assert_eq!(response.status(), 200);
    let response = app
        .send_with(
            Method::POST,
            &format!("/accounts/{id}/refresh"),
            &alice.access_token,
            None,
        )
        .await;
    assert_eq!(response.status(), 200);
}

crate::on_databases!(
    legacy_keys_are_refused_when_legacy_host_binding_is_off,
    moving_an_account_to_another_host_takes_its_key_again,
    a_key_moved_behind_the_gateways_back_is_never_sent,
    keys_sealed_before_host_binding_open_and_are_bound_when_touched,
    an_internal_name_and_a_missing_name_are_refused_alike,
    accounts_belong_to_their_owner_alone,
    the_broker_key_is_never_stored_or_shown_in_the_clear,
    host_urls_that_break_the_policy_are_refused_before_anything_is_stored,
    bad_account_fields_are_refused,
    refresh_asks_the_broker_with_the_decrypted_key,
    a_failing_broker_opens_its_circuit,
    rotation_reseals_every_secret_and_reports_what_does_not_open,
);
