//! Timestamps as RFC 3339 text in responses; the stores keep unix seconds.

use serde::Serializer;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Unix seconds as RFC 3339 UTC text, e.g. `2026-11-22T09:00:00Z`.
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// Parses RFC 3339 text into unix seconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    OffsetDateTime::parse(text, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

/// Serde helper: unix seconds as RFC 3339.
pub fn serialize_unix<S: Serializer>(unix: &i64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339(*unix))
}

/// Serde helper: optional unix seconds as RFC 3339 or null.
pub fn serialize_unix_option<S: Serializer>(
    unix: &Option<i64>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match unix {
        Some(unix) => serializer.serialize_str(&rfc3339(*unix)),
        None => serializer.serialize_none(),
    }
}
