//! `rampart audit export`: the trail on standard output as JSON lines or quoted CSV,
//! filtered by time, with nothing else on standard output.

// Test code: a failed unwrap is a failed test, helpers included.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn temp_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir =
        std::env::temp_dir().join(format!("rampart-cli-export-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rampart(dir: &Path, database: &str, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .current_dir(dir)
        .args(args)
        .env("RAMPART_DATABASE__URL", database)
        // Logs at info would go to standard output for other commands; an export keeps it
        // for the rows.
        .env("RAMPART_LOG__LEVEL", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Correct-Horse-Battery-9!\n")
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// RFC 4180 records: quoted fields, doubled quotes, line breaks inside quotes.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => {
                assert!(field.is_empty(), "a quote inside an unquoted field: {text}");
                quoted = true;
            }
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => panic!("unquoted character {c:?} in {text}"),
        }
    }
    assert!(!quoted && field.is_empty() && record.is_empty(), "{text}");
    records
}

#[test]
fn audit_export_streams_jsonl_and_quoted_csv_between_two_times() {
    let home = temp_dir();
    let database = format!("sqlite://{}", home.join("rampart.db").display());
    for (username, email) in [("admin_1", "a@example.com"), ("admin_2", "b@example.com")] {
        let created = rampart(
            &home,
            &database,
            &[
                "users",
                "create-admin",
                "--username",
                username,
                "--email",
                email,
            ],
        );
        stdout(&created);
    }

    let jsonl = stdout(&rampart(&home, &database, &["audit", "export"]));
    let rows: Vec<serde_json::Value> = jsonl
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    assert!(rows.len() >= 2, "{jsonl}");
    let mut last_id = 0;
    for row in &rows {
        let id = row["id"].as_i64().unwrap();
        assert!(id > last_id, "in id order: {jsonl}");
        last_id = id;
        let at = row["at"].as_str().unwrap();
        assert!(
            at.ends_with('Z') && at.contains('T') && at.len() == 20,
            "RFC 3339 UTC: {at}"
        );
        for field in ["action", "details", "request_id", "prev_hash", "hash"] {
            assert!(!row[field].is_null(), "{field} in {row}");
        }
    }

    let csv = stdout(&rampart(
        &home,
        &database,
        &["audit", "export", "--format", "csv"],
    ));
    let records = parse_csv(&csv);
    assert_eq!(
        records[0],
        [
            "id",
            "at",
            "user_id",
            "action",
            "details",
            "ip_address",
            "user_agent",
            "request_id",
            "prev_hash",
            "hash"
        ]
    );
    assert_eq!(records.len(), rows.len() + 1, "{csv}");
    for (record, row) in records[1..].iter().zip(&rows) {
        assert_eq!(record.len(), 10, "{record:?}");
        assert_eq!(record[0], row["id"].to_string());
        assert_eq!(record[1], row["at"].as_str().unwrap());
        assert_eq!(record[3], row["action"].as_str().unwrap());
        // The details are the JSON text, quotes and commas included.
        let details: serde_json::Value = serde_json::from_str(&record[4]).unwrap();
        assert_eq!(details, row["details"]);
        assert_eq!(record[9], row["hash"].as_str().unwrap());
    }

    // Bounds: RFC 3339 times or ages; `since` inclusive, `until` exclusive.
    let recent = stdout(&rampart(
        &home,
        &database,
        &["audit", "export", "--since", "1h"],
    ));
    assert_eq!(recent, jsonl);
    let future = stdout(&rampart(
        &home,
        &database,
        &["audit", "export", "--since", "2999-01-01T00:00:00Z"],
    ));
    assert_eq!(future, "");
    let past = stdout(&rampart(
        &home,
        &database,
        &[
            "audit",
            "export",
            "--format",
            "csv",
            "--until",
            "2000-01-01T00:00:00Z",
        ],
    ));
    assert_eq!(parse_csv(&past).len(), 1, "the header alone: {past}");
    let first_at = rows[0]["at"].as_str().unwrap();
    let from_first = stdout(&rampart(
        &home,
        &database,
        &["audit", "export", "--since", first_at],
    ));
    assert_eq!(from_first, jsonl, "since is inclusive");
    let before_first = stdout(&rampart(
        &home,
        &database,
        &["audit", "export", "--until", first_at],
    ));
    assert!(
        !before_first.contains(&format!("\"id\":{},", rows[0]["id"])),
        "until is exclusive"
    );

    let bad = rampart(
        &home,
        &database,
        &["audit", "export", "--since", "yesterday"],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--since"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let bad = rampart(&home, &database, &["audit", "export", "--format", "xml"]);
    assert!(!bad.status.success());
}
