//! SSRF tests that run inside a loopback-only network namespace.
//!
//! Each test re-runs itself under `unshare -n` (with `lo` brought up), so that even a broken
//! check cannot send a packet off the machine: the namespace has no interface but `lo` and no
//! route anywhere else. Only the copy inside the namespace runs the test body; the outer copy
//! starts it, waits for it, and reports its result. Nothing here ever targets a non-loopback
//! address outside such a namespace.
//!
//! Inside, a refusal by the policy ([`SsrfError`]) and a failed connection
//! ([`OutboundError::Unreachable`]) are different outcomes, so every "refused" assertion
//! proves the check fired, not that the network happened to be down.

// Test code: a failed unwrap is a failed test, helpers included.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::IntoResponse;
use bytes::Bytes;
use http::header::{HeaderValue, LOCATION};
use http::{Method, StatusCode, Uri};
use rampart::app::{Application, BuildOptions};
use rampart::config::{Config, Sources};
use rampart::outbound::{
    ConnectError, OutboundError, OutboundPolicy, SafeClient, SafeConnector, SsrfError, is_public,
};
use serde_json::{Value, json};
use tower::ServiceExt;
use url::Url;

/// Set in the copy of the test binary that runs inside the namespace.
const INSIDE: &str = "RAMPART_IN_LOOPBACK_NETNS";

/// Brings `lo` up in the fresh namespace, then becomes the test binary.
const ENTER: &str = r#"ip link set lo up && exec "$0" "$@""#;

/// Longest a test body may run inside the namespace.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest the outer test waits for the copy inside the namespace.
const CHILD_TIMEOUT: Duration = Duration::from_secs(120);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

const STRONG_PASSWORD: &str = "Tr4ding!Desk#42";

// ---------------------------------------------------------------------------------------
// Running inside the namespace
// ---------------------------------------------------------------------------------------

/// Whether the caller should run its body now.
///
/// Inside the namespace (`RAMPART_IN_LOOPBACK_NETNS=1`): checks that only `lo` exists and
/// returns true. Outside: runs `test_name` alone in a fresh loopback-only namespace, fails
/// if it fails there, and returns false. Where namespaces are unavailable the test is
/// skipped loudly, or fails when `CI` is set.
fn isolated(test_name: &str) -> bool {
    if std::env::var(INSIDE).as_deref() == Ok("1") {
        assert_loopback_only();
        return true;
    }
    // libtest names each test's thread after the test; catch a mistyped name here, since
    // `--exact` with a wrong name would run nothing.
    let thread = std::thread::current();
    if let Some(name) = thread.name().filter(|name| *name != "main") {
        assert_eq!(
            name, test_name,
            "isolated() must be given the test's own name"
        );
    }
    if let Err(reason) = namespaces_available() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "{test_name} must run in a loopback-only network namespace, but {reason}. \
                 CI needs `unshare` (util-linux) and `ip` (iproute2), and permission to \
                 create network namespaces (root or CAP_SYS_ADMIN)."
            );
        }
        // Straight to the stderr handle: libtest captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n!!! SKIPPED: {test_name} did NOT run: {reason}. It needs `unshare -n` and \
             `ip` with permission to create a network namespace (run as root) !!!\n"
        );
        return false;
    }
    let executable = std::env::current_exe().expect("the test binary's path");
    let mut command = Command::new("unshare");
    command
        .args(["-n", "sh", "-c", ENTER])
        .arg(&executable)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1");
    let (success, output) = run_bounded(command, CHILD_TIMEOUT);
    assert!(
        success,
        "{test_name} failed inside the loopback-only namespace:\n{output}"
    );
    // A filter that matches nothing also exits successfully: make sure the body ran.
    assert!(
        output.contains("test result: ok. 1 passed"),
        "{test_name} did not run exactly once inside the namespace:\n{output}"
    );
    print!("{output}");
    false
}

