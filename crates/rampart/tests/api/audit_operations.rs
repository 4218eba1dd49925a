//! Audit operations of `serve` (SPEC §9): `audit.retention` applied by itself, and the
//! counts the audit throttle holds written at shutdown.

use std::time::Duration;

use rampart::app::{Application, BuildOptions};
use rampart::audit::{AuditRecord, NewAuditEntry, RequestContext};
use rampart::clock::ManualClock;
use rampart::config::{Config, Sources};
use serde_json::Value;

use crate::backend;
use crate::gateway::routes_setup;
use crate::helpers::{Backend, spawn_app_with};

async fn rows(store: &dyn rampart::store::Store) -> Vec<AuditRecord> {
    store.audit_page(0, 1000).await.unwrap()
}

/// Polls the trail until `found` holds, for at most 10 s.
async fn eventually(
    store: &dyn rampart::store::Store,
    found: impl Fn(&[AuditRecord]) -> bool,
) -> Vec<AuditRecord> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rows = rows(store).await;
        if found(&rows) || tokio::time::Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn details(row: &AuditRecord) -> Value {
    serde_json::from_str(&row.details).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_applies_the_audit_retention_by_itself() {
    let data_dir = std::env::temp_dir().join(format!("rampart-test-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&data_dir).unwrap();
    let env = [
        ("RAMPART_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "RAMPART_DATABASE__URL",
            format!("sqlite://{}", data_dir.join("rampart.db").display()),
        ),
        ("RAMPART_AUDIT__RETENTION", "1d".to_owned()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect();
    let config = Config::load(&Sources {
        file_path: None,
        file: None,
        env,
        data_dir: Some(data_dir.clone()),
    })
    .unwrap();
    let clock = ManualClock::new();
    let app = Application::build_with(
        config,
        BuildOptions {
            clock: clock.clone(),
            audit_retention_delay: Duration::from_millis(300),
            ..BuildOptions::default()
        },
    )
    .await
    .unwrap();
    let state = app.state();
    let store = state.stores.data.clone();
    let now = state.now();
    let context = RequestContext::default();
    for (at, action) in [(now - 2 * 86_400, "login_success"), (now - 60, "logout")] {
        store
            .append_audit(NewAuditEntry::new(
                at,
                action,
                None,
                serde_json::json!({}),
                &context,
            ))
            .await
            .unwrap();
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));

    let rows = eventually(&*store, |rows| {
        rows.iter().any(|row| row.action == rampart::audit::PURGED)
    })
    .await;
    let actions: Vec<&str> = rows.iter().map(|row| row.action.as_str()).collect();
    assert_eq!(actions, ["logout", rampart::audit::PURGED], "{rows:?}");
    let purge = details(&rows[1]);
    assert_eq!(purge["removed"], 1, "{purge}");
    assert_eq!(purge["older_than_seconds"], 86_400, "{purge}");
    assert_eq!(
        rows[1].user_agent.as_deref(),
        Some("rampart serve (audit.retention)")
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let key = rampart::audit::ChainKey::new(
        state
            .config
            .audit_chain_key
            .as_ref()
            .expect("generated at start-up")
            .expose(),
    );
    assert!(
        matches!(
            rampart::audit::verify(&*store, &key).await,
            Ok(rampart::audit::Verification::Intact { .. })
        ),
        "the trail verifies from the purge's anchor"
    );
}

async fn shutdown_writes_the_refusal_counts_the_throttle_holds(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(
        &upstream,
        "[[routes]]\npath = \"/echo/*\"\nupstream = \"app\"\nauth = false\n",
        "",
    )
    .env("RAMPART_RATE_LIMITS__ANONYMOUS", "2/min");
    let Some(mut app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let response = app.client.get(app.url("/echo/x")).send().await.unwrap();
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 429, 429, 429, 429]);
    app.flush_audit().await;
    let store = app.state.stores.data.clone();
    let refused = |rows: &[AuditRecord]| -> Vec<Value> {
        rows.iter()
            .filter(|row| row.action == "rate_limit_exceeded")
            .map(details)
            .collect()
    };
    let before = refused(&rows(&*store).await);
    assert_eq!(
        before.len(),
        1,
        "one row a window while running: {before:?}"
    );
    assert_eq!(before[0]["refusals_since_last_entry"], 0);

    app.stop();
    let rows = eventually(&*store, |rows| refused(rows).len() == 2).await;
    let after = refused(&rows);
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[1]["refusals_since_last_entry"], 3, "{after:?}");
    assert_eq!(after[1]["policy"], "anonymous");
    assert_eq!(after[1]["flushed_at_shutdown"], true);
}

crate::on_databases!(shutdown_writes_the_refusal_counts_the_throttle_holds);
