//! Quotas as configuration writes them (`"50/min"`, `{ rate = "10/s", burst = 100 }`):
//! the one grammar `rampart check-config` and the limiter both use (SPEC §4, §9).

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::time::Duration;

/// The largest request count (and burst) a quota may name; beyond it a quota is a typo.
pub const MAX_REQUESTS: u32 = 1_000_000;

/// How many requests a client may make per period, and how many at once.
///
/// Written `"50/min"`, `"10/s"` or `"100/h"` ([`Quota::parse`]); the bucket then holds
/// `limit` requests. The table form `{ rate = "10/s", burst = 100 }` ([`Quota::with_burst`])
/// keeps the sustained rate but sizes the bucket to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    limit: NonZeroU32,
    period_secs: u32,
    burst: Option<NonZeroU32>,
}

/// Why a quota was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The text is not `N/s`, `N/min` or `N/h`.
    #[error("rate limit {0:?} is not of the form N/s, N/min or N/h")]
    Malformed(String),
    /// The count before the `/` is not a whole number.
    #[error("rate limit {0:?}: the request count must be a whole number")]
    NotANumber(String),
    /// The period after the `/` is not a known unit.
    #[error("rate limit {0:?}: unknown period; use s, min or h")]
    UnknownPeriod(String),
    /// A quota of zero requests would refuse every request.
    #[error("rate limit {0:?}: the request count must be at least 1")]
    ZeroRequests(String),
    /// The request count is beyond [`MAX_REQUESTS`].
    #[error("rate limit {0:?}: at most {MAX_REQUESTS} requests per period")]
    TooManyRequests(String),
    /// A period given as a duration is not a whole number of seconds from 1 s to 1 h.
    #[error("rate limit period {0:?} must be a whole number of seconds from 1s to 1h")]
    BadPeriod(Duration),
    /// The explicit burst is zero or beyond [`MAX_REQUESTS`].
    #[error("rate limit burst {0} must be from 1 to {MAX_REQUESTS}")]
    BadBurst(u32),
}

/// Cuts user text to a length fit for an error message.
pub(super) fn excerpt(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

impl Quota {
    /// Parses `"N/s"`, `"N/min"` or `"N/h"` (also `sec`, `second`, `minute`, `hour`).
    ///
    /// # Errors
    /// A [`QuotaError`] naming what is wrong: the shape, the count (zero, not a number,
    /// above [`MAX_REQUESTS`]) or the period.
    pub fn parse(text: &str) -> Result<Self, QuotaError> {
        let Some((count, unit)) = text.split_once('/') else {
            return Err(QuotaError::Malformed(excerpt(text)));
        };
        let count = count.trim();
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(QuotaError::NotANumber(excerpt(text)));
        }
        let period_secs = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "min" | "minute" => 60,
            "h" | "hour" => 3600,
            _ => return Err(QuotaError::UnknownPeriod(excerpt(text))),
        };
        // Only digits remain, so the parse fails only on overflow.
        let limit = count
            .parse::<u64>()
            .map_err(|_| QuotaError::TooManyRequests(excerpt(text)))?;
        if limit == 0 {
            return Err(QuotaError::ZeroRequests(excerpt(text)));
        }
        let limit = u32::try_from(limit)
            .ok()
            .filter(|limit| *limit <= MAX_REQUESTS)
            .and_then(NonZeroU32::new)
            .ok_or_else(|| QuotaError::TooManyRequests(excerpt(text)))?;
        Ok(Self {
            limit,
            period_secs,
            burst: None,
        })
    }

    /// The table form `{ rate = "10/s", burst = 100 }`: `rate` refills the bucket, which
    /// holds `burst` requests.
    ///
    /// # Errors
    /// A [`QuotaError`] for a bad `rate` (see [`Quota::parse`]) or a `burst` of 0 or above
    /// [`MAX_REQUESTS`].
    pub fn with_burst(rate: &str, burst: u32) -> Result<Self, QuotaError> {
        let quota = Self::parse(rate)?;
        let burst = NonZeroU32::new(burst)
            .filter(|burst| burst.get() <= MAX_REQUESTS)
            .ok_or(QuotaError::BadBurst(burst))?;
        Ok(Self {
            burst: Some(burst),
            ..quota
        })
    }

    /// `limit` requests per `period`, a whole number of seconds from 1 s to 1 h.
    ///
    /// # Errors
    /// [`QuotaError::ZeroRequests`], [`QuotaError::TooManyRequests`] or
    /// [`QuotaError::BadPeriod`].
    pub fn new(limit: u32, period: Duration) -> Result<Self, QuotaError> {
        let text = || format!("{limit}/{}s", period.as_secs());
        let limit = NonZeroU32::new(limit).ok_or_else(|| QuotaError::ZeroRequests(text()))?;
        if limit.get() > MAX_REQUESTS {
            return Err(QuotaError::TooManyRequests(text()));
        }
        if period.subsec_nanos() != 0 || !(1..=3600).contains(&period.as_secs()) {
            return Err(QuotaError::BadPeriod(period));
        }
        let period_secs =
            u32::try_from(period.as_secs()).map_err(|_| QuotaError::BadPeriod(period))?;
        Ok(Self {
            limit,
            period_secs,
            burst: None,
        })
    }

    /// Requests allowed per [`Quota::period`] in the long run.
    pub fn limit(&self) -> u32 {
        self.limit.get()
    }

    /// The period of [`Quota::limit`].
    pub fn period(&self) -> Duration {
        Duration::from_secs(u64::from(self.period_secs))
    }

    /// How many requests a full bucket allows at once: the explicit burst, else the limit.
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or(self.limit).get()
    }

    /// The time one request's worth of capacity takes to come back (`period / limit`).
    pub fn emission_interval(&self) -> Duration {
        self.period() / self.limit.get()
    }

    /// `period / limit` in `unit_nanos` units, rounded down, never 0.
    pub(super) fn interval_in(&self, unit_nanos: u64) -> u64 {
        let period = u64::from(self.period_secs) * 1_000_000_000 / unit_nanos;
        (period / u64::from(self.limit.get())).max(1)
    }
}

