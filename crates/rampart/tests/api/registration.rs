use serde_json::json;

use crate::helpers::{Backend, STRONG_PASSWORD, assert_error, spawn_app};

async fn the_first_user_becomes_admin_and_later_ones_get_the_default_role(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let first = app.register("alice_1").await;
    assert_eq!(first["role"], "admin");
    assert_eq!(first["tier"], "standard");
    assert_eq!(first["username"], "alice_1");
    assert!(first["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(
        first.get("password_hash").is_none(),
        "no hash is ever shown"
    );
    let second = app.register("bob_2").await;
    assert_eq!(second["role"], "viewer");
}

async fn concurrent_first_registrations_make_exactly_one_admin(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for index in 0..8 {
        let app = app.clone();
        tasks.push(tokio::spawn(async move {
            app.register(&format!("racer_{index}")).await
        }));
    }
    let mut admins = 0;
    for task in tasks {
        if task.await.unwrap()["role"] == "admin" {
            admins += 1;
        }
    }
    assert_eq!(
        admins, 1,
        "exactly one of eight concurrent first users is admin"
    );
}

async fn a_role_in_the_body_is_refused_and_creates_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let response = app
        .post(
            "/auth/register",
            &json!({"username": "mallory", "email": "m@example.com",
                    "password": STRONG_PASSWORD, "role": "admin"}),
        )
        .await;
    let body = assert_error(response, 400, "invalid_request").await;
    assert!(body["message"].as_str().unwrap().contains("role"), "{body}");
    // The refused request changed nothing: the next registration is the first user.
    assert_eq!(app.register("alice_1").await["role"], "admin");
}

async fn a_taken_username_or_email_is_a_conflict_whatever_its_case(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    for (username, email) in [
        ("ALICE_1", "other@example.com"),
        ("other", "Alice_1@EXAMPLE.com"),
    ] {
        let response = app
            .post(
                "/auth/register",
                &json!({"username": username, "email": email, "password": STRONG_PASSWORD}),
            )
            .await;
        assert_error(response, 409, "conflict").await;
    }
}

async fn every_broken_rule_is_listed_per_field(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let response = app
        .post(
            "/auth/register",
            &json!({"username": "a-b", "email": "not-an-email", "password": "a-b"}),
        )
        .await;
    let body = assert_error(response, 400, "invalid_request").await;
    let password: Vec<&str> = body["fields"]["password"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rule| rule.as_str().unwrap())
        .collect();
    for rule in [
        "must be at least 8 characters",
        "must contain an upper-case letter",
        "must contain a digit",
        "must not contain the username",
    ] {
        assert!(password.contains(&rule), "{rule} missing from {password:?}");
    }
    assert!(body["fields"]["username"].is_array(), "{body}");
    assert!(body["fields"]["email"].is_array(), "{body}");
}

async fn common_passwords_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let response = app
        .post(
            "/auth/register",
            &json!({"username": "alice_1", "email": "a@example.com", "password": "Password1!"}),
        )
        .await;
    let body = assert_error(response, 400, "invalid_request").await;
    assert_eq!(body["fields"]["password"], json!(["is too common"]));
}

async fn the_nist_preset_accepts_passphrases(backend: Backend) {
    let setup = crate::helpers::Setup::toml("[password]\npreset = \"nist\"\n");
    let Some(app) = crate::helpers::spawn_app_with(backend, setup).await else {
        return;
    };
    let response = app
        .post(
            "/auth/register",
            &json!({"username": "alice_1", "email": "a@example.com",
                    "password": "correct horse battery staple"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let response = app
        .post(
            "/auth/register",
            &json!({"username": "bob_22", "email": "b@example.com", "password": "Sh0rt!pass"}),
        )
        .await;
    assert_error(response, 400, "invalid_request").await;
}

crate::on_databases!(
    the_first_user_becomes_admin_and_later_ones_get_the_default_role,
    concurrent_first_registrations_make_exactly_one_admin,
    a_role_in_the_body_is_refused_and_creates_nothing,
    a_taken_username_or_email_is_a_conflict_whatever_its_case,
    every_broken_rule_is_listed_per_field,
    common_passwords_are_refused,
    the_nist_preset_accepts_passphrases,
);
