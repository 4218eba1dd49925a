use rampart::audit::Verification;
use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Backend, STRONG_PASSWORD, assert_error, spawn_app};

async fn security_events_are_audited_with_ip_and_request_id(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("admin_1").await;
    let response = app
        .client
        .post(app.url("/auth/login"))
        .header("x-request-id", "trace-login-1")
        .header("user-agent", "pytest-bot/1.0")
        .json(&json!({"username": "admin_1", "password": STRONG_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-login-1");
    let admin: Value = response.json().await.unwrap();
    let token = admin["access_token"].as_str().unwrap();
    app.post(
        "/auth/login",
        &json!({"username": "admin_1", "password": "Wrong!pass1"}),
    )
    .await;
    let audit: Value = app
        .get_with("/admin/audit", token)
        .await
        .json()
        .await
        .unwrap();
    let items = audit["items"].as_array().unwrap();
    let actions: Vec<&str> = items
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["login_failed", "login_success", "user_registration"],
        "newest first"
    );
    let success = &items[1];
    assert_eq!(success["request_id"], "trace-login-1");
    assert_eq!(success["ip_address"], "127.0.0.1");
    assert_eq!(success["user_agent"], "pytest-bot/1.0");
    assert!(success["at"].as_str().unwrap().ends_with('Z'));
    let text = audit.to_string();
    assert!(
        !text.contains(STRONG_PASSWORD) && !text.contains("Wrong!pass1"),
        "no passwords in audit"
    );
    assert!(
        !text.contains(admin["refresh_token"].as_str().unwrap()),
        "no tokens in audit"
    );
}

async fn the_audit_log_filters_and_pages_with_a_cursor(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    for _ in 0..5 {
        app.post(
            "/auth/login",
            &json!({"username": "nobody", "password": "Wrong!pass1"}),
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/admin/audit?action=login_failed&limit=2&cursor={cursor}"),
            None => "/admin/audit?action=login_failed&limit=2".to_owned(),
        };
        let page: Value = app
            .get_with(&path, &admin.access_token)
            .await
            .json()
            .await
            .unwrap();
        for item in page["items"].as_array().unwrap() {
            assert_eq!(item["action"], "login_failed");
            seen.push(item["id"].as_i64().unwrap());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 5);
    assert!(
        seen.windows(2).all(|pair| pair[0] > pair[1]),
        "newest first, no repeats"
    );
    let mine: Value = app
        .get_with(
            &format!("/admin/audit?user_id={}", admin.user_id),
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(
        mine["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["user_id"] == admin.user_id)
    );
    let future: Value = app
        .get_with(
            "/admin/audit?since=2999-01-01T00:00:00Z",
            &admin.access_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert!(future["items"].as_array().unwrap().is_empty());
    for bad in [
        "/admin/audit?since=yesterday",
        "/admin/audit?cursor=xyz",
        "/admin/audit?limit=9999",
        "/admin/audit?bogus=1",
    ] {
        assert_error(
            app.get_with(bad, &admin.access_token).await,
            400,
            "invalid_request",
        )
        .await;
    }
}

async fn verify_names_the_first_edited_row(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.user("admin_1").await;
    app.user("bob_22").await;
    let store = &app.state.stores.data;
    let Verification::Intact { rows } = rampart::audit::verify(&**store).await.unwrap() else {
        panic!("a fresh trail verifies");
    };
    assert_eq!(rows, 4);
    store
        .tamper_audit_for_test(2, "{\"edited\":true}")
        .await
        .unwrap();
    match rampart::audit::verify(&**store).await.unwrap() {
        Verification::Broken { id, .. } => assert_eq!(id, 2),
        other => panic!("tampering went unnoticed: {other:?}"),
    }
}

async fn verify_notices_a_deleted_row(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.user("admin_1").await;
    app.user("bob_22").await;
    // Delete row 2 behind the gateway's back.
    if backend == Backend::Postgres {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&app.database_url)
            .await
            .unwrap();
        sqlx::query("DELETE FROM audit_log WHERE id = 2")
            .execute(&mut connection)
            .await
            .unwrap();
    } else {
        use sqlx::Connection;
        let mut connection = sqlx::SqliteConnection::connect(&app.database_url)
            .await
            .unwrap();
        sqlx::query("DELETE FROM audit_log WHERE id = 2")
            .execute(&mut connection)
            .await
            .unwrap();
    }
    match rampart::audit::verify(&*app.state.stores.data)
        .await
        .unwrap()
    {
        Verification::Broken { id, .. } => assert_eq!(id, 3),
        other => panic!("deletion went unnoticed: {other:?}"),
    }
}

async fn the_audit_trail_exports_as_jsonl_and_csv(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let jsonl = app
        .get_with("/admin/audit/export?format=jsonl", &admin.access_token)
        .await;
    assert_eq!(jsonl.status(), 200);
    assert_eq!(jsonl.headers()["content-type"], "application/x-ndjson");
    let text = jsonl.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    // Registration, login, and the export's own entry.
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["action"], "user_registration");
    let csv = app
        .get_with("/admin/audit/export?format=csv", &admin.access_token)
        .await;
    let text = csv.text().await.unwrap();
    assert!(text.starts_with("\"id\",\"at\""), "{text}");
    assert_eq!(text.lines().count(), 5, "a header and four entries: {text}");
    let bad = app
        .get_with("/admin/audit/export?format=xml", &admin.access_token)
        .await;
    assert_error(bad, 400, "invalid_request").await;
    let viewer = app.user("viewer_1").await;
    let refused = app
        .send_with(
            Method::GET,
            "/admin/audit/export",
            &viewer.access_token,
            None,
        )
        .await;
    assert_error(refused, 403, "forbidden").await;
}

async fn csv_export_neutralises_every_formula_spelling(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    // A user agent is whatever the client sent; these reach the audit trail as written.
    let agents = [
        "\t=cmd|' /C calc'!A0",
        "\r=1+1",
        " =HYPERLINK(\"x\")",
        "\u{FF1D}1+1",
        "@SUM(1)",
    ];
    for agent in agents {
        let entry = rampart::audit::NewAuditEntry::new(
            1,
            "suspicious_request",
            None,
            json!({}),
            &rampart::audit::RequestContext {
                ip: Some("127.0.0.1".into()),
                user_agent: Some(agent.into()),
                request_id: "r".into(),
            },
        );
        app.state.stores.data.append_audit(entry).await.unwrap();
    }
    let text = app
        .get_with("/admin/audit/export?format=csv", &admin.access_token)
        .await
        .text()
        .await
        .unwrap();
    for agent in agents {
        let quoted = format!(",\"'{}\",", agent.replace('"', "\"\""));
        assert!(text.contains(&quoted), "{agent:?} not neutralised: {text}");
    }
}

crate::on_databases!(
    csv_export_neutralises_every_formula_spelling,
    security_events_are_audited_with_ip_and_request_id,
    the_audit_log_filters_and_pages_with_a_cursor,
    verify_names_the_first_edited_row,
    verify_notices_a_deleted_row,
    the_audit_trail_exports_as_jsonl_and_csv,
);
