//! Where configuration comes from and how the layers stack: `rampart.toml`, then `.env`,
//! then the process environment (`RAMPART_SECTION__KEY`), which wins.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::{ConfigError, Problems, RawConfig};

/// Environment variables that are read by the program itself rather than mapped onto keys.
const RESERVED_VARIABLES: [&str; 3] = ["RAMPART_ENV", "RAMPART_CONFIG", "RAMPART_LOG"];

/// Where configuration comes from.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// The TOML text of `rampart.toml`, if any.
    pub file: Option<String>,
    /// Where that text was read from, as problems name it (`rampart.toml:12: …`);
    /// `rampart.toml` when not given.
    pub file_path: Option<PathBuf>,
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
        let file_path = named.or_else(|| {
            let default = PathBuf::from("rampart.toml");
            default.exists().then_some(default)
        });
        let file = match &file_path {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|error| {
                ConfigError::one(format!("config file {}: {error}", path.display()))
            })?),
            None => None,
        };
        Ok(Self {
            file,
            file_path,
            env,
            data_dir: None,
        })
    }
}

impl RawConfig {
    /// Parses TOML text and applies environment overrides; unknown keys are errors.
    ///
    /// # Errors
    /// Malformed TOML, unknown keys or values of the wrong type, every one named.
    pub fn parse(text: &str, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let layered = Layered::new(text, env, "rampart.toml")?;
        let mut problems = Problems::default();
        let (raw, _) = layered.deserialize(&mut problems);
        match raw {
            Some(raw) => problems.into_result(raw),
            None => Err(problems
                .into_result(())
                .err()
                .unwrap_or_else(|| ConfigError::one("the configuration cannot be read"))),
        }
    }
}

/// Deserialisation is retried without the key it stopped at, so that every unknown key
/// and value of the wrong type is found in one run; this bounds the retries.
const MAX_ROUNDS: usize = 256;

/// One step of a key's path: a table key or an index into an array (of tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// `name` in `section.name`.
    Key(String),
    /// `0` in `routes[0]`.
    Index(usize),
}

/// The file and the environment stacked into one table, remembering where each part
/// came from so that a problem can say where its key was set.
#[derive(Debug)]
pub(crate) struct Layered<'a> {
    /// The file's text and what to call it in messages.
    text: &'a str,
    label: String,
    /// The file with the overrides applied.
    table: toml::Table,
    /// The path each environment override set, and the variable that set it.
    overrides: Vec<(Vec<Step>, String)>,
}

