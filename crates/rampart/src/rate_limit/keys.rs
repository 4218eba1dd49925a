//! Whose budgets a request counts against: the tier policies and the keys (client address
//! bucket, user, API key) a caller's budgets are kept under. The pipeline stage that
//! enforces them is [`crate::gateway::limit`].
//!
//! Every request counts against its caller's tier: `anonymous` per client address (an IPv6
//! client's prefix), `standard` or `premium` (the token's `tier`) per user; a request whose
//! credentials were refused is anonymous. A matched route's own `rate_limit` counts on top,
//! keyed as its `per` says, and so does an identity route's built-in limit (SPEC §3). The
//! first refusal answers 429 `rate_limited` with `Retry-After`; every limited response
//! carries `RateLimit-Policy` and `RateLimit`. Refusals are counted in
//! `rampart_rate_limit_hits_total{policy}` and audited as `rate_limit_exceeded`, one row per
//! caller and policy a minute.

use std::net::IpAddr;

use super::{Per, PolicyId};
use crate::client_ip;

/// The tier policies, registered once.
#[derive(Debug, Clone, Copy)]
pub struct Tiers {
    /// Per client IP, for requests without valid credentials.
    pub anonymous: PolicyId,
    /// Per user, tier `standard` (and any tier not named here).
    pub standard: PolicyId,
    /// Per user, tier `premium`.
    pub premium: PolicyId,
}

/// The policy names of the tiers, as they appear in headers and metrics.
pub const TIER_NAMES: [&str; 3] = ["anonymous", "standard", "premium"];

impl Tiers {
    /// Registers the three tier policies of `config`.
    ///
    /// # Errors
    /// A tier name already taken in `policies` (a programming error).
    pub fn register(
        policies: &mut super::Policies,
        config: &crate::rate_limit::RateLimitsConfig,
    ) -> Result<Self, String> {
        let mut add = |name: &str, quota: super::Quota| {
            policies.add(name, quota).map_err(|error| error.to_string())
        };
        Ok(Self {
            anonymous: add(TIER_NAMES[0], config.anonymous)?,
            standard: add(TIER_NAMES[1], config.standard)?,
            premium: add(TIER_NAMES[2], config.premium)?,
        })
    }
}

/// The keys a request's budgets count under: the client's address bucket (an IPv6 client's
/// `rate_limits.ipv6_prefix`, so that rotating through a prefix buys nothing), and the
/// user and API key when the request authenticated with them. Built in one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerKeys {
    text: String,
    ip_end: usize,
    user: Option<(usize, usize)>,
    key: Option<(usize, usize)>,
}

impl CallerKeys {
    /// The keys of a client at `ip`, authenticated as `user_id` (through the API key
    /// `api_key_id`) or anonymous.
    pub fn new(ip: IpAddr, ipv6_prefix: u8, user_id: Option<i64>, api_key_id: Option<i64>) -> Self {
        let mut text = String::with_capacity(80);
        text.push_str("ip:");
        text.push_str(&client_ip::IpText::new(client_ip::bucket(ip, ipv6_prefix)));
        let ip_end = text.len();
        let span = |text: &mut String, prefix: &str, id: Option<i64>| {
            id.map(|id| {
                let start = text.len();
                text.push_str(prefix);
                text.push(':');
                text.push_str(itoa::Buffer::new().format(id));
                (start, text.len())
            })
        };
        let user = span(&mut text, "user", user_id);
        // A key always acts for a user; without one it names no budget.
        let key = span(&mut text, "key", api_key_id.filter(|_| user.is_some()));
        Self {
            text,
            ip_end,
            user,
            key,
        }
    }

    /// The client's address bucket: `ip:<address>`.
    pub fn ip(&self) -> &str {
        &self.text[..self.ip_end]
    }

    /// The key a limit kept `per` this counts under.
    pub fn per(&self, per: Per) -> &str {
        let span = match per {
            Per::Ip => None,
            Per::User => self.user,
            Per::Key => self.key.or(self.user),
        };
        span.map_or_else(|| self.ip(), |(start, end)| &self.text[start..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_share_a_key_per_prefix() {
        let key = |address: &str, prefix: u8| {
            CallerKeys::new(ip(address), prefix, None, None)
                .ip()
                .to_owned()
        };
        assert_eq!(key("2001:db8::1", 64), "ip:2001:db8::");
        assert_eq!(key("2001:db8::1", 64), key("2001:db8::ffff:1:2:3", 64));
        assert_eq!(key("2001:db8::1", 64), key("2001:db8:0:0:8000::9", 64));
        assert_ne!(key("2001:db8::1", 64), key("2001:db8:0:1::1", 64));
        assert_eq!(key("2001:db8::1", 48), key("2001:db8:0:1::1", 48));
        assert_ne!(key("2001:db8::1", 128), key("2001:db8::2", 128));
        assert_eq!(key("198.51.100.7", 64), "ip:198.51.100.7");
        assert_ne!(key("198.51.100.7", 64), key("198.51.100.8", 64));
    }

    #[test]
    fn each_per_names_its_budget_and_falls_back_to_the_address() {
        let anonymous = CallerKeys::new(ip("2001:db8::7"), 64, None, None);
        for per in [Per::Ip, Per::User, Per::Key] {
            assert_eq!(anonymous.per(per), "ip:2001:db8::", "{per:?}");
        }
        let user = CallerKeys::new(ip("203.0.113.9"), 64, Some(42), None);
        assert_eq!(user.per(Per::Ip), "ip:203.0.113.9");
        assert_eq!(user.per(Per::User), "user:42");
        assert_eq!(user.per(Per::Key), "user:42");
        let key = CallerKeys::new(ip("203.0.113.9"), 64, Some(42), Some(7));
        assert_eq!(key.per(Per::Ip), "ip:203.0.113.9");
        assert_eq!(key.per(Per::User), "user:42");
        assert_eq!(key.per(Per::Key), "key:7");
        // A key id without a user (a refused key) names no budget of its own.
        let refused = CallerKeys::new(ip("203.0.113.9"), 64, None, Some(7));
        assert_eq!(refused.per(Per::Key), "ip:203.0.113.9");
    }
}
