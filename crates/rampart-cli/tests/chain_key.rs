//! The CLI keeps to the audit chain's key: run from another directory (no secrets.toml
//! there) or with another key, commands that write refuse instead of breaking the chain.

// Test code: a failed unwrap is a failed test, helpers included.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const PASSWORD: &str = "Correct-Horse-Battery-9!";

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir =
        std::env::temp_dir().join(format!("rampart-cli-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn rampart(dir: &Path, database: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_rampart"));
    command
        .current_dir(dir)
        .args(args)
        .env("RAMPART_DATABASE__URL", database)
        .env("RAMPART_LOG", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn commands_elsewhere_or_with_another_key_do_not_break_the_chain() {
    let home = temp_dir("home");
    let elsewhere = temp_dir("elsewhere");
    let database = format!("sqlite://{}", home.join("rampart.db").display());
    let created = rampart(
        &home,
        &database,
        &[],
        &[
            "users",
            "create-admin",
            "--username",
            "admin_1",
            "--email",
            "a@example.com",
        ],
    );
    assert!(created.status.success(), "{}", text(&created));
    assert!(home.join("data/secrets.toml").exists());

    let writers: [&[&str]; 3] = [
        &["audit", "purge", "--older-than", "1s"],
        &["keys", "rotate"],
        &[
            "users",
            "create-admin",
            "--username",
            "admin_2",
            "--email",
            "b@example.com",
        ],
    ];
    for args in writers {
        // From another directory: no secrets.toml there, and none is generated.
        let refused = rampart(&elsewhere, &database, &[], args);
        assert!(!refused.status.success(), "{args:?}: {}", text(&refused));
        assert!(
            text(&refused).contains("no audit.chain_key is configured"),
            "{args:?}: {}",
            text(&refused)
        );
        assert!(
            !elsewhere.join("data/secrets.toml").exists(),
            "{args:?}: no new secrets were generated"
        );
    }
    let keyed = temp_dir("keyed");
    for args in writers {
        // With another key: the sealed head does not match it.
        let other = rampart(
            &keyed,
            &database,
            &[(
                "RAMPART_AUDIT__CHAIN_KEY",
                "an0ther-Chain-key-that-is-long-enough-9f3Kq",
            )],
            args,
        );
        assert!(!other.status.success(), "{args:?}: {}", text(&other));
        assert!(
            text(&other).contains("not sealed with this audit.chain_key"),
            "{args:?}: {}",
            text(&other)
        );
    }
    let verified = rampart(&home, &database, &[], &["audit", "verify"]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(
        text(&verified).contains("audit trail intact: 1 rows"),
        "nothing was appended or purged: {}",
        text(&verified)
    );
    let _ = std::fs::remove_dir_all(&home);
    let _ = std::fs::remove_dir_all(&elsewhere);
    let _ = std::fs::remove_dir_all(&keyed);
}