impl FromStr for Quota {
    type Err = QuotaError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period_secs {
            1 => "s".to_owned(),
            60 => "min".to_owned(),
            3600 => "h".to_owned(),
            secs => format!("{secs}s"),
        };
        match self.burst {
            Some(burst) => write!(f, "{}/{unit} (burst {burst})", self.limit),
            None => write!(f, "{}/{unit}", self.limit),
        }
    }
}

/// Reads a quota from configuration: either `"50/min"` or `{ rate = "10/s", burst = 100 }`.
impl<'de> serde::Deserialize<'de> for Quota {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuotaVisitor;

        impl<'de> serde::de::Visitor<'de> for QuotaVisitor {
            type Value = Quota;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a rate such as "50/min", or { rate = "10/s", burst = 100 }"#)
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Quota, E> {
                Quota::parse(text).map_err(E::custom)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Quota, A::Error> {
                use serde::de::Error;
                let mut rate: Option<String> = None;
                let mut burst: Option<u32> = None;
                while let Some(field) = map.next_key::<String>()? {
                    match field.as_str() {
                        "rate" if rate.is_none() => rate = Some(map.next_value()?),
                        "burst" if burst.is_none() => burst = Some(map.next_value()?),
                        "rate" | "burst" => {
                            return Err(A::Error::custom(format!("duplicate field `{field}`")));
                        }
                        other => return Err(A::Error::unknown_field(other, &["rate", "burst"])),
                    }
                }
                let rate = rate.ok_or_else(|| A::Error::missing_field("rate"))?;
                match burst {
                    Some(burst) => Quota::with_burst(&rate, burst),
                    None => Quota::parse(&rate),
                }
                .map_err(A::Error::custom)
            }
        }

