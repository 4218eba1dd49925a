//! The `RateLimit-Policy`, `RateLimit` and `Retry-After` fields (SPEC §4).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Decision, Quota};

// Field syntax of draft-ietf-httpapi-ratelimit-headers-11 (May 2026), §3 and §4: each field
// is a Structured Fields List of String items with parameters, e.g.
//   RateLimit-Policy: "permin";q=50;w=60
//   RateLimit: "permin";r=49;t=2
// Several policies on one response are several items, here several field lines (§3, §4:
// a list may be split over field lines).

/// `RateLimit-Policy`: the policies that apply to the request.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: the quota currently left under each policy.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The rate-limit fields for one decision under one policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitHeaders {
    /// `"<name>";q=<limit>;w=<period secs>`, plus `;rampart-burst=<burst>` when the bucket is
    /// sized apart from the limit.
    pub policy: HeaderValue,
    /// `"<name>";r=<remaining>;t=<seconds until the bucket is full, rounded up>`.
    pub rate_limit: HeaderValue,
    /// `Retry-After` in whole seconds, rounded up and at least 1, when refused.
    pub retry_after: Option<HeaderValue>,
}

impl RateLimitHeaders {
    /// Appends the fields to `headers`, beside those of other policies of the same response.
    /// A `Retry-After` already present is kept if it asks for a longer wait.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        headers.append(RATELIMIT_POLICY, self.policy.clone());
        headers.append(RATELIMIT, self.rate_limit.clone());
        if let Some(retry_after) = &self.retry_after {
            let seconds =
                |value: &HeaderValue| value.to_str().ok().and_then(|v| v.parse::<u64>().ok());
            let longer = match headers.get(http::header::RETRY_AFTER) {
                Some(existing) => seconds(retry_after) > seconds(existing),
                None => true,
            };
            if longer {
                headers.insert(http::header::RETRY_AFTER, retry_after.clone());
            }
        }
    }
}

/// Whole seconds, rounded up.
fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

/// Seconds as a Structured Fields Integer (at most 999 999 999 999 999: some 31 million
/// years, far beyond any period a quota allows).
fn sf_seconds(seconds: u64) -> sfv::Integer {
    sfv::Integer::try_from(seconds).unwrap_or(sfv::Integer::MAX)
}

/// A policy's name as a Structured Fields String. Registered names are printable ASCII
/// already; anything else becomes `?`, so that every name has a string.
pub(super) fn sf_name(policy_name: &str) -> sfv::String {
    let printable: String = policy_name
        .chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect();
    sfv::String::from_string(printable).unwrap_or_else(|_| sfv::string_ref("invalid").to_owned())
}

fn header_value(text: String) -> HeaderValue {
    // sfv writes only printable ASCII, which every header value accepts.
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("\"invalid\""))
}

/// `RateLimit-Policy` for a policy: `"<name>";q=<limit>;w=<period>`, plus
/// `;rampart-burst=<burst>` when the bucket is sized apart from the limit. Fixed for the
/// life of the policy, so built once, at start-up.
pub(super) fn policy_field(name: &sfv::StringRef, quota: &Quota) -> HeaderValue {
    let serializer = sfv::ItemSerializer::new()
        .bare_item(name)
        .parameter(sfv::key_ref("q"), quota.limit())
        .parameter(sfv::key_ref("w"), sf_seconds(quota.period().as_secs()));
    let text = if quota.burst() == quota.limit() {
        serializer.finish()
    } else {
        serializer
            .parameter(sfv::key_ref("rampart-burst"), quota.burst())
            .finish()
    };
    header_value(text)
}

/// `RateLimit` for `decision`: `"<name>";r=<remaining>;t=<seconds until full>`. Built per
/// response into one buffer sized up front, which becomes the header value as it is.
pub(super) fn rate_limit_field(name: &sfv::StringRef, decision: &Decision) -> HeaderValue {
    // The name, its quotes and escapes, and two parameters of at most 15 digits each.
    let mut text = String::with_capacity(2 * name.as_str().len() + 40);
    let _ = sfv::ItemSerializer::with_buffer(&mut text)
        .bare_item(name)
        .parameter(sfv::key_ref("r"), decision.remaining)
        .parameter(sfv::key_ref("t"), sf_seconds(ceil_secs(decision.reset)))
        .finish();
    header_value(text)
}

pub(super) fn retry_after_field(decision: &Decision) -> Option<HeaderValue> {
    match (decision.allowed, decision.retry_after) {
        (true, _) => None,
        (false, wait) => Some(HeaderValue::from(
            ceil_secs(wait.unwrap_or(Duration::ZERO)).max(1),
        )),
    }
}

