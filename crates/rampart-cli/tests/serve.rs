//! `rampart serve` as a process: signals and operating-system limits.

// Test code: a failed unwrap is a failed test, helpers included.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A running `rampart serve` and the log lines it writes.
struct Serve {
    child: Child,
    lines: Receiver<String>,
    address: SocketAddr,
    log: Vec<String>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!("rampart-cli-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Serve {
    /// Starts `rampart serve` in `dir` with `server` as its `[server]` section, optionally
    /// under `ulimit -n`.
    fn start(dir: &Path, server: &str, open_files: Option<u32>) -> Self {
        Self::start_under(dir, server, open_files.map(|limit| format!("-n {limit}")))
    }

    /// Starts `rampart serve` under `ulimit {ulimit}` (e.g. `-S -n 256`).
    fn start_under(dir: &Path, server: &str, ulimit: Option<String>) -> Self {
        let config = dir.join("rampart.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[database]\nurl = \"sqlite://{}\"\n",
                dir.join("rampart.db").display()
            ),
        )
        .unwrap();
        let binary = env!("CARGO_BIN_EXE_rampart");
        let mut command = match ulimit {
            Some(limit) => {
                let mut command = Command::new("sh");
                command
                    .arg("-c")
                    .arg(format!("ulimit {limit} && exec \"$0\" \"$@\""))
                    .arg(binary);
                command
            }
            None => Command::new(binary),
        };
        let mut child = command
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .current_dir(dir)
            .env("RAMPART_LOG", "info")
            .env("RAMPART_LOG__FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("rampart starts");
        // Every log line goes to stdout (SPEC §9).
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    return;
                }
            }
        });
        let mut serve = Self {
            child,
            lines,
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            log: Vec::new(),
        };
        let line = serve
            .wait_for("rampart is listening", Duration::from_secs(30))
            .expect("rampart listens");
        let fields: serde_json::Value = serde_json::from_str(&line).unwrap();
        serve.address = fields["fields"]["address"]
            .as_str()
            .expect("address logged")
            .parse()
            .unwrap();
        serve
    }

    /// Waits for a log line containing `text`.
    fn wait_for(&mut self, text: &str, patience: Duration) -> Option<String> {
        let deadline = Instant::now() + patience;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.contains(text) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Every log line written so far.
    fn drain_log(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.log.push(line);
        }
        &self.log
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }
}

fn issue(dir: &Path) -> CertificateDer<'static> {
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.join("cert.pem"), issued.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), issued.signing_key.serialize_pem()).unwrap();
    issued.cert.der().clone()
}

