//! Session hardening: lockouts that hold under concurrency and per IPv6 prefix, password
//! confirmations counted apart from logins (and burning the session that guesses),
//! successes that never forgive other attempts, fixed-size lockout keys, absolute login lifetimes, revocations that reach
//! every instance whatever its clock, rotating CSRF tokens, and API keys across
//! "log out everywhere".

use std::time::Duration;

use rampart::clock::Clock;
use reqwest::Method;
use serde_json::{Value, json};

use crate::api_keys::create_key;
use crate::helpers::{
    Backend, STRONG_PASSWORD, Session, Setup, TestApp, assert_error, spawn_app, spawn_app_with,
};

const WRONG: &str = "Wrong!pass1";
const NEW_PASSWORD: &str = "N3w!Trading#Pass";

async fn login_from(app: &TestApp, ip: &str, username: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/auth/login"))
        .header("x-forwarded-for", ip)
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap()
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Audit entries of one action, as the admin API lists them.
async fn audit_entries(app: &TestApp, admin: &Session, action: &str) -> Vec<Value> {
    let response = app
        .get_with(
            &format!("/admin/audit?action={action}&limit=500"),
            &admin.access_token,
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["items"].as_array().unwrap().clone()
}

fn failed_login_metric(metrics: &str) -> f64 {
    metrics
        .lines()
        .find(|line| line.starts_with("rampart_failed_login_attempts_total"))
        .and_then(|line| line.split_whitespace().last())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

// --- Item: lockouts per IPv6 prefix -------------------------------------------------

async fn an_ipv6_lockout_covers_the_whole_prefix(backend: Backend) {
    let setup = Setup::default().env("RAMPART_SERVER__TRUSTED_PROXIES", "127.0.0.0/8");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    app.register("alice_1").await;
    // Five failures, each from another address of one /64.
    for host in 1..=5 {
        let ip = format!("2001:db8:1:2::{host:x}");
        let response = login_from(&app, &ip, "alice_1", WRONG).await;
        assert_error(response, 401, "invalid_credentials").await;
    }
    // A fresh address of the same /64 is locked out, even with the right password; so is
    // an address written differently.
    for ip in [
        "2001:db8:1:2:ffff:ffff:ffff:ffff",
        "2001:0db8:0001:0002::0099",
    ] {
        let response = login_from(&app, ip, "alice_1", STRONG_PASSWORD).await;
        assert_error(response, 429, "locked_out").await;
    }
    // Another /64 is not.
    let other = login_from(&app, "2001:db8:1:3::1", "alice_1", STRONG_PASSWORD).await;
    assert_eq!(other.status(), 200);
    // The audit log keeps each full address.
    let failures = audit_entries(&app, &admin, "login_failed").await;
    let addresses: Vec<&str> = failures
        .iter()
        .filter_map(|entry| entry["ip_address"].as_str())
        .collect();
    for host in 1..=5 {
        let ip = format!("2001:db8:1:2::{host:x}");
        assert!(addresses.contains(&ip.as_str()), "{addresses:?}");
    }
    // An admin lifts the lockout by naming any address of the prefix.
    let unlock = app
        .send_with(
            Method::POST,
            &format!("/admin/users/{}/unlock", admin.user_id + 1),
            &admin.access_token,
            Some(json!({ "ip": "2001:db8:1:2::abcd" })),
        )
        .await;
    assert_eq!(unlock.status(), 204);
    let response = login_from(&app, "2001:db8:1:2::7", "alice_1", STRONG_PASSWORD).await;
    assert_eq!(response.status(), 200);
}

async fn ipv4_lockouts_stay_per_address(backend: Backend) {
    let setup = Setup::default().env("RAMPART_SERVER__TRUSTED_PROXIES", "127.0.0.0/8");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    app.register("alice_1").await;
    for _ in 0..5 {
        let response = login_from(&app, "198.51.100.7", "alice_1", WRONG).await;
        assert_error(response, 401, "invalid_credentials").await;
    }
    let locked = login_from(&app, "198.51.100.7", "alice_1", STRONG_PASSWORD).await;
    assert_error(locked, 429, "locked_out").await;
    let neighbour = login_from(&app, "198.51.100.8", "alice_1", STRONG_PASSWORD).await;
    assert_eq!(neighbour.status(), 200);
}

// --- Item: password confirmation counts like a login ---------------------------------

fn confirmation_setup() -> Setup {
    Setup::default()
        .env("RAMPART_SERVER__TRUSTED_PROXIES", "127.0.0.0/8")
        .env("RAMPART_LOGIN__MAX_FAILURES_PER_ACCOUNT", "3")
}

async fn wrong_confirmations_lock_the_account(backend: Backend) {
    let Some(app) = spawn_app_with(backend, confirmation_setup()).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let session = app.user("alice_1").await;
    let change =
        |current: &str| json!({ "current_password": current, "new_password": NEW_PASSWORD });
    // Password change and deletion both count; the third wrong one spends the allowance.
    for attempt in 0..2 {
        let response = if attempt == 1 {
            app.send_with(
                Method::DELETE,
                "/users/me",
                &session.access_token,
                Some(json!({ "password": WRONG })),
            )
            .await
        } else {
            app.send_with(
                Method::PUT,
                "/users/me/password",
                &session.access_token,
                Some(change(WRONG)),
            )
            .await
        };
        assert_error(response, 400, "invalid_request").await;
    }
    let response = app
        .send_with(
            Method::PUT,
            "/users/me/password",
            &session.access_token,
            Some(change(WRONG)),
        )
        .await;
    let seconds = retry_after(&response);
    assert!((3500..=3600).contains(&seconds), "{seconds}");
    assert_error(response, 429, "locked_out").await;
    // Guessing burned the login it guessed with.
    assert_eq!(
        app.get_with("/users/me", &session.access_token)
            .await
            .status(),
        401
    );
    let refresh = app
        .post(
            "/auth/refresh",
            &json!({ "refresh_token": session.refresh_token }),
        )
        .await;
    assert_eq!(refresh.status(), 401);
    // Logging in is not locked: the owner gets back in, from anywhere.
    let login = login_from(&app, "203.0.113.9", "alice_1", STRONG_PASSWORD).await;
    assert_eq!(login.status(), 200);
    // The confirmations stay locked, even with the right password, and each refused
    // confirmation burns its login too.
    for (method, path, body) in [
        (Method::PUT, "/users/me/password", change(STRONG_PASSWORD)),
        (
            Method::DELETE,
            "/users/me",
            json!({ "password": STRONG_PASSWORD }),
        ),
    ] {
        let fresh = app.login("alice_1").await;
        let response = app
            .send_with(method, path, &fresh.access_token, Some(body))
            .await;
        let seconds = retry_after(&response);
        assert!((3500..=3600).contains(&seconds), "{seconds}");
        assert_error(response, 429, "locked_out").await;
        assert_eq!(
            app.get_with("/users/me", &fresh.access_token)
                .await
                .status(),
            401
        );
    }
    let burned = audit_entries(&app, &admin, "logout").await;
    assert!(
        burned
            .iter()
            .filter(|entry| entry["details"]["reason"] == "confirmation_locked_out")
            .count()
            >= 3,
        "{burned:?}"
    );
    let lockouts = audit_entries(&app, &admin, "locked_out").await;
    assert!(
        lockouts
            .iter()
            .any(|entry| entry["details"]["scope"] == "confirm"),
        "{lockouts:?}"
    );
    // An admin's unlock lifts the confirmation lockout too.
    let unlock = app
        .send_with(
            Method::POST,
            &format!("/admin/users/{}/unlock", admin.user_id + 1),
            &admin.access_token,
            None,
        )
        .await;
    assert_eq!(unlock.status(), 204);
    let session = app.login("alice_1").await;
    let response = app
        .send_with(
            Method::DELETE,
            "/users/me",
            &session.access_token,
            Some(json!({ "password": WRONG })),
        )
        .await;
    assert_error(response, 400, "invalid_request").await;
    // The password is unchanged; after the window, confirmations work again.
    app.clock.advance(Duration::from_secs(3601));
    let session = app.login("alice_1").await;
    let response = app
        .send_with(
            Method::PUT,
            "/users/me/password",
            &session.access_token,
            Some(change(STRONG_PASSWORD)),
        )
        .await;
    assert_eq!(response.status(), 204);
    let metrics = app.metrics().await;
    assert!(failed_login_metric(&metrics) >= 3.0, "{metrics}");
}

/// Logins and confirmations count apart: failed logins never block the owner's password
/// change, and a stolen session's wrong confirmations never lock the owner out of login.
async fn logins_and_confirmations_count_apart(backend: Backend) {
    let Some(app) = spawn_app_with(backend, confirmation_setup()).await else {
        return;
    };
    app.register("admin_1").await;
    let session = app.user("alice_1").await;
    for index in 0..3 {
        let response = login_from(&app, &format!("198.51.100.{index}"), "alice_1", WRONG).await;
        assert_error(response, 401, "invalid_credentials").await;
    }
    let locked = login_from(&app, "198.51.100.77", "alice_1", STRONG_PASSWORD).await;
    assert_error(locked, 429, "locked_out").await;
    // The account is locked out of logins; the password change still goes through.
    let response = app
        .send_with(
            Method::PUT,
            "/users/me/password",
            &session.access_token,
            Some(json!({ "current_password": STRONG_PASSWORD, "new_password": NEW_PASSWORD })),
        )
        .await;
    assert_eq!(response.status(), 204);

    // The other way round: a thief's session spends the confirmations...
    app.register("bob_1").await;
    let owner = app.login("bob_1").await;
    let stolen = app.login("bob_1").await;
    for _ in 0..3 {
        let response = app
            .send_with(
                Method::DELETE,
                "/users/me",
                &stolen.access_token,
                Some(json!({ "password": WRONG })),
            )
            .await;
        assert!(
            [400, 429].contains(&response.status().as_u16()),
            "{}",
            response.status()
        );
    }
    // ...and the owner still logs in, and keeps the session they had.
    let login = login_from(&app, "203.0.113.50", "bob_1", STRONG_PASSWORD).await;
    assert_eq!(login.status(), 200);
    assert_eq!(
        app.get_with("/users/me", &owner.access_token)
            .await
            .status(),
        200
    );
    assert_eq!(
        app.get_with("/users/me", &stolen.access_token)
            .await
            .status(),
        401
    );
}

async fn a_right_confirmation_clears_the_confirmation_count(backend: Backend) {
    let Some(app) = spawn_app_with(backend, confirmation_setup()).await else {
        return;
    };
    app.register("admin_1").await;
    let session = app.user("alice_1").await;
    for round in 0..3 {
        for _ in 0..2 {
            let response = app
                .send_with(
                    Method::DELETE,
                    "/users/me",
                    &session.access_token,
                    Some(json!({ "password": WRONG })),
                )
                .await;
            assert_error(response, 400, "invalid_request").await;
        }
        let (current, new) = if round % 2 == 0 {
            (STRONG_PASSWORD, NEW_PASSWORD)
        } else {
            (NEW_PASSWORD, STRONG_PASSWORD)
        };
        let response = app
            .send_with(
                Method::PUT,
                "/users/me/password",
                &session.access_token,
                Some(json!({ "current_password": current, "new_password": new })),
            )
            .await;
        assert_eq!(response.status(), 204, "round {round}");
    }
}

async fn api_keys_can_neither_change_the_password_nor_delete_the_account(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("admin_1").await;
    let session = app.user("alice_1").await;
    let key = create_key(&app, &session, "bot").await;
    let attempts = [
        (
            Method::PUT,
            "/users/me/password",
            json!({ "current_password": STRONG_PASSWORD, "new_password": NEW_PASSWORD }),
        ),
        (
            Method::PUT,
            "/users/me/password",
            json!({ "current_password": WRONG, "new_password": NEW_PASSWORD }),
        ),
        (
            Method::DELETE,
            "/users/me",
            json!({ "password": STRONG_PASSWORD }),
        ),
    ];
    for (method, path, body) in attempts {
        let response = app
            .client
            .request(method, app.url(path))
            .header("x-api-key", &key.key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_error(response, 403, "forbidden").await;
    }
    // Nor can a body in another shape than an object.
    let response = app
        .send_with(
            Method::PUT,
            "/users/me/password",
            &session.access_token,
            Some(json!([STRONG_PASSWORD, NEW_PASSWORD, true])),
        )
        .await;
    assert_error(response, 400, "invalid_request").await;
    // Nothing changed: the password and the account are as they were.
    app.login("alice_1").await;
    assert_eq!(
        app.get_with("/users/me", &session.access_token)
            .await
            .status(),
        200
    );
}

// --- Item: a login's lifetime is absolute --------------------------------------------

async fn refresh_never_extends_a_login(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    let session = app.login("alice_1").await;
    assert_eq!(session.body["refresh_expires_in"], 7 * 86_400);
    let mut token = session.refresh_token.clone();
    // Refresh every day: the login still ends 7 days after it began.
    for day in 1..=6 {
        app.clock.advance(Duration::from_secs(86_400));
        let response = app
            .post("/auth/refresh", &json!({ "refresh_token": token }))
            .await;
        assert_eq!(response.status(), 200, "day {day}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["refresh_expires_in"], (7 - day) * 86_400, "day {day}");
        token = body["refresh_token"].as_str().unwrap().to_owned();
    }
    app.clock.advance(Duration::from_secs(86_400 + 1));
    let response = app
        .post("/auth/refresh", &json!({ "refresh_token": token }))
        .await;
    assert_error(response, 401, "unauthorized").await;
}

async fn a_rotated_token_lives_at_most_refresh_ttl(backend: Backend) {
    let setup = Setup::default().env("RAMPART_TOKENS__REFRESH_TTL", "2d");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    app.register("alice_1").await;
    // A 30-day cookie session, refreshed: each new refresh token lives 2 days.
    let response = app
        .post(
            "/auth/login",
            &json!({ "username": "alice_1", "password": STRONG_PASSWORD, "cookie": true, "remember_me": true }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let token = body["refresh_token"].as_str().unwrap().to_owned();
    app.clock.advance(Duration::from_secs(86_400));
    let response = app
        .post("/auth/refresh", &json!({ "refresh_token": token }))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["refresh_expires_in"], 2 * 86_400);
    let token = body["refresh_token"].as_str().unwrap().to_owned();
    app.clock.advance(Duration::from_secs(2 * 86_400 + 1));
    let response = app
        .post("/auth/refresh", &json!({ "refresh_token": token }))
        .await;
    assert_error(response, 401, "unauthorized").await;
}

async fn a_cookie_session_ends_after_24_hours_however_often_refreshed(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    let mut cookie = CookieSession::login(&app, "alice_1", false).await;
    assert_eq!(cookie.body["refresh_expires_in"], 86_400);
    for (step, hour) in [(6, 6), (6, 12), (6, 18), (5, 23)] {
        app.clock.advance(Duration::from_secs(step * 3600));
        let response = cookie.refresh(&app).await;
        assert_eq!(response.status(), 200, "hour {hour}");
        cookie.absorb(response).await;
        assert_eq!(
            cookie.body["refresh_expires_in"],
            (24 - hour) * 3600,
            "hour {hour}"
        );
    }
    app.clock.advance(Duration::from_secs(3600 + 1));
    let response = cookie.refresh(&app).await;
    assert_error(response, 401, "unauthorized").await;
}

// --- Item: atomic lockout counting ---------------------------------------------------

async fn parallel_wrong_logins_from_one_ip_run_at_most_the_limit(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    app.register("alice_1").await;
    let before = failed_login_metric(&app.metrics().await);
    let attempts = (0..20).map(|_| async {
        let response = app
            .post(
                "/auth/login",
                &json!({ "username": "alice_1", "password": WRONG }),
            )
            .await;
        error_code(response).await
    });
    let outcomes = futures::future::join_all(attempts).await;
    let checked = outcomes
        .iter()
        .filter(|(status, code)| *status == 401 && code == "invalid_credentials")
        .count();
    let locked = outcomes
        .iter()
        .filter(|(status, code)| *status == 429 && code == "locked_out")
        .count();
    assert_eq!(checked + locked, 20, "{outcomes:?}");
    assert!(checked <= 5, "{checked} password checks: {outcomes:?}");
    let audited = audit_entries(&app, &admin, "login_failed").await.len();
    assert!(audited <= 5, "{audited} login_failed rows");
    assert_eq!(audited, checked);
    let counted = failed_login_metric(&app.metrics().await) - before;
    assert!(counted <= 5.0, "{counted} failed logins counted");
    // And the IP is locked out now, right password or not.
    let response = app
        .post(
            "/auth/login",
            &json!({ "username": "alice_1", "password": STRONG_PASSWORD }),
        )
        .await;
    assert_error(response, 429, "locked_out").await;
}

async fn parallel_wrong_logins_to_one_account_run_at_most_the_limit(backend: Backend) {
    let setup = Setup::default()
        .env("RAMPART_SERVER__TRUSTED_PROXIES", "127.0.0.0/8")
        .env("RAMPART_LOGIN__MAX_FAILURES_PER_ACCOUNT", "3");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    app.register("alice_1").await;
    let attempts = (0..16).map(|index| {
        let app = &app;
        async move {
            let ip = format!("198.51.100.{index}");
            error_code(login_from(app, &ip, "alice_1", WRONG).await).await
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let checked = outcomes.iter().filter(|(status, _)| *status == 401).count();
    let locked = outcomes
        .iter()
        .filter(|(status, code)| *status == 429 && code == "locked_out")
        .count();
    assert_eq!(checked + locked, 16, "{outcomes:?}");
    assert!(checked <= 3, "{checked} password checks: {outcomes:?}");
    let audited = audit_entries(&app, &admin, "login_failed").await.len();
    assert!(audited <= 3, "{audited} login_failed rows");
    // Refused attempts spent nothing of their IPs: a fresh login from one works for
    // another account.
    app.register("bob_22").await;
    let response = login_from(&app, "198.51.100.15", "bob_22", STRONG_PASSWORD).await;
    assert_eq!(response.status(), 200);
}

async fn parallel_password_confirmations_run_at_most_the_limit(backend: Backend) {
    let setup = Setup::default().env("RAMPART_LOGIN__MAX_FAILURES_PER_ACCOUNT", "3");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    app.register("admin_1").await;
    let session = app.user("alice_1").await;
    let attempts = (0..12).map(|_| async {
        let response = app
            .send_with(
                Method::DELETE,
                "/users/me",
                &session.access_token,
                Some(json!({ "password": WRONG })),
            )
            .await;
        error_code(response).await
    });
    let outcomes = futures::future::join_all(attempts).await;
    let checked = outcomes
        .iter()
        .filter(|(status, code)| *status == 400 || (*status == 429 && code == "locked_out"))
        .count();
    // Refused: 429, or 401 once the lockout has burned the login.
    assert!(
        outcomes
            .iter()
            .all(|(status, _)| [400, 429, 401].contains(status)),
        "{outcomes:?}"
    );
    let wrong = outcomes.iter().filter(|(status, _)| *status == 400).count();
    assert!(wrong <= 3, "{wrong} password checks: {outcomes:?}");
    assert!(checked >= 1, "{outcomes:?}");
    assert_eq!(
        app.get_with("/users/me", &session.access_token)
            .await
            .status(),
        401
    );
}

// --- Item: revocations reach instances with skewed clocks ----------------------------

async fn second_instance(first: &TestApp, backend: Backend, skew: Duration) -> TestApp {
    let clock = rampart::clock::ManualClock::new();
    clock.advance(skew);
    crate::helpers::another_instance(
        first,
        backend,
        &[("RAMPART_TOKENS__REVOCATION_LAG", "1s")],
        clock,
    )
    .await
}

async fn refused_within(app: &TestApp, token: &str, lag: Duration) {
    let deadline = tokio::time::Instant::now() + lag;
    loop {
        let status = app.get_with("/users/me", token).await.status();
        if status == 401 {
            return;
        }
        assert_eq!(status, 200);
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepted after the lag"
        );
        // The revocation arrives after the configured lag, in real time: poll until then.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_revocation_reaches_an_instance_whose_clock_runs_ahead(backend: Backend) {
    let setup = Setup::default().env("RAMPART_TOKENS__REVOCATION_LAG", "1s");
    let Some(first) = spawn_app_with(backend, setup).await else {
        return;
    };
    // The second instance's clock is ten minutes ahead of the first's.
    let second = second_instance(&first, backend, Duration::from_secs(600)).await;
    first.register("alice_1").await;
    let one = first.login("alice_1").await;
    let two = first.login("alice_1").await;
    // Logged in on the first: the second's tokens are not yet valid for the first.
    let three = first.login("alice_1").await;
    for session in [&one, &two, &three] {
        for app in [&first, &second] {
            assert_eq!(
                app.get_with("/users/me", &session.access_token)
                    .await
                    .status(),
                200
            );
        }
    }
    // A logout on the instance that is behind...
    let logout = first
        .send_with(Method::POST, "/auth/logout", &one.access_token, None)
        .await;
    assert_eq!(logout.status(), 204);
    refused_within(&second, &one.access_token, Duration::from_millis(1500)).await;
    assert_eq!(
        second
            .get_with("/users/me", &two.access_token)
            .await
            .status(),
        200
    );
    // ...reuse of a refresh token there, and a logout everywhere from the one ahead.
    let rotated = first
        .post(
            "/auth/refresh",
            &json!({ "refresh_token": two.refresh_token }),
        )
        .await;
    assert_eq!(rotated.status(), 200);
    let reused = first
        .post(
            "/auth/refresh",
            &json!({ "refresh_token": two.refresh_token }),
        )
        .await;
    assert_error(reused, 401, "token_reused").await;
    refused_within(&second, &two.access_token, Duration::from_millis(1500)).await;
    let all = second
        .send_with(Method::POST, "/auth/logout-all", &three.access_token, None)
        .await;
    assert_eq!(all.status(), 204);
    refused_within(&first, &three.access_token, Duration::from_millis(1500)).await;
}

async fn a_revocation_reaches_an_instance_whose_clock_runs_behind(backend: Backend) {
    let setup = Setup::default().env("RAMPART_TOKENS__REVOCATION_LAG", "1s");
    let Some(first) = spawn_app_with(backend, setup).await else {
        return;
    };
    // The first instance is the one ahead: the second revokes with an older clock.
    first.clock.advance(Duration::from_secs(300));
    let second = second_instance(&first, backend, Duration::ZERO).await;
    first.register("alice_1").await;
    let session = second.login("alice_1").await;
    assert_eq!(
        first
            .get_with("/users/me", &session.access_token)
            .await
            .status(),
        200
    );
    let logout = second
        .send_with(Method::POST, "/auth/logout", &session.access_token, None)
        .await;
    assert_eq!(logout.status(), 204);
    refused_within(&first, &session.access_token, Duration::from_millis(1500)).await;
}

fn family_of(session: &Session) -> String {
    session.refresh_token.split('.').next().unwrap().to_owned()
}

/// PostgreSQL hands out log ids when a transaction writes, not when it commits: a
/// revocation can become visible after a later one. It must still be learned.
async fn a_revocation_committed_out_of_order_is_not_missed(backend: Backend) {
    use sqlx::Connection;
    assert_eq!(backend, Backend::Postgres);
    let setup = Setup::default().env("RAMPART_TOKENS__REVOCATION_LAG", "1s");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    app.register("alice_1").await;
    let early = app.login("alice_1").await;
    let late = app.login("alice_1").await;
    let now = rampart::clock::Clock::unix(&*app.clock);
    // Another instance revokes `early` in a transaction that stays open...
    let mut slow = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    let mut transaction = slow.begin().await.unwrap();
    sqlx::query("UPDATE token_families SET revoked_at = $1 WHERE id = $2")
        .bind(now)
        .bind(family_of(&early))
        .execute(&mut *transaction)
        .await
        .unwrap();
    // ...while a third revokes `late`, which takes a later id and commits first.
    let mut quick = sqlx::PgConnection::connect(&app.database_url)
        .await
        .unwrap();
    sqlx::query("UPDATE token_families SET revoked_at = $1 WHERE id = $2")
        .bind(now)
        .bind(family_of(&late))
        .execute(&mut quick)
        .await
        .unwrap();
    refused_within(&app, &late.access_token, Duration::from_millis(1500)).await;
    // The instance has read past the open transaction's id; now it commits.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        app.get_with("/users/me", &early.access_token)
            .await
            .status(),
        200
    );
    transaction.commit().await.unwrap();
    refused_within(&app, &early.access_token, Duration::from_millis(1500)).await;
}

// --- Item: the Redis index of a user's logins ----------------------------------------

async fn the_redis_index_of_logins_expires_and_is_pruned(backend: Backend) {
    assert_eq!(backend, Backend::Redis);
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    let sessions: Vec<Session> =
        futures::future::join_all((0..3).map(|_| app.login("alice_1"))).await;
    let client = ::redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let index = format!("{}user:{}", app.redis_prefix, sessions[0].user_id);
    let ttl: i64 = ::redis::cmd("TTL")
        .arg(&index)
        .query_async(&mut redis)
        .await
        .unwrap();
    // Follows the longest login (7 days) plus the time revoked logins are remembered.
    assert!(ttl > 7 * 86_400 && ttl <= 9 * 86_400 + 5, "{ttl}");
    // A login whose record has expired away is dropped from the index.
    let gone = sessions[0].body["refresh_token"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    let _: () = ::redis::cmd("DEL")
        .arg(format!("{}fam:{gone}", app.redis_prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    let response = app
        .send_with(
            Method::POST,
            "/auth/logout-all",
            &sessions[1].access_token,
            Some(json!({ "revoke_api_keys": false })),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked_sessions"], 2, "{body}");
    let members: Vec<String> = ::redis::cmd("SMEMBERS")
        .arg(&index)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(members.len(), 2, "{members:?}");
    assert!(!members.contains(&gone), "{members:?}");
    for session in &sessions[1..] {
        assert_eq!(
            app.get_with("/users/me", &session.access_token)
                .await
                .status(),
            401
        );
    }
}

async fn logout_everywhere_revokes_many_logins_at_once(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    let mut sessions = Vec::new();
    for _ in 0..25 {
        sessions.push(app.login("alice_1").await);
    }
    let response = app
        .send_with(
            Method::POST,
            "/auth/logout-all",
            &sessions[0].access_token,
            Some(json!({ "revoke_api_keys": false })),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked_sessions"], 25, "{body}");
    for session in &sessions {
        let refresh = app
            .post(
                "/auth/refresh",
                &json!({ "refresh_token": session.refresh_token }),
            )
            .await;
        assert_eq!(refresh.status(), 401);
    }
}

// --- Item: the CSRF token rotates ------------------------------------------------------

/// A browser's cookie session, kept by hand.
struct CookieSession {
    access: String,
    refresh: String,
    csrf: String,
    body: Value,
}

fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|value| value.starts_with(&format!("{name}=")))
        .and_then(|value| value.split(';').next())
        .map(str::to_owned)
}

impl CookieSession {
    async fn login(app: &TestApp, username: &str, remember_me: bool) -> Self {
        let response = app
            .post(
                "/auth/login",
                &json!({ "username": username, "password": STRONG_PASSWORD, "cookie": true, "remember_me": remember_me }),
            )
            .await;
        assert_eq!(response.status(), 200);
        let access = set_cookie(&response, "__Host-access_token").unwrap();
        let refresh = set_cookie(&response, "__Secure-refresh_token").unwrap();
        let body: Value = response.json().await.unwrap();
        Self {
            access,
            refresh,
            csrf: body["csrf_token"].as_str().unwrap().to_owned(),
            body,
        }
    }

    async fn refresh_with(&self, app: &TestApp, csrf: &str) -> reqwest::Response {
        app.client
            .post(app.url("/auth/refresh"))
            .header("cookie", &self.refresh)
            .header("x-csrf-token", csrf)
            .send()
            .await
            .unwrap()
    }

    async fn refresh(&self, app: &TestApp) -> reqwest::Response {
        self.refresh_with(app, &self.csrf).await
    }

    /// Takes the new cookies and CSRF token of a refresh or password change.
    async fn absorb(&mut self, response: reqwest::Response) {
        if let Some(access) = set_cookie(&response, "__Host-access_token") {
            self.access = access;
        }
        if let Some(refresh) = set_cookie(&response, "__Secure-refresh_token") {
            self.refresh = refresh;
        }
        self.body = response.json().await.unwrap();
        self.csrf = self.body["csrf_token"].as_str().unwrap().to_owned();
    }

    /// An unsafe request that changes nothing much: creating an API key.
    async fn unsafe_request(&self, app: &TestApp, csrf: &str) -> reqwest::Response {
        app.client
            .post(app.url("/users/me/api-keys"))
            .header("cookie", &self.access)
            .header("x-csrf-token", csrf)
            .json(&json!({ "name": format!("k{}", ulid::Ulid::new()) }))
            .send()
            .await
            .unwrap()
    }
}

async fn every_refresh_replaces_the_csrf_token(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    let mut session = CookieSession::login(&app, "alice_1", false).await;
    let first = session.csrf.clone();
    let old_access = session.access.clone();
    assert_eq!(session.unsafe_request(&app, &first).await.status(), 201);
    let response = session.refresh(&app).await;
    assert_eq!(response.status(), 200);
    session.absorb(response).await;
    let second = session.csrf.clone();
    assert_ne!(first, second);
    // The previous token stops working at once, for requests and for the next refresh.
    assert_error(
        session.unsafe_request(&app, &first).await,
        403,
        "csrf_failed",
    )
    .await;
    assert_error(session.refresh_with(&app, &first).await, 403, "csrf_failed").await;
    // Even together with the access cookie it came with, which has not expired yet.
    let stale = CookieSession {
        access: old_access,
        refresh: String::new(),
        csrf: first.clone(),
        body: Value::Null,
    };
    assert_error(stale.unsafe_request(&app, &first).await, 403, "csrf_failed").await;
    assert_error(
        stale.unsafe_request(&app, &second).await,
        403,
        "csrf_failed",
    )
    .await;
    assert_eq!(session.unsafe_request(&app, &second).await.status(), 201);
    let response = session.refresh(&app).await;
    assert_eq!(response.status(), 200);
    session.absorb(response).await;
    assert_ne!(session.csrf, second);
    assert_error(
        session.unsafe_request(&app, &second).await,
        403,
        "csrf_failed",
    )
    .await;
    assert_error(session.unsafe_request(&app, "").await, 403, "csrf_failed").await;
    let csrf = session.csrf.clone();
    assert_eq!(session.unsafe_request(&app, &csrf).await.status(), 201);
    // A CSRF token belongs to its own login only.
    let other = CookieSession::login(&app, "alice_1", false).await;
    assert_error(other.unsafe_request(&app, &csrf).await, 403, "csrf_failed").await;
    assert_error(other.refresh_with(&app, &csrf).await, 403, "csrf_failed").await;
}

async fn a_password_change_replaces_the_csrf_token(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    let mut session = CookieSession::login(&app, "alice_1", false).await;
    let before = session.csrf.clone();
    let old_access = session.access.clone();
    let response = app
        .client
        .put(app.url("/users/me/password"))
        .header("cookie", &session.access)
        .header("x-csrf-token", &before)
        .json(&json!({ "current_password": STRONG_PASSWORD, "new_password": NEW_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    session.absorb(response).await;
    assert_ne!(session.csrf, before);
    assert_error(
        session.unsafe_request(&app, &before).await,
        403,
        "csrf_failed",
    )
    .await;
    assert_error(
        session.refresh_with(&app, &before).await,
        403,
        "csrf_failed",
    )
    .await;
    let stale = CookieSession {
        access: old_access,
        refresh: String::new(),
        csrf: before.clone(),
        body: Value::Null,
    };
    assert_error(
        stale.unsafe_request(&app, &before).await,
        403,
        "csrf_failed",
    )
    .await;
    let csrf = session.csrf.clone();
    assert_eq!(session.unsafe_request(&app, &csrf).await.status(), 201);
    let response = session.refresh(&app).await;
    assert_eq!(response.status(), 200);
}

// --- Item: API keys and "log out everywhere" -----------------------------------------

async fn key_works(app: &TestApp, key: &str) -> u16 {
    app.client
        .get(app.url("/users/me"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn logout_everywhere_keeps_api_keys_unless_asked(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("admin_1").await;
    let session = app.user("alice_1").await;
    let key = create_key(&app, &session, "bot").await;
    // SPEC §2: 204 when the body does not name `revoke_api_keys`.
    let response = app
        .send_with(
            Method::POST,
            "/auth/logout-all",
            &session.access_token,
            None,
        )
        .await;
    assert_eq!(response.status(), 204);
    assert_eq!(
        app.get_with("/users/me", &session.access_token)
            .await
            .status(),
        401
    );
    assert_eq!(key_works(&app, &key.key).await, 200);
    // Naming it, even as `false`, asks for the report.
    let session = app.login("alice_1").await;
    let response = app
        .send_with(
            Method::POST,
            "/auth/logout-all",
            &session.access_token,
            Some(json!({ "revoke_api_keys": false })),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked_sessions"], 1, "{body}");
    assert_eq!(body["revoked_api_keys"], 0, "{body}");
    let listed = body["active_api_keys"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{body}");
    assert_eq!(listed[0]["id"], key.id);
    assert_eq!(listed[0]["name"], "bot");
    assert_eq!(listed[0]["prefix"], key.body["prefix"]);
    assert_eq!(listed[0]["created_at"], key.body["created_at"]);
    assert!(listed[0].get("expires_at").is_some());
    assert!(listed[0].get("key").is_none() && listed[0].get("secret").is_none());
    assert_eq!(key_works(&app, &key.key).await, 200);

    // A body that is not understood changes nothing.
    let session = app.login("alice_1").await;
    for bad in [
        json!({ "revoke_api_keys": "yes" }),
        json!({ "revoke_api_keys": true, "extra": 1 }),
        json!([true]),
    ] {
        let response = app
            .send_with(
                Method::POST,
                "/auth/logout-all",
                &session.access_token,
                Some(bad),
            )
            .await;
        assert_error(response, 400, "invalid_request").await;
    }
    assert_eq!(
        app.get_with("/users/me", &session.access_token)
            .await
            .status(),
        200
    );
    // An API key cannot revoke the keys.
    let response = app
        .client
        .post(app.url("/auth/logout-all"))
        .header("x-api-key", &key.key)
        .json(&json!({ "revoke_api_keys": true }))
        .send()
        .await
        .unwrap();
    assert_error(response, 403, "forbidden").await;
    assert_eq!(key_works(&app, &key.key).await, 200);

    let second = create_key(&app, &session, "bot2").await;
    let response = app
        .send_with(
            Method::POST,
            "/auth/logout-all",
            &session.access_token,
            Some(json!({ "revoke_api_keys": true })),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked_api_keys"], 2, "{body}");
    assert_eq!(body["active_api_keys"], json!([]), "{body}");
    assert_eq!(key_works(&app, &key.key).await, 401);
    assert_eq!(key_works(&app, &second.key).await, 401);
    assert_eq!(
        app.get_with("/users/me", &session.access_token)
            .await
            .status(),
        401
    );
}

async fn a_password_change_can_revoke_api_keys(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("admin_1").await;
    let session = app.user("alice_1").await;
    let key = create_key(&app, &session, "bot").await;
    let response = app
        .send_with(
            Method::PUT,
            "/users/me/password",
            &session.access_token,
            Some(json!({ "current_password": STRONG_PASSWORD, "new_password": NEW_PASSWORD, "revoke_api_keys": false })),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["active_api_keys"][0]["id"], key.id, "{body}");
    assert_eq!(key_works(&app, &key.key).await, 200);
    let response = app
        .send_with(
            Method::PUT,
            "/users/me/password",
            &session.access_token,
            Some(json!({ "current_password": NEW_PASSWORD, "new_password": STRONG_PASSWORD, "revoke_api_keys": true })),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked_api_keys"], 1, "{body}");
    assert_eq!(body["active_api_keys"], json!([]), "{body}");
    assert_eq!(key_works(&app, &key.key).await, 401);
    // The login that made the change survives.
    assert_eq!(
        app.get_with("/users/me", &session.access_token)
            .await
            .status(),
        200
    );
}

async fn csrf_failures_are_counted_and_audited(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    app.register("alice_1").await;
    let session = CookieSession::login(&app, "alice_1", false).await;
    let other = CookieSession::login(&app, "alice_1", false).await;
    let count = |metrics: &str| {
        crate::rate_limits::series(metrics, "rampart_auth_failures_total{reason=\"csrf\"}")
    };
    assert_eq!(count(&app.metrics().await), 0, "exists at zero");
    // A wrong token, an empty one, another login's, and none at all.
    for csrf in ["wrong", "", other.csrf.as_str()] {
        assert_error(session.unsafe_request(&app, csrf).await, 403, "csrf_failed").await;
    }
    let missing = app
        .client
        .post(app.url("/users/me/api-keys"))
        .header("cookie", &session.access)
        .json(&json!({ "name": "k" }))
        .send()
        .await
        .unwrap();
    assert_error(missing, 403, "csrf_failed").await;
    assert_eq!(count(&app.metrics().await), 4);
    // A cookie refresh is checked by its handler: counted the same.
    for csrf in ["wrong", other.csrf.as_str()] {
        assert_error(session.refresh_with(&app, csrf).await, 403, "csrf_failed").await;
    }
    assert_eq!(count(&app.metrics().await), 6);
    // The right token is no failure.
    let csrf = session.csrf.clone();
    assert_eq!(session.unsafe_request(&app, &csrf).await.status(), 201);
    assert_eq!(session.refresh(&app).await.status(), 200);
    assert_eq!(count(&app.metrics().await), 6);
    app.flush_audit().await;
    let rows: Value = app
        .get_with("/admin/audit?action=auth_failed", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    let rows = rows["items"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "one row a minute per client: {rows:?}");
    assert_eq!(rows[0]["details"]["reason"], "csrf", "{rows:?}");
    // A minute later, the next failure (a refresh) opens a row standing for those held back.
    app.clock.advance(std::time::Duration::from_secs(61));
    let refused = session.refresh_with(&app, "wrong").await;
    assert_error(refused, 403, "csrf_failed").await;
    app.flush_audit().await;
    let rows: Value = app
        .get_with("/admin/audit?action=auth_failed", &admin.access_token)
        .await
        .json()
        .await
        .unwrap();
    let rows = rows["items"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let newest = rows
        .iter()
        .find(|row| row["details"]["failures_since_last_entry"] == 5)
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(newest["details"]["reason"], "csrf", "{rows:?}");
    assert_eq!(newest["ip_address"], rows[0]["ip_address"], "{rows:?}");
}

crate::on_session_stores!(
    an_ipv6_lockout_covers_the_whole_prefix,
    csrf_failures_are_counted_and_audited,
    ipv4_lockouts_stay_per_address,
    wrong_confirmations_lock_the_account,
    logins_and_confirmations_count_apart,
    a_right_confirmation_clears_the_confirmation_count,
    api_keys_can_neither_change_the_password_nor_delete_the_account,
    refresh_never_extends_a_login,
    a_rotated_token_lives_at_most_refresh_ttl,
    a_cookie_session_ends_after_24_hours_however_often_refreshed,
    parallel_wrong_logins_from_one_ip_run_at_most_the_limit,
    parallel_wrong_logins_to_one_account_run_at_most_the_limit,
    parallel_password_confirmations_run_at_most_the_limit,
    a_revocation_reaches_an_instance_whose_clock_runs_ahead,
    a_revocation_reaches_an_instance_whose_clock_runs_behind,
    logout_everywhere_revokes_many_logins_at_once,
    every_refresh_replaces_the_csrf_token,
    a_password_change_replaces_the_csrf_token,
    logout_everywhere_keeps_api_keys_unless_asked,
    a_password_change_can_revoke_api_keys,
    an_owners_login_hands_a_guesser_no_new_guesses,
    racing_owner_logins_never_refill_the_guesses,
    in_flight_attempts_are_never_forgiven,
    overlong_usernames_are_refused_without_storing_them,
    a_new_instance_knows_every_revocation_before_serving,
    an_access_token_never_outlives_its_login,
    a_login_revoked_in_the_store_is_refused_before_the_cache_knows,
    every_body_is_a_json_object_or_nothing,
    a_cookie_login_refreshed_by_body_gets_a_new_csrf_token,
    revoking_api_keys_is_one_audited_step,
);

mod postgres_log {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revocation_committed_out_of_order_is_not_missed() {
        super::a_revocation_committed_out_of_order_is_not_missed(crate::helpers::Backend::Postgres)
            .await;
    }
}

mod redis_index {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_redis_index_of_logins_expires_and_is_pruned() {
        super::the_redis_index_of_logins_expires_and_is_pruned(crate::helpers::Backend::Redis)
            .await;
    }
}

// --- Item: a success hands back only its own attempt -----------------------------------

fn account_setup() -> Setup {
    Setup::default()
        .env("RAMPART_SERVER__TRUSTED_PROXIES", "127.0.0.0/8")
        .env("RAMPART_LOGIN__MAX_FAILURES_PER_ACCOUNT", "3")
}

/// The owner's (or their bot's) logins never reset the account's failures: a guesser
/// spreading guesses over addresses gets `max_failures_per_account` per window, however
/// often the owner logs in meanwhile.
async fn an_owners_login_hands_a_guesser_no_new_guesses(backend: Backend) {
    let Some(app) = spawn_app_with(backend, account_setup()).await else {
        return;
    };
    app.register("admin_1").await;
    app.register("alice_1").await;
    for round in 0..2 {
        let response = login_from(&app, &format!("198.51.100.{round}"), "alice_1", WRONG).await;
        assert_error(response, 401, "invalid_credentials").await;
        // The owner's bot logs in between guesses.
        let bot = login_from(&app, "203.0.113.1", "alice_1", STRONG_PASSWORD).await;
        assert_eq!(bot.status(), 200);
    }
    let third = login_from(&app, "198.51.100.9", "alice_1", WRONG).await;
    assert_error(third, 401, "invalid_credentials").await;
    // Three failures in the window: the account is locked, for the guesser and the bot.
    for ip in ["198.51.100.10", "203.0.113.1"] {
        let response = login_from(&app, ip, "alice_1", STRONG_PASSWORD).await;
        assert_error(response, 429, "locked_out").await;
    }
}

/// Guesses and the owner's logins interleaved at random: however they race, no more than
/// `max_failures_per_account` wrong passwords get checked in the window.
async fn racing_owner_logins_never_refill_the_guesses(backend: Backend) {
    let setup = Setup::default()
        .env("RAMPART_SERVER__TRUSTED_PROXIES", "127.0.0.0/8")
        .env("RAMPART_LOGIN__MAX_FAILURES_PER_ACCOUNT", "5");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    app.register("admin_1").await;
    app.register("alice_1").await;
    let mut checked = 0;
    for round in 0..3 {
        let guesses = (0..6).map(|index| {
            let app = &app;
            async move {
                let ip = format!("198.51.{round}.{index}");
                login_from(app, &ip, "alice_1", WRONG)
                    .await
                    .status()
                    .as_u16()
            }
        });
        let owner = (0..6).map(|_| {
            let app = &app;
            async move {
                login_from(app, "203.0.113.1", "alice_1", STRONG_PASSWORD)
                    .await
                    .status()
                    .as_u16()
            }
        });
        let (guesses, owner) = futures::future::join(
            futures::future::join_all(guesses),
            futures::future::join_all(owner),
        )
        .await;
        assert!(
            guesses.iter().all(|status| [401, 429].contains(status)),
            "{guesses:?}"
        );
        assert!(
            owner.iter().all(|status| [200, 429].contains(status)),
            "{owner:?}"
        );
        checked += guesses.iter().filter(|status| **status == 401).count();
    }
    assert!(checked <= 5, "{checked} wrong passwords checked");
}

/// At the store: attempts in flight stay counted whatever a success clears, refused
/// attempts count nowhere, and the IP scope forgets confirmed failures on success while the
/// account scope never does. The same on every session store.
async fn in_flight_attempts_are_never_forgiven(backend: Backend) {
    use rampart::store::{Attempt, LockScope};
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let sessions = &app.state.stores.sessions;
    let now = app.clock.unix();
    for scope in [LockScope::Ip, LockScope::Account, LockScope::Confirm] {
        let key = format!("k-{}", scope.as_str());
        // Two guesses in flight, then a success by someone else.
        for _ in 0..2 {
            let attempt = sessions.reserve_attempt(scope, &key, 2, 3600, now).await;
            assert_eq!(attempt.unwrap(), Attempt::Allowed, "{scope:?}");
        }
        // Both slots are taken by attempts in flight: refused, and not counted.
        for _ in 0..3 {
            let attempt = sessions.reserve_attempt(scope, &key, 2, 3600, now).await;
            assert!(matches!(attempt.unwrap(), Attempt::Locked(_)), "{scope:?}");
        }
        sessions.release_attempt(scope, &key, true).await.unwrap();
        // The success handed back one slot only.
        let attempt = sessions.reserve_attempt(scope, &key, 2, 3600, now).await;
        assert_eq!(attempt.unwrap(), Attempt::Allowed, "{scope:?}");
        // The two guesses still in flight fail: the second starts the lockout.
        let first = sessions.record_failure(scope, &key, 2, 3600, now).await;
        assert_eq!(first.unwrap(), None, "{scope:?}");
        let second = sessions.record_failure(scope, &key, 2, 3600, now).await;
        assert_eq!(second.unwrap(), Some(3600), "{scope:?}");
        let attempt = sessions
            .reserve_attempt(scope, &key, 2, 3600, now + 10)
            .await;
        assert_eq!(attempt.unwrap(), Attempt::Locked(3590), "{scope:?}");
    }
    // A success clears the IP's confirmed failures, never the account's.
    for (scope, cleared) in [(LockScope::Ip, true), (LockScope::Account, false)] {
        let key = format!("s-{}", scope.as_str());
        for _ in 0..2 {
            sessions
                .reserve_attempt(scope, &key, 3, 3600, now)
                .await
                .unwrap();
            sessions
                .record_failure(scope, &key, 3, 3600, now)
                .await
                .unwrap();
        }
        sessions
            .reserve_attempt(scope, &key, 3, 3600, now)
            .await
            .unwrap();
        sessions
            .release_attempt(scope, &key, cleared)
            .await
            .unwrap();
        sessions
            .reserve_attempt(scope, &key, 3, 3600, now)
            .await
            .unwrap();
        let locked = sessions
            .record_failure(scope, &key, 3, 3600, now)
            .await
            .unwrap();
        assert_eq!(locked.is_some(), !cleared, "{scope:?}");
    }
}

// --- Item: no username's length reaches the lockout table ------------------------------

/// The longest key in the lockout counters.
async fn longest_lockout_key(app: &TestApp, backend: Backend) -> usize {
    use sqlx::Connection;
    let query = "SELECT CAST(COALESCE(MAX(LENGTH(key)), 0) AS BIGINT) FROM login_failures";
    match backend {
        Backend::Sqlite => {
            let mut connection = sqlx::SqliteConnection::connect(&app.database_url)
                .await
                .unwrap();
            let longest: i64 = sqlx::query_scalar(query)
                .fetch_one(&mut connection)
                .await
                .unwrap();
            usize::try_from(longest).unwrap()
        }
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(&app.database_url)
                .await
                .unwrap();
            let longest: i64 = sqlx::query_scalar(query)
                .fetch_one(&mut connection)
                .await
                .unwrap();
            usize::try_from(longest).unwrap()
        }
        Backend::Redis => {
            let client = ::redis::Client::open(crate::helpers::redis_url()).unwrap();
            let mut redis = client.get_multiplexed_async_connection().await.unwrap();
            let keys: Vec<String> = ::redis::cmd("KEYS")
                .arg(format!("{}lock:*", app.redis_prefix))
                .query_async(&mut redis)
                .await
                .unwrap();
            keys.iter().map(String::len).max().unwrap_or(0)
        }
    }
}

async fn overlong_usernames_are_refused_without_storing_them(backend: Backend) {
    let setup = account_setup().env("RAMPART_SERVER__MAX_BODY", "4MiB");
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    app.register("alice_1").await;
    for (index, length) in [255, 2_800, 5_000, 1 << 20].into_iter().enumerate() {
        for name in ["a".repeat(length), "É".repeat(length / 2)] {
            let response = login_from(&app, &format!("198.51.100.{index}"), &name, WRONG).await;
            assert_error(response, 401, "invalid_credentials").await;
        }
    }
    // Nothing longer than a digest or an address was stored.
    let longest = longest_lockout_key(&app, backend).await;
    assert!(longest <= 120, "{longest}");
    // Real accounts still count: names of any case share one counter.
    for (index, name) in ["alice_1", "ALICE_1", "Alice_1"].into_iter().enumerate() {
        let response = login_from(&app, &format!("203.0.113.{index}"), name, WRONG).await;
        assert_error(response, 401, "invalid_credentials").await;
    }
    let locked = login_from(&app, "203.0.113.99", "alice_1", STRONG_PASSWORD).await;
    assert_error(locked, 429, "locked_out").await;
    // An unknown user is counted just like a known one.
    for index in 0..3 {
        let response = login_from(&app, &format!("192.0.2.{index}"), "nobody_1", WRONG).await;
        assert_error(response, 401, "invalid_credentials").await;
    }
    let locked = login_from(&app, "192.0.2.99", "nobody_1", WRONG).await;
    assert_error(locked, 429, "locked_out").await;
}

// --- Item: revocations from before the log ---------------------------------------------

/// A database at the version before the revocation log, holding one revoked login.
async fn database_before_the_log(backend: Backend, family: &str, at: i64) -> Option<String> {
    use sqlx::Connection;
    let mut migrator = match backend {
        Backend::Postgres => sqlx::migrate!("migrations/postgres"),
        _ => sqlx::migrate!("migrations/sqlite"),
    };
    migrator.migrations = std::borrow::Cow::Owned(
        migrator
            .migrations
            .iter()
            .filter(|migration| migration.version < 3)
            .cloned()
            .collect(),
    );
    let insert = "INSERT INTO token_families (id, user_id, created_at, expires_at, revoked_at) \
                  VALUES ($1, 1, $2, $3, $2)";
    match backend {
        Backend::Postgres => {
            let base = std::env::var("TEST_DATABASE_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
            let mut connection = sqlx::PgConnection::connect(&base).await.ok()?;
            let schema = format!("rt_{}", ulid::Ulid::new().to_string().to_lowercase());
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&mut connection)
                .await
                .unwrap();
            let url = format!("{base}?options=-c%20search_path%3D{schema}");
            let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
            migrator.run(&mut connection).await.unwrap();
            sqlx::query(insert)
                .bind(family)
                .bind(at)
                .bind(at + 86_400)
                .execute(&mut connection)
                .await
                .unwrap();
            Some(url)
        }
        _ => {
            let dir = std::env::temp_dir().join(format!("rampart-test-{}", ulid::Ulid::new()));
            std::fs::create_dir_all(&dir).unwrap();
            let url = format!("sqlite://{}?mode=rwc", dir.join("old.db").display());
            let mut connection = sqlx::SqliteConnection::connect(&url).await.unwrap();
            migrator.run(&mut connection).await.unwrap();
            sqlx::query(insert)
                .bind(family)
                .bind(at)
                .bind(at + 86_400)
                .execute(&mut connection)
                .await
                .unwrap();
            Some(url)
        }
    }
}

async fn revocations_from_before_the_log_are_kept(backend: Backend) {
    let now = rampart::clock::ManualClock::new().unix();
    let family = "pre-upgrade-family";
    let Some(url) = database_before_the_log(backend, family, now - 60).await else {
        return;
    };
    let setup = Setup::default().env("RAMPART_DATABASE__URL", &url);
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    app.register("alice_1").await;
    // Revoked before the upgrade: known from the start, by every instance.
    assert!(app.state.revocations.is_revoked(family));
    let user = app
        .state
        .stores
        .data
        .user_by_username("alice_1")
        .await
        .unwrap()
        .unwrap();
    let token = app.state.tokens.issue(&user, family).unwrap();
    assert_eq!(app.get_with("/users/me", &token).await.status(), 401);
}

async fn redis_revocations_from_before_the_log_are_kept(backend: Backend) {
    assert_eq!(backend, Backend::Redis);
    if !crate::helpers::redis_reachable().await {
        return;
    }
    let prefix = format!("rt:{}:", ulid::Ulid::new());
    let client = ::redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    let (server_now, _): (i64, i64) = ::redis::cmd("TIME").query_async(&mut redis).await.unwrap();
    // What earlier versions wrote: a sorted set of family ids scored by revocation time.
    let _: () = ::redis::cmd("ZADD")
        .arg(format!("{prefix}revoked"))
        .arg(server_now - 60)
        .arg("pre-upgrade-family")
        .arg(server_now - 30 * 86_400)
        .arg("long-gone-family")
        .query_async(&mut redis)
        .await
        .unwrap();
    let setup = Setup {
        redis_prefix: Some(prefix.clone()),
        ..Setup::default()
    };
    let Some(app) = spawn_app_with(backend, setup.clone()).await else {
        return;
    };
    assert!(app.state.revocations.is_revoked("pre-upgrade-family"));
    // Copied once: another instance starting finds the log as it was.
    let again = spawn_app_with(backend, setup).await.unwrap();
    assert!(again.state.revocations.is_revoked("pre-upgrade-family"));
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = ::redis::cmd("XRANGE")
        .arg(format!("{prefix}revocations"))
        .arg("-")
        .arg("+")
        .query_async(&mut redis)
        .await
        .unwrap();
    let families: Vec<&str> = entries
        .iter()
        .filter_map(|(_, fields)| fields.get("family").map(String::as_str))
        .collect();
    assert_eq!(families, ["pre-upgrade-family"]);
}

// --- Item: the revocation cache is ready before serving ---------------------------------

async fn a_new_instance_knows_every_revocation_before_serving(backend: Backend) {
    if backend == Backend::Sqlite {
        // Instances share state through PostgreSQL or Redis.
        return;
    }
    let setup = Setup::default().env("RAMPART_TOKENS__REVOCATION_LAG", "1s");
    let Some(first) = spawn_app_with(backend, setup).await else {
        return;
    };
    first.register("alice_1").await;
    // A long log: reading it takes a while, so an instance that served before reading it
    // would be caught doing so.
    pad_revocation_log(&first, backend, 60_000).await;
    let mut revoked = Vec::new();
    for _ in 0..20 {
        let session = first.login("alice_1").await;
        let logout = first
            .send_with(Method::POST, "/auth/logout", &session.access_token, None)
            .await;
        assert_eq!(logout.status(), 204);
        revoked.push(session);
    }
    for _ in 0..2 {
        let second = second_instance(&first, backend, Duration::ZERO).await;
        // Known as soon as the instance exists: no request can come before.
        for session in &revoked {
            assert!(second.state.revocations.is_revoked(&family_of(session)));
        }
        let last = revoked.last().unwrap();
        assert_eq!(
            second
                .get_with("/users/me", &last.access_token)
                .await
                .status(),
            401
        );
    }
}

/// Appends `count` revocations of made-up logins to the shared log.
async fn pad_revocation_log(app: &TestApp, backend: Backend, count: usize) {
    use sqlx::Connection;
    match backend {
        Backend::Postgres => {
            let mut connection = sqlx::PgConnection::connect(&app.database_url)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO revocations (family_id, revoked_at) \
                 SELECT 'padding-' || g, $1 FROM generate_series(1, $2) g",
            )
            .bind(app.clock.unix())
            .bind(i64::try_from(count).unwrap())
            .execute(&mut connection)
            .await
            .unwrap();
        }
        Backend::Redis => {
            let client = ::redis::Client::open(crate::helpers::redis_url()).unwrap();
            let mut redis = client.get_multiplexed_async_connection().await.unwrap();
            // In pipelines of a few thousand: one of 60 000 can outlast the client's
            // response timeout on a busy machine.
            for start in (0..count).step_by(5_000) {
                let mut pipe = ::redis::pipe();
                for index in start..count.min(start + 5_000) {
                    pipe.cmd("XADD")
                        .arg(format!("{}revocations", app.redis_prefix))
                        .arg("*")
                        .arg("family")
                        .arg(format!("padding-{index}"))
                        .ignore();
                }
                let _: () = pipe.query_async(&mut redis).await.unwrap();
            }
        }
        Backend::Sqlite => {}
    }
}

// --- Item: a revocation log that goes backwards ------------------------------------------

async fn a_restored_revocation_log_is_read_again(backend: Backend) {
    assert_eq!(backend, Backend::Sqlite);
    use sqlx::Connection;
    let setup = Setup::default().env("RAMPART_TOKENS__REVOCATION_LAG", "1s");
    let Some(first) = spawn_app_with(backend, setup).await else {
        return;
    };
    let second = second_instance(&first, backend, Duration::ZERO).await;
    first.register("alice_1").await;
    for _ in 0..3 {
        let session = first.login("alice_1").await;
        first
            .send_with(Method::POST, "/auth/logout", &session.access_token, None)
            .await;
    }
    let victim = first.login("alice_1").await;
    // Long enough for the second instance's cursor to settle past the three entries.
    tokio::time::sleep(tokens_settle() + Duration::from_secs(2)).await;
    // The database is restored from before those revocations.
    let mut connection = sqlx::SqliteConnection::connect(&first.database_url)
        .await
        .unwrap();
    sqlx::query("DELETE FROM revocations")
        .execute(&mut connection)
        .await
        .unwrap();
    sqlx::query("UPDATE sqlite_sequence SET seq = 0 WHERE name = 'revocations'")
        .execute(&mut connection)
        .await
        .unwrap();
    drop(connection);
    let logout = first
        .send_with(Method::POST, "/auth/logout", &victim.access_token, None)
        .await;
    assert_eq!(logout.status(), 204);
    refused_within(&second, &victim.access_token, Duration::from_secs(3)).await;
}

fn tokens_settle() -> Duration {
    rampart::tokens::SETTLE
}

// --- Item: access tokens never outlive their login; the store's word on CSRF ------------

async fn an_access_token_never_outlives_its_login(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    let started = app.clock.unix();
    let mut session = CookieSession::login(&app, "alice_1", false).await;
    // Half an hour before the 24-hour cookie login ends.
    app.clock.advance(Duration::from_secs(86_400 - 1800));
    let response = session.refresh(&app).await;
    assert_eq!(response.status(), 200);
    session.absorb(response).await;
    assert!(
        session.body["expires_in"].as_i64().unwrap() <= 1800,
        "{}",
        session.body
    );
    let access = session.body["access_token"].as_str().unwrap();
    let claims = app.state.tokens.verify(access).unwrap();
    assert!(claims.exp <= started + 86_400, "{claims:?}");
    let cookie_age = session.access.clone();
    assert!(!cookie_age.is_empty());
    // Past the login's end (and the leeway), the token is refused.
    app.clock.advance(Duration::from_secs(1800 + 31));
    assert_eq!(app.get_with("/users/me", access).await.status(), 401);
}

async fn a_login_revoked_in_the_store_is_refused_before_the_cache_knows(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    let session = CookieSession::login(&app, "alice_1", false).await;
    let family = session.body["refresh_token"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned();
    // Revoked by another instance: in the store, not yet in this one's cache.
    app.state
        .stores
        .sessions
        .revoke_family(&family, app.clock.unix())
        .await
        .unwrap();
    assert_error(
        session.unsafe_request(&app, &session.csrf).await,
        401,
        "unauthorized",
    )
    .await;
    let change = app
        .client
        .put(app.url("/users/me/password"))
        .header("cookie", &session.access)
        .header("x-csrf-token", &session.csrf)
        .json(&json!({ "current_password": STRONG_PASSWORD, "new_password": NEW_PASSWORD }))
        .send()
        .await
        .unwrap();
    assert!(set_cookie(&change, "__Host-access_token").is_none());
    assert_error(change, 401, "unauthorized").await;
    // The same with the access token as a bearer token: no new cookie, nothing changed.
    let access = session.body["access_token"].as_str().unwrap();
    let change = app
        .send_with(
            Method::PUT,
            "/users/me/password",
            access,
            Some(json!({ "current_password": STRONG_PASSWORD, "new_password": NEW_PASSWORD })),
        )
        .await;
    assert_error(change, 401, "unauthorized").await;
    app.login("alice_1").await;
    assert!(
        !app.state
            .stores
            .sessions
            .set_csrf_hash(&family, "00", app.clock.unix())
            .await
            .unwrap()
    );
}

// --- Item: one way to read every JSON body ----------------------------------------------

async fn every_body_is_a_json_object_or_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let alice = app.user("alice_1").await;
    let unlock = format!("/admin/users/{}/unlock", alice.user_id);
    for (path, token) in [
        ("/auth/refresh", None),
        ("/auth/logout-all", Some(&alice.access_token)),
        (unlock.as_str(), Some(&admin.access_token)),
    ] {
        let send = |body: &'static str, content_type: &'static str| {
            let mut request = app
                .client
                .post(app.url(path))
                .header("content-type", content_type)
                .body(body);
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send()
        };
        for body in [
            r#"["x"]"#,
            r#"[true]"#,
            r#""text""#,
            "null",
            "1",
            r#"{"refresh_token": 1, "revoke_api_keys": 1, "ip": 1}"#,
        ] {
            let response = send(body, "application/json").await.unwrap();
            assert_error(response, 400, "invalid_request").await;
        }
        for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
            let response = send("{}", content_type).await.unwrap();
            assert_error(response, 415, "unsupported_media_type").await;
        }
    }
    // Nothing was revoked by any of it.
    assert_eq!(
        app.get_with("/users/me", &alice.access_token)
            .await
            .status(),
        200
    );
    // No body at all is still fine where the body is optional.
    let response = app
        .send_with(Method::POST, &unlock, &admin.access_token, None)
        .await;
    assert_eq!(response.status(), 204);
    let response = app
        .send_with(Method::POST, "/auth/logout-all", &alice.access_token, None)
        .await;
    assert_eq!(response.status(), 204);
}

// --- Item: CSRF rotates for every cookie-born login, whatever the transport -------------

async fn a_cookie_login_refreshed_by_body_gets_a_new_csrf_token(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.register("alice_1").await;
    let mut session = CookieSession::login(&app, "alice_1", false).await;
    let before = session.csrf.clone();
    let refresh_token = session.body["refresh_token"].as_str().unwrap().to_owned();
    let response = app
        .post("/auth/refresh", &json!({ "refresh_token": refresh_token }))
        .await;
    assert_eq!(response.status(), 200);
    session.absorb(response).await;
    assert_ne!(session.csrf, before);
    let access = session.body["access_token"].as_str().unwrap();
    let claims = app.state.tokens.verify(access).unwrap();
    assert_eq!(
        claims.csrf.as_deref(),
        Some(rampart::tokens::hash_csrf_token(&session.csrf).as_str())
    );
    assert_error(
        session.unsafe_request(&app, &before).await,
        403,
        "csrf_failed",
    )
    .await;
    let csrf = session.csrf.clone();
    assert_eq!(session.unsafe_request(&app, &csrf).await.status(), 201);

    // A password change with the access token as a bearer token rotates it too.
    let access = access.to_owned();
    let response = app
        .send_with(
            Method::PUT,
            "/users/me/password",
            &access,
            Some(json!({ "current_password": STRONG_PASSWORD, "new_password": NEW_PASSWORD })),
        )
        .await;
    assert_eq!(response.status(), 200);
    let previous = session.csrf.clone();
    session.absorb(response).await;
    assert_ne!(session.csrf, previous);
    assert_error(
        session.unsafe_request(&app, &previous).await,
        403,
        "csrf_failed",
    )
    .await;
    let csrf = session.csrf.clone();
    assert_eq!(session.unsafe_request(&app, &csrf).await.status(), 201);
}

// --- Item: API keys revoked in one statement ---------------------------------------------

async fn revoking_api_keys_is_one_audited_step(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let session = app.user("alice_1").await;
    let mut ids = Vec::new();
    for index in 0..3 {
        ids.push(create_key(&app, &session, &format!("bot{index}")).await.id);
    }
    let response = app
        .send_with(
            Method::POST,
            "/auth/logout-all",
            &session.access_token,
            Some(json!({ "revoke_api_keys": true })),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked_api_keys"], 3, "{body}");
    let entries = audit_entries(&app, &admin, "api_key_revoked").await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["details"]["api_key_ids"], json!(ids));
    assert_eq!(entries[0]["details"]["reason"], "logout_all");
    // The password change does it in its own transaction, audited the same way.
    let session = app.login("alice_1").await;
    let key = create_key(&app, &session, "late").await;
    let response = app
        .send_with(
            Method::PUT,
            "/users/me/password",
            &session.access_token,
            Some(json!({ "current_password": STRONG_PASSWORD, "new_password": NEW_PASSWORD, "revoke_api_keys": true })),
        )
        .await;
    assert_eq!(response.status(), 200);
    let entries = audit_entries(&app, &admin, "api_key_revoked").await;
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert!(
        entries
            .iter()
            .any(|entry| entry["details"]["api_key_ids"] == json!([key.id])
                && entry["details"]["reason"] == "password_changed"),
        "{entries:?}"
    );
}

mod upgrade {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_revocations_from_before_the_log_are_kept() {
        super::revocations_from_before_the_log_are_kept(crate::helpers::Backend::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_revocations_from_before_the_log_are_kept() {
        super::revocations_from_before_the_log_are_kept(crate::helpers::Backend::Postgres).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_revocations_from_before_the_log_are_kept() {
        super::redis_revocations_from_before_the_log_are_kept(crate::helpers::Backend::Redis).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restored_revocation_log_is_read_again() {
        super::a_restored_revocation_log_is_read_again(crate::helpers::Backend::Sqlite).await;
    }
}