        deserializer.deserialize_any(QuotaVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // --- Quota --------------------------------------------------------------------------------

    #[test]
    fn quota_parse_accepts_the_documented_forms() {
        let cases = [
            ("50/min", 50, 60),
            ("10/s", 10, 1),
            ("100/h", 100, 3600),
            (" 5 / min ", 5, 60),
            ("1/sec", 1, 1),
            ("2/second", 2, 1),
            ("3/minute", 3, 60),
            ("4/hour", 4, 3600),
            ("1000000/s", 1_000_000, 1),
        ];
        for (text, limit, secs) in cases {
            let quota = Quota::parse(text).unwrap_or_else(|e| panic!("{text:?} should parse: {e}"));
            assert_eq!(quota.limit(), limit, "limit of {text:?}");
            assert_eq!(
                quota.period(),
                Duration::from_secs(secs),
                "period of {text:?}"
            );
            assert_eq!(
                quota.burst(),
                limit,
                "a plain quota's burst is its limit ({text:?})"
            );
        }
    }

    #[test]
    fn quota_parse_refuses_bad_text_and_says_why() {
        let malformed = || QuotaError::Malformed(String::new());
        let not_a_number = || QuotaError::NotANumber(String::new());
        let unknown_period = || QuotaError::UnknownPeriod(String::new());
        let cases = [
            ("", malformed()),
            ("50", malformed()),
            ("50 per minute", malformed()),
            ("/min", not_a_number()),
            ("abc/min", not_a_number()),
            ("-5/min", not_a_number()),
            ("+5/min", not_a_number()),
            ("1.5/s", not_a_number()),
            ("5/m", unknown_period()),
            ("5/day", unknown_period()),
            ("5/", unknown_period()),
            ("0/min", QuotaError::ZeroRequests(String::new())),
            ("1000001/s", QuotaError::TooManyRequests(String::new())),
            (
                "99999999999999999999999/s",
                QuotaError::TooManyRequests(String::new()),
            ),
        ];
        for (text, expected) in cases {
            let error = Quota::parse(text).expect_err(text);
            assert_eq!(
                std::mem::discriminant(&error),
                std::mem::discriminant(&expected),
                "{text:?} gave {error:?}"
            );
            assert!(
                error.to_string().contains("rate limit"),
                "{error} names the setting"
            );
        }
    }

    #[test]
    fn quota_errors_quote_long_input_shortened() {
        let text = format!("{}/min", "x".repeat(500));
        let message = Quota::parse(&text).unwrap_err().to_string();
        assert!(message.len() < 150, "{message}");
    }

    #[test]
    fn quota_with_burst_sizes_the_bucket_and_refuses_zero_or_absurd_bursts() {
        let quota = Quota::with_burst("10/s", 100).unwrap();
        assert_eq!((quota.limit(), quota.burst()), (10, 100));
        assert_eq!(quota.emission_interval(), Duration::from_millis(100));
        assert_eq!(Quota::with_burst("10/s", 0), Err(QuotaError::BadBurst(0)));
        assert_eq!(
            Quota::with_burst("10/s", 1_000_001),
            Err(QuotaError::BadBurst(1_000_001))
        );
        assert!(matches!(
            Quota::with_burst("0/s", 5),
            Err(QuotaError::ZeroRequests(_))
        ));
    }

    #[test]
    fn quota_new_takes_whole_second_periods_up_to_an_hour() {
        assert_eq!(
            Quota::new(5, Duration::from_secs(60)).unwrap(),
            Quota::parse("5/min").unwrap()
        );
        assert!(Quota::new(0, Duration::from_secs(1)).is_err());
        assert!(Quota::new(5, Duration::ZERO).is_err());
        assert!(Quota::new(5, Duration::from_millis(1500)).is_err());
        assert!(Quota::new(5, Duration::from_secs(3601)).is_err());
    }

    #[test]
    fn quota_displays_as_written() {
        assert_eq!(Quota::parse("50/minute").unwrap().to_string(), "50/min");
        assert_eq!(
            Quota::with_burst("10/s", 100).unwrap().to_string(),
            "10/s (burst 100)"
        );
        assert_eq!("100/h".parse::<Quota>().unwrap().to_string(), "100/h");
    }

    #[test]
    fn quota_deserializes_from_both_config_forms() {
        #[derive(serde::Deserialize)]
        struct Route {
            rate_limit: Quota,
        }
        let plain: Route = toml::from_str(r#"rate_limit = "50/min""#).unwrap();
        assert_eq!(plain.rate_limit, Quota::parse("50/min").unwrap());
        let table: Route =
            toml::from_str(r#"rate_limit = { rate = "10/s", burst = 100 }"#).unwrap();
        assert_eq!(table.rate_limit, Quota::with_burst("10/s", 100).unwrap());
        let table: Route = toml::from_str(r#"rate_limit = { rate = "10/s" }"#).unwrap();
        assert_eq!(table.rate_limit, Quota::parse("10/s").unwrap());

        for (bad, needle) in [
            (r#"rate_limit = "0/min""#, "at least 1"),
            (r#"rate_limit = { burst = 5 }"#, "rate"),
            (r#"rate_limit = { rate = "10/s", burst = 0 }"#, "burst"),
            (r#"rate_limit = { rate = "10/s", brust = 5 }"#, "brust"),
            ("rate_limit = 5", "a rate such as"),
        ] {
            let error = toml::from_str::<Route>(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(error.to_string().contains(needle), "{bad}: {error}");
        }
    }
}
