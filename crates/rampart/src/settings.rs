//! The vocabulary every configuration section is checked in: the [`Problems`] found so
//! far (all reported at once, as [`ConfigError`]), lists that may come from the environment
//! as one comma-separated string, durations (`30s`, `5min`, `1h`, `7d`), sizes (`64KiB`,
//! `1MiB`) and networks (`10.0.0.0/8`). Each module that owns a section (`routes`,
//! `proxy`, `tokens`, …) checks it with these; [`crate::config`] gathers the sections.

use std::fmt;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};

/// Everything that stops start-up: one line per problem, each naming its key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    /// One entry per invalid key.
    pub problems: Vec<String>,
}

impl ConfigError {
    pub(crate) fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

/// The problems found so far, each a key and what is wrong with it; every section adds its
/// own. [`crate::config::Config::load`] renders them with where each key was set.
#[derive(Debug, Default)]
pub struct Problems(Vec<(String, String)>);

impl Problems {
    /// Records that `key` is wrong, and why.
    pub fn add(&mut self, key: &str, message: impl fmt::Display) {
        self.0.push((key.to_owned(), message.to_string()));
    }

    /// Whether nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds every problem of `other`.
    pub(crate) fn extend(&mut self, other: Problems) {
        self.0.extend(other.0);
    }

    /// Drops the problems whose key `keep` refuses.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.0.retain(|(key, _)| keep(key));
    }

    /// `Ok(value)` when nothing is wrong, else every problem.
    ///
    /// # Errors
    /// The [`ConfigError`] listing every problem.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigError> {
        self.into_located(value, |_| None)
    }

    /// Like [`Problems::into_result`], each problem led by where its key was set
    /// (`rampart.toml:12`, `RAMPART_SERVER__LISTEN`) when `locate` knows.
    ///
    /// # Errors
    /// The [`ConfigError`] listing every problem.
    pub(crate) fn into_located<T>(
        self,
        value: T,
        locate: impl Fn(&str) -> Option<String>,
    ) -> Result<T, ConfigError> {
        if self.0.is_empty() {
            return Ok(value);
        }
        let problems = self
            .0
            .into_iter()
            .map(|(key, message)| match locate(&key) {
                Some(place) => format!("{place}: {key}: {message}"),
                None => format!("{key}: {message}"),
            })
            .collect();
        Err(ConfigError { problems })
    }
}

/// A list given either as a TOML array or, from the environment, as one comma-separated string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct List(pub Vec<String>);

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        Ok(match OneOrMany::deserialize(deserializer)? {
            OneOrMany::One(text) => List(
                text.split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            OneOrMany::Many(items) => List(items),
        })
    }
}

/// Parses a duration such as `250ms`, `30s`, `5min`, `1h`, `7d`.
///
/// # Errors
/// A message naming the text when it is not a positive duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration such as 30s, 5min, 1h or 7d");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let seconds_per = match unit {
        "ms" => {
            if number / 1000 > 100 * 365 * 86_400 {
                return Err(format!("`{text}` is longer than a hundred years"));
            }
            return positive(Duration::from_millis(number), text);
        }
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let seconds = number.checked_mul(seconds_per).ok_or_else(bad)?;
    if seconds > 100 * 365 * 86_400 {
        return Err(format!("`{text}` is longer than a hundred years"));
    }
    positive(Duration::from_secs(seconds), text)
}

fn positive(duration: Duration, text: &str) -> Result<Duration, String> {
    if duration.is_zero() {
        Err(format!("`{text}` must be longer than zero"))
    } else {
        Ok(duration)
    }
}

/// Parses a size such as `512B`, `64KiB`, `1MiB`, `1GiB` (also `KB`/`MB`, decimal).
///
/// # Errors
/// A message naming the text when it is not a size.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let bad = || format!("`{text}` is not a size such as 64KiB or 1MiB");
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number.parse().map_err(|_| bad())?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(bad()),
    };
    let size = number.checked_mul(factor).ok_or_else(bad)?;
    if size == 0 {
        return Err(format!("`{text}` must be larger than zero"));
    }
    Ok(size)
}

/// Parses CIDRs (or single addresses) such as `10.0.0.0/8`.
///
/// # Errors
/// A message naming the first entry that is not a network.
pub fn parse_networks(items: &[String]) -> Result<Vec<IpNet>, String> {
    items
        .iter()
        .map(|item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("`{item}` is not a network such as 10.0.0.0/8"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5min"), Ok(Duration::from_secs(300)));
        for bad in [
            "",
            "s",
            "10",
            "-1s",
            "1 s",
            "0s",
            "1w",
            "99999999999999999999d",
            "18446744073709551615ms",
            "3153600001000ms",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("1MiB"), Ok(1_048_576));
        for bad in ["", "KiB", "0B", "1TiB", "-1B"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
