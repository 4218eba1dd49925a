//! The configuration loader `serve` and `check-config` use (`Config::load`), from TOML text
//! and `RAMPART_*` overrides. Whatever the input, it returns a configuration or a list of
//! problems (never an empty one, never an empty line), the same answer every time, and it
//! never panics.
//!
//! Input: TOML text; after a line `#env`, lines `SECTION__KEY=value`, each read as the
//! variable `RAMPART_SECTION__KEY`.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use rampart::config::{Config, Sources};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // `*_file` keys read the file they name: keep to files that end.
    if ["/dev", "/proc", "/sys"]
        .iter()
        .any(|dir| text.contains(dir))
    {
        return;
    }
    let (file, env_lines) = text.split_once("\n#env\n").unwrap_or((text, ""));
    let env: HashMap<String, String> = env_lines
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (format!("RAMPART_{key}"), value.to_owned()))
        .collect();
    let sources = Sources {
        file_path: None,
        file: Some(file.to_owned()),
        env,
        data_dir: Some("/nonexistent/rampart-fuzz".into()),
    };
    let first = Config::load(&sources);
    if let Err(error) = &first {
        assert!(!error.problems.is_empty(), "an error without a problem");
        assert!(
            error
                .problems
                .iter()
                .all(|problem| !problem.trim().is_empty()),
            "an empty problem: {:?}",
            error.problems
        );
    }
    let second = Config::load(&sources);
    match (&first, &second) {
        (Ok(_), Ok(_)) => {}
        (Err(a), Err(b)) => assert_eq!(a.problems, b.problems, "not deterministic"),
        _ => panic!("not deterministic: {first:?} then {second:?}"),
    }
});
