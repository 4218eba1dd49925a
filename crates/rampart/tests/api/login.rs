use std::time::Duration;

use rampart::audit::{NewAuditEntry, RequestContext};
use rampart::store::NewUser;
use serde_json::{Value, json};

use crate::helpers::{Backend, STRONG_PASSWORD, Setup, assert_error, spawn_app, spawn_app_with};

async fn login_returns_the_documented_token_body(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    let session = app.login("alice_1").await;
    let body = &session.body;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["refresh_expires_in"], 604_800);
    assert_eq!(body["user"]["username"], "alice_1");
    assert!(body.get("csrf_token").is_none());
    // Usernames are matched case-insensitively.
    app.login("ALICE_1").await;
}

async fn unknown_users_and_wrong_passwords_get_the_same_answer(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    let mut bodies = Vec::new();
    for username in ["alice_1", "nobody_here"] {
        let response = app
            .post(
                "/auth/login",
                &json!({"username": username, "password": "Wrong!pass1"}),
            )
            .await;
        let mut body = assert_error(response, 401, "invalid_credentials").await;
        body.as_object_mut().unwrap().remove("request_id");
        bodies.push(body);
    }
    assert_eq!(bodies[0], bodies[1]);
}

async fn five_failures_lock_the_ip_out_until_the_window_passes(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    for _ in 0..5 {
        let response = app
            .post(
                "/auth/login",
                &json!({"username": "alice_1", "password": "Wrong!pass1"}),
            )
            .await;
        assert_error(response, 401, "invalid_credentials").await;
    }
    // Even the right password is refused while locked out.
    let response = app
        .post(
            "/auth/login",
            &json!({"username": "alice_1", "password": STRONG_PASSWORD}),
        )
        .await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&retry_after), "{retry_after}");
    assert_error(response, 429, "locked_out").await;
    app.clock.advance(Duration::from_secs(3601));
    app.login("alice_1").await;
}

async fn a_success_clears_the_ip_count(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    for round in 0..3 {
        for _ in 0..4 {
            let response = app
                .post(
                    "/auth/login",
                    &json!({"username": "alice_1", "password": "Wrong!pass1"}),
                )
                .await;
            assert_eq!(response.status(), 401, "round {round}");
        }
        app.login("alice_1").await;
    }
}

