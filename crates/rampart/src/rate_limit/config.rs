//! `[rate_limits]`: the tiers' quotas, the store and what happens when it fails.

use serde::Deserialize;

use super::{OnStoreError, Quota};
use crate::settings::Problems;

/// `[rate_limits]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRateLimits {
    /// `memory` (per instance) or a `redis://` URL (shared).
    pub store: String,
    /// When Redis does not answer: `local` (count in memory) or `deny` (429).
    pub on_store_error: String,
    /// The quota of callers without a credential, per client address.
    pub anonymous: String,
    /// The quota of the standard tier, per user.
    pub standard: String,
    /// The quota of the premium tier, per user.
    pub premium: String,
    /// How many leading bits of an IPv6 address count as one client.
    pub ipv6_prefix: u8,
}

impl Default for RawRateLimits {
    fn default() -> Self {
        Self {
            store: "memory".into(),
            on_store_error: "local".into(),
            anonymous: "10/min".into(),
            standard: "100/min".into(),
            premium: "1000/min".into(),
            ipv6_prefix: 64,
        }
    }
}

/// Rate-limit settings, each quota parsed by [`Quota::parse`], the one quota grammar the
/// limiter enforces.
#[derive(Debug, Clone)]
pub struct RateLimitsConfig {
    /// `None` for memory, or a Redis URL.
    pub redis_url: Option<String>,
    /// Behaviour when Redis fails.
    pub on_store_error: OnStoreError,
    /// Quota for anonymous clients, per IP.
    pub anonymous: Quota,
    /// Quota for standard-tier users.
    pub standard: Quota,
    /// Quota for premium-tier users.
    pub premium: Quota,
    /// IPv6 clients are limited and locked out per prefix of this length.
    pub ipv6_prefix: u8,
}

impl RateLimitsConfig {
    /// Checks `[rate_limits]`, adding every problem to `problems`.
    pub fn from_raw(raw: RawRateLimits, problems: &mut Problems) -> Self {
        let redis_url = match raw.store.as_str() {
            "memory" => None,
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                Some(url.to_owned())
            }
            _ => {
                problems.add("rate_limits.store", "must be \"memory\" or a redis:// URL");
                None
            }
        };
        let on_store_error = match raw.on_store_error.as_str() {
            "local" => OnStoreError::Local,
            "deny" => OnStoreError::Deny,
            other => {
                problems.add(
                    "rate_limits.on_store_error",
                    format!("`{other}` is not one of local, deny"),
                );
                OnStoreError::Local
            }
        };
        if !(32..=128).contains(&raw.ipv6_prefix) {
            problems.add("rate_limits.ipv6_prefix", "must be between 32 and 128");
        }
        let mut tier = |key: &str, text: &str| {
            Quota::parse(text).unwrap_or_else(|error| {
                problems.add(key, error);
                Quota::new(1, std::time::Duration::from_secs(1)).expect("a valid quota")
            })
        };
        Self {
            redis_url,
            on_store_error,
            anonymous: tier("rate_limits.anonymous", &raw.anonymous),
            standard: tier("rate_limits.standard", &raw.standard),
            premium: tier("rate_limits.premium", &raw.premium),
            ipv6_prefix: raw.ipv6_prefix,
        }
    }
}