/// Whether `unshare -n` and `ip link set lo up` work here; probed once per process.
fn namespaces_available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let output = Command::new("unshare")
                .args(["-n", "sh", "-c", "ip link set lo up"])
                .stdin(Stdio::null())
                .output()
                .map_err(|error| format!("`unshare` could not be started ({error})"))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "`unshare -n sh -c 'ip link set lo up'` failed ({}): {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ))
            }
        })
        .clone()
}

/// Runs `command` to completion or until `limit`, killing it then; returns whether it
/// succeeded and everything it wrote.
fn run_bounded(mut command: Command, limit: Duration) -> (bool, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start unshare");
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the namespaced test") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut output = format!(
        "--- stdout ---\n{}\n--- stderr ---\n{}",
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default()
    );
    match status {
        Some(status) => {
            output.push_str(&format!("\n--- exit: {status} ---\n"));
            (status.success(), output)
        }
        None => {
            output.push_str(&format!("\n--- killed after {limit:?} ---\n"));
            (false, output)
        }
    }
}

/// Fails unless this process's network namespace has no interface but `lo`.
///
/// `/proc/self/net/dev` follows the caller's network namespace; `/sys/class/net` does not
/// (sysfs keeps showing the namespace it was mounted in), so it cannot prove isolation.
fn assert_loopback_only() {
    let devices = std::fs::read_to_string("/proc/self/net/dev").expect("read /proc/self/net/dev");
    let interfaces: Vec<&str> = devices
        .lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim())
        .collect();
    assert_eq!(
        interfaces,
        ["lo"],
        "{INSIDE}=1 is set, but this network namespace has more than the loopback interface"
    );
}

/// Runs a test body on a fresh runtime, bounded by [`BODY_TIMEOUT`].
fn run(body: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            tokio::time::timeout(BODY_TIMEOUT, body)
                .await
                .expect("the test body finished in time");
        });
}

// ---------------------------------------------------------------------------------------
// Test servers and clients
// ---------------------------------------------------------------------------------------

/// What a test server answers to every request.
#[derive(Debug, Clone)]
struct Reply {
    status: StatusCode,
    location: Option<String>,
    body: Value,
}

impl Reply {
    fn json(body: Value) -> Self {
        Self {
            status: StatusCode::OK,
            location: None,
            body,
        }
    }

    fn redirect(status: u16, location: &str) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("a status code"),
            location: Some(location.to_owned()),
            body: json!({}),
        }
    }
}

/// A request a test server received.
#[derive(Debug, Clone, PartialEq)]
struct Received {
    method: Method,
    path: String,
    body: Value,
}

