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

/// Turns the app's database into one an earlier release wrote: three plain SHA-256 rows and
/// the unsealed switch-over records migration 0004 leaves, no head.
async fn make_legacy(app: &TestApp, backend: Backend) {
    let mut prev = rampart::audit::GENESIS.to_owned();
    let mut statements = vec!["DELETE FROM audit_chain;".to_owned()];
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
    execute_behind_the_gateway(app, &statements.join("\n")).await;
}

/// Opens the app's database again with its chain key, as a restart or a CLI command does.
async fn reopen(app: &TestApp) -> anyhow::Result<rampart::app::StoreHandle> {
    rampart::app::open_store(
        &app.database_url,
        1,
        app.state.config.audit_chain_key.as_ref(),
    )
    .await
}

async fn chain_macs(app: &TestApp) -> Vec<(String, Option<String>)> {
    app.state
        .stores
        .data
        .audit_chain()
        .await
        .unwrap()
        .into_iter()
        .map(|record| (record.name, record.mac))
        .collect()
}

async fn rows_from_before_the_keyed_chain_verify_as_legacy_up_to_the_switch_over(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    make_legacy(&app, backend).await;
    // The first open with a key reads the switch-over from the trail and seals it.
    reopen(&app).await.unwrap();
    assert!(
        chain_macs(&app).await.iter().all(|(_, mac)| mac.is_some()),
        "switch-over and head are sealed"
    );
    let Verification::Intact {
        rows,
        legacy_rows,
        head,
        legacy_end,
        ..
    } = verify(&app).await
    else {
        panic!("a freshly keyed legacy trail verifies");
    };
    assert_eq!((rows, legacy_rows), (3, 3));
    assert_eq!(
        (head.0, legacy_end),
        (3, Some(3)),
        "the head is at the legacy end"
    );
    app.user("admin_1").await;
    let Verification::Intact {
        rows, legacy_rows, ..
    } = verify(&app).await
    else {
        panic!("a trail with a legacy part verifies");
    };
    assert_eq!((rows, legacy_rows), (5, 3));
    // Opening again changes nothing.
    reopen(&app).await.unwrap();
    assert!(matches!(
        verify(&app).await,
        Verification::Intact { rows: 5, .. }
    ));
    // A legacy row is still checked, and keyed rows cannot pass as legacy ones.
    app.state
        .stores
        .data
        .tamper_audit_for_test(2, "{\"edited\":true}")
        .await
        .unwrap();
    assert_eq!(broken_at(verify(&app).await, "an edited legacy row"), 2);
}

/// A chain record without its seal is tampering: neither an open nor an append seals it.
async fn an_unsealed_chain_record_is_never_sealed_later(backend: Backend) {
    // Rows cut off the end and the head rewritten, unsealed, to the new last row.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.user("admin_1").await;
    app.user("bob_22").await;
    let last = last_id(&app).await;
    let kept = app.state.stores.data.audit_page(last - 2, 1).await.unwrap();
    let kept = &kept[0];
    execute_behind_the_gateway(
        &app,
        &format!(
            "DELETE FROM audit_log WHERE id > {id};\n\
             UPDATE audit_chain SET row_id = {id}, hash = '{hash}', mac = NULL WHERE name = 'head';",
            id = kept.id,
            hash = kept.hash
        ),
    )
    .await;
    broken_at(verify(&app).await, "an unsealed head");
    let refused = reopen(&app)
        .await
        .err()
        .expect("an open refuses an unsealed head");
    assert!(refused.to_string().contains("audit.chain_key"), "{refused}");
    assert!(
        app.state
            .stores
            .data
            .append_audit(rampart::audit::NewAuditEntry::new(
                1,
                "login_failed",
                None,
                json!({}),
                &rampart::audit::RequestContext::default(),
            ))
            .await
            .is_err(),
        "nothing is appended after an unsealed head"
    );
    assert_eq!(last_id(&app).await, kept.id, "nothing was written");
    broken_at(
        verify(&app).await,
        "an unsealed head after an open and an append",
    );
    assert!(
        chain_macs(&app)
            .await
            .iter()
            .any(|(name, mac)| name == "head" && mac.is_none()),
        "the forged head stays unsealed"
    );

    // A legacy_end slipped in without a seal, after the whole trail was recomputed with
    // plain SHA-256: every row would count as legacy.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.user("admin_1").await;
    recompute_without_the_key(&app, false).await;
    let rows = app.state.stores.data.audit_page(0, 1000).await.unwrap();
    let last = rows.last().unwrap();
    execute_behind_the_gateway(
        &app,
        &format!(
            "INSERT INTO audit_chain (name, row_id, hash) VALUES ('legacy_end', {}, '{}');\n\
             INSERT INTO audit_chain (name, row_id, hash) VALUES ('legacy_start', 1, '{}');",
            last.id,
            last.hash,
            rampart::audit::GENESIS
        ),
    )
    .await;
    let _ = reopen(&app).await;
    app.user("bob_22").await;
    broken_at(verify(&app).await, "an unsealed legacy_end");
    assert!(
        chain_macs(&app)
            .await
            .iter()
            .filter(|(name, _)| name.starts_with("legacy"))
            .all(|(_, mac)| mac.is_none()),
        "the forged switch-over stays unsealed"
    );

    // The chain records removed from a keyed trail: no new switch-over is made.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.user("admin_1").await;
    execute_behind_the_gateway(&app, "DELETE FROM audit_chain").await;
    assert!(
        reopen(&app).await.is_err(),
        "a keyed trail without its head"
    );
    broken_at(verify(&app).await, "a removed head");
    assert!(chain_macs(&app).await.is_empty(), "nothing was sealed");
}

