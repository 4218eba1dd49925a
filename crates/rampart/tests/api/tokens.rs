use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rampart::clock::Clock;
use serde_json::{Value, json};

use crate::helpers::{Backend, Setup, TestApp, assert_error, spawn_app, spawn_app_with};

fn claims(app: &TestApp, user_id: i64, sid: &str) -> Value {
    let now = app.clock.unix();
    json!({
        "sub": user_id.to_string(), "user_id": user_id, "username": "alice_1",
        "role": "admin", "tier": "standard", "iat": now, "nbf": now, "exp": now + 3600,
        "jti": "test", "iss": "rampart", "aud": "rampart", "sid": sid,
    })
}

fn sign(header: &Header, claims: &Value, secret: &[u8]) -> String {
    jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn raw(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        signature
    )
}

async fn forged_and_broken_tokens_are_all_refused_with_401(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let session = app.user("alice_1").await;
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let secret = app
        .state
        .config
        .tokens
        .secret
        .as_ref()
        .unwrap()
        .expose()
        .as_bytes()
        .to_vec();
    let sid = {
        let payload = session.access_token.split('.').nth(1).unwrap();
        let claims: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        claims["sid"].as_str().unwrap().to_owned()
    };
    let good = claims(&app, session.user_id, &sid);
    let hs256 = Header::new(Algorithm::HS256);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut claims = good.clone();
        edit(&mut claims);
        claims
    };
    let now = app.clock.unix();
    let parts: Vec<&str> = session.access_token.split('.').collect();
    let mut tampered_claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    tampered_claims["role"] = json!("admin");
    tampered_claims["user_id"] = json!(999);
    tampered_claims["sub"] = json!("999");
    let mut jku_header = Header::new(Algorithm::HS256);
    jku_header.jku = Some("http://127.0.0.1:1/jwks.json".into());
    jku_header.kid = Some("../../../../dev/null".into());
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            raw(&json!({"alg": "none", "typ": "JWT"}), &good, ""),
        ),
        (
            "alg None",
            raw(&json!({"alg": "None", "typ": "JWT"}), &good, ""),
        ),
        (
            "HS512 with the right secret",
            sign(&Header::new(Algorithm::HS512), &good, &secret),
        ),
        ("stripped signature", format!("{}.{}.", parts[0], parts[1])),
        (
            "another key",
            sign(&hs256, &good, b"another-secret-another-secret-xx"),
        ),
        (
            "expired",
            sign(
                &hs256,
                &with(&|c| {
                    c["exp"] = json!(now - 31);
                    c["iat"] = json!(now - 4000);
                    c["nbf"] = json!(now - 4000)
                }),
                &secret,
            ),
        ),
        (
            "nbf in the future",
            sign(&hs256, &with(&|c| c["nbf"] = json!(now + 120)), &secret),
        ),
        (
            "no exp",
            sign(
                &hs256,
                &with(&|c| {
                    c.as_object_mut().unwrap().remove("exp");
                }),
                &secret,
            ),
        ),
        (
            "wrong iss",
            sign(&hs256, &with(&|c| c["iss"] = json!("evil")), &secret),
        ),
        (
            "wrong aud",
            sign(&hs256, &with(&|c| c["aud"] = json!("evil")), &secret),
        ),
        (
            "jku and kid pointing elsewhere",
            sign(&jku_header, &good, b"attacker-key-attacker-key-attack"),
        ),
        (
            "tampered role claim",
            format!(
                "{}.{}.{}",
                parts[0],
                URL_SAFE_NO_PAD.encode(tampered_claims.to_string()),
                parts[2]
            ),
        ),
        ("two parts", format!("{}.{}", parts[0], parts[1])),
        ("20 kB of garbage", "A".repeat(20_000)),
        ("garbage with dots", "a.b.c".into()),
        (
            "non-JSON header",
            format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode("{{{"),
                parts[1],
                parts[2]
            ),
        ),
    ];
    for (name, token) in cases {
        let response = app.get_with("/users/me", &token).await;
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|value| value.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert_eq!(response.status(), 401, "{name}");
        assert!(
            challenge.contains("error=\"invalid_token\""),
            "{name}: {challenge}"
        );
        assert_error(response, 401, "unauthorized").await;
    }
    // The genuine token still works, and the failures were counted.
    assert_eq!(
        app.get_with("/users/me", &session.access_token)
            .await
            .status(),
        200
    );
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("rampart_jwt_validation_failures_total{reason=\"wrong_algorithm\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rampart_jwt_validation_failures_total{reason=\"bad_signature\"}"),
        "{metrics}"
    );
}