/// A server on 127.0.0.1 that answers every request alike and records each one.
struct Server {
    address: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn hits(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn server(reply: Reply) -> Server {
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&received);
    let app = Router::new().fallback(move |method: Method, uri: Uri, body: Bytes| {
        let (log, reply) = (Arc::clone(&log), reply.clone());
        async move {
            log.lock().unwrap().push(Received {
                method,
                path: uri.path().to_owned(),
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            });
            let mut response = (reply.status, axum::Json(reply.body)).into_response();
            if let Some(location) = reply.location {
                response.headers_mut().insert(
                    LOCATION,
                    HeaderValue::from_str(&location).expect("a header value"),
                );
            }
            response
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a test server");
    let address = listener.local_addr().expect("bound");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server { address, received }
}

fn policy(allow_http: bool, networks: &[&str]) -> Arc<OutboundPolicy> {
    let networks: Vec<ipnet::IpNet> = networks
        .iter()
        .map(|network| network.parse().expect("a CIDR"))
        .collect();
    Arc::new(OutboundPolicy::new(allow_http, &[], &networks).expect("a valid policy"))
}

fn client(policy: &Arc<OutboundPolicy>) -> SafeClient {
    SafeClient::new(Arc::clone(policy), CONNECT_TIMEOUT, REQUEST_TIMEOUT)
}

async fn connect(policy: &Arc<OutboundPolicy>, uri: &str) -> Result<(), ConnectError> {
    SafeConnector::new(Arc::clone(policy), CONNECT_TIMEOUT)
        .oneshot(uri.parse().expect("a URI"))
        .await
        .map(drop)
}

fn url(raw: &str) -> Url {
    Url::parse(raw).expect("a URL")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP address")
}

/// A plain HTTP client that never uses a proxy from the environment.
fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("client")
}

// ---------------------------------------------------------------------------------------
// SafeClient and SafeConnector
// ---------------------------------------------------------------------------------------

#[test]
fn a_policy_without_loopback_refuses_a_listening_local_server() {
    if !isolated("a_policy_without_loopback_refuses_a_listening_local_server") {
        return;
    }
    run(async {
        let server = server(Reply::json(json!({ "status": "success" }))).await;
        let port = server.address.port();
        let policy = policy(true, &[]);

        // A name passes the offline URL check; only resolving at connect time can refuse it.
        let localhost = url(&format!("http://localhost:{port}/"));
        assert!(
            policy.check_url(localhost.as_str()).is_ok(),
            "localhost is a name, which the offline check lets through"
        );
        let result = client(&policy).post_json(&localhost, &json!({})).await;
        match result {
            Err(OutboundError::Refused(SsrfError::ForbiddenAddress { address })) => {
                assert!(address.to_canonical().is_loopback(), "{address}");
            }
            other => panic!("localhost was not refused at connect time: {other:?}"),
        }

        for raw in [
            format!("http://127.0.0.1:{port}/"),
            format!("http://127.1:{port}/"),
            format!("http://2130706433:{port}/"),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
            format!("http://[::1]:{port}/"),
        ] {
            let result = client(&policy).post_json(&url(&raw), &json!({})).await;
            assert!(
                matches!(
                    &result,
                    Err(OutboundError::Refused(SsrfError::ForbiddenAddress { address }))
                        if address.to_canonical().is_loopback()
                ),
                "{raw}: {result:?}"
            );
        }

        // The connector refuses on its own, before dialing: the check does not depend on
        // post_json having vetted the URL first.
        for uri in [
            format!("http://localhost:{port}/"),
            format!("http://127.0.0.1:{port}/"),
            format!("http://[::ffff:127.0.0.1]:{port}/"),
        ] {
            let result = connect(&policy, &uri).await;
            assert!(
                matches!(
                    result,
                    Err(ConnectError::Refused(SsrfError::ForbiddenAddress { .. }))
                ),
                "{uri}: {result:?}"
            );
        }
        assert_eq!(server.hits(), 0, "the refused server saw no request");

        // The server was there all along: a client without the policy reaches it.
        let answer = plain_client()
            .post(server.url("/"))
            .json(&json!({}))
            .send()
            .await
            .expect("the test server answers");
        assert_eq!(answer.status(), 200);
        assert_eq!(server.hits(), 1);
    });
}

#[test]
fn allowed_networks_reach_the_local_server_but_redirects_are_not_followed() {
    if !isolated("allowed_networks_reach_the_local_server_but_redirects_are_not_followed") {
        return;
    }
    run(async {
        let broker = server(Reply::json(
            json!({ "status": "success", "data": { "availablecash": "1" } }),
        ))
        .await;
        let policy = policy(true, &["127.0.0.1/32"]);
        let client = client(&policy);

        let (status, body) = client
            .post_json(
                &url(&broker.url("/api/v1/funds")),
                &json!({ "apikey": "k-1" }),
            )
            .await
            .expect("an allowed network is reached");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            serde_json::from_slice::<Value>(&body).expect("json"),
            json!({ "status": "success", "data": { "availablecash": "1" } })
        );
        assert_eq!(
            broker.received(),
            [Received {
                method: Method::POST,
                path: "/api/v1/funds".into(),
                body: json!({ "apikey": "k-1" }),
            }]
        );

        // Only the listed network is opened: the rest of loopback stays refused.
        let port = broker.address.port();
        for (raw, refused) in [
            (format!("http://127.0.0.2:{port}/"), ip("127.0.0.2")),
            (format!("http://[::1]:{port}/"), ip("::1")),
        ] {
            let result = client.post_json(&url(&raw), &json!({})).await;
            assert!(
                matches!(
                    &result,
                    Err(OutboundError::Refused(SsrfError::ForbiddenAddress { address }))
                        if *address == refused
                ),
                "{raw}: {result:?}"
            );
        }
        assert_eq!(broker.hits(), 1);

        // A redirect to the metadata service is reported, not followed.
        let to_metadata = server(Reply::redirect(
            302,
            "http://169.254.169.254/latest/meta-data/",
        ))
        .await;
        let result = client
            .post_json(&url(&to_metadata.url("/api/v1/funds")), &json!({}))
            .await;
        assert!(
            matches!(
                result,
                Err(OutboundError::Redirected { status }) if status == StatusCode::FOUND
            ),
            "{result:?}"
        );
        assert_eq!(to_metadata.hits(), 1);

        // Nor is a redirect to a target the policy allows and that listens: it is never
        // contacted, whatever the 3xx.
        let target = server(Reply::json(json!({ "status": "success" }))).await;
        for code in [301, 302, 303, 307, 308] {
            let redirecting = server(Reply::redirect(code, &target.url("/api/v1/funds"))).await;
            let result = client
                .post_json(&url(&redirecting.url("/")), &json!({}))
                .await;
            assert!(
                matches!(
                    &result,
                    Err(OutboundError::Redirected { status }) if status.as_u16() == code
                ),
                "{code}: {result:?}"
            );
            assert_eq!(redirecting.hits(), 1, "{code}");
        }
        assert_eq!(target.hits(), 0, "a redirect target is never contacted");
    });
}

#[test]
fn private_and_metadata_addresses_are_refused_before_any_connection() {
    if !isolated("private_and_metadata_addresses_are_refused_before_any_connection") {
        return;
    }
    run(async {
        let policy = policy(true, &[]);
        let safe = client(&policy);
        let ten = ip("10.0.0.1");
        let cases = [
            ("http://10.0.0.1/", ten),
            ("http://192.168.1.1/", ip("192.168.1.1")),
            ("http://172.16.5.4/", ip("172.16.5.4")),
            ("http://169.254.169.254/", ip("169.254.169.254")),
            (
                "http://169.254.169.254/latest/meta-data/",
                ip("169.254.169.254"),
            ),
            ("http://100.64.0.1/", ip("100.64.0.1")),
            ("http://[fd00::1]/", ip("fd00::1")),
            ("http://[fd00:ec2::254]/", ip("fd00:ec2::254")),
            ("http://[fe80::1]/", ip("fe80::1")),
            ("http://[::ffff:10.0.0.1]/", ip("::ffff:10.0.0.1")),
            ("http://[64:ff9b::a00:1]/", ip("64:ff9b::a00:1")),
            ("http://0x0a000001/", ten),
            ("http://167772161/", ten),
            ("http://10.1/", ten),
            ("http://012.0.0.1/", ten),
            ("http://203.0.113.10/", ip("203.0.113.10")),
        ];
        for (raw, address) in cases {
            let started = Instant::now();
            let result = safe.post_json(&url(raw), &json!({})).await;
            assert!(
                matches!(
                    &result,
                    Err(OutboundError::Refused(SsrfError::ForbiddenAddress { address: refused }))
                        if *refused == address
                ),
                "{raw} must be refused by the policy as {address}, got {result:?}"
            );
            assert!(
                started.elapsed() < CONNECT_TIMEOUT,
                "{raw}: a refusal does not wait on the network"
            );
        }

        // The connector refuses the same targets by itself, including spellings that only
        // the system resolver would read as addresses.
        for uri in [
            "http://10.0.0.1/",
            "http://169.254.169.254/",
            "http://100.64.0.1/",
            "http://[fd00::1]/",
            "http://[::ffff:a00:1]/",
            "http://0x0a000001/",
            "http://167772161/",
            "http://10.1/",
        ] {
            let result = connect(&policy, uri).await;
            assert!(
                matches!(result, Err(ConnectError::Refused(_))),
                "{uri}: {result:?}"
            );
        }

        // The control: once a network is allowed, the same address gets a connection error
        // instead, as nothing leaves the namespace. So the refusals above are the policy's.
        let open = self::policy(true, &["10.0.0.0/8", "fd00::/8"]);
        let result = client(&open)
            .post_json(&url("http://10.0.0.1/"), &json!({}))
            .await;
        assert!(
            matches!(result, Err(OutboundError::Unreachable)),
            "10.0.0.1 once allowed: {result:?}"
        );
        let result = connect(&open, "http://[fd00::1]/").await;
        assert!(
            matches!(result, Err(ConnectError::Unreachable { .. })),
            "fd00::1 once allowed: {result:?}"
        );
    });
}

#[test]
fn a_public_address_is_dialed_and_fails_only_because_nothing_leaves_the_namespace() {
    if !isolated("a_public_address_is_dialed_and_fails_only_because_nothing_leaves_the_namespace") {
        return;
    }
    run(async {
        // TEST-NET ranges are not public to the policy, so real public addresses are used;
        // only here, with no route off the machine, may anything try to reach them.
        assert!(!is_public(ip("203.0.113.10")));
        let policy = policy(true, &[]);
        let client = client(&policy);
        for raw in [
            "http://[2606:4700::1111]/",
            "https://[2606:4700::1111]/api/v1/funds",
            "http://1.1.1.1/",
            "https://1.1.1.1/",
        ] {
            let target = url(raw);
            let host: IpAddr = match target.host().expect("a host") {
                url::Host::Ipv4(ip) => IpAddr::V4(ip),
                url::Host::Ipv6(ip) => IpAddr::V6(ip),
                url::Host::Domain(_) => unreachable!("literal addresses only"),
            };
            assert!(is_public(host), "{host} must be public for this test");
            assert_eq!(policy.check_url(raw), Ok(target.clone()), "{raw}");

            let started = Instant::now();
            let result = client.post_json(&target, &json!({})).await;
            assert!(
                matches!(result, Err(OutboundError::Unreachable)),
                "{raw}: the policy lets it through, so only the connection may fail: {result:?}"
            );
            assert!(
                started.elapsed() < CONNECT_TIMEOUT,
                "{raw}: with no route the connection fails at once"
            );
        }
        for uri in ["http://[2606:4700::1111]/", "https://1.1.1.1/"] {
            let result = connect(&policy, uri).await;
            assert!(
                matches!(
                    result,
                    Err(ConnectError::Unreachable {
                        kind: std::io::ErrorKind::NetworkUnreachable
                    })
                ),
                "{uri}: {result:?}"
            );
        }
    });
}

// ---------------------------------------------------------------------------------------
// Through the gateway
// ---------------------------------------------------------------------------------------

/// A gateway on 127.0.0.1 with its SQLite file in `data_dir`.
struct Gateway {
    address: String,
    client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// A temporary directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("rampart-netns-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn gateway(data_dir: &Path, keys: &str, settings: &[(&str, &str)]) -> Gateway {
    let database = format!("sqlite://{}", data_dir.join("rampart.db").display());
    let mut env: HashMap<String, String> = [
        ("RAMPART_SERVER__LISTEN", "127.0.0.1:0"),
        ("RAMPART_DATABASE__URL", database.as_str()),
        ("RAMPART_ENCRYPTION__KEYS", keys),
        ("RAMPART_RATE_LIMITS__ANONYMOUS", "100000/min"),
        ("RAMPART_RATE_LIMITS__STANDARD", "100000/min"),
        ("RAMPART_RATE_LIMITS__PREMIUM", "100000/min"),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value.to_owned()))
    .collect();
    env.extend(
        settings
            .iter()
            .map(|&(key, value)| (key.to_owned(), value.to_owned())),
    );
    let config = Config::load(&Sources {
        file_path: None,
        file: None,
        env,
        data_dir: Some(data_dir.to_path_buf()),
    })
    .expect("test configuration is valid");
    let app = Application::build_with(
        config,
        BuildOptions {
            max_db_connections: 4,
            broker_timeout: REQUEST_TIMEOUT,
            ..BuildOptions::default()
        },
    )
    .await
    .expect("gateway starts");
    let address = format!("http://{}", app.local_addr().expect("bound"));
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));
    Gateway {
        address,
        client: plain_client(),
        shutdown: Some(shutdown),
    }
}

