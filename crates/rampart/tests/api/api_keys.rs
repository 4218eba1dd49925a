//! API keys: lifecycle, acting as the owner, and HMAC-signed requests.

use std::time::Duration;

use hmac::{KeyInit, Mac};
use rampart::clock::Clock;
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Backend, STRONG_PASSWORD, Session, TestApp, assert_error, spawn_app};

pub struct Key {
    pub id: i64,
    pub key: String,
    pub secret: String,
    pub body: Value,
}

pub async fn create_key(app: &TestApp, session: &Session, name: &str) -> Key {
    let response = app
        .send_with(
            Method::POST,
            "/users/me/api-keys",
            &session.access_token,
            Some(json!({ "name": name })),
        )
        .await;
    assert_eq!(response.status(), 201, "creating key {name}");
    let body: Value = response.json().await.unwrap();
    Key {
        id: body["id"].as_i64().unwrap(),
        key: body["key"].as_str().unwrap().to_owned(),
        secret: body["secret"].as_str().unwrap().to_owned(),
        body,
    }
}

pub fn nonce() -> String {
    format!("nonce-{}", ulid::Ulid::new())
}

/// Lowercase hex HMAC-SHA256 over the SPEC's string to sign, computed independently of
/// the gateway's code.
pub fn signature(
    secret: &str,
    method: &str,
    path: &str,
    ts: &str,
    nonce: &str,
    body: &[u8],
) -> String {
    let message = format!(
        "{method}\n{path}\n{ts}\n{nonce}\n{}",
        hex::encode(Sha256::digest(body))
    );
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// A request signed as a correct client would, with the given parts.
pub struct Signed<'a> {
    pub method: Method,
    pub path: &'a str,
    pub body: Vec<u8>,
    pub key: &'a Key,
    pub nonce: String,
    pub timestamp: String,
    pub signature: String,
}

impl<'a> Signed<'a> {
    pub fn new(app: &TestApp, method: Method, path: &'a str, body: &[u8], key: &'a Key) -> Self {
        let timestamp = app.clock.unix().to_string();
        let nonce = nonce();
        let signature = signature(&key.secret, method.as_str(), path, &timestamp, &nonce, body);
        Self {
            method,
            path,
            body: body.to_vec(),
            key,
            nonce,
            timestamp,
            signature,
        }
    }

    pub async fn send(&self, app: &TestApp) -> reqwest::Response {
        let mut request = app
            .client
            .request(self.method.clone(), app.url(self.path))
            .header("x-api-key", &self.key.key)
            .header("x-timestamp", &self.timestamp)
            .header("x-nonce", &self.nonce)
            .header("x-signature", &self.signature);
        if !self.body.is_empty() {
            request = request
                .header("content-type", "application/json")
                .body(self.body.clone());
        }
        request.send().await.unwrap()
    }
}

