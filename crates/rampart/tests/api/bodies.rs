//! Request bodies: only JSON objects are bodies, whatever endpoint takes them.

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, STRONG_PASSWORD, assert_error, spawn_app};

async fn json_that_is_not_an_object_is_refused_by_every_endpoint_with_a_body(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let viewer_id = app.register("viewer_1").await["id"].as_i64().unwrap();
    let endpoints = [
        (Method::POST, "/auth/register".to_owned()),
        (Method::POST, "/auth/login".to_owned()),
        (Method::POST, "/auth/refresh".to_owned()),
        (Method::PUT, "/users/me/password".to_owned()),
        (Method::DELETE, "/users/me".to_owned()),
        (Method::POST, "/users/me/api-keys".to_owned()),
        (Method::POST, "/accounts".to_owned()),
        (Method::PATCH, "/accounts/1".to_owned()),
        (Method::PATCH, format!("/admin/users/{viewer_id}")),
        (Method::POST, format!("/admin/users/{viewer_id}/unlock")),
    ];
    let bodies = [
        // Positional forms of the fields each endpoint names.
        json!(["viewer_2", "viewer_2@example.com", STRONG_PASSWORD]),
        json!(["admin_1", STRONG_PASSWORD]),
        json!([admin.refresh_token]),
        json!([STRONG_PASSWORD, "N3w!Passw0rd#x"]),
        json!(["admin"]),
        json!([]),
        json!("admin_1"),
        json!(17),
        json!(true),
        Value::Null,
    ];
    for (method, path) in &endpoints {
        for body in &bodies {
            let response = app
                .client
                .request(method.clone(), app.url(path))
                .bearer_auth(&admin.access_token)
                .json(body)
                .send()
                .await
                .unwrap();
            let error = assert_error(response, 400, "invalid_request").await;
            assert!(
                error["message"].as_str().unwrap().contains("object"),
                "{method} {path} {body}: {error}"
            );
        }
    }
    // Nothing changed: no third user, the admin's password and role stand.
    let users: Value = app
        .get_with("/admin/users", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(users["total"], 2, "{users}");
    assert_eq!(users["items"][1]["role"], "viewer", "{users}");
    app.login("admin_1").await;
    let keys: Value = app
        .get_with("/users/me/api-keys", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(keys["items"].as_array().unwrap().len(), 0);
}

crate::on_databases!(json_that_is_not_an_object_is_refused_by_every_endpoint_with_a_body);
