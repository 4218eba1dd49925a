//! Where configuration comes from and how the layers stack: `rampart.toml`, then `.env`,
//! then the process environment (`RAMPART_SECTION__KEY`), which wins.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{ConfigError, RawConfig};

/// Environment variables that are read by the program itself rather than mapped onto keys.
const RESERVED_VARIABLES: [&str; 3] = ["RAMPART_ENV", "RAMPART_CONFIG", "RAMPART_LOG"];

/// Where configuration comes from.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// The TOML text of `rampart.toml`, if any.
    pub file: Option<String>,
    /// Environment variables (the process environment merged over `.env`).
    pub env: HashMap<String, String>,
    /// Directory for generated secrets; `./data` by default.
    pub data_dir: Option<PathBuf>,
}

impl Sources {
    /// The sources a command-line run uses: `--config` or `RAMPART_CONFIG` (or `./rampart.toml`
    /// if present), `.env`, then the process environment, which wins.
    ///
    /// # Errors
    /// A config file that was named but cannot be read, or a malformed `.env`.
    pub fn from_process(config_path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut env: HashMap<String, String> = HashMap::new();
        if Path::new(".env").exists() {
            let entries = dotenvy::from_path_iter(".env")
                .map_err(|error| ConfigError::one(format!(".env: {error}")))?;
            for entry in entries {
                let (key, value) =
                    entry.map_err(|error| ConfigError::one(format!(".env: {error}")))?;
                env.insert(key, value);
            }
        }
        env.extend(std::env::vars());
        let named = config_path
            .map(Path::to_path_buf)
            .or_else(|| env.get("RAMPART_CONFIG").map(PathBuf::from));
        let file = match named {
            Some(path) => Some(std::fs::read_to_string(&path).map_err(|error| {
                ConfigError::one(format!("config file {}: {error}", path.display()))
            })?),
            None if Path::new("rampart.toml").exists() => Some(
                std::fs::read_to_string("rampart.toml")
                    .map_err(|error| ConfigError::one(format!("rampart.toml: {error}")))?,
            ),
            None => None,
        };
        Ok(Self {
            file,
            env,
            data_dir: None,
        })
    }
}

impl RawConfig {
    /// Parses TOML text and applies environment overrides; unknown keys are errors.
    ///
    /// # Errors
    /// Malformed TOML, unknown keys or values of the wrong type, each named.
    pub fn parse(text: &str, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text)
            .map_err(|error| ConfigError::one(format!("rampart.toml: {}", error.message())))?;
        let mut overrides: Vec<(&String, &String)> = env
            .iter()
            .filter(|(key, _)| {
                key.starts_with("RAMPART_") && !RESERVED_VARIABLES.contains(&key.as_str())
            })
            .collect();
        overrides.sort();
        let mut problems = Vec::new();
        for (key, value) in overrides {
            let path: Vec<String> = key["RAMPART_".len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            if path.len() < 2 || path.iter().any(String::is_empty) {
                // `RAMPART_SOMETHING` without a section is not a config key; it is
                // probably meant for another tool, so it is left alone.
                continue;
            }
            if let Err(problem) = set_path(&mut table, &path, env_value(value)) {
                problems.push(format!("{key}: {problem}"));
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let deserializer = toml::Value::Table(table);
        serde_path_to_error::deserialize(deserializer).map_err(|error| {
            let path = error.path().to_string();
            let inner = error.into_inner();
            ConfigError::one(format!("{path}: {}", inner.message()))
        })
    }
}

/// An environment value as a TOML value: booleans, integers, arrays and inline tables are
/// read as TOML; anything else is taken as a string, exactly as written.
fn env_value(text: &str) -> toml::Value {
    let trimmed = text.trim();
    let looks_typed = trimmed == "true"
        || trimmed == "false"
        || (!trimmed.is_empty()
            && trimmed.len() < 19
            && trimmed.bytes().all(|b| b.is_ascii_digit()))
        || trimmed.starts_with('[')
        || trimmed.starts_with('{');
    if looks_typed
        && let Ok(mut table) = toml::from_str::<toml::Table>(&format!("value = {trimmed}"))
        && let Some(value) = table.remove("value")
    {
        return value;
    }
    toml::Value::String(text.to_owned())
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().ok_or("empty key")?;
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(format!("`{part}` is not a section")),
        };
    }
    current.insert(last.clone(), value);
    Ok(())
}
