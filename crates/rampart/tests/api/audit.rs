use rampart::audit::{ChainKey, Verification};
use rampart::clock::Clock;
use reqwest::Method;
use serde_json::{Value, json};

use crate::accounts::execute_behind_the_gateway;
use crate::helpers::{Backend, STRONG_PASSWORD, TestApp, assert_error, spawn_app};

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

pub fn chain_key(app: &TestApp) -> ChainKey {
    ChainKey::new(
        app.state
            .config
            .audit_chain_key
            .as_ref()
            .expect("the gateway has a chain key")
            .expose(),
    )
}

pub async fn verify(app: &TestApp) -> Verification {
    rampart::audit::verify(&*app.state.stores.data, &chain_key(app))
        .await
        .unwrap()
}

async fn last_id(app: &TestApp) -> i64 {
    app.state
        .stores
        .data
        .list_audit(&rampart::store::AuditFilter {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()[0]
        .id
}

fn broken_at(verification: Verification, what: &str) -> i64 {
    match verification {
        Verification::Broken { id, .. } => id,
        Verification::Intact { .. } => panic!("{what} went unnoticed"),
    }
}

async fn verify_names_the_first_edited_row(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.user("admin_1").await;
    app.user("bob_22").await;
    let Verification::Intact { rows, .. } = verify(&app).await else {
        panic!("a fresh trail verifies");
    };
    assert_eq!(rows, 4);
    app.state
        .stores
        .data
        .tamper_audit_for_test(2, "{\"edited\":true}")
        .await
        .unwrap();
    assert_eq!(broken_at(verify(&app).await, "an edit"), 2);
}

async fn verify_notices_a_deleted_row(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.user("admin_1").await;
    app.user("bob_22").await;
    execute_behind_the_gateway(&app, "DELETE FROM audit_log WHERE id = 2").await;
    assert_eq!(broken_at(verify(&app).await, "a deletion"), 3);
}

async fn verify_notices_rows_removed_from_the_start(backend: Backend) {
    for removed in ["id = 1", "id <= 2"] {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        app.user("admin_1").await;
        app.user("bob_22").await;
        execute_behind_the_gateway(&app, &format!("DELETE FROM audit_log WHERE {removed}")).await;
        let first = if removed == "id = 1" { 2 } else { 3 };
        assert_eq!(
            broken_at(verify(&app).await, removed),
            first,
            "{removed}: the first remaining row is named"
        );
    }
}

async fn verify_notices_rows_removed_from_the_end(backend: Backend) {
    for count in [1, 2] {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        app.user("admin_1").await;
        app.user("bob_22").await;
        let last = last_id(&app).await;
        execute_behind_the_gateway(
            &app,
            &format!("DELETE FROM audit_log WHERE id > {}", last - count),
        )
        .await;
        assert_eq!(
            broken_at(verify(&app).await, "a cut end"),
            last,
            "{count} rows cut: the head names the last row written"
        );
    }
}

/// Rewrites every row's links and hashes with plain SHA-256, as someone without the chain
/// key would; with `head`, also points the head record at the new last row.
async fn recompute_without_the_key(app: &TestApp, head: bool) {
    let rows = app.state.stores.data.audit_page(0, 1000).await.unwrap();
    let mut prev = rampart::audit::GENESIS.to_owned();
    let mut statements = Vec::new();
    for row in &rows {
        let hash = rampart::audit::row_hash(
            &prev,
            row.at,
            row.user_id,
            &row.action,
            &row.details,
            &row.request_id,
            &row.pii_digest,
        );
        statements.push(format!(
            "UPDATE audit_log SET prev_hash = '{prev}', hash = '{hash}' WHERE id = {};",
            row.id
        ));
        prev = hash;
    }
    if head {
        let last = rows.last().unwrap().id;
        statements.push(format!(
            "UPDATE audit_chain SET row_id = {last}, hash = '{prev}' WHERE name = 'head';"
        ));
        // Claim the whole trail predates the key.
        statements.push(format!(
            "INSERT INTO audit_chain (name, row_id, hash, mac) VALUES ('legacy_end', {last}, '{prev}', 'forged');"
        ));
    }
    execute_behind_the_gateway(app, &statements.join("\n")).await;
}

async fn a_chain_recomputed_without_the_key_is_refused(backend: Backend) {
    for head in [false, true] {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        app.user("admin_1").await;
        app.user("bob_22").await;
        recompute_without_the_key(&app, head).await;
        broken_at(verify(&app).await, "a recomputed chain");
    }
}

async fn a_purge_is_audited_and_verify_checks_from_its_anchor(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.user("admin_1").await;
    app.user("bob_22").await;
    let old_rows = last_id(&app).await;
    app.clock
        .advance(std::time::Duration::from_secs(400 * 86_400));
    app.user("carol_3").await;
    let store = &app.state.stores.data;
    let cutoff = app.clock.unix() - 365 * 86_400;
    let entry = rampart::audit::NewAuditEntry::new(
        app.clock.unix(),
        rampart::audit::PURGED,
        None,
        json!({ "older_than_seconds": 365 * 86_400 }),
        &rampart::audit::RequestContext {
            ip: None,
            user_agent: Some("rampart audit purge".into()),
            request_id: "console".into(),
        },
    );
    let removed = store.purge_audit(cutoff, entry).await.unwrap();
    assert_eq!(removed, u64::try_from(old_rows).unwrap());
    let purge = last_id(&app).await;
    let Verification::Intact { rows, anchor, .. } = verify(&app).await else {
        panic!("a purged trail verifies from its anchor");
    };
    assert_eq!(anchor, Some(purge));
    assert_eq!(rows, 3, "carol's registration and login, and the purge");
    let purged = store
        .list_audit(&rampart::store::AuditFilter {
            action: Some(rampart::audit::PURGED.into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(purged.len(), 1, "the purge is itself audited");
    let details: Value = serde_json::from_str(&purged[0].details).unwrap();
    assert_eq!(details["removed"], old_rows);
    let first_kept = store.audit_page(0, 1).await.unwrap().remove(0);
    assert_eq!(details["anchor"], first_kept.prev_hash.as_str());

    // Later rows still chain on; removing the first kept row is noticed.
    app.user("dave_4").await;
    assert!(matches!(
        verify(&app).await,
        Verification::Intact {
            anchor: Some(_),
            ..
        }
    ));
    execute_behind_the_gateway(
        &app,
        &format!("DELETE FROM audit_log WHERE id = {}", first_kept.id),
    )
    .await;
    broken_at(verify(&app).await, "a row removed after the anchor");
}

async fn a_purge_of_everything_still_verifies_and_a_second_purge_moves_the_anchor(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.user("admin_1").await;
    let store = &app.state.stores.data;
    let now = app.clock.unix();
    let purge = || {
        rampart::audit::NewAuditEntry::new(
            now,
            rampart::audit::PURGED,
            None,
            json!({}),
            &rampart::audit::RequestContext::default(),
        )
    };
    store.purge_audit(now + 1, purge()).await.unwrap();
    let Verification::Intact { rows, anchor, .. } = verify(&app).await else {
        panic!("a trail purged to nothing but its purge verifies");
    };
    assert_eq!(rows, 1);
    assert!(anchor.is_some());
    app.user("bob_22").await;
    store.purge_audit(now + 1, purge()).await.unwrap();
    let Verification::Intact { rows, .. } = verify(&app).await else {
        panic!("a second purge verifies");
    };
    assert_eq!(rows, 1, "only the second purge is left");
    // The purge row cannot be dropped to hide the purge.
    let last = last_id(&app).await;
    execute_behind_the_gateway(&app, &format!("DELETE FROM audit_log WHERE id = {last}")).await;
    broken_at(verify(&app).await, "a deleted purge record");
}

async fn rows_from_before_the_keyed_chain_verify_as_legacy_up_to_the_switch_over(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    // Three rows written by an earlier release (plain SHA-256), then the migration's
    // switch-over records, unsealed, as `0004` leaves them.
    let mut prev = rampart::audit::GENESIS.to_owned();
    let mut statements = Vec::new();
    for id in 1..=3 {
        let hash = rampart::audit::row_hash(&prev, 1000 + id, None, "login_failed", "{}", "r", "d");
        statements.push(format!(
            "INSERT INTO audit_log (id, at, user_id, action, details, request_id, pii_digest, prev_hash, hash) \
             VALUES ({id}, {}, NULL, 'login_failed', '{{}}', 'r', 'd', '{prev}', '{hash}');",
            1000 + id
        ));
        prev = hash;
    }
    statements.push(format!(
        "INSERT INTO audit_chain (name, row_id, hash) VALUES ('legacy_start', 1, '{}');",
        rampart::audit::GENESIS
    ));
    statements.push(format!(
        "INSERT INTO audit_chain (name, row_id, hash) VALUES ('legacy_end', 3, '{prev}');"
    ));
    if backend == Backend::Postgres {
        statements.push("SELECT setval('audit_log_id_seq', 3);".into());
    }
    execute_behind_the_gateway(&app, &statements.join("\n")).await;
    // The first start with a key seals them.
    rampart::app::open_store(
        &app.database_url,
        1,
        app.state.config.audit_chain_key.as_ref(),
    )
    .await
    .unwrap();
    app.user("admin_1").await;
    let Verification::Intact {
        rows, legacy_rows, ..
    } = verify(&app).await
    else {
        panic!("a trail with a legacy part verifies");
    };
    assert_eq!((rows, legacy_rows), (5, 3));
    // A legacy row is still checked, and keyed rows cannot pass as legacy ones.
    app.state
        .stores
        .data
        .tamper_audit_for_test(2, "{\"edited\":true}")
        .await
        .unwrap();
    assert_eq!(broken_at(verify(&app).await, "an edited legacy row"), 2);
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
    verify_notices_rows_removed_from_the_start,
    verify_notices_rows_removed_from_the_end,
    a_chain_recomputed_without_the_key_is_refused,
    a_purge_is_audited_and_verify_checks_from_its_anchor,
    a_purge_of_everything_still_verifies_and_a_second_purge_moves_the_anchor,
    rows_from_before_the_keyed_chain_verify_as_legacy_up_to_the_switch_over,
    the_audit_trail_exports_as_jsonl_and_csv,
);