impl<'a> Layered<'a> {
    /// Parses `text` (called `label` in messages) and applies the `RAMPART_SECTION__KEY`
    /// variables of `env` over it.
    ///
    /// # Errors
    /// Malformed TOML, with its line, or overrides that cannot be applied, each named by
    /// its variable.
    pub(crate) fn new(
        text: &'a str,
        env: &HashMap<String, String>,
        label: &str,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|error| {
            let place = match error.span() {
                Some(span) => format!("{label}:{}", line_of(text, span.start)),
                None => label.to_owned(),
            };
            ConfigError::one(format!("{place}: {}", error.message().trim_end()))
        })?;
        let mut variables: Vec<(&String, &String)> = env
            .iter()
            .filter(|(key, _)| {
                key.starts_with("RAMPART_") && !RESERVED_VARIABLES.contains(&key.as_str())
            })
            .collect();
        variables.sort();
        let mut problems = Vec::new();
        let mut overrides = Vec::new();
        for (key, value) in variables {
            let path: Vec<String> = key["RAMPART_".len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect();
            if path.len() < 2 || path.iter().any(String::is_empty) {
                // `RAMPART_SOMETHING` without a section is not a config key; it is
                // probably meant for another tool, so it is left alone.
                continue;
            }
            match set_path(&mut table, &path, env_value(value)) {
                Ok(()) => overrides.push((path.into_iter().map(Step::Key).collect(), key.clone())),
                Err(problem) => problems.push(format!("{key}: {problem}")),
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(Self {
            text,
            label: label.to_owned(),
            table,
            overrides,
        })
    }

    /// The layered configuration, every unknown key and value of the wrong type added to
    /// `problems`. Each is taken out and the rest read again, so one run finds them all;
    /// `None` when what is left still cannot be read (a required key is missing). Also
    /// returns the paths taken out: a later check of the same key only repeats the problem.
    pub(crate) fn deserialize(
        &self,
        problems: &mut Problems,
    ) -> (Option<RawConfig>, Vec<Vec<Step>>) {
        let mut table = self.table.clone();
        let mut removed: Vec<Vec<Step>> = Vec::new();
        for _ in 0..MAX_ROUNDS {
            let error = match serde_path_to_error::deserialize(toml::Value::Table(table.clone())) {
                Ok(raw) => return (Some(raw), removed),
                Err(error) => error,
            };
            let steps = path_steps(error.path());
            let message = error.into_inner().message().trim_end().to_owned();
            // A required key reported missing because its wrong value was taken out.
            let consequence = message.starts_with("missing field")
                && removed.iter().any(|path| path.starts_with(&steps));
            if consequence {
                return (None, removed);
            }
            problems.add(&key_text(&steps), tidy_message(&message));
            if !remove_path(&mut table, &steps) {
                return (None, removed);
            }
            removed.push(steps);
        }
        (None, removed)
    }

    /// Where the key `key` (as problems name it: `server.listen`,
    /// `routes[0] (/orders).rate_limit`) was set: the environment variable that set it or
    /// a table above it, else `file:line` of the key in the file, or of the nearest table
    /// above it that the file has. `None` when neither mentions it.
    pub(crate) fn locate(&self, key: &str) -> Option<String> {
        let steps = key_steps(key);
        if let Some((_, variable)) = self
            .overrides
            .iter()
            .find(|(path, _)| steps.starts_with(path))
        {
            return Some(variable.clone());
        }
        let document = toml::de::DeTable::parse(self.text).ok()?;
        let mut table = document.get_ref();
        let mut value: Option<&toml::Spanned<toml::de::DeValue<'_>>> = None;
        let mut offset = None;
        for step in &steps {
            let next = match (step, value.map(toml::Spanned::get_ref)) {
                (Step::Key(name), None) => table
                    .get_key_value(name.as_str())
                    .map(|(k, v)| (k.span(), v)),
                (Step::Key(name), Some(toml::de::DeValue::Table(inner))) => {
                    table = inner;
                    table
                        .get_key_value(name.as_str())
                        .map(|(k, v)| (k.span(), v))
                }
                (Step::Index(index), Some(toml::de::DeValue::Array(items))) => {
                    items.get(*index).map(|item| (item.span(), item))
                }
                _ => None,
            };
            let Some((span, next)) = next else { break };
            offset = Some(span.start);
            value = Some(next);
        }
        // A key the file never sets may still come from an override of a table below it.
        if offset.is_none()
            && let Some((_, variable)) = self
                .overrides
                .iter()
                .find(|(path, _)| path.starts_with(&steps))
        {
            return Some(variable.clone());
        }
        offset.map(|offset| format!("{}:{}", self.label, line_of(self.text, offset)))
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .unwrap_or(text)
        .bytes()
        .filter(|byte| *byte == b'\n')
        .count()
        + 1
}

/// The steps of a problem key as written in messages; notes in parentheses (a route's
/// path) are dropped.
pub(crate) fn key_steps(key: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut current = String::new();
    let mut depth = 0usize;
    let mut index: Option<String> = None;
    let flush = |current: &mut String, steps: &mut Vec<Step>| {
        let name = current.trim();
        if !name.is_empty() {
            steps.push(Step::Key(name.to_owned()));
        }
        current.clear();
    };
    for c in key.chars() {
        match (c, depth, index.as_mut()) {
            ('(', _, None) => depth += 1,
            (')', 1.., None) => depth -= 1,
            (_, 1.., None) => {}
            (']', 0, Some(digits)) => {
                if let Ok(number) = digits.parse() {
                    steps.push(Step::Index(number));
                }
                index = None;
            }
            (_, 0, Some(digits)) => digits.push(c),
            ('[', 0, None) => {
                flush(&mut current, &mut steps);
                index = Some(String::new());
            }
            ('.', 0, None) => flush(&mut current, &mut steps),
            _ => current.push(c),
        }
    }
    flush(&mut current, &mut steps);
    steps
}

/// A serde path as steps.
fn path_steps(path: &serde_path_to_error::Path) -> Vec<Step> {
    path.iter()
        .filter_map(|segment| match segment {
            serde_path_to_error::Segment::Seq { index } => Some(Step::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Step::Key(key.clone())),
            _ => None,
        })
        .collect()
}

/// Steps written as a key: `routes[0].rate_limit`.
fn key_text(steps: &[Step]) -> String {
    let mut text = String::new();
    for step in steps {
        match step {
            Step::Key(name) => {
                if !text.is_empty() {
                    text.push('.');
                }
                text.push_str(name);
            }
            Step::Index(index) => text.push_str(&format!("[{index}]")),
        }
    }
    text
}

/// serde's wording in the file's terms: a key, not a field.
fn tidy_message(message: &str) -> String {
    match message.strip_prefix("unknown field `") {
        Some(rest) => {
            let rest = rest.split_once('`').map_or("", |(_, rest)| rest);
            format!("unknown key{rest}")
        }
        None => message.to_owned(),
    }
}

/// Takes the value at `steps` out of `table`; `false` when it is not a key of a table
/// (an array's element is kept, so that the indices of the others still hold).
fn remove_path(table: &mut toml::Table, steps: &[Step]) -> bool {
    match steps {
        [Step::Key(last)] => table.remove(last).is_some(),
        [Step::Key(first), rest @ ..] => table
            .get_mut(first)
            .is_some_and(|value| remove_below(value, rest)),
        _ => false,
    }
}

/// [`remove_path`] below `value`.
fn remove_below(value: &mut toml::Value, steps: &[Step]) -> bool {
    match (value, steps) {
        (toml::Value::Table(table), [Step::Key(_), ..]) => remove_path(table, steps),
        (toml::Value::Array(items), [Step::Index(index), rest @ ..]) => items
            .get_mut(*index)
            .is_some_and(|item| remove_below(item, rest)),
        _ => false,
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
