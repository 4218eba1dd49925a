//! Verified API keys held in memory: a request with a known key goes to no store, yet every
//! change to what the key grants (delete, the owner's role, disabled flag, deletion,
//! expiry) is in force on every instance within a second; and a signature is checked in
//! full, with its nonce claimed once across instances.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::api_keys::{Key, Signed, create_key, signature};
use crate::helpers::{Backend, STRONG_PASSWORD, TestApp, assert_error, spawn_app};

/// How long a change may take to reach another instance (SPEC: within 1 s), with slack for a
/// loaded test machine.
const BOUND: Duration = Duration::from_secs(3);

/// A second gateway on the first one's database and secrets.
async fn second_instance(first: &TestApp, backend: Backend) -> TestApp {
    crate::helpers::another_instance(
        first,
        backend,
        &[("RAMPART_RATE_LIMITS__PREMIUM", "100000/min")],
        rampart::clock::ManualClock::new(),
    )
    .await
}

async fn with_key(app: &TestApp, path: &str, key: &str) -> reqwest::Response {
    app.client
        .get(app.url(path))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

/// Sends `GET path` with the key until it gets `status`; fails after [`BOUND`]. Every answer
/// before is `before`.
async fn until_status(app: &TestApp, path: &str, key: &str, before: u16, status: u16) {
    let started = tokio::time::Instant::now();
    loop {
        let got = with_key(app, path, key).await.status().as_u16();
        if got == status {
            return;
        }
        assert_eq!(
            got, before,
            "{path} before the change reached this instance"
        );
        assert!(
            started.elapsed() < BOUND,
            "{path} still {got} after {BOUND:?}"
        );
        // The change reaches this instance on its own schedule: poll until the bound.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two instances on one database, a user `bob_1` with a key both instances hold, and an
/// admin session on the first.
async fn two_instances_holding_a_key(
    backend: Backend,
) -> Option<(
    TestApp,
    TestApp,
    crate::helpers::Session,
    crate::helpers::Session,
    Key,
)> {
    let first = spawn_app(backend).await?;
    let second = second_instance(&first, backend).await;
    let admin = first.user("alice_1").await;
    let bob = first.user("bob_1").await;
    let key = create_key(&first, &bob, "bot").await;
    for app in [&first, &second] {
        assert_eq!(with_key(app, "/users/me", &key.key).await.status(), 200);
        assert!(!app.state.api_keys.is_empty(), "the key is held");
    }
    Some((first, second, admin, bob, key))
}

async fn a_deleted_key_is_refused_on_every_instance_within_a_second(backend: Backend) {
    let Some((first, second, _admin, bob, key)) = two_instances_holding_a_key(backend).await else {
        return;
    };
    let other = create_key(&first, &bob, "other").await;
    assert_eq!(
        with_key(&second, "/users/me", &other.key).await.status(),
        200
    );
    let deleted = first
        .send_with(
            Method::DELETE,
            &format!("/users/me/api-keys/{}", key.id),
            &bob.access_token,
            None,
        )
        .await;
    assert_eq!(deleted.status(), 204);
    // At once where it was deleted, within the bound elsewhere.
    assert_error(
        with_key(&first, "/users/me", &key.key).await,
        401,
        "unauthorized",
    )
    .await;
    until_status(&second, "/users/me", &key.key, 200, 401).await;
    // The owner's other key still works on both.
    for app in [&first, &second] {
        assert_eq!(with_key(app, "/users/me", &other.key).await.status(), 200);
    }
    // Logging out everywhere with the keys ends the other one too.
    let logout = first
        .send_with(
            Method::POST,
            "/auth/logout-all",
            &bob.access_token,
            Some(json!({ "revoke_api_keys": true })),
        )
        .await;
    assert!(logout.status().is_success(), "{}", logout.status());
    assert_eq!(
        with_key(&first, "/users/me", &other.key).await.status(),
        401
    );
    until_status(&second, "/users/me", &other.key, 200, 401).await;
}

async fn a_role_change_and_a_disabled_owner_reach_every_instance_within_a_second(backend: Backend) {
    let Some((first, second, admin, bob, key)) = two_instances_holding_a_key(backend).await else {
        return;
    };
    // Admin only, and not under /admin/, which no key reaches whatever its role.
    let admin_only = format!("/users/{}", admin.user_id);
    let admin_only = admin_only.as_str();
    assert_eq!(with_key(&second, admin_only, &key.key).await.status(), 403);
    let promoted = first
        .send_with(
            Method::PATCH,
            &format!("/admin/users/{}", bob.user_id),
            &admin.access_token,
            Some(json!({ "role": "admin" })),
        )
        .await;
    assert_eq!(promoted.status(), 200);
    assert_eq!(with_key(&first, admin_only, &key.key).await.status(), 200);
    until_status(&second, admin_only, &key.key, 403, 200).await;
    let me: Value = with_key(&second, "/users/me", &key.key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["role"], "admin");

    // Demoted again: the key loses the role everywhere.
    let demoted = first
        .send_with(
            Method::PATCH,
            &format!("/admin/users/{}", bob.user_id),
            &admin.access_token,
            Some(json!({ "role": "viewer" })),
        )
        .await;
    assert_eq!(demoted.status(), 200);
    assert_eq!(with_key(&first, admin_only, &key.key).await.status(), 403);
    until_status(&second, admin_only, &key.key, 200, 403).await;

    let disabled = first
        .send_with(
            Method::PATCH,
            &format!("/admin/users/{}", bob.user_id),
            &admin.access_token,
            Some(json!({ "disabled": true })),
        )
        .await;
    assert_eq!(disabled.status(), 200);
    assert_eq!(with_key(&first, "/users/me", &key.key).await.status(), 401);
    until_status(&second, "/users/me", &key.key, 200, 401).await;
    // Still refused after it: a refusal is never held as a pass.
    for _ in 0..3 {
        assert_eq!(with_key(&second, "/users/me", &key.key).await.status(), 401);
    }
}

async fn a_deleted_owner_is_refused_on_every_instance_within_a_second(backend: Backend) {
    let Some((first, second, admin, bob, key)) = two_instances_holding_a_key(backend).await else {
        return;
    };
    // Admin only, and not under /admin/, which no key reaches whatever its role.
    let admin_only = format!("/users/{}", admin.user_id);
    let admin_only = admin_only.as_str();
    // An admin's key, on a route whose handler does not look its caller up again: only the
    // key check stands between a deleted owner and the answer.
    let promoted = first
        .send_with(
            Method::PATCH,
            &format!("/admin/users/{}", bob.user_id),
            &admin.access_token,
            Some(json!({ "role": "admin" })),
        )
        .await;
    assert_eq!(promoted.status(), 200);
    until_status(&second, admin_only, &key.key, 403, 200).await;
    let bob = first.login("bob_1").await;
    let deleted = first
        .send_with(
            Method::DELETE,
            "/users/me",
            &bob.access_token,
            Some(json!({ "password": STRONG_PASSWORD })),
        )
        .await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(with_key(&first, admin_only, &key.key).await.status(), 401);
    until_status(&second, admin_only, &key.key, 200, 401).await;
}

async fn a_held_key_expires_on_time(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = app.user("bob_1").await;
    let created = app
        .send_with(
            Method::POST,
            "/users/me/api-keys",
            &bob.access_token,
            Some(json!({ "name": "short lived", "expires_in_days": 1 })),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    assert_eq!(with_key(&app, "/users/me", &key).await.status(), 200);
    assert_eq!(app.state.api_keys.len(), 1, "held");
    app.clock.advance(Duration::from_secs(86_400 - 10));
    assert_eq!(with_key(&app, "/users/me", &key).await.status(), 200);
    // Expired while held (monotonic time has hardly moved): refused all the same.
    app.clock.advance(Duration::from_secs(10));
    assert_error(with_key(&app, "/users/me", &key).await, 401, "unauthorized").await;
    assert!(app.state.api_keys.is_empty(), "dropped once expired");
    assert_eq!(with_key(&app, "/users/me", &key).await.status(), 401);
}

async fn a_signature_is_checked_in_full_for_a_held_key_and_its_nonce_claimed_once_everywhere(
    backend: Backend,
) {
    let Some((first, second, _admin, _bob, key)) = two_instances_holding_a_key(backend).await
    else {
        return;
    };
    // A signed request opens the secret; the key is now held with it on the first instance.
    let signed = Signed::new(&first, Method::GET, "/users/me", b"", &key);
    assert_eq!(signed.send(&first).await.status(), 200);
    // Replayed on either instance: the nonce was claimed in the shared store.
    for app in [&first, &second] {
        assert_error(signed.send(app).await, 401, "unauthorized").await;
    }
    for app in [&first, &second] {
        // A wrong signature, a signature over another path or body, another key's secret.
        let mut wrong = Signed::new(app, Method::GET, "/users/me", b"", &key);
        let mut flipped = wrong.signature.into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        wrong.signature = String::from_utf8(flipped).unwrap();
        assert_error(wrong.send(app).await, 401, "unauthorized").await;

        let mut other_path = Signed::new(app, Method::GET, "/users/me", b"", &key);
        other_path.signature = signature(
            &key.secret,
            "GET",
            "/users/me/api-keys",
            &other_path.timestamp,
            &other_path.nonce,
            b"",
        );
        assert_error(other_path.send(app).await, 401, "unauthorized").await;

        let mut other_body = Signed::new(app, Method::POST, "/accounts", b"{}", &key);
        other_body.body = b"{ }".to_vec();
        assert_error(other_body.send(app).await, 401, "unauthorized").await;

        let mut other_secret = Signed::new(app, Method::GET, "/users/me", b"", &key);
        other_secret.signature = signature(
            &"0".repeat(64),
            "GET",
            "/users/me",
            &other_secret.timestamp,
            &other_secret.nonce,
            b"",
        );
        assert_error(other_secret.send(app).await, 401, "unauthorized").await;

        // And a correct one still passes, once.
        let good = Signed::new(app, Method::GET, "/users/me", b"", &key);
        assert_eq!(good.send(app).await.status(), 200);
        assert_error(good.send(app).await, 401, "unauthorized").await;
    }
    // Concurrent replays of one signed request across both instances: exactly one passes.
    let signed = Signed::new(&first, Method::GET, "/users/me", b"", &key);
    let attempts = (0..16).map(|i| {
        let app = if i % 2 == 0 { &first } else { &second };
        let signed = &signed;
        async move { signed.send(app).await.status().as_u16() }
    });
    let statuses = futures::future::join_all(attempts).await;
    assert_eq!(
        statuses.iter().filter(|status| **status == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses.iter().all(|status| [200, 401].contains(status)));
}

async fn a_change_made_behind_the_gateway_is_seen_through_the_log(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let bob = app.user("bob_1").await;
    let key = create_key(&app, &bob, "bot").await;
    assert_eq!(with_key(&app, "/users/me", &key.key).await.status(), 200);
    // A change made behind the gateway's back (no local invalidation) is still seen
    // within the bound, through the log its triggers write.
    let deleted = app
        .state
        .stores
        .data
        .delete_api_key(
            bob.user_id,
            key.id,
            rampart::audit::NewAuditEntry::new(
                0,
                "api_key_revoked",
                Some(bob.user_id),
                json!({}),
                &rampart::audit::RequestContext::default(),
            ),
        )
        .await;
    assert!(deleted.is_ok(), "{deleted:?}");
    until_status(&app, "/users/me", &key.key, 200, 401).await;
}

crate::on_databases!(
    a_deleted_key_is_refused_on_every_instance_within_a_second,
    a_role_change_and_a_disabled_owner_reach_every_instance_within_a_second,
    a_deleted_owner_is_refused_on_every_instance_within_a_second,
    a_held_key_expires_on_time,
    a_signature_is_checked_in_full_for_a_held_key_and_its_nonce_claimed_once_everywhere,
    a_change_made_behind_the_gateway_is_seen_through_the_log,
);
