//! Starting a gateway per test, against a fresh database, and talking to it over HTTP.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use rampart::app::{Application, BuildOptions};
use rampart::clock::ManualClock;
use rampart::config::{Config, Sources};
use rampart::state::AppState;
use serde_json::{Value, json};

/// Where a test's gateway keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file.
    Sqlite,
    /// A fresh schema in the machine's PostgreSQL.
    Postgres,
    /// SQLite for records, the machine's Redis for session state.
    Redis,
}

pub const STRONG_PASSWORD: &str = "Tr4ding!Desk#42";

fn postgres_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Whether a backend that cannot be reached should be skipped (loudly) instead of failing.
fn skip_unreachable(what: &str, error: &dyn std::fmt::Display) -> bool {
    let variable = format!("RAMPART_TEST_SKIP_{}", what.to_uppercase());
    if std::env::var(&variable).is_ok() && std::env::var("CI").is_err() {
        eprintln!(
            "\n!!! SKIPPED: {what} is unreachable ({error}); {variable} is set, so this test \
             did NOT run against {what} !!!\n"
        );
        return true;
    }
    panic!(
        "{what} is needed by this test but unreachable: {error}. Start it (see README, \
         'Tests'), or set {variable}=1 outside CI to skip these tests loudly."
    );
}

/// A fresh PostgreSQL schema; its URL selects it through `search_path`.
pub async fn postgres_schema() -> Option<String> {
    use sqlx::Connection;
    let base = postgres_url();
    let mut connection = match sqlx::PgConnection::connect(&base).await {
        Ok(connection) => connection,
        Err(error) => {
            skip_unreachable("postgres", &error);
            return None;
        }
    };
    let schema = format!("rt_{}", ulid::Ulid::new().to_string().to_lowercase());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut connection)
        .await
        .expect("create schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    Some(format!(
        "{base}{separator}options=-c%20search_path%3D{schema}"
    ))
}

pub async fn redis_reachable() -> bool {
    let client = redis::Client::open(redis_url()).expect("redis url");
    match client.get_multiplexed_async_connection().await {
        Ok(_) => true,
        Err(error) => !skip_unreachable("redis", &error),
    }
}

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub clock: Arc<ManualClock>,
    /// The in-memory rate limiter's clock, which moves only when a test moves it.
    pub limiter_time: rampart::rate_limit::ManualTime,
    pub state: AppState,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub redis_prefix: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Configuration text plus environment overrides, as a test writes them.
#[derive(Debug, Default, Clone)]
pub struct Setup {
    pub toml: String,
    pub env: Vec<(String, String)>,
    /// Shared by instances that must see each other's Redis state; else one per app.
    pub redis_prefix: Option<String>,
    /// Whether the identity routes' built-in limits apply. Off unless a test is about them,
    /// as tests register and log in many users from one address.
    pub identity_limits: bool,
}

impl Setup {
    pub fn toml(text: &str) -> Self {
        Self {
            toml: text.to_owned(),
            ..Self::default()
        }
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// With the identity routes' built-in limits (SPEC §3) in force.
    pub fn with_identity_limits(mut self) -> Self {
        self.identity_limits = true;
        self
    }
}

/// Starts a gateway on the backend; `None` when the backend is skipped (loudly).
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, Setup::default()).await
}

