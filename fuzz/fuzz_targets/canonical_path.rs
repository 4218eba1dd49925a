//! The canonical form of a request path (`rampart::routes::path::canonical`), which routes
//! are matched on and backends receive. Beyond not panicking, an accepted path's form must
//! be a fixed point, and no reader, however eagerly it decodes, may see another segment
//! structure in it: no empty or dot segment, no encoded separator, no double encoding.
#![no_main]

use std::borrow::Cow;

use http::uri::PathAndQuery;
use libfuzzer_sys::fuzz_target;
use rampart::routes::path::canonical;

fn hex_value(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).map(|digit| digit as u8)
}

/// Decodes every escape, as the most eager backend would.
fn decode_fully(path: &str) -> Vec<u8> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%'
            && let (Some(high), Some(low)) = (
                bytes.get(index + 1).copied().and_then(hex_value),
                bytes.get(index + 2).copied().and_then(hex_value),
            )
        {
            out.push(high << 4 | low);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    out
}

fn check(path: &str) {
    let Ok(form) = canonical(path) else {
        return;
    };
    if let Cow::Borrowed(same) = &form {
        assert_eq!(*same, path, "a borrowed form is the path itself");
    }
    // A fixed point: the form is canonical already, and returned as it is.
    assert!(
        matches!(canonical(&form), Ok(Cow::Borrowed(again)) if again == &*form),
        "{path:?} -> {form:?} is not its own canonical form: {:?}",
        canonical(&form)
    );
    // Plain visible ASCII, absolute, no empty or dot segment.
    assert!(form.starts_with('/'), "{path:?} -> {form:?}");
    assert!(
        form.bytes().all(|b| b.is_ascii_graphic()),
        "{path:?} -> {form:?}"
    );
    for bad in ["//", "/./", "/../", "\\", ";", "?", "#"] {
        assert!(!form.contains(bad), "{path:?} -> {form:?} contains {bad:?}");
    }
    assert!(
        !form.ends_with("/.") && !form.ends_with("/.."),
        "{path:?} -> {form:?}"
    );
    // Escapes left are upper-case and only for characters that must stay encoded: never
    // an unreserved character (a dot among them), a separator, `;` or `%` before hex.
    let bytes = form.as_bytes();
    for (index, _) in form.match_indices('%') {
        let (high, low) = (bytes[index + 1], bytes[index + 2]);
        assert!(
            [high, low]
                .iter()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)),
            "{path:?} -> {form:?}: lower-case escape"
        );
        let value = hex_value(high).unwrap_or(0) << 4 | hex_value(low).unwrap_or(0);
        assert!(
            !(value.is_ascii_alphanumeric() || b"-._~/\\;".contains(&value)),
            "{path:?} -> {form:?}: %{value:02X} left encoded"
        );
        if value == b'%' {
            assert!(
                !(bytes
                    .get(index + 3)
                    .copied()
                    .is_some_and(|b| hex_value(b).is_some())
                    && bytes
                        .get(index + 4)
                        .copied()
                        .is_some_and(|b| hex_value(b).is_some())),
                "{path:?} -> {form:?}: double encoding"
            );
        }
    }
    // A backend that decodes once more sees the same segments, and none of them a dot.
    let decoded = decode_fully(&form);
    assert_eq!(
        decoded.iter().filter(|b| **b == b'/').count(),
        form.matches('/').count(),
        "{path:?} -> {form:?}: decoding adds a separator"
    );
    assert!(
        decoded
            .iter()
            .all(|b| b.is_ascii() && !b.is_ascii_control() && !b"\\;".contains(b)),
        "{path:?} -> {form:?}"
    );
    assert!(
        !decoded
            .split(|b| *b == b'/')
            .any(|segment| segment == b"." || segment == b".."),
        "{path:?} -> {form:?}: a dot segment after decoding"
    );
    // What the route stage does with it: the form and the query as sent make a target.
    let target: PathAndQuery = format!("{form}?x=1")
        .parse()
        .unwrap_or_else(|error| panic!("{path:?} -> {form:?} is not a valid target: {error}"));
    assert_eq!(target.path(), &*form);
    // ASCII case aside, two spellings with one canonical form are one path.
    if let Ok(lower) = canonical(&path.to_ascii_lowercase()) {
        assert_eq!(
            lower.to_ascii_lowercase(),
            form.to_ascii_lowercase(),
            "{path:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    check(&text);
    // A target as a client sends it: the gateway sees the path the URI parser kept.
    if let Ok(target) = PathAndQuery::try_from(data) {
        check(target.path());
    }
});