async fn no_credentials_get_a_bare_bearer_challenge(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let response = app.client.get(app.url("/users/me")).send().await.unwrap();
    let challenge = response.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(challenge.starts_with("Bearer"), "{challenge}");
    assert!(!challenge.contains("error="), "{challenge}");
    assert_error(response, 401, "unauthorized").await;
}

async fn an_access_token_expires_after_an_hour(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let session = app.user("alice_1").await;
    app.clock.advance(Duration::from_secs(3600 + 31));
    let response = app.get_with("/users/me", &session.access_token).await;
    assert_error(response, 401, "unauthorized").await;
}

async fn refreshing_rotates_and_reuse_revokes_the_whole_family(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let first = app.user("alice_1").await;
    let rotated = app
        .post(
            "/auth/refresh",
            &json!({"refresh_token": first.refresh_token}),
        )
        .await;
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.unwrap();
    let second_refresh = rotated["refresh_token"].as_str().unwrap().to_owned();
    let second_access = rotated["access_token"].as_str().unwrap().to_owned();
    assert_ne!(second_refresh, first.refresh_token);
    assert_eq!(
        app.get_with("/users/me", &second_access).await.status(),
        200
    );

    // The old token again: reuse. The whole family goes.
    let reused = app
        .post(
            "/auth/refresh",
            &json!({"refresh_token": first.refresh_token}),
        )
        .await;
    assert_error(reused, 401, "token_reused").await;
    let descendant = app
        .post("/auth/refresh", &json!({"refresh_token": second_refresh}))
        .await;
    assert_eq!(descendant.status(), 401);
    assert_eq!(
        app.get_with("/users/me", &second_access).await.status(),
        401
    );
    assert_eq!(
        app.get_with("/users/me", &first.access_token)
            .await
            .status(),
        401
    );
}

async fn concurrent_refreshes_of_one_token_let_at_most_one_through(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let session = app.user("alice_1").await;
    let app = Arc::new(app);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let app = app.clone();
        let token = session.refresh_token.clone();
        tasks.push(tokio::spawn(async move {
            app.post("/auth/refresh", &json!({"refresh_token": token}))
                .await
                .status()
                .as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    assert!(
        statuses.iter().filter(|s| **s == 200).count() <= 1,
        "{statuses:?}"
    );
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 401),
        "{statuses:?}"
    );
}

async fn an_expired_refresh_token_is_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let session = app.user("alice_1").await;
    app.clock.advance(Duration::from_secs(7 * 86_400 + 1));
    let response = app
        .post(
            "/auth/refresh",
            &json!({"refresh_token": session.refresh_token}),
        )
        .await;
    assert_error(response, 401, "unauthorized").await;
}

async fn logout_revokes_the_login_and_logout_all_every_login(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    let one = app.login("alice_1").await;
    let two = app.login("alice_1").await;
    let three = app.login("alice_1").await;
    let response = app
        .send_with(
            reqwest::Method::POST,
            "/auth/logout",
            &one.access_token,
            None,
        )
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        app.get_with("/users/me", &one.access_token).await.status(),
        401
    );
    let refresh = app
        .post(
            "/auth/refresh",
            &json!({"refresh_token": one.refresh_token}),
        )
        .await;
    assert_eq!(refresh.status(), 401);
    assert_eq!(
        app.get_with("/users/me", &two.access_token).await.status(),
        200
    );
    let response = app
        .send_with(
            reqwest::Method::POST,
            "/auth/logout-all",
            &two.access_token,
            Some(json!({ "revoke_api_keys": false })),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["revoked_sessions"], 2, "{body}");
    assert_eq!(body["active_api_keys"], json!([]), "{body}");
    for session in [&two, &three] {
        assert_eq!(
            app.get_with("/users/me", &session.access_token)
                .await
                .status(),
            401
        );
    }
}

async fn changing_the_password_revokes_every_other_login(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    let current = app.login("alice_1").await;
    let other = app.login("alice_1").await;
    let wrong = app
        .send_with(
            reqwest::Method::PUT,
            "/users/me/password",
            &current.access_token,
            Some(json!({"current_password": "Wrong!pass1", "new_password": "N3w!Trading#Pass"})),
        )
        .await;
    assert_error(wrong, 400, "invalid_request").await;
    let weak = app
        .send_with(
            reqwest::Method::PUT,
            "/users/me/password",
            &current.access_token,
            Some(json!({"current_password": crate::helpers::STRONG_PASSWORD, "new_password": "weak"})),
        )
        .await;
    assert_error(weak, 400, "invalid_request").await;
    let response = app
        .send_with(
            reqwest::Method::PUT,
            "/users/me/password",
            &current.access_token,
            Some(json!({"current_password": crate::helpers::STRONG_PASSWORD, "new_password": "N3w!Trading#Pass"})),
        )
        .await;
    // SPEC §2: 204, with no body asked for.
    assert_eq!(response.status(), 204);
    assert_eq!(
        app.get_with("/users/me", &current.access_token)
            .await
            .status(),
        200
    );
    assert_eq!(
        app.get_with("/users/me", &other.access_token)
            .await
            .status(),
        401
    );
    app.login_with("alice_1", "N3w!Trading#Pass").await;
}

