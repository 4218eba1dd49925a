//! `rampart check-config` and `rampart serve` judge a file by the same rules: what one
//! refuses the other refuses with the same message, and what one accepts the other runs.

// Test code: a failed unwrap is a failed test, helpers included.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "rampart-check-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `rampart --config <dir>/rampart.toml <subcommand>` in `dir`, without any `RAMPART_`
/// variable of the environment the tests run in.
fn rampart(dir: &Path, subcommand: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rampart"));
    for (key, _) in std::env::vars() {
        if key.starts_with("RAMPART_") {
            command.env_remove(key);
        }
    }
    command
        .arg("--config")
        .arg(dir.join("rampart.toml"))
        .arg(subcommand)
        .current_dir(dir)
        .env("RAMPART_LOG", "info")
        .env("RAMPART_LOG__FORMAT", "json")
        .stdin(Stdio::null());
    command
}

/// A file with `body` after a `[server]` and `[database]` of its own.
fn write_config(dir: &Path, body: &str) {
    std::fs::write(
        dir.join("rampart.toml"),
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"sqlite://{}\"\n{body}\n",
            dir.join("rampart.db").display()
        ),
    )
    .unwrap();
}

/// Runs `rampart serve` on a file it must refuse before it starts; a serve that starts
/// instead is stopped after a while, and the test fails on its exit status.
fn serve_refusing(dir: &Path) -> Output {
    let mut child = rampart(dir, "serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rampart starts");
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

#[test]
fn check_config_and_serve_refuse_the_same_files_with_the_same_message() {
    let cases: [(&str, &str, &[&str]); 8] = [
        (
            "minute_spelt_m",
            "[rate_limits]\nanonymous = \"10/m\"\n",
            &["rate_limits.anonymous: rate limit \"10/m\": unknown period; use s, min or h"],
        ),
        (
            "too_many_requests",
            "[[routes]]\npath = \"/orders\"\nupstream = \"orders\"\nrate_limit = \"2000000/s\"\n\
             [upstreams.orders]\nurl = \"http://127.0.0.1:9\"\n",
            &["routes[0] (/orders).rate_limit: rate limit \"2000000/s\": at most 1000000 requests"],
        ),
        (
            "burst_zero",
            "[[routes]]\npath = \"/orders\"\nupstream = \"orders\"\n\
             rate_limit = { rate = \"10/s\", burst = 0 }\n\
             [upstreams.orders]\nurl = \"http://127.0.0.1:9\"\n",
            &["routes[0] (/orders).rate_limit: rate limit burst 0 must be from 1 to 1000000"],
        ),
        (
            "upstream_url",
            "[upstreams.orders]\nurl = \"ftp://127.0.0.1:9\"\n",
            &["upstreams.orders.url: `ftp://127.0.0.1:9` is not an http(s) URL"],
        ),
        (
            "keyring_entry",
            "[encryption]\nkeys = [\"k1:not-base64\"]\n",
            &["encryption.keys: "],
        ),
        (
            "outbound_cidr",
            "[accounts]\nallowed_networks = [\"10.0.0.0/33\"]\n",
            &["accounts.allowed_networks: `10.0.0.0/33` is not a network"],
        ),
        (
            "unknown_key",
            "[rate_limits]\nanonymus = \"10/min\"\n",
            &["rate_limits", "anonymus"],
        ),
        (
            "every_problem_at_once",
            "[rate_limits]\nanonymous = \"10/m\"\npremium = \"2000000/min\"\n\
             [encryption]\nkeys = [\"k1:not-base64\"]\n\
             [accounts]\nallowed_networks = [\"10.0.0.0/33\"]\n\
             [[routes]]\npath = \"/orders\"\nupstream = \"orders\"\n\
             rate_limit = { rate = \"10/s\", burst = 0 }\n\
             [upstreams.orders]\nurl = \"ftp://127.0.0.1:9\"\n",
            &[
                "rate_limits.anonymous:",
                "rate_limits.premium:",
                "encryption.keys:",
                "accounts.allowed_networks:",
                "routes[0] (/orders).rate_limit:",
                "upstreams.orders.url:",
            ],
        ),
    ];
    for (name, body, expected) in cases {
        let dir = temp_dir(name);
        write_config(&dir, body);
        let checked = rampart(&dir, "check-config").output().unwrap();
        let served = serve_refusing(&dir);
        let checked_message = String::from_utf8_lossy(&checked.stderr);
        let served_message = String::from_utf8_lossy(&served.stderr);
        assert_eq!(checked.status.code(), Some(2), "{name}: {checked_message}");
        assert_eq!(served.status.code(), Some(2), "{name}: {served_message}");
        assert!(
            checked_message.starts_with("invalid configuration:"),
            "{name}: {checked_message}"
        );
        for text in expected {
            assert!(
                checked_message.contains(text),
                "{name}: {text} missing from {checked_message}"
            );
        }
        assert_eq!(checked_message, served_message, "{name}");
        assert!(
            !checked_message.contains("not-base64"),
            "{name}: a key is never echoed: {checked_message}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_good_file_passes_check_config_and_serves() {
    let dir = temp_dir("good");
    write_config(
        &dir,
        "[rate_limits]\nanonymous = \"10/min\"\nstandard = \"100/minute\"\npremium = \"10/s\"\n\
         [accounts]\nallowed_networks = [\"10.0.0.0/8\"]\n\
         [[routes]]\npath = \"/orders\"\nupstream = \"orders\"\n\
         rate_limit = { rate = \"10/s\", burst = 20 }\n\
         [[routes]]\npath = \"/positions\"\nupstream = \"orders\"\nrate_limit = \"1000000/h\"\n\
         [upstreams.orders]\nurl = \"http://127.0.0.1:9\"\n",
    );
    let checked = rampart(&dir, "check-config").output().unwrap();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(String::from_utf8_lossy(&checked.stdout).contains("configuration is valid"));

    let mut child = rampart(&dir, "serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
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
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut listening = false;
    while let Ok(line) = lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if line.contains("rampart is listening") {
            listening = true;
            break;
        }
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    assert!(
        listening,
        "serve did not start: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_problem_is_printed_with_its_file_and_line_or_its_variable() {
    let dir = temp_dir("located");
    // Lines 1–4 are write_config's own `[server]` and `[database]`.
    write_config(
        &dir,
        "[rate_limits]\nanonymus = \"10/min\"\nstandard = \"10/m\"\n\
         [upstreams.orders]\nurl = \"http://127.0.0.1:9\"\ntimout = \"5s\"\n\
         [[routes]]\npath = \"/orders\"\nupstream = \"orders\"\n\
         [[routes]]\npath = \"/positions\"\nupstream = \"orders\"\nper = \"team\"\nupstram = \"x\"\n",
    );
    let file = dir.join("rampart.toml").display().to_string();
    let expected = [
        format!("{file}:6: rate_limits.anonymus: unknown key"),
        format!("{file}:7: rate_limits.standard: rate limit \"10/m\""),
        format!("{file}:10: upstreams.orders.timout: unknown key"),
        format!("{file}:18: routes[1].upstram: unknown key"),
        format!("{file}:17: routes[1] (/positions).per: `team` is not one of"),
        "RAMPART_SERVER__LISTN: server.listn: unknown key".to_owned(),
        "RAMPART_LOGIN__FAILURE_WINDOW: login.failure_window: `soon` is not a duration".to_owned(),
    ];
    let mut checked = rampart(&dir, "check-config");
    checked
        .env("RAMPART_SERVER__LISTN", "127.0.0.1:1")
        .env("RAMPART_LOGIN__FAILURE_WINDOW", "soon");
    let checked = checked.output().unwrap();
    let message = String::from_utf8_lossy(&checked.stderr);
    assert_eq!(checked.status.code(), Some(2), "{message}");
    for text in &expected {
        assert!(
            message
                .lines()
                .any(|line| line.starts_with(&format!("  - {text}"))),
            "{text} missing from {message}"
        );
    }
    assert_eq!(message.lines().count(), 1 + expected.len(), "{message}");
    let _ = std::fs::remove_dir_all(&dir);
}