/// Builds the `RateLimit-Policy`, `RateLimit` and `Retry-After` values for `decision` under
/// the policy `policy_name` with `quota`. The limiter's own [`super::RateLimiter::headers`]
/// keeps each policy's name and `RateLimit-Policy` from start-up instead.
pub fn headers(policy_name: &str, quota: &Quota, decision: &Decision) -> RateLimitHeaders {
    let name = sf_name(policy_name);
    RateLimitHeaders {
        policy: policy_field(&name, quota),
        rate_limit: rate_limit_field(&name, decision),
        retry_after: retry_after_field(decision),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::test_support::{manual_limiter, some_decision};
    use crate::rate_limit::*;

    // --- Headers ---------------------------------------------------------------------------------

    #[tokio::test]
    async fn the_limiters_precomputed_fields_match_the_documented_format() {
        let mut policies = Policies::new();
        let id = policies
            .add("route:POST /orders", Quota::with_burst("10/s", 25).unwrap())
            .unwrap();
        let limiter = RateLimiter::memory_with_time(policies, ManualTime::new());
        for _ in 0..30 {
            let decision = limiter.check(id, "k").await.unwrap();
            let quota = limiter.quota(id).unwrap();
            assert_eq!(
                limiter.headers(id, &decision),
                Some(headers("route:POST /orders", quota, &decision))
            );
        }
    }

    #[test]
    fn headers_follow_the_ietf_draft_for_an_allowed_request() {
        let quota = Quota::parse("50/min").unwrap();
        let decision = Decision {
            allowed: true,
            limit: 50,
            remaining: 49,
            reset: Duration::from_millis(1200),
            retry_after: None,
        };
        let fields = headers("route:/orders:POST", &quota, &decision);
        assert_eq!(fields.policy, "\"route:/orders:POST\";q=50;w=60");
        assert_eq!(fields.rate_limit, "\"route:/orders:POST\";r=49;t=2");
        assert_eq!(fields.retry_after, None);
    }

    #[test]
    fn headers_of_a_refusal_carry_retry_after_rounded_up_and_at_least_one() {
        let quota = Quota::parse("10/s").unwrap();
        let mut decision = Decision {
            allowed: false,
            limit: 10,
            remaining: 0,
            reset: Duration::from_millis(1000),
            retry_after: Some(Duration::from_millis(100)),
        };
        let fields = headers("anonymous", &quota, &decision);
        assert_eq!(fields.rate_limit, "\"anonymous\";r=0;t=1");
        assert_eq!(fields.retry_after, Some(HeaderValue::from_static("1")));
        decision.retry_after = Some(Duration::from_millis(12_001));
        assert_eq!(
            headers("anonymous", &quota, &decision).retry_after,
            Some(HeaderValue::from_static("13"))
        );
        decision.retry_after = Some(Duration::ZERO);
        assert_eq!(
            headers("anonymous", &quota, &decision).retry_after,
            Some(HeaderValue::from_static("1"))
        );
    }

    #[test]
    fn headers_name_an_explicit_burst_with_a_vendor_parameter() {
        let quota = Quota::with_burst("10/s", 100).unwrap();
        let fields = headers("premium", &quota, &some_decision());
        assert_eq!(fields.policy, "\"premium\";q=10;w=1;rampart-burst=100");
    }

    #[test]
    fn headers_escape_names_as_structured_field_strings() {
        let quota = Quota::parse("1/h").unwrap();
        let fields = headers("a\"b\\c\u{e9}\n", &quota, &some_decision());
        assert_eq!(fields.policy, r#""a\"b\\c??";q=1;w=3600"#);
    }

    #[test]
    fn several_policies_share_the_fields_and_the_longest_retry_after_wins() {
        let mut map = HeaderMap::new();
        let refused = |secs| Decision {
            allowed: false,
            limit: 5,
            remaining: 0,
            reset: Duration::from_secs(60),
            retry_after: Some(Duration::from_secs(secs)),
        };
        headers("standard", &Quota::parse("100/min").unwrap(), &refused(30)).append_to(&mut map);
        headers(
            "route:/orders:POST",
            &Quota::parse("5/min").unwrap(),
            &refused(12),
        )
        .append_to(&mut map);
        assert_eq!(map.get_all(RATELIMIT_POLICY).iter().count(), 2);
        assert_eq!(map.get_all(RATELIMIT).iter().count(), 2);
        assert_eq!(map.get(http::header::RETRY_AFTER).unwrap(), "30");
    }

    #[tokio::test]
    async fn the_limiter_builds_headers_from_its_own_policies() {
        let (limiter, id, _) = manual_limiter("5/min");
        let decision = limiter.check(id, "k").await.unwrap();
        let fields = limiter.headers(id, &decision).unwrap();
        assert_eq!(fields.policy, "\"test\";q=5;w=60");
        assert_eq!(fields.rate_limit, "\"test\";r=4;t=12");
    }
}