async fn a_missing_head_is_broken(backend: Backend) {
    // A fresh trail has a sealed head at row 0 from the start.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    assert_eq!(
        verify(&app).await,
        Verification::Intact {
            rows: 0,
            legacy_rows: 0,
            anchor: None,
            head: (0, rampart::audit::GENESIS.to_owned()),
            legacy_end: None,
        }
    );
    assert_eq!(chain_macs(&app).await.len(), 1, "the head");
    app.user("admin_1").await;
    execute_behind_the_gateway(
        &app,
        "DELETE FROM audit_log; DELETE FROM audit_chain WHERE name = 'head';",
    )
    .await;
    broken_at(verify(&app).await, "every row and the head deleted");
    // The head kept, every row deleted.
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.user("admin_1").await;
    execute_behind_the_gateway(&app, "DELETE FROM audit_log").await;
    broken_at(verify(&app).await, "every row deleted");

    // An upgraded trail: the head is written at the switch-over.
    for attack in [
        "DELETE FROM audit_log WHERE id > 3; DELETE FROM audit_chain WHERE name = 'head';",
        "DELETE FROM audit_chain WHERE name = 'head';",
        "DELETE FROM audit_chain WHERE name = 'legacy_end';",
        "DELETE FROM audit_chain WHERE name LIKE 'legacy%';",
        "DELETE FROM audit_log WHERE id = 3; DELETE FROM audit_chain WHERE name = 'legacy_end';",
    ] {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        make_legacy(&app, backend).await;
        reopen(&app).await.unwrap();
        assert!(matches!(verify(&app).await, Verification::Intact { .. }));
        if !attack.contains("id > 3") {
            app.user("admin_1").await;
        }
        execute_behind_the_gateway(&app, attack).await;
        broken_at(verify(&app).await, attack);
    }
}

async fn a_wrong_chain_key_is_refused_at_open(backend: Backend) {
    for rows in [false, true] {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        if rows {
            app.user("admin_1").await;
        }
        let before = chain_macs(&app).await;
        let other = rampart::secrets::Secret::new(rampart::secrets::generate_token_secret());
        let refused = rampart::app::open_store(&app.database_url, 1, Some(&other))
            .await
            .err()
            .expect("another key is refused");
        assert!(
            refused
                .to_string()
                .contains("not sealed with this audit.chain_key"),
            "{refused}"
        );
        assert_eq!(chain_macs(&app).await, before, "nothing was written");
        assert!(matches!(verify(&app).await, Verification::Intact { .. }));
        // The right key still opens.
        reopen(&app).await.unwrap();
    }
}

async fn verify_during_appends_sees_a_consistent_trail(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.user("admin_1").await;
    let store = app.state.stores.data.clone();
    let writer = tokio::spawn(async move {
        for _ in 0..300 {
            store
                .append_audit(rampart::audit::NewAuditEntry::new(
                    1,
                    "login_failed",
                    None,
                    json!({}),
                    &rampart::audit::RequestContext::default(),
                ))
                .await
                .unwrap();
        }
    });
    let mut checks = 0;
    while !writer.is_finished() {
        let verification = verify(&app).await;
        assert!(
            matches!(verification, Verification::Intact { .. }),
            "a verify during appends: {verification:?}"
        );
        checks += 1;
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    assert!(checks > 0);
    assert!(matches!(verify(&app).await, Verification::Intact { .. }));
}

async fn purge_and_user_deletion_do_not_deadlock(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.user("admin_1").await;
    let store = app.state.stores.data.clone();
    let context = rampart::audit::RequestContext::default();
    for round in 0..15 {
        let user = app.user(&format!("user_{round}")).await;
        for _ in 0..3 {
            app.login(&format!("user_{round}")).await;
        }
        let now = app.clock.unix();
        let delete = store.delete_user(
            user.user_id,
            rampart::audit::NewAuditEntry::new(now, "user_deleted", None, json!({}), &context),
        );
        let purge = store.purge_audit(
            now + 1,
            rampart::audit::NewAuditEntry::new(
                now,
                rampart::audit::PURGED,
                None,
                json!({}),
                &context,
            ),
        );
        let (deleted, purged) = tokio::join!(delete, purge);
        deleted.unwrap_or_else(|error| panic!("round {round}: delete_user: {error}"));
        purged.unwrap_or_else(|error| panic!("round {round}: purge: {error}"));
    }
    assert!(matches!(verify(&app).await, Verification::Intact { .. }));
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
    an_unsealed_chain_record_is_never_sealed_later,
    a_missing_head_is_broken,
    a_wrong_chain_key_is_refused_at_open,
    verify_during_appends_sees_a_consistent_trail,
    purge_and_user_deletion_do_not_deadlock,
    the_audit_trail_exports_as_jsonl_and_csv,
);