impl Gateway {
    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("the gateway answers")
    }

    async fn login(&self, username: &str) -> String {
        let response = self
            .send(
                Method::POST,
                "/auth/login",
                None,
                Some(json!({ "username": username, "password": STRONG_PASSWORD })),
            )
            .await;
        assert_eq!(response.status(), 200, "logging in {username}");
        let body: Value = response.json().await.expect("json");
        body["access_token"]
            .as_str()
            .expect("an access token")
            .to_owned()
    }

    /// Registers `username` and returns an access token.
    async fn user(&self, username: &str) -> String {
        let response = self
            .send(
                Method::POST,
                "/auth/register",
                None,
                Some(json!({
                    "username": username,
                    "email": format!("{username}@example.com"),
                    "password": STRONG_PASSWORD,
                })),
            )
            .await;
        assert_eq!(response.status(), 201, "registering {username}");
        self.login(username).await
    }

    async fn add_account(&self, token: &str, host_url: &str, api_key: &str) -> reqwest::Response {
        self.send(
            Method::POST,
            "/accounts",
            Some(token),
            Some(json!({
                "name": "Main", "broker": "zerodha", "host_url": host_url, "api_key": api_key,
            })),
        )
        .await
    }

    async fn accounts(&self, token: &str) -> Value {
        let response = self.send(Method::GET, "/accounts", Some(token), None).await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("json")
    }
}

