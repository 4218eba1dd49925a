use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, STRONG_PASSWORD, assert_error, spawn_app};

async fn non_admins_are_refused_admin_endpoints_and_it_is_audited(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let viewer = app.user("viewer_1").await;
    for (method, path) in [
        (Method::GET, "/admin/users"),
        (Method::GET, "/admin/audit"),
        (Method::GET, "/users/1"),
        (Method::POST, "/admin/users/1/unlock"),
    ] {
        let response = app
            .send_with(method, path, &viewer.access_token, None)
            .await;
        assert_error(response, 403, "forbidden").await;
    }
    let response = app
        .send_with(
            Method::PATCH,
            "/admin/users/1",
            &viewer.access_token,
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_error(response, 403, "forbidden").await;
    let audit: Value = app
        .get_with(
            "/admin/audit?action=unauthorized_access",
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(audit["items"].as_array().unwrap().len(), 5, "{audit}");
}

async fn admins_list_users_with_pagination(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    for index in 0..4 {
        app.register(&format!("user_{index}")).await;
    }
    let page: Value = app
        .get_with("/admin/users?limit=2&offset=1", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 5);
    let names: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["user_0", "user_1"]);
    let bad = app
        .get_with("/admin/users?limit=0", &admin.access_token)
        .await;
    assert_error(bad, 400, "invalid_request").await;
    let bad = app
        .get_with("/admin/users?limit=abc", &admin.access_token)
        .await;
    assert_error(bad, 400, "invalid_request").await;
    let user: Value = app
        .get_with("/users/2", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(user["username"], "user_0");
    assert_error(
        app.get_with("/users/999", &admin.access_token).await,
        404,
        "not_found",
    )
    .await;
    assert_error(
        app.get_with("/users/abc", &admin.access_token).await,
        400,
        "invalid_request",
    )
    .await;
}

async fn a_role_change_takes_effect_and_revokes_the_users_tokens(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let bob = app.user("bob_22").await;
    let response = app
        .send_with(
            Method::PATCH,
            &format!("/admin/users/{}", bob.user_id),
            &admin.access_token,
            Some(json!({"role": "trader", "tier": "premium"})),
        )
        .await;
    assert_eq!(response.status(), 200);
    let updated: Value = response.json().await.unwrap();
    assert_eq!(updated["role"], "trader");
    assert_eq!(updated["tier"], "premium");
    assert_eq!(
        app.get_with("/users/me", &bob.access_token).await.status(),
        401
    );
    let again = app.login("bob_22").await;
    assert_eq!(again.body["user"]["role"], "trader");
    let bad = app
        .send_with(
            Method::PATCH,
            &format!("/admin/users/{}", bob.user_id),
            &admin.access_token,
            Some(json!({"role": "wizard"})),
        )
        .await;
    assert_error(bad, 400, "invalid_request").await;
    let missing = app
        .send_with(
            Method::PATCH,
            "/admin/users/999",
            &admin.access_token,
            Some(json!({"tier": "premium"})),
        )
        .await;
    assert_error(missing, 404, "not_found").await;
}

async fn the_last_admin_cannot_be_demoted_disabled_or_deleted(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    for body in [json!({"role": "viewer"}), json!({"disabled": true})] {
        let response = app
            .send_with(
                Method::PATCH,
                &format!("/admin/users/{}", admin.user_id),
                &admin.access_token,
                Some(body),
            )
            .await;
        assert_error(response, 409, "conflict").await;
    }
    let response = app
        .send_with(
            Method::DELETE,
            "/users/me",
            &admin.access_token,
            Some(json!({"password": crate::helpers::STRONG_PASSWORD})),
        )
        .await;
    assert_error(response, 409, "conflict").await;
    // With a second admin, the first may step down.
    let bob = app.register("bob_22").await;
    app.send_with(
        Method::PATCH,
        &format!("/admin/users/{}", bob["id"]),
        &admin.access_token,
        Some(json!({"role": "admin"})),
    )
    .await;
    let response = app
        .send_with(
            Method::PATCH,
            &format!("/admin/users/{}", admin.user_id),
            &admin.access_token,
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(response.status(), 200);
}

async fn a_user_deletes_their_account_and_their_audit_is_pseudonymised(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let bob = app.user("bob_22").await;
    let wrong = app
        .send_with(
            Method::DELETE,
            "/users/me",
            &bob.access_token,
            Some(json!({"password": "Wrong!pass1"})),
        )
        .await;
    assert_error(wrong, 400, "invalid_request").await;
    let export: Value = app
        .get_with("/users/me/export", &bob.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(export["profile"]["username"], "bob_22");
    assert!(!export["audit"].as_array().unwrap().is_empty());
    assert!(
        !export.to_string().contains("argon2"),
        "no hashes in exports"
    );
    let response = app
        .send_with(
            Method::DELETE,
            "/users/me",
            &bob.access_token,
            Some(json!({"password": crate::helpers::STRONG_PASSWORD})),
        )
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        app.get_with("/users/me", &bob.access_token).await.status(),
        401
    );
    let login = app
        .post(
            "/auth/login",
            &json!({"username": "bob_22", "password": crate::helpers::STRONG_PASSWORD}),
        )
        .await;
    assert_eq!(login.status(), 401);
    let audit: Value = app
        .get_with(
            &format!("/admin/audit?user_id={}&limit=500", bob.user_id),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    let items = audit["items"].as_array().unwrap();
    assert!(!items.is_empty());
    for item in items {
        assert!(item["ip_address"].is_null(), "{item}");
        assert!(item["user_agent"].is_null(), "{item}");
        assert!(!item.to_string().contains("bob_22"), "{item}");
    }
    assert!(
        matches!(
            crate::audit::verify(&app).await,
            rampart::audit::Verification::Intact { .. }
        ),
        "the chain still verifies after pseudonymisation"
    );
}

async fn the_export_holds_what_concerns_the_user_and_not_who_acted_on_them(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    app.register("bob_22").await;
    let login = |agent: &'static str, password: &'static str| {
        app.client
            .post(app.url("/auth/login"))
            .header("user-agent", agent)
            .json(&json!({"username": "bob_22", "password": password}))
            .send()
    };
    // Someone guesses bob's password from their own browser.
    assert_eq!(
        login("stranger-agent/6", "Wrong!pass1")
            .await
            .unwrap()
            .status(),
        401
    );
    let bob: Value = login("bob-agent/1", STRONG_PASSWORD)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bob_id = bob["user"]["id"].as_i64().unwrap();
    // The admin acts on bob from the admin's own browser.
    for (method, path, body) in [
        (
            Method::PATCH,
            format!("/admin/users/{bob_id}"),
            json!({"role": "trader", "tier": "premium"}),
        ),
        (
            Method::POST,
            format!("/admin/users/{bob_id}/unlock"),
            json!({"ip": "203.0.113.77"}),
        ),
    ] {
        let response = app
            .client
            .request(method, app.url(&path))
            .bearer_auth(&admin.access_token)
            .header("user-agent", "admin-console/7")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
    }
    // A role change revoked bob's tokens: log in again.
    let bob: Value = login("bob-agent/1", STRONG_PASSWORD)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let export: Value = app
        .get_with("/users/me/export", bob["access_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    let text = export.to_string();
    for foreign in [
        "admin-console/7",
        "stranger-agent/6",
        "203.0.113.77",
        "admin_1",
    ] {
        assert!(
            !text.contains(foreign),
            "{foreign} is someone else's data: {text}"
        );
    }
    let audit = export["audit"].as_array().unwrap();
    let of = |action: &str| -> Vec<&Value> {
        audit.iter().filter(|row| row["action"] == action).collect()
    };
    // What bob did is exported whole.
    let own = of("login_success");
    assert_eq!(own.len(), 2);
    for row in own {
        assert_eq!(row["ip_address"], "127.0.0.1");
        assert_eq!(row["user_agent"], "bob-agent/1");
    }
    // What others did to bob: what happened and when, nothing about who did it.
    let role = of("role_changed");
    assert_eq!(role.len(), 1);
    assert_eq!(
        role[0]["details"],
        json!({"from": "viewer", "to": "trader"})
    );
    let actions = of("admin_action");
    assert_eq!(actions.len(), 2, "{text}");
    let failed = of("login_failed");
    assert_eq!(failed.len(), 1);
    for row in role.iter().chain(&actions).chain(&failed) {
        assert!(row["at"].is_string(), "{row}");
        assert_eq!(row["user_id"], bob_id);
        for field in ["ip_address", "user_agent", "request_id"] {
            assert!(row.get(field).is_none(), "{field} in {row}");
        }
        assert!(row["details"].get("by").is_none(), "{row}");
        assert!(row["details"].get("ip").is_none(), "{row}");
    }
    assert!(
        actions
            .iter()
            .any(|row| row["details"]["action"] == "unlock")
    );
    assert!(
        actions
            .iter()
            .any(|row| row["details"]["tier"] == "premium")
    );
}

crate::on_databases!(
    the_export_holds_what_concerns_the_user_and_not_who_acted_on_them,
    non_admins_are_refused_admin_endpoints_and_it_is_audited,
    admins_list_users_with_pagination,
    a_role_change_takes_effect_and_revokes_the_users_tokens,
    the_last_admin_cannot_be_demoted_disabled_or_deleted,
    a_user_deletes_their_account_and_their_audit_is_pseudonymised,
);
