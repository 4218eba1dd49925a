//! `[audit]`: how long entries are kept, and the key of the chain's HMAC.

use std::time::Duration;

use serde::Deserialize;

use crate::secrets::Secret;
use crate::settings::{Problems, parse_duration};

/// `[audit]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAudit {
    /// How long audit rows are kept (a duration, default 365 d).
    pub retention: String,
    /// Key of the audit chain's HMAC; absent: generated into `secrets.toml`.
    pub chain_key: Option<String>,
    /// A file holding `chain_key` (a container secret); read at start-up.
    pub chain_key_file: Option<std::path::PathBuf>,
}

impl Default for RawAudit {
    fn default() -> Self {
        Self {
            retention: "365d".into(),
            chain_key: None,
            chain_key_file: None,
        }
    }
}

/// `[audit]`: the retention, and the chain key (required and strong in production).
pub fn from_raw(
    raw: RawAudit,
    production: bool,
    problems: &mut Problems,
) -> (Duration, Option<Secret>) {
    let retention = parse_duration(&raw.retention).unwrap_or_else(|message| {
        problems.add("audit.retention", message);
        Duration::from_secs(1)
    });
    if let Some(key) = &raw.chain_key
        && key.len() < 32
    {
        problems.add(
            "audit.chain_key",
            format!("must be at least 32 bytes (is {})", key.len()),
        );
    }
    if production {
        match raw.chain_key.as_deref().map(crate::secrets::weakness) {
            None => problems.add(
                "audit.chain_key",
                "RAMPART_ENV=production needs a configured key (see `rampart keygen`)",
            ),
            Some(Some(reason)) => problems.add(
                "audit.chain_key",
                format!(
                    "RAMPART_ENV=production refuses a weak key: {reason} (see `rampart keygen`)"
                ),
            ),
            Some(None) => {}
        }
    }
    (retention, raw.chain_key.map(Secret::new))
}