/// Asserts a 400 that names `host_url`, and returns its messages.
async fn host_url_refused(response: reqwest::Response, host_url: &str) -> String {
    assert_eq!(response.status(), 400, "{host_url}");
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"], "invalid_request", "{host_url}: {body}");
    let messages = body["fields"]["host_url"]
        .as_array()
        .unwrap_or_else(|| panic!("{host_url}: no fields.host_url in {body}"));
    assert!(!messages.is_empty(), "{host_url}: {body}");
    Value::Array(messages.clone()).to_string()
}

fn funds_broker_reply() -> Reply {
    Reply::json(json!({ "status": "success", "data": { "availablecash": "1" } }))
}

#[test]
fn the_gateway_refuses_loopback_host_urls_under_its_default_policy() {
    if !isolated("the_gateway_refuses_loopback_host_urls_under_its_default_policy") {
        return;
    }
    run(async {
        let broker = server(funds_broker_reply()).await;
        let port = broker.address.port();
        let keys = rampart::secrets::generate_key_entry("k1");

        let strict_dir = TempDir::new();
        let strict = gateway(&strict_dir.0, &keys, &[]).await;
        let token = strict.user("alice_1").await;
        let http = format!("http://localhost:{port}");
        let messages = host_url_refused(
            strict.add_account(&token, &http, "abcdefghijklmnop").await,
            &http,
        )
        .await;
        assert!(
            messages.contains("scheme"),
            "https only by default: {messages}"
        );
        // A loopback name, a loopback address and names that do not resolve all get one
        // message: the refusal must not tell an internal name from a missing one.
        let one_message = json!([rampart::outbound::NOT_PUBLIC]).to_string();
        for host_url in [
            format!("https://localhost:{port}"),
            format!("https://127.0.0.1:{port}"),
            format!("https://no-such-host.invalid:{port}"),
            "https://internal-db.corp.example".to_owned(),
        ] {
            let messages = host_url_refused(
                strict
                    .add_account(&token, &host_url, "abcdefghijklmnop")
                    .await,
                &host_url,
            )
            .await;
            assert_eq!(messages, one_message, "{host_url}");
        }
        assert_eq!(strict.accounts(&token).await["items"], json!([]));

        // allow_http alone does not open loopback: the refusal is the address's.
        let http_dir = TempDir::new();
        let http_only = gateway(
            &http_dir.0,
            &keys,
            &[("RAMPART_ACCOUNTS__ALLOW_HTTP", "true")],
        )
        .await;
        let token = http_only.user("alice_1").await;
        for host_url in [
            format!("http://localhost:{port}"),
            format!("http://127.0.0.1:{port}"),
            format!("http://[::1]:{port}"),
        ] {
            let messages = host_url_refused(
                http_only
                    .add_account(&token, &host_url, "abcdefghijklmnop")
                    .await,
                &host_url,
            )
            .await;
            assert_eq!(
                messages,
                json!([rampart::outbound::NOT_PUBLIC]).to_string(),
                "{host_url}"
            );
        }
        assert_eq!(http_only.accounts(&token).await["items"], json!([]));
        assert_eq!(broker.hits(), 0, "checking a host URL never calls it");
    });
}