async fn with_key(app: &TestApp, method: Method, path: &str, key: &str) -> reqwest::Response {
    app.client
        .request(method, app.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

async fn a_key_is_shown_once_and_acts_as_its_owner_with_the_current_role(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("alice_1").await;
    let bob = app.user("bob_1").await;
    let key = create_key(&app, &bob, "trading bot").await;
    for field in [
        "id",
        "name",
        "prefix",
        "key",
        "secret",
        "created_at",
        "expires_at",
    ] {
        assert!(key.body.get(field).is_some(), "{field} in {}", key.body);
    }
    assert!(key.key.starts_with("rk_"), "{}", key.key);
    assert!(key.key.contains(key.body["prefix"].as_str().unwrap()));
    assert!(key.body["expires_at"].is_null());

    let listed: Value = app
        .get_with("/users/me/api-keys", &bob.access_token)
        .await
        .json()
        .await
        .unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], key.id);
    let text = listed.to_string();
    assert!(
        !text.contains(&key.key) && !text.contains(&key.secret),
        "{text}"
    );
    assert!(items[0].get("key").is_none() && items[0].get("secret").is_none());
    assert!(items[0].get("key_hash").is_none());

    let me: Value = with_key(&app, Method::GET, "/users/me", &key.key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["username"], "bob_1");
    // Acts with the owner's role as it is now: a viewer's key is no admin ...
    let admin_only = format!("/users/{}", admin.user_id);
    assert_error(
        with_key(&app, Method::GET, &admin_only, &key.key).await,
        403,
        "forbidden",
    )
    .await;
    let promoted = app
        .send_with(
            Method::PATCH,
            &format!("/admin/users/{}", bob.user_id),
            &admin.access_token,
            Some(json!({ "role": "admin" })),
        )
        .await;
    assert_eq!(promoted.status(), 200);
    // ... until the owner is promoted, with no new key.
    let response = with_key(&app, Method::GET, &admin_only, &key.key).await;
    assert_eq!(response.status(), 200);
    // Even an admin's key never reaches /admin/* (SPEC §11).
    for (method, path) in [
        (Method::GET, "/admin/users"),
        (Method::GET, "/admin/audit"),
        (Method::GET, "/admin/audit/export"),
    ] {
        assert_error(
            with_key(&app, method, path, &key.key).await,
            403,
            "forbidden",
        )
        .await;
    }
    // The role change ended bob's logins (not his key); he logs in again.
    let bob = Session {
        user_id: bob.user_id,
        ..app.login("bob_1").await
    };

    // Another user cannot see or delete it.
    assert_error(
        app.send_with(
            Method::DELETE,
            &format!("/users/me/api-keys/{}", key.id),
            &admin.access_token,
            None,
        )
        .await,
        404,
        "not_found",
    )
    .await;
    let deleted = app
        .send_with(
            Method::DELETE,
            &format!("/users/me/api-keys/{}", key.id),
            &bob.access_token,
            None,
        )
        .await;
    assert_eq!(deleted.status(), 204);
    assert_error(
        with_key(&app, Method::GET, "/users/me", &key.key).await,
        401,
        "unauthorized",
    )
    .await;
    assert_error(
        app.send_with(
            Method::DELETE,
            &format!("/users/me/api-keys/{}", key.id),
            &bob.access_token,
            None,
        )
        .await,
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
    assert!(actions.contains(&"api_key_created"), "{actions:?}");
    assert!(actions.contains(&"api_key_revoked"), "{actions:?}");
    let text = audit.to_string();
    assert!(!text.contains(&key.key) && !text.contains(&key.secret));
}

async fn a_key_is_read_only_from_its_header(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let key = create_key(&app, &alice, "bot").await;
    for path in [
        format!("/users/me?api_key={}", key.key),
        format!("/users/me?x-api-key={}", key.key),
        format!("/users/me?key={}", key.key),
    ] {
        let response = app.client.get(app.url(&path)).send().await.unwrap();
        assert_error(response, 401, "unauthorized").await;
    }
}

async fn malformed_unknown_and_doubled_keys_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let key = create_key(&app, &alice, "bot").await;
    let unknown_random = format!("{}0", &key.key[..key.key.len() - 1]);
    let unknown_random = if unknown_random == key.key {
        format!("{}1", &key.key[..key.key.len() - 1])
    } else {
        unknown_random
    };
    let cases = [
        ("empty", String::new()),
        ("garbage", "not-a-key".to_owned()),
        ("upper case", key.key.to_uppercase()),
        ("truncated", key.key[..key.key.len() - 1].to_owned()),
        ("extended", format!("{}0", key.key)),
        ("right prefix, wrong random part", unknown_random),
        (
            "unknown prefix",
            format!("rk_{}_{}", "0".repeat(16), "0".repeat(64)),
        ),
        // Surrounding whitespace is not part of a header value (RFC 9110), inner is.
        ("with an inner space", format!("{} x", key.key)),
        ("the secret instead", key.secret.clone()),
    ];
    for (description, value) in cases {
        let response = app
            .client
            .get(app.url("/users/me"))
            .header("x-api-key", value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{description}");
    }
    let doubled = app
        .client
        .get(app.url("/users/me"))
        .header("x-api-key", &key.key)
        .header("x-api-key", &key.key)
        .send()
        .await
        .unwrap();
    assert_error(doubled, 401, "unauthorized").await;
    let with_bearer = app
        .client
        .get(app.url("/users/me"))
        .bearer_auth(&alice.access_token)
        .header("x-api-key", &key.key)
        .send()
        .await
        .unwrap();
    assert_error(with_bearer, 401, "unauthorized").await;
    // A refused key is refused even where no login is needed.
    let public = app
        .client
        .post(app.url("/auth/login"))
        .header("x-api-key", "rk_bad")
        .json(&json!({ "username": "alice_1", "password": STRONG_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_error(public, 401, "unauthorized").await;
}

async fn a_disabled_owner_and_an_expired_key_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("alice_1").await;
    let bob = app.user("bob_1").await;
    let key = create_key(&app, &bob, "bot").await;
    let expiring = app
        .send_with(
            Method::POST,
            "/users/me/api-keys",
            &bob.access_token,
            Some(json!({ "name": "short lived", "expires_in_days": 1 })),
        )
        .await;
    assert_eq!(expiring.status(), 201);
    let expiring: Value = expiring.json().await.unwrap();
    assert!(expiring["expires_at"].is_string());
    let expiring_key = expiring["key"].as_str().unwrap().to_owned();
    assert_eq!(
        with_key(&app, Method::GET, "/users/me", &expiring_key)
            .await
            .status(),
        200
    );
    app.clock.advance(Duration::from_secs(86_400 + 1));
    assert_error(
        with_key(&app, Method::GET, "/users/me", &expiring_key).await,
        401,
        "unauthorized",
    )
    .await;
    assert_eq!(
        with_key(&app, Method::GET, "/users/me", &key.key)
            .await
            .status(),
        200
    );

    // The admin's access token expired with the day that passed.
    let _ = admin;
    let admin_token = app.login("alice_1").await.access_token;
    let disabled = app
        .send_with(
            Method::PATCH,
            &format!("/admin/users/{}", bob.user_id),
            &admin_token,
            Some(json!({ "disabled": true })),
        )
        .await;
    assert_eq!(disabled.status(), 200);
    assert_error(
        with_key(&app, Method::GET, "/users/me", &key.key).await,
        401,
        "unauthorized",
    )
    .await;
}

async fn keys_are_managed_only_from_a_login_session(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let key = create_key(&app, &alice, "bot").await;
    let minted = app
        .client
        .post(app.url("/users/me/api-keys"))
        .header("x-api-key", &key.key)
        .json(&json!({ "name": "another" }))
        .send()
        .await
        .unwrap();
    assert_error(minted, 403, "forbidden").await;
    let removed = with_key(
        &app,
        Method::DELETE,
        &format!("/users/me/api-keys/{}", key.id),
        &key.key,
    )
    .await;
    assert_error(removed, 403, "forbidden").await;
    // Nor list them (SPEC §11: keys never reach /users/me/api-keys).
    let listed = with_key(&app, Method::GET, "/users/me/api-keys", &key.key).await;
    assert_error(listed, 403, "forbidden").await;
    // A key reaches no session management: no logout, no logout everywhere, whatever the
    // body; nothing is revoked.
    let logout = with_key(&app, Method::POST, "/auth/logout", &key.key).await;
    assert_error(logout, 403, "forbidden").await;
    let everywhere = with_key(&app, Method::POST, "/auth/logout-all", &key.key).await;
    assert_error(everywhere, 403, "forbidden").await;
    for body in [json!({}), json!({ "revoke_api_keys": false })] {
        let everywhere = app
            .client
            .post(app.url("/auth/logout-all"))
            .header("x-api-key", &key.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_error(everywhere, 403, "forbidden").await;
    }
    assert_eq!(
        app.get_with("/users/me", &alice.access_token)
            .await
            .status(),
        200
    );
    assert_eq!(
        with_key(&app, Method::GET, "/users/me", &key.key)
            .await
            .status(),
        200
    );
}

async fn bad_key_requests_are_refused_with_the_fields_at_fault(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let long = "x".repeat(65);
    let cases = [
        (json!({ "name": "" }), Some("name")),
        (json!({ "name": long }), Some("name")),
        (json!({ "name": "bot<script>" }), Some("name")),
        (json!({ "name": " bot" }), Some("name")),
        (
            json!({ "name": "bot", "expires_in_days": 0 }),
            Some("expires_in_days"),
        ),
        (
            json!({ "name": "bot", "expires_in_days": 3651 }),
            Some("expires_in_days"),
        ),
        (
            json!({ "name": "bot", "expires_in_days": -5 }),
            Some("expires_in_days"),
        ),
        (json!({ "name": "bot", "expires_in_days": "90" }), None),
        (json!({ "name": "bot", "expires_in_days": 1e30 }), None),
        (json!({ "name": "bot", "scopes": ["all"] }), None),
        (json!({}), None),
    ];
    for (body, field) in cases {
        let response = app
            .send_with(
                Method::POST,
                "/users/me/api-keys",
                &alice.access_token,
                Some(body.clone()),
            )
            .await;
        let error = assert_error(response, 400, "invalid_request").await;
        if let Some(field) = field {
            assert!(error["fields"][field].is_array(), "{body}: {error}");
        }
    }
    let listed: Value = app
        .get_with("/users/me/api-keys", &alice.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"], json!([]));
    assert_error(
        app.send_with(
            Method::DELETE,
            "/users/me/api-keys/abc",
            &alice.access_token,
            None,
        )
        .await,
        400,
        "invalid_request",
    )
    .await;
}

async fn a_correctly_signed_request_is_accepted_once(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let key = create_key(&app, &alice, "bot").await;
    let get = Signed::new(&app, Method::GET, "/users/me?x=1&y=%20", b"", &key);
    assert_eq!(get.send(&app).await.status(), 200);
    assert_error(get.send(&app).await, 401, "unauthorized").await;

    // The body is covered, and handed on intact after being read for the signature.
    let account = json!({
        "name": "main", "broker": "zerodha",
        "host_url": "https://[2606:4700::1111]", "api_key": "abcd1234efgh5678",
    })
    .to_string();
    let post = Signed::new(&app, Method::POST, "/accounts", account.as_bytes(), &key);
    let created = post.send(&app).await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["name"], "main");

    // Nonces are per key: another key may use the same nonce.
    let other = create_key(&app, &alice, "second").await;
    let mut first = Signed::new(&app, Method::GET, "/users/me", b"", &key);
    let mut second = Signed::new(&app, Method::GET, "/users/me", b"", &other);
    let shared = nonce();
    for request in [&mut first, &mut second] {
        request.nonce = shared.clone();
        request.signature = signature(
            &request.key.secret,
            "GET",
            "/users/me",
            &request.timestamp,
            &shared,
            b"",
        );
    }
    assert_eq!(first.send(&app).await.status(), 200);
    assert_eq!(second.send(&app).await.status(), 200);
}

async fn every_signing_failure_is_refused_with_401(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let key = create_key(&app, &alice, "bot").await;
    let body = br#"{"name":"main"}"#;
    let base = || Signed::new(&app, Method::PUT, "/users/me/password?a=1", body, &key);
    let now = app.clock.unix();
    let wrong_secret = {
        let mut request = base();
        request.signature = signature(
            &"0".repeat(64),
            "PUT",
            "/users/me/password?a=1",
            &request.timestamp,
            &request.nonce,
            body,
        );
        request
    };
    let resigned = |edit: &dyn Fn(&mut Signed<'_>)| {
        let mut request = base();
        edit(&mut request);
        request.signature = signature(
            &key.secret,
            request.method.as_str(),
            "/users/me/password?a=1",
            &request.timestamp,
            &request.nonce,
            body,
        );
        request
    };
    let cases: Vec<(&str, Signed<'_>)> = vec![
        ("wrong secret", wrong_secret),
        ("tampered body", {
            let mut request = base();
            request.body = br#"{"name":"evil"}"#.to_vec();
            request
        }),
        ("tampered path", {
            let mut request = base();
            request.path = "/users/me/passwords?a=1";
            request
        }),
        ("tampered query", {
            let mut request = base();
            request.path = "/users/me/password?a=2";
            request
        }),
        ("tampered method", {
            let mut request = base();
            request.method = Method::POST;
            request
        }),
        (
            "timestamp 301 s old",
            resigned(&|r| r.timestamp = (now - 301).to_string()),
        ),
        (
            "timestamp 301 s ahead",
            resigned(&|r| r.timestamp = (now + 301).to_string()),
        ),
        (
            "timestamp not a number",
            resigned(&|r| r.timestamp = "soon".into()),
        ),
        (
            "negative timestamp",
            resigned(&|r| r.timestamp = format!("-{now}")),
        ),
        (
            "timestamp with fraction",
            resigned(&|r| r.timestamp = format!("{now}.5")),
        ),
        (
            "nonce of 15 characters",
            resigned(&|r| r.nonce = "a".repeat(15)),
        ),
        (
            "nonce of 65 characters",
            resigned(&|r| r.nonce = "a".repeat(65)),
        ),
        (
            "nonce with a space",
            resigned(&|r| r.nonce = "nonce with spaces!".into()),
        ),
        ("upper-case signature", {
            let mut request = base();
            request.signature = request.signature.to_uppercase();
            request
        }),
        ("short signature", {
            let mut request = base();
            request.signature.pop();
            request
        }),
        ("signature not hex", {
            let mut request = base();
            request.signature = "z".repeat(64);
            request
        }),
        ("empty signature", {
            let mut request = base();
            request.signature = String::new();
            request
        }),
    ];
    for (description, request) in cases {
        let response = request.send(&app).await;
        assert_eq!(response.status(), 401, "{description}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"], "unauthorized", "{description}");
    }

    // A missing header makes the request incompletely signed.
    for missing in ["x-timestamp", "x-nonce", "x-signature"] {
        let request = base();
        let mut builder = app
            .client
            .put(app.url(request.path))
            .header("x-api-key", &key.key)
            .header("content-type", "application/json")
            .body(request.body.clone());
        for (name, value) in [
            ("x-timestamp", &request.timestamp),
            ("x-nonce", &request.nonce),
            ("x-signature", &request.signature),
        ] {
            if name != missing {
                builder = builder.header(name, value);
            }
        }
        let response = builder.send().await.unwrap();
        assert_eq!(response.status(), 401, "without {missing}");
    }
    // Signing headers without a key are refused too, on a route that needs no login.
    let request = Signed::new(&app, Method::POST, "/auth/login", b"{}", &key);
    let response = app
        .client
        .post(app.url("/auth/login"))
        .header("x-timestamp", &request.timestamp)
        .header("x-nonce", &request.nonce)
        .header("x-signature", &request.signature)
        .json(&json!({ "username": "alice_1", "password": STRONG_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_error(response, 401, "unauthorized").await;

    // A request signed now goes stale once the clock moves past the allowed skew.
    let stale = Signed::new(&app, Method::GET, "/users/me", b"", &key);
    app.clock.advance(Duration::from_secs(301));
    assert_error(stale.send(&app).await, 401, "unauthorized").await;
    let fresh = Signed::new(&app, Method::GET, "/users/me", b"", &key);
    assert_eq!(fresh.send(&app).await.status(), 200);
}

async fn a_signed_body_over_the_limit_is_413(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let key = create_key(&app, &alice, "bot").await;
    let limit = app.state.config.server.max_body;
    let body = vec![b'a'; limit + 1];
    let request = Signed::new(&app, Method::POST, "/accounts", &body, &key);
    assert_error(request.send(&app).await, 413, "payload_too_large").await;
}

async fn the_principal_records_whether_the_request_was_signed(backend: Backend) {
    use axum::body::Body;

    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let key = create_key(&app, &alice, "bot").await;
    // The identity stage alone, as the pipeline runs it.
    let call = |mut request: http::Request<Body>| {
        let state = app.state.clone();
        async move {
            let mut context = rampart::gateway::context::Context::begin(&state, &mut request);
            rampart::gateway::identify::identify(&state, &mut context, request)
                .await
                .expect("identified");
            let principal = context.principal().expect("authenticated");
            (
                http::StatusCode::OK,
                format!("{:?} {}", principal.credential, principal.signed),
            )
        }
    };
    let unsigned = http::Request::get("/probe")
        .header("x-api-key", &key.key)
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        call(unsigned).await,
        (http::StatusCode::OK, "ApiKey false".into())
    );
    let signed = Signed::new(&app, Method::POST, "/probe", b"payload", &key);
    let request = http::Request::post("/probe")
        .header("x-api-key", &key.key)
        .header("x-timestamp", &signed.timestamp)
        .header("x-nonce", &signed.nonce)
        .header("x-signature", &signed.signature)
        .body(Body::from("payload"))
        .unwrap();
    assert_eq!(
        call(request).await,
        (http::StatusCode::OK, "ApiKey true".into())
    );
    let bearer = http::Request::get("/probe")
        .header("authorization", format!("Bearer {}", alice.access_token))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        call(bearer).await,
        (http::StatusCode::OK, "Bearer false".into())
    );
}

async fn deleting_the_user_deletes_their_keys_and_accounts(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let _admin = app.user("alice_1").await;
    let bob = app.user("bob_1").await;
    let key = create_key(&app, &bob, "bot").await;
    let broker_key = "SECRETbrokerKEY-0123456789";
    let created = app
        .send_with(
            Method::POST,
            "/accounts",
            &bob.access_token,
            Some(json!({
                "name": "main", "broker": "zerodha",
                "host_url": "https://[2606:4700::1111]/", "api_key": broker_key,
            })),
        )
        .await;
    assert_eq!(created.status(), 201);

    let export = app.get_with("/users/me/export", &bob.access_token).await;
    assert_eq!(export.status(), 200);
    let export: Value = export.json().await.unwrap();
    let accounts = export["trading_accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0]["api_key_masked"], "SECR...6789");
    let keys = export["api_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], key.id);
    let text = export.to_string();
    for secret in [broker_key, &key.key, &key.secret] {
        assert!(!text.contains(secret), "export shows a secret");
    }

    let deleted = app
        .send_with(
            Method::DELETE,
            "/users/me",
            &bob.access_token,
            Some(json!({ "password": STRONG_PASSWORD })),
        )
        .await;
    assert_eq!(deleted.status(), 204);
    assert_error(
        with_key(&app, Method::GET, "/users/me", &key.key).await,
        401,
        "unauthorized",
    )
    .await;
    let data = &app.state.stores.data;
    assert!(data.api_keys_of(bob.user_id).await.unwrap().is_empty());
    assert!(data.accounts_of(bob.user_id).await.unwrap().is_empty());
}

impl Signed<'_> {
    /// The request, ready to send (or send again).
    fn builder(&self, app: &TestApp) -> reqwest::RequestBuilder {
        app.client
            .request(self.method.clone(), app.url(self.path))
            .header("x-api-key", &self.key.key)
            .header("x-timestamp", &self.timestamp)
            .header("x-nonce", &self.nonce)
            .header("x-signature", &self.signature)
            .body(self.body.clone())
    }
}

async fn every_signing_failure_spends_the_anonymous_budget_and_is_counted(backend: Backend) {
    let setup = crate::helpers::Setup::default()
        .env("RAMPART_RATE_LIMITS__ANONYMOUS", "4/min")
        .env(
            "RAMPART_SERVER__TRUSTED_PROXIES",
            r#"["::1/128", "127.0.0.0/8"]"#,
        );
    let Some(app) = crate::helpers::spawn_app_with(backend, setup).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let key = create_key(&app, &alice, "bot").await;
    let now = app.clock.unix();
    let signed = |edit: &dyn Fn(&mut Signed<'_>), resign: bool| {
        let mut request = Signed::new(&app, Method::GET, "/users/me", b"", &key);
        edit(&mut request);
        if resign {
            request.signature = signature(
                &key.secret,
                "GET",
                "/users/me",
                &request.timestamp,
                &request.nonce,
                b"",
            );
        }
        request
    };
    let wrong = signed(&|r| r.signature = "0".repeat(64), false);
    let stale = signed(&|r| r.timestamp = (now - 301).to_string(), true);
    let short_nonce = signed(&|r| r.nonce = "n".repeat(15), true);
    let replayed = signed(&|_| {}, false);
    assert_eq!(
        replayed
            .builder(&app)
            .header("x-forwarded-for", "192.0.2.5")
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "the first use of a nonce"
    );
    let unsigned_part = signed(&|_| {}, false);
    type Attempt<'a> = Box<dyn Fn() -> reqwest::RequestBuilder + 'a>;
    let cases: [(&str, &str, &str, Attempt<'_>); 5] = [
        (
            "192.0.2.1",
            "signature",
            "a wrong signature",
            Box::new(|| wrong.builder(&app)),
        ),
        (
            "192.0.2.2",
            "signature",
            "no X-Nonce",
            Box::new(|| {
                app.client
                    .get(app.url("/users/me"))
                    .header("x-api-key", &key.key)
                    .header("x-timestamp", &unsigned_part.timestamp)
                    .header("x-signature", &unsigned_part.signature)
            }),
        ),
        (
            "192.0.2.3",
            "timestamp",
            "a stale timestamp",
            Box::new(|| stale.builder(&app)),
        ),
        (
            "192.0.2.4",
            "nonce",
            "a nonce too short",
            Box::new(|| short_nonce.builder(&app)),
        ),
        (
            "192.0.2.5",
            "replay",
            "a replayed nonce",
            Box::new(|| replayed.builder(&app)),
        ),
    ];
    for (ip, _, description, attempt) in &cases {
        crate::rate_limits::assert_failures_spend_the_budget(ip, 4, description, attempt.as_ref())
            .await;
    }
    let metrics = app.metrics().await;
    for (reason, expected) in [
        ("signature", 8),
        ("timestamp", 4),
        ("nonce", 4),
        ("replay", 4),
    ] {
        let name = format!("rampart_auth_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(
            crate::rate_limits::series(&metrics, &name),
            expected,
            "{name}"
        );
    }
    app.flush_audit().await;
    let rows: Value = app
        .get_with("/admin/audit?action=auth_failed", &alice.access_token)
        .await
        .json()
        .await
        .unwrap();
    let rows = rows["items"].as_array().unwrap();
    for (ip, reason, description, _) in &cases {
        let mine: Vec<&Value> = rows.iter().filter(|row| row["ip_address"] == *ip).collect();
        assert_eq!(mine.len(), 1, "{description}: one row a minute: {rows:?}");
        assert_eq!(mine[0]["details"]["reason"], *reason, "{description}");
    }
}

/// A gateway whose anonymous budget is four a minute, reading the client from
/// `X-Forwarded-For`.
async fn spawn_with_small_anonymous_budget(backend: Backend) -> Option<TestApp> {
    let setup = crate::helpers::Setup::default()
        .env("RAMPART_RATE_LIMITS__ANONYMOUS", "4/min")
        .env("RAMPART_RATE_LIMITS__IPV6_PREFIX", "64")
        .env(
            "RAMPART_SERVER__TRUSTED_PROXIES",
            r#"["::1/128", "127.0.0.0/8"]"#,
        );
    crate::helpers::spawn_app_with(backend, setup).await
}

async fn from(app: &TestApp, ip: &str, key: &str) -> reqwest::Response {
    app.client
        .get(app.url("/users/me"))
        .header("x-api-key", key)
        .header("x-forwarded-for", ip)
        .send()
        .await
        .unwrap()
}

async fn a_verified_key_is_not_locked_out_by_junk_from_its_address(backend: Backend) {
    let Some(app) = spawn_with_small_anonymous_budget(backend).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let key = create_key(&app, &alice, "bot").await;
    let signed_key = create_key(&app, &alice, "signed bot").await;
    let junk = || format!("rk_{}_{}", hex::encode(rand_bytes::<8>()), "1".repeat(64));
    // The same address, and two addresses of one IPv6 /64 (one client to the limiter).
    for (verified_from, junk_from, later_from) in [
        ("192.0.2.10", "192.0.2.10", "192.0.2.10"),
        ("2001:db8:1::1", "2001:db8:1::2", "2001:db8:1::3"),
    ] {
        assert_eq!(from(&app, verified_from, &key.key).await.status(), 200);
        let signed = Signed::new(&app, Method::GET, "/users/me", b"", &signed_key);
        let response = signed
            .builder(&app)
            .header("x-forwarded-for", verified_from)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{verified_from}: signed");
        for i in 0..4 {
            let response = from(&app, junk_from, &junk()).await;
            assert_eq!(response.status(), 401, "{junk_from}: junk {i}");
        }
        let spent = from(&app, junk_from, &junk()).await;
        assert_error(spent, 429, "rate_limited").await;
        // The budget is spent: unknown keys are refused before any lookup, the verified
        // ones still work, signed or not.
        assert_eq!(from(&app, later_from, &junk()).await.status(), 429);
        for _ in 0..3 {
            assert_eq!(from(&app, later_from, &key.key).await.status(), 200);
        }
        let signed = Signed::new(&app, Method::GET, "/users/me", b"", &signed_key);
        let response = signed
            .builder(&app)
            .header("x-forwarded-for", later_from)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{later_from}: signed, budget spent");
    }

    // More requests in flight at once than the anonymous burst.
    let burst = (0..20).map(|_| from(&app, "192.0.2.20", &key.key));
    let statuses: Vec<u16> = futures::future::join_all(burst)
        .await
        .into_iter()
        .map(|response| response.status().as_u16())
        .collect();
    assert_eq!(statuses, [200; 20]);

    // Still checked on every request: a deleted key is refused at once, and from then on
    // charged before its lookup again.
    let deleted = app
        .send_with(
            Method::DELETE,
            &format!("/users/me/api-keys/{}", key.id),
            &alice.access_token,
            None,
        )
        .await;
    assert_eq!(deleted.status(), 204);
    assert_error(
        from(&app, "192.0.2.30", &key.key).await,
        401,
        "unauthorized",
    )
    .await;
    assert_error(
        from(&app, "192.0.2.10", &key.key).await,
        429,
        "rate_limited",
    )
    .await;

    // A key not seen before is charged before its lookup, valid or not.
    let fresh = create_key(&app, &alice, "fresh").await;
    assert_error(
        from(&app, "192.0.2.10", &fresh.key).await,
        429,
        "rate_limited",
    )
    .await;
    // It expires from the set: ten minutes after its last use it is charged again.
    assert_eq!(from(&app, "192.0.2.40", &fresh.key).await.status(), 200);
    app.clock.advance(Duration::from_secs(601));
    for i in 0..4 {
        let response = from(&app, "192.0.2.41", &junk()).await;
        assert_eq!(response.status(), 401, "junk {i}");
    }
    assert_error(
        from(&app, "192.0.2.41", &fresh.key).await,
        429,
        "rate_limited",
    )
    .await;
}

fn rand_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    for byte in &mut bytes {
        *byte = rand::random();
    }
    bytes
}

async fn signed_requests_answered_before_the_limiter_are_still_charged(backend: Backend) {
    // A small limit, so that the refused bodies fit in the socket buffers and the client
    // reads the answer instead of a reset.
    let setup = crate::helpers::Setup::default()
        .env("RAMPART_RATE_LIMITS__ANONYMOUS", "4/min")
        .env("RAMPART_SERVER__MAX_BODY", "1KiB")
        .env(
            "RAMPART_SERVER__TRUSTED_PROXIES",
            r#"["::1/128", "127.0.0.0/8"]"#,
        );
    let Some(app) = crate::helpers::spawn_app_with(backend, setup).await else {
        return;
    };
    let alice = app.user("alice_1").await;
    let key = create_key(&app, &alice, "bot").await;
    let limit = app.state.config.server.max_body;
    let oversized = vec![b'a'; limit + 1];
    let fresh_client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // Declared too large, or streamed without a length until it is too large; with a key
    // that was never verified, or one that was.
    for (ip, verify_first, chunked) in [
        ("192.0.2.1", false, false),
        ("192.0.2.2", false, true),
        ("192.0.2.3", true, false),
        ("192.0.2.4", true, true),
    ] {
        if verify_first {
            assert_eq!(from(&app, ip, &key.key).await.status(), 200, "{ip}");
        }
        let mut statuses = Vec::new();
        for _ in 0..6 {
            let signed = Signed::new(&app, Method::POST, "/accounts", &oversized, &key);
            // A connection per request: the gateway closes one whose body it left unread.
            let mut request = fresh_client
                .post(app.url("/accounts"))
                .header("x-api-key", &key.key)
                .header("x-timestamp", &signed.timestamp)
                .header("x-nonce", &signed.nonce)
                .header("x-signature", &signed.signature)
                .header("x-forwarded-for", ip)
                .header("content-type", "application/json")
                .body(oversized.clone());
            if chunked {
                let chunks: Vec<Result<Vec<u8>, std::io::Error>> = oversized
                    .chunks(256)
                    .map(|chunk| Ok(chunk.to_vec()))
                    .collect();
                request = request.body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)));
            }
            statuses.push(request.send().await.unwrap().status().as_u16());
        }
        let spent = 4;
        assert_eq!(
            statuses[..spent],
            vec![413; spent][..],
            "{ip}: {statuses:?}"
        );
        assert!(
            statuses[spent..].iter().all(|status| *status == 429),
            "{ip}: {statuses:?}"
        );
        // And the address's budget is spent for everything anonymous.
        assert_eq!(
            app.client
                .get(app.url("/users/me"))
                .header("x-forwarded-for", ip)
                .send()
                .await
                .unwrap()
                .status(),
            429
        );
    }
}

crate::on_databases!(
    a_key_is_shown_once_and_acts_as_its_owner_with_the_current_role,
    a_key_is_read_only_from_its_header,
    malformed_unknown_and_doubled_keys_are_refused,
    a_disabled_owner_and_an_expired_key_are_refused,
    keys_are_managed_only_from_a_login_session,
    bad_key_requests_are_refused_with_the_fields_at_fault,
    a_signed_body_over_the_limit_is_413,
    the_principal_records_whether_the_request_was_signed,
    deleting_the_user_deletes_their_keys_and_accounts,
);

mod signing {
    use super::*;

    crate::on_session_stores!(
        a_correctly_signed_request_is_accepted_once,
        every_signing_failure_is_refused_with_401,
        every_signing_failure_spends_the_anonymous_budget_and_is_counted,
        a_verified_key_is_not_locked_out_by_junk_from_its_address,
        signed_requests_answered_before_the_limiter_are_still_charged,
    );
}