async fn served_certificate(
    address: SocketAddr,
    trusted: &[&CertificateDer<'static>],
) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in trusted {
        roots.add((*certificate).clone()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let stream = TcpStream::connect(address).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), stream)
        .await
        .expect("TLS handshake");
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_keeps_it_when_the_new_one_is_bad() {
    let dir = temp_dir();
    let first = issue(&dir);
    let mut serve = Serve::start(
        &dir,
        &format!(
            "tls = {{ cert = \"{}\", key = \"{}\" }}",
            dir.join("cert.pem").display(),
            dir.join("key.pem").display()
        ),
        None,
    );
    let second = issue(&dir);
    let trusted = [&first, &second];
    assert_eq!(served_certificate(serve.address, &trusted).await, first);

    serve.signal("HUP");
    serve
        .wait_for("TLS certificate reloaded", Duration::from_secs(10))
        .expect("reload logged");
    assert_eq!(served_certificate(serve.address, &trusted).await, second);

    std::fs::write(dir.join("cert.pem"), "not a certificate").unwrap();
    serve.signal("HUP");
    let line = serve
        .wait_for("TLS certificate not reloaded", Duration::from_secs(10))
        .expect("refusal logged");
    assert!(line.contains("server.tls.cert"), "{line}");
    assert_eq!(served_certificate(serve.address, &trusted).await, second);

    serve.signal("TERM");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = serve.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "stops on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}

/// The soft and hard open-file limits of a process.
fn open_file_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap();
    let mut fields = line.split_whitespace().skip(3);
    (
        fields.next().unwrap().to_owned(),
        fields.next().unwrap().to_owned(),
    )
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_soft_open_file_limit_is_raised_and_a_short_budget_is_warned_about() {
    let dir = temp_dir();
    let hard: u64 = open_file_limits(std::process::id())
        .1
        .parse()
        .unwrap_or(4096);
    let soft = 256.min(hard);
    let mut serve =
        Serve::start_under(&dir, "max_connections = 100", Some(format!("-S -n {soft}")));
    let (now_soft, now_hard) = open_file_limits(serve.child.id());
    assert_eq!(
        now_soft, now_hard,
        "the soft limit is raised to the hard one"
    );
    assert!(
        !serve
            .drain_log()
            .iter()
            .any(|line| line.contains("open-file limit (ulimit -n)")),
        "100 connections fit"
    );
    drop(serve);
    // Both limits low: 10,000 connections cannot fit, and the log says so.
    let mut serve = Serve::start_under(&dir, "max_connections = 10000", Some("-n 512".to_owned()));
    assert!(
        serve
            .drain_log()
            .iter()
            .any(|line| line.contains("open-file limit (ulimit -n)")),
        "{:?}",
        serve.log
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_tls_is_logged_and_the_server_keeps_serving() {
    let dir = temp_dir();
    let mut serve = Serve::start(&dir, "", None);
    for _ in 0..2 {
        serve.signal("HUP");
        if serve
            .wait_for("need a restart", Duration::from_secs(10))
            .is_none()
        {
            panic!(
                "SIGHUP not logged: {:?} {:?}",
                serve.child.try_wait(),
                serve.drain_log()
            );
        }
        assert!(serve.child.try_wait().unwrap().is_none(), "still running");
        let mut stream = TcpStream::connect(serve.address).await.unwrap();
        assert_eq!(healthz(&mut stream).await, Some(200));
    }
    assert!(
        serve
            .drain_log()
            .iter()
            .any(|line| line.contains("no certificate to reload"))
    );
}

async fn healthz(stream: &mut TcpStream) -> Option<u16> {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .await
        .ok()?;
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buffer.windows(4).any(|window| window == b"\r\n\r\n") {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    // The /healthz body is small: read until the JSON closes.
    while !buffer.ends_with(b"}") {
        let read = stream.read(&mut chunk).await.ok()?;
        if read == 0 {
            break;
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8_lossy(&buffer)
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_open_connections_are_served_and_accept_does_not_spin() {
    let dir = temp_dir();
    let mut serve = Serve::start(&dir, "header_read_timeout = \"30s\"", Some(96));
    let mut first = TcpStream::connect(serve.address).await.unwrap();
    assert_eq!(healthz(&mut first).await, Some(200));
    // More connections than the process has descriptors left.
    let mut flood = Vec::new();
    for _ in 0..150 {
        match TcpStream::connect(serve.address).await {
            Ok(stream) => flood.push(stream),
            Err(_) => break,
        }
    }
    serve
        .wait_for("cannot accept connections", Duration::from_secs(10))
        .expect("exhaustion logged");
    // Exhausted, the listener backs off rather than spinning on accept.
    let before = cpu_ticks(serve.child.id());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_ticks(serve.child.id()) - before;
    assert!(
        used < 30,
        "{used} ticks of CPU in one second while exhausted"
    );
    // The connection already open is still served.
    assert_eq!(healthz(&mut first).await, Some(200));
    let complaints = serve
        .drain_log()
        .iter()
        .filter(|line| line.contains("cannot accept connections"))
        .count();
    assert_eq!(complaints, 1, "logged once");
    // Once descriptors are free again, new connections are served.
    drop(flood);
    drop(first);
    let started = Instant::now();
    loop {
        let mut fresh = TcpStream::connect(serve.address).await.unwrap();
        if tokio::time::timeout(Duration::from_secs(2), healthz(&mut fresh))
            .await
            .ok()
            .flatten()
            == Some(200)
        {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "recovers");
    }
}