#[test]
fn the_gateway_calls_an_allowed_loopback_broker_and_stops_once_the_policy_forbids_it() {
    if !isolated(
        "the_gateway_calls_an_allowed_loopback_broker_and_stops_once_the_policy_forbids_it",
    ) {
        return;
    }
    run(async {
        let broker = server(funds_broker_reply()).await;
        let keys = rampart::secrets::generate_key_entry("k1");
        let data_dir = TempDir::new();
        let open = gateway(
            &data_dir.0,
            &keys,
            &[
                ("RAMPART_ACCOUNTS__ALLOW_HTTP", "true"),
                ("RAMPART_ACCOUNTS__ALLOWED_NETWORKS", "127.0.0.1/32"),
            ],
        )
        .await;
        let token = open.user("alice_1").await;
        let key = "LIVEkey-0123456789abcdef";
        let created = open.add_account(&token, &broker.url(""), key).await;
        assert_eq!(created.status(), 201);
        let created: Value = created.json().await.expect("json");
        assert_eq!(created["api_key_masked"], "LIVE...cdef");
        let refresh = format!("/accounts/{}/refresh", created["id"]);
        assert_eq!(
            broker.hits(),
            0,
            "saving an account does not call the broker"
        );

        let response = open.send(Method::POST, &refresh, Some(&token), None).await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body, json!({ "data": { "availablecash": "1" } }));
        assert_eq!(
            broker.received(),
            [Received {
                method: Method::POST,
                path: "/api/v1/funds".into(),
                body: json!({ "apikey": key }),
            }],
            "the broker got the decrypted key"
        );

        // The same stored account under a policy that no longer lets loopback through:
        // checked again at call time, so the broker is not called.
        let closed = gateway(
            &data_dir.0,
            &keys,
            &[("RAMPART_ACCOUNTS__ALLOW_HTTP", "true")],
        )
        .await;
        let token = closed.login("alice_1").await;
        let response = closed
            .send(Method::POST, &refresh, Some(&token), None)
            .await;
        assert_eq!(response.status(), 502);
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], "bad_gateway", "{body}");
        assert_eq!(
            broker.hits(),
            1,
            "the forbidden broker was not called again"
        );
    });
}