async fn a_revocation_reaches_another_instance_within_the_lag(backend: Backend) {
    if backend == Backend::Sqlite {
        // Two instances share state through PostgreSQL or Redis.
        return;
    }
    let setup = Setup::default().env("RAMPART_TOKENS__REVOCATION_LAG", "1s");
    let Some(first) = spawn_app_with(backend, setup.clone()).await else {
        return;
    };
    let mut env: std::collections::HashMap<String, String> = [
        (
            "RAMPART_SERVER__LISTEN".to_owned(),
            "127.0.0.1:0".to_owned(),
        ),
        (
            "RAMPART_DATABASE__URL".to_owned(),
            first.database_url.clone(),
        ),
        ("RAMPART_TOKENS__REVOCATION_LAG".to_owned(), "1s".to_owned()),
        (
            "RAMPART_TOKENS__SECRET".to_owned(),
            first
                .state
                .config
                .tokens
                .secret
                .as_ref()
                .unwrap()
                .expose()
                .to_owned(),
        ),
    ]
    .into();
    if backend == Backend::Redis {
        env.insert(
            "RAMPART_TOKENS__STORE".into(),
            "redis://127.0.0.1:6379".into(),
        );
    }
    let config = rampart::config::Config::load(&rampart::config::Sources {
        file_path: None,
        file: None,
        env,
        data_dir: Some(first.data_dir.clone()),
    })
    .unwrap();
    let second = crate::helpers::start(
        config,
        first.data_dir.clone(),
        first.database_url.clone(),
        first.redis_prefix.clone(),
        first.clock.clone(),
    )
    .await;
    let session = first.user("alice_1").await;
    assert_eq!(
        second
            .get_with("/users/me", &session.access_token)
            .await
            .status(),
        200
    );
    let logout = first
        .send_with(
            reqwest::Method::POST,
            "/auth/logout",
            &session.access_token,
            None,
        )
        .await;
    assert_eq!(logout.status(), 204);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    loop {
        let status = second
            .get_with("/users/me", &session.access_token)
            .await
            .status();
        if status == 401 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepted after the lag"
        );
        // The revocation arrives after the configured lag, in real time: poll until then.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const ED25519_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIGmieKHfFridDGU/BnnfrMH3QuDHQFQr3Wx3GQA+mLgi
-----END PRIVATE KEY-----
";

async fn eddsa_tokens_verify_and_the_public_key_is_published(backend: Backend) {
    let key = std::env::temp_dir().join(format!("rampart-ed25519-{}.pem", ulid::Ulid::new()));
    std::fs::write(&key, ED25519_KEY).unwrap();
    let setup = Setup::default()
        .env("RAMPART_TOKENS__ALGORITHM", "EdDSA")
        .env("RAMPART_TOKENS__PRIVATE_KEY_FILE", key.to_str().unwrap());
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let session = app.user("alice_1").await;
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(session.access_token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA");
    assert_eq!(
        app.get_with("/users/me", &session.access_token)
            .await
            .status(),
        200
    );
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["kid"], header["kid"]);
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "no private part: {jwks}"
    );
    // An HS256 token signed with the public key as secret (algorithm confusion) fails.
    let public = jwks["keys"][0]["x"].as_str().unwrap();
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
    let forged = sign(
        &Header::new(Algorithm::HS256),
        &claims(&app, session.user_id, "x"),
        public.as_bytes(),
    );
    assert_eq!(app.get_with("/users/me", &forged).await.status(), 401);
}

crate::on_session_stores!(
    forged_and_broken_tokens_are_all_refused_with_401,
    no_credentials_get_a_bare_bearer_challenge,
    an_access_token_expires_after_an_hour,
    refreshing_rotates_and_reuse_revokes_the_whole_family,
    concurrent_refreshes_of_one_token_let_at_most_one_through,
    an_expired_refresh_token_is_refused,
    logout_revokes_the_login_and_logout_all_every_login,
    changing_the_password_revokes_every_other_login,
    a_revocation_reaches_another_instance_within_the_lag,
    eddsa_tokens_verify_and_the_public_key_is_published,
);
