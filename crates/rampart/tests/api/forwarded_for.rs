//! The client behind a trusted proxy: an `X-Forwarded-For` hop that cannot be read makes
//! the client unknown, never the proxy (SPEC §3 "Client IP").

use http::HeaderValue;
use serde_json::{Value, json};

use crate::backend;
use crate::gateway::routes_setup;
use crate::helpers::{Backend, STRONG_PASSWORD, Setup, assert_error, spawn_app_with};

/// Spellings of a chain whose nearest hop cannot be read; one header line per `\n`.
const UNREADABLE: [&[u8]; 11] = [
    b"8.8.8.8, \xff",
    b"\xff",
    b"8.8.8.8,",
    b"8.8.8.8, , 127.0.0.2",
    b",",
    b"unknown",
    b":8080",
    b"_hidden",
    b"for=8.8.8.8",
    b"8.8.8.8\ngarbage",
    b"8.8.8.8\n127.0.0.3, \xff",
];

fn from(request: reqwest::RequestBuilder, chain: &[u8]) -> reqwest::RequestBuilder {
    chain.split(|b| *b == b'\n').fold(request, |request, line| {
        request.header("x-forwarded-for", HeaderValue::from_bytes(line).unwrap())
    })
}

fn show(chain: &[u8]) -> String {
    String::from_utf8_lossy(chain).into_owned()
}

async fn unreadable_forwarded_for_never_lends_the_proxy_its_standing(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(
        &upstream,
        "[[routes]]\npath = \"/echo/*\"\nupstream = \"app\"\nauth = false\n",
        "",
    )
    .env("RAMPART_RATE_LIMITS__ANONYMOUS", "3/min")
    .env("RAMPART_SERVER__TRUSTED_PROXIES", "127.0.0.0/8");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    // `\xff` left of a good hop is never read: the client is that hop.
    let mut chains: Vec<&[u8]> = UNREADABLE.to_vec();
    chains.push(b"\xff, 8.8.8.8");
    for chain in &chains {
        let response = from(app.client.get(app.url("/metrics")), chain)
            .send()
            .await
            .unwrap();
        assert_error(response, 404, "not_found").await;
        assert!(
            !app.metrics().await.is_empty(),
            "the proxy itself still scrapes"
        );
    }
    // A `_` spelling of the header is not the header: the proxy stays the client.
    let response = app
        .client
        .get(app.url("/metrics"))
        .header("X_Forwarded_For", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Every unknown client shares one budget, and only they do.
    let mut statuses = Vec::new();
    for chain in UNREADABLE {
        let response = from(app.client.get(app.url("/echo/x")), chain)
            .send()
            .await
            .unwrap();
        if statuses.is_empty() {
            let echo: Value = response.json().await.unwrap();
            let headers = &echo["headers"];
            assert_eq!(headers["x-forwarded-for"], json!(["unknown"]), "{echo}");
            assert_eq!(headers["x-real-ip"], json!(["unknown"]), "{echo}");
            assert!(
                headers["forwarded"][0]
                    .as_str()
                    .unwrap()
                    .starts_with("for=unknown;"),
                "{echo}"
            );
            statuses.push(200);
        } else {
            statuses.push(response.status().as_u16());
        }
    }
    assert_eq!(&statuses[..3], [200, 200, 200], "{statuses:?}");
    assert!(
        statuses[3..].iter().all(|status| *status == 429),
        "{statuses:?}"
    );
    let proxy = app.client.get(app.url("/echo/x")).send().await.unwrap();
    assert_eq!(proxy.status(), 200, "the proxy's own budget is untouched");
    let client = from(app.client.get(app.url("/echo/x")), b"203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(client.status(), 200, "a readable client has its own budget");
}

async fn a_backend_is_told_an_unknown_client_is_unknown(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(
        &upstream,
        "[[routes]]\npath = \"/echo/*\"\nupstream = \"app\"\nauth = false\n",
        "",
    )
    .env("RAMPART_SERVER__TRUSTED_PROXIES", "127.0.0.0/8");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    for chain in UNREADABLE {
        // Whatever the client claims in the headers the gateway states itself.
        let request = app
            .client
            .get(app.url("/echo/x"))
            .header("x-real-ip", "127.0.0.1")
            .header("forwarded", "for=127.0.0.1");
        let response = from(request, chain).send().await.unwrap();
        assert_eq!(response.status(), 200, "{}", show(chain));
        let echo: Value = response.json().await.unwrap();
        let headers = &echo["headers"];
        assert_eq!(
            headers["x-forwarded-for"],
            json!(["unknown"]),
            "{}: {echo}",
            show(chain)
        );
        assert_eq!(
            headers["x-real-ip"],
            json!(["unknown"]),
            "{}: {echo}",
            show(chain)
        );
        assert_eq!(
            headers["forwarded"],
            json!(["for=unknown;proto=http;host=\"".to_owned()
                + app.address.trim_start_matches("http://")
                + "\""]),
            "{}: {echo}",
            show(chain)
        );
    }
    // A readable client is named in all three.
    let response = from(app.client.get(app.url("/echo/x")), b"2001:db8::7")
        .send()
        .await
        .unwrap();
    let echo: Value = response.json().await.unwrap();
    let headers = &echo["headers"];
    assert_eq!(headers["x-forwarded-for"], json!(["2001:db8::7"]), "{echo}");
    assert_eq!(headers["x-real-ip"], json!(["2001:db8::7"]), "{echo}");
    assert!(
        headers["forwarded"][0]
            .as_str()
            .unwrap()
            .starts_with("for=\"[2001:db8::7]\";"),
        "{echo}"
    );
}

async fn unknown_clients_are_locked_out_together_and_audited_as_unknown(backend: Backend) {
    let setup = Setup::default().env("RAMPART_SERVER__TRUSTED_PROXIES", "127.0.0.0/8");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    app.register("alice_1").await;
    let login = |chain: &[u8], password: &str| {
        from(app.client.post(app.url("/auth/login")), chain)
            .json(&json!({"username": "alice_1", "password": password}))
            .send()
    };
    for chain in &UNREADABLE[..5] {
        let response = login(chain, "Wrong!pass1").await.unwrap();
        assert_error(response, 401, "invalid_credentials").await;
    }
    for chain in &UNREADABLE[5..] {
        let response = login(chain, STRONG_PASSWORD).await.unwrap();
        assert_eq!(response.status(), 429, "{}", show(chain));
        assert_error(response, 429, "locked_out").await;
    }
    // Neither the proxy nor a readable client behind it is locked out.
    app.login("alice_1").await;
    let response = login(b"203.0.113.7", STRONG_PASSWORD).await.unwrap();
    assert_eq!(response.status(), 200);

    app.flush_audit().await;
    let audit: Value = app
        .get_with("/admin/audit?action=login_failed", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    let items = audit["items"].as_array().unwrap();
    assert_eq!(items.len(), 5, "{audit}");
    for item in items {
        assert_eq!(item["ip_address"], "0.0.0.0", "{item}");
    }
}

crate::on_databases!(
    unreadable_forwarded_for_never_lends_the_proxy_its_standing,
    a_backend_is_told_an_unknown_client_is_unknown,
);

/// Lockouts live in the session store: also run with it in Redis.
mod lockout {
    use super::unknown_clients_are_locked_out_together_and_audited_as_unknown;
    crate::on_session_stores!(unknown_clients_are_locked_out_together_and_audited_as_unknown);
}