async fn an_account_is_locked_whichever_ip_the_failures_come_from(backend: Backend) {
    let setup = Setup::default()
        .env("RAMPART_SERVER__TRUSTED_PROXIES", "127.0.0.0/8")
        .env("RAMPART_LOGIN__MAX_FAILURES_PER_ACCOUNT", "3");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    app.register("alice_1").await;
    for index in 0..3 {
        let response = app
            .client
            .post(app.url("/auth/login"))
            .header("x-forwarded-for", format!("198.51.100.{index}"))
            .json(&json!({"username": "alice_1", "password": "Wrong!pass1"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }
    let response = app
        .client
        .post(app.url("/auth/login"))
        .header("x-forwarded-for", "198.51.100.200")
        .json(&json!({"username": "alice_1", "password": STRONG_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_error(response, 429, "locked_out").await;
    // Another account from that IP is not affected.
    app.register("bob_22").await;
    app.login("bob_22").await;
}

async fn an_admin_can_lift_a_lockout(backend: Backend) {
    let setup = Setup::default().env("RAMPART_SERVER__TRUSTED_PROXIES", "127.0.0.0/8");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let target = app.register("bob_22").await;
    for _ in 0..5 {
        app.client
            .post(app.url("/auth/login"))
            .header("x-forwarded-for", "198.51.100.9")
            .json(&json!({"username": "bob_22", "password": "Wrong!pass1"}))
            .send()
            .await
            .unwrap();
    }
    let locked = app
        .client
        .post(app.url("/auth/login"))
        .header("x-forwarded-for", "198.51.100.9")
        .json(&json!({"username": "bob_22", "password": STRONG_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(locked.status(), 429);
    let unlock = app
        .send_with(
            reqwest::Method::POST,
            &format!("/admin/users/{}/unlock", target["id"]),
            &admin.access_token,
            Some(json!({"ip": "198.51.100.9"})),
        )
        .await;
    assert_eq!(unlock.status(), 204);
    let after = app
        .client
        .post(app.url("/auth/login"))
        .header("x-forwarded-for", "198.51.100.9")
        .json(&json!({"username": "bob_22", "password": STRONG_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
}

async fn a_spoofed_forwarded_for_never_resets_a_lockout(backend: Backend) {
    // No trusted proxies: the header is ignored, the socket peer is the client.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    for index in 0..6 {
        app.client
            .post(app.url("/auth/login"))
            .header("x-forwarded-for", format!("203.0.113.{index}"))
            .json(&json!({"username": "alice_1", "password": "Wrong!pass1"}))
            .send()
            .await
            .unwrap();
    }
    let response = app
        .client
        .post(app.url("/auth/login"))
        .header("x-forwarded-for", "203.0.113.99")
        .json(&json!({"username": "alice_1", "password": STRONG_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_error(response, 429, "locked_out").await;
}

async fn a_lockout_survives_a_restart(backend: Backend) {
    if backend != Backend::Sqlite {
        return;
    }
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    for _ in 0..5 {
        app.post(
            "/auth/login",
            &json!({"username": "alice_1", "password": "Wrong!pass1"}),
        )
        .await;
    }
    let data_dir = app.data_dir.clone();
    let url = app.database_url.clone();
    let clock = app.clock.clone();
    drop(app);
    let config = rampart::config::Config::load(&rampart::config::Sources {
        file_path: None,
        file: None,
        env: [
            (
                "RAMPART_SERVER__LISTEN".to_owned(),
                "127.0.0.1:0".to_owned(),
            ),
            ("RAMPART_DATABASE__URL".to_owned(), url.clone()),
        ]
        .into(),
        data_dir: Some(data_dir.clone()),
    })
    .unwrap();
    let restarted = crate::helpers::start(config, data_dir, url, String::new(), clock).await;
    let response = restarted
        .post(
            "/auth/login",
            &json!({"username": "alice_1", "password": STRONG_PASSWORD}),
        )
        .await;
    assert_error(response, 429, "locked_out").await;
}

async fn a_disabled_user_is_told_so_only_after_the_right_password(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let bob = app.register("bob_22").await;
    let response = app
        .send_with(
            reqwest::Method::PATCH,
            &format!("/admin/users/{}", bob["id"]),
            &admin.access_token,
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let wrong = app
        .post(
            "/auth/login",
            &json!({"username": "bob_22", "password": "Wrong!pass1"}),
        )
        .await;
    assert_error(wrong, 401, "invalid_credentials").await;
    let right = app
        .post(
            "/auth/login",
            &json!({"username": "bob_22", "password": STRONG_PASSWORD}),
        )
        .await;
    assert_error(right, 403, "disabled").await;
}

async fn imported_legacy_hashes_verify_and_are_upgraded(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("admin_1").await;
    let salt = "s4ltS4lt";
    let mut derived = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<sha2::Sha256>(b"Legacy!pass1", salt.as_bytes(), 1000, &mut derived);
    let werkzeug = format!("pbkdf2:sha256:1000${salt}${}", hex::encode(derived));
    let bcrypt = bcrypt::hash("Legacy!pass2", 4).unwrap();
    for (username, hash, password) in [
        ("from_flask", werkzeug, "Legacy!pass1"),
        ("from_bcrypt", bcrypt, "Legacy!pass2"),
    ] {
        let user = app
            .state
            .stores
            .data
            .create_user(
                NewUser {
                    username: username.into(),
                    email: format!("{username}@example.com"),
                    password_hash: hash,
                    role: "viewer".into(),
                    force_admin: false,
                    created_at: 0,
                },
                NewAuditEntry::new(
                    0,
                    "user_registration",
                    None,
                    json!({}),
                    &RequestContext::default(),
                ),
            )
            .await
            .unwrap();
        app.login_with(username, password).await;
        let stored = app
            .state
            .stores
            .data
            .user_by_id(user.id)
            .await
            .unwrap()
            .unwrap();
        assert!(
            stored.password_hash.starts_with("$argon2id$"),
            "{username}'s hash was upgraded"
        );
        app.login_with(username, password).await;
    }
}

async fn cookie_login_sets_hardened_cookies_and_a_csrf_token(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    let response = app
        .post(
            "/auth/login",
            &json!({"username": "alice_1", "password": STRONG_PASSWORD, "cookie": true}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let cookies: Vec<String> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|value| value.to_str().unwrap().to_owned())
        .collect();
    let access = cookies
        .iter()
        .find(|c| c.starts_with("__Host-access_token="))
        .unwrap();
    let refresh = cookies
        .iter()
        .find(|c| c.starts_with("__Secure-refresh_token="))
        .unwrap();
    for attribute in ["HttpOnly", "Secure", "SameSite=Strict"] {
        assert!(access.contains(attribute), "{access}");
        assert!(refresh.contains(attribute), "{refresh}");
    }
    assert!(access.contains("Path=/;"), "{access}");
    assert!(refresh.contains("Path=/auth"), "{refresh}");
    let body: Value = response.json().await.unwrap();
    let csrf = body["csrf_token"].as_str().unwrap().to_owned();
    let access_value = access.split(';').next().unwrap().to_owned();
    let refresh_value = refresh.split(';').next().unwrap().to_owned();

    // A safe request needs no CSRF token.
    let me = app
        .client
        .get(app.url("/users/me"))
        .header("cookie", &access_value)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    // An unsafe one does.
    let without = app
        .client
        .post(app.url("/auth/logout"))
        .header("cookie", &access_value)
        .send()
        .await
        .unwrap();
    assert_error(without, 403, "csrf_failed").await;
    let wrong = app
        .client
        .post(app.url("/auth/logout"))
        .header("cookie", &access_value)
        .header("x-csrf-token", "forged")
        .send()
        .await
        .unwrap();
    assert_error(wrong, 403, "csrf_failed").await;
    // Refreshing from the cookie needs it too.
    let refresh_without = app
        .client
        .post(app.url("/auth/refresh"))
        .header("cookie", &refresh_value)
        .send()
        .await
        .unwrap();
    assert_error(refresh_without, 403, "csrf_failed").await;
    let refreshed = app
        .client
        .post(app.url("/auth/refresh"))
        .header("cookie", &refresh_value)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), 200);
    let access_value = refreshed
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with("__Host-access_token="))
        .and_then(|value| value.split(';').next())
        .unwrap()
        .to_owned();
    let refreshed: Value = refreshed.json().await.unwrap();
    let new_csrf = refreshed["csrf_token"].as_str().unwrap().to_owned();
    // The refresh replaced the CSRF token: the previous one no longer works.
    let stale = app
        .client
        .post(app.url("/auth/logout"))
        .header("cookie", &access_value)
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_error(stale, 403, "csrf_failed").await;
    let logout = app
        .client
        .post(app.url("/auth/logout"))
        .header("cookie", &access_value)
        .header("x-csrf-token", &new_csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
}

crate::on_session_stores!(
    login_returns_the_documented_token_body,
    unknown_users_and_wrong_passwords_get_the_same_answer,
    five_failures_lock_the_ip_out_until_the_window_passes,
    a_success_clears_the_ip_count,
    an_account_is_locked_whichever_ip_the_failures_come_from,
    an_admin_can_lift_a_lockout,
    a_spoofed_forwarded_for_never_resets_a_lockout,
    a_lockout_survives_a_restart,
    a_disabled_user_is_told_so_only_after_the_right_password,
    imported_legacy_hashes_verify_and_are_upgraded,
    cookie_login_sets_hardened_cookies_and_a_csrf_token,
);