pub async fn spawn_app_with(backend: Backend, setup: Setup) -> Option<TestApp> {
    let data_dir = std::env::temp_dir().join(format!("rampart-test-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&data_dir).expect("temp dir");
    let database_url = match backend {
        Backend::Sqlite | Backend::Redis => {
            format!("sqlite://{}", data_dir.join("rampart.db").display())
        }
        Backend::Postgres => postgres_schema().await?,
    };
    let redis_prefix = setup
        .redis_prefix
        .clone()
        .unwrap_or_else(|| format!("rt:{}:", ulid::Ulid::new()));
    let mut env: HashMap<String, String> = HashMap::from([
        ("RAMPART_SERVER__LISTEN".into(), "127.0.0.1:0".into()),
        ("RAMPART_DATABASE__URL".into(), database_url.clone()),
        // Tests send many requests from one address; those about limits set their own.
        ("RAMPART_RATE_LIMITS__ANONYMOUS".into(), "100000/min".into()),
        ("RAMPART_RATE_LIMITS__STANDARD".into(), "100000/min".into()),
        ("RAMPART_RATE_LIMITS__PREMIUM".into(), "100000/min".into()),
    ]);
    if backend == Backend::Redis {
        if !redis_reachable().await {
            return None;
        }
        env.insert("RAMPART_TOKENS__STORE".into(), redis_url());
    }
    env.extend(setup.env);
    let config = Config::load(&Sources {
        file_path: None,
        file: Some(setup.toml),
        env,
        data_dir: Some(data_dir.clone()),
    })
    .expect("test configuration is valid");
    Some(
        start_with(
            config,
            data_dir,
            database_url,
            redis_prefix,
            ManualClock::new(),
            setup.identity_limits,
        )
        .await,
    )
}

/// Another gateway on `first`'s database, secrets and token store, with `env` added to the
/// base settings (generous tier limits) and its own clock.
pub async fn another_instance(
    first: &TestApp,
    backend: Backend,
    env: &[(&str, &str)],
    clock: Arc<ManualClock>,
) -> TestApp {
    let secret = first
        .state
        .config
        .tokens
        .secret
        .as_ref()
        .unwrap()
        .expose()
        .to_owned();
    let mut vars: std::collections::HashMap<String, String> = [
        ("RAMPART_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        ("RAMPART_DATABASE__URL", first.database_url.clone()),
        ("RAMPART_TOKENS__SECRET", secret),
        ("RAMPART_RATE_LIMITS__ANONYMOUS", "100000/min".to_owned()),
        ("RAMPART_RATE_LIMITS__STANDARD", "100000/min".to_owned()),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect();
    for (key, value) in env {
        vars.insert((*key).to_owned(), (*value).to_owned());
    }
    if backend == Backend::Redis {
        vars.insert("RAMPART_TOKENS__STORE".into(), redis_url());
    }
    let config = rampart::config::Config::load(&rampart::config::Sources {
        file_path: None,
        file: None,
        env: vars,
        data_dir: Some(first.data_dir.clone()),
    })
    .unwrap();
    start(
        config,
        first.data_dir.clone(),
        first.database_url.clone(),
        first.redis_prefix.clone(),
        clock,
    )
    .await
}

/// Starts a gateway from a ready configuration.
pub async fn start(
    config: Config,
    data_dir: PathBuf,
    database_url: String,
    redis_prefix: String,
    clock: Arc<ManualClock>,
) -> TestApp {
    start_with(config, data_dir, database_url, redis_prefix, clock, false).await
}

async fn start_with(
    config: Config,
    data_dir: PathBuf,
    database_url: String,
    redis_prefix: String,
    clock: Arc<ManualClock>,
    identity_limits: bool,
) -> TestApp {
    let limiter_time = rampart::rate_limit::ManualTime::new();
    let app = Application::build_with(
        config,
        BuildOptions {
            clock: clock.clone(),
            redis_prefix: redis_prefix.clone(),
            max_db_connections: 4,
            rate_limit_time: Some(limiter_time.clone()),
            identity_limits,
            // Tests that count audit rows see no retention run; those about it start their own.
            audit_retention_delay: std::time::Duration::from_secs(24 * 60 * 60),
            ..BuildOptions::default()
        },
    )
    .await
    .expect("gateway starts");
    let address = format!("http://{}", app.local_addr().expect("bound"));
    let state = app.state();
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client"),
        clock,
        limiter_time,
        state,
        data_dir,
        database_url,
        redis_prefix,
        shutdown: Some(shutdown),
    }
}

pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub user_id: i64,
    pub body: Value,
}

impl TestApp {
    /// Begins a graceful shutdown.
    pub fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Waits until every audit entry the gateway queued in the background so far (refusals,
    /// failed authentications) is written, so that a following read of the trail sees them.
    pub async fn flush_audit(&self) {
        self.state.stores.data.flush_audit().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// The `/metrics` text, as a loopback scraper sees it.
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("request sent")
            .text()
            .await
            .expect("metrics text")
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get_with(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn send_with(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request sent")
    }

    pub async fn register(&self, username: &str) -> Value {
        let response = self
            .post(
                "/auth/register",
                &json!({
                    "username": username,
                    "email": format!("{username}@example.com"),
                    "password": STRONG_PASSWORD,
                }),
            )
            .await;
        assert_eq!(response.status(), 201, "registering {username}");
        response.json().await.expect("json")
    }

    pub async fn login(&self, username: &str) -> Session {
        self.login_with(username, STRONG_PASSWORD).await
    }

    pub async fn login_with(&self, username: &str, password: &str) -> Session {
        let response = self
            .post(
                "/auth/login",
                &json!({ "username": username, "password": password }),
            )
            .await;
        assert_eq!(response.status(), 200, "logging in {username}");
        let body: Value = response.json().await.expect("json");
        Session {
            access_token: body["access_token"].as_str().expect("token").to_owned(),
            refresh_token: body["refresh_token"].as_str().expect("token").to_owned(),
            user_id: body["user"]["id"].as_i64().expect("id"),
            body,
        }
    }

    /// Registers and logs in; the first user of an app is its admin.
    pub async fn user(&self, username: &str) -> Session {
        self.register(username).await;
        self.login(username).await
    }
}

/// Asserts the SPEC §1 error body and returns it.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status for {code}");
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "error bodies are JSON, got {content_type}"
    );
    let request_id = response
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .expect("every response carries X-Request-Id")
        .to_owned();
    let body: Value = response.json().await.expect("json error body");
    assert_eq!(body["error"], code, "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert_eq!(body["request_id"], request_id.as_str(), "{body}");
    body
}

/// Generates one test per backend for each named `async fn(Backend)`.
#[macro_export]
macro_rules! on_databases {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::helpers::Backend::Sqlite).await }
            )*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::helpers::Backend::Postgres).await }
            )*
        }
    };
}

/// Like `on_databases!`, plus a run with session state in Redis.
#[macro_export]
macro_rules! on_session_stores {
    ($($name:ident),* $(,)?) => {
        $crate::on_databases!($($name),*);
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name($crate::helpers::Backend::Redis).await }
            )*
        }
    };
}

/// Sends `GET path` exactly as written over a fresh connection and returns the status and
/// body; for paths an HTTP client library would normalise before sending.
pub async fn raw_get(address: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("read");
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}
