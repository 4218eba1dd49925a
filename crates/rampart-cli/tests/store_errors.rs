//! A store that cannot be reached, as an operator sees it: at start-up, one message naming
//! the key and the URL (its password masked); on the request path, one log line per
//! kind of failure now and then, never a backtrace.

// Test code: a failed unwrap is a failed test, helpers included.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PASSWORD: &str = "hunter2-not-shown";

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "rampart-stores-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `rampart --config <dir>/rampart.toml serve` with `body` after a `[server]` of its own
/// (and a SQLite `[database]` unless `body` has one), backtraces asked for, without any
/// `RAMPART_` variable of the environment the tests run in.
fn serve(dir: &Path, body: &str) -> Command {
    let database = if body.contains("[database]") {
        String::new()
    } else {
        format!(
            "[database]\nurl = \"sqlite://{}\"\n",
            dir.join("rampart.db").display()
        )
    };
    std::fs::write(
        dir.join("rampart.toml"),
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{database}{body}\n"),
    )
    .unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_rampart"));
    for (key, _) in std::env::vars() {
        if key.starts_with("RAMPART_") {
            command.env_remove(key);
        }
    }
    command
        .arg("--config")
        .arg(dir.join("rampart.toml"))
        .arg("serve")
        .current_dir(dir)
        .env("RAMPART_LOG", "info")
        .env("RAMPART_LOG__FORMAT", "json")
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs a `serve` that must refuse to start; one that starts instead is stopped after a
/// while, and the test fails on its exit status.
fn refused(mut command: Command) -> Output {
    let mut child = command.spawn().expect("rampart starts");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Checks a refused start: non-zero exit, one `error:` line that starts with `expected`,
/// no password, and the cause said once.
fn assert_refused(output: &Output, expected: &str, cause: &str) {
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{message}");
    assert!(
        message.starts_with(expected),
        "{expected} is not how {message} starts"
    );
    assert_eq!(message.trim_end().lines().count(), 1, "{message}");
    assert!(
        !message.contains(PASSWORD),
        "the password is masked: {message}"
    );
    if !cause.is_empty() {
        assert_eq!(
            message.matches(cause).count(),
            1,
            "{cause} said once: {message}"
        );
    }
    let log = String::from_utf8_lossy(&output.stdout);
    assert!(!log.contains(PASSWORD), "the password is masked: {log}");
}

#[test]
fn an_unreachable_postgres_at_start_up_is_named_with_its_masked_url() {
    let dir = temp_dir("postgres");
    let port = closed_port();
    let output = refused(serve(
        &dir,
        &format!("[database]\nurl = \"postgres://rampart:{PASSWORD}@127.0.0.1:{port}/rampart\"\n"),
    ));
    assert_refused(
        &output,
        &format!(
            "error: database.url = postgres://rampart:****@127.0.0.1:{port}/rampart: \
             cannot open the database: "
        ),
        "Connection refused",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sqlite_database_that_cannot_be_created_is_named() {
    let dir = temp_dir("sqlite");
    // Under a file, where no directory can be made.
    let path = dir.join("rampart.toml").join("rampart.db");
    let output = refused(serve(
        &dir,
        &format!("[database]\nurl = \"sqlite://{}\"\n", path.display()),
    ));
    assert_refused(
        &output,
        &format!(
            "error: database.url = sqlite://{}: cannot open the database: ",
            path.display()
        ),
        "File exists",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_redis_for_tokens_at_start_up_is_named_with_its_masked_url() {
    let dir = temp_dir("tokens");
    let port = closed_port();
    let output = refused(serve(
        &dir,
        &format!("[tokens]\nstore = \"redis://:{PASSWORD}@127.0.0.1:{port}/0\"\n"),
    ));
    assert_refused(
        &output,
        &format!("error: tokens.store = redis://:****@127.0.0.1:{port}/0: cannot reach Redis: "),
        "Connection refused",
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A running `serve` and its log lines.
struct Running {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
}

impl Running {
    fn start(mut command: Command) -> Self {
        let mut child = command
            .stderr(Stdio::null())
            .spawn()
            .expect("rampart starts");
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            log: Vec::new(),
        }
    }

    /// Waits for a log line containing `text`.
    fn wait_for(&mut self, text: &str) -> Option<String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.log.push(line.clone());
            if line.contains(text) {
                return Some(line);
            }
        }
        None
    }

    /// Every line logged until the process has been quiet for half a second.
    fn settle(&mut self) -> &[String] {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
            self.log.push(line);
        }
        &self.log
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_unreachable_rate_limit_store_at_start_up_is_named_with_its_masked_url() {
    let dir = temp_dir("rate-limits");
    let port = closed_port();
    let mut running = Running::start(serve(
        &dir,
        &format!("[rate_limits]\nstore = \"redis://:{PASSWORD}@127.0.0.1:{port}/0\"\n"),
    ));
    let line = running
        .wait_for("rate-limit store unreachable at start-up")
        .expect("the unreachable store is logged");
    assert!(line.contains("rate_limits.store"), "{line}");
    assert!(
        line.contains(&format!("redis://:****@127.0.0.1:{port}/0")),
        "{line}"
    );
    running
        .wait_for("rampart is listening")
        .expect("serve starts");
    assert!(!running.settle().iter().any(|line| line.contains(PASSWORD)));
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP relay to a store, cut on demand: its open connections are closed and its port
/// stops listening.
struct Relay {
    port: u16,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(target: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let accept = std::thread::spawn({
            let stop = Arc::clone(&stop);
            let streams = Arc::clone(&streams);
            move || {
                while !stop.load(Ordering::SeqCst) {
                    let Ok((client, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    client.set_nonblocking(false).unwrap();
                    let Ok(server) = TcpStream::connect(target) else {
                        continue;
                    };
                    let mut held = streams.lock().unwrap();
                    held.push(client.try_clone().unwrap());
                    held.push(server.try_clone().unwrap());
                    for (mut from, mut to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(Shutdown::Both);
                        });
                    }
                }
            }
        });
        Self {
            port,
            stop,
            streams,
            accept: Some(accept),
        }
    }

    fn cut(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        for stream in self.streams.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// The status of a failed login, sent on a connection of its own.
fn login(address: &str) -> u16 {
    let body = r#"{"username":"nobody","password":"Whatever-Passw0rd!"}"#;
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /auth/login HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_store_down_on_the_request_path_is_logged_now_and_then_without_backtraces() {
    // The Redis the tests are given, behind a relay that can be cut.
    if TcpStream::connect("127.0.0.1:6379").is_err() {
        eprintln!("skipped: no Redis on 127.0.0.1:6379");
        return;
    }
    let mut relay = Relay::start("127.0.0.1:6379");
    let dir = temp_dir("request-path");
    let mut running = Running::start(serve(
        &dir,
        &format!(
            "[tokens]\nstore = \"redis://127.0.0.1:{}/0\"\n\
             [rate_limits]\nanonymous = \"100000/min\"\n",
            relay.port
        ),
    ));
    let listening = running
        .wait_for("rampart is listening")
        .expect("serve starts");
    let fields: serde_json::Value = serde_json::from_str(&listening).unwrap();
    let address = fields["fields"]["address"].as_str().unwrap().to_owned();
    relay.cut();
    // Ten: as many as the login limit per address lets through to the store.
    let statuses: Vec<u16> = (0..10).map(|_| login(&address)).collect();
    assert!(statuses.iter().all(|status| *status == 503), "{statuses:?}");
    let log = running.settle();
    let store_lines = log
        .iter()
        .filter(|line| line.contains("store unavailable"))
        .count();
    // Ten failures within seconds: the first is logged, the rest only counted.
    assert_eq!(store_lines, 1, "{log:#?}");
    for line in log {
        assert!(
            !line.contains("stack backtrace") && !line.contains("Stack backtrace"),
            "no backtrace: {line}"
        );
    }
    let store_line = log
        .iter()
        .find(|line| line.contains("store unavailable"))
        .unwrap();
    assert!(
        !store_line.contains("\\n") && !store_line.contains("  0: "),
        "the cause chain on one line, no frames: {store_line}"
    );
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}
