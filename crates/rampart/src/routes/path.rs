//! The canonical form of a request path: what routes are matched on, what intrusion
//! detection and the identity API see, and what a backend gets (SPEC §3 "Paths").
//!
//! RFC 3986 §6.2.2 normalisation: percent-encoded unreserved characters
//! (`A-Z a-z 0-9 - . _ ~`) are decoded and the hex digits of the remaining escapes
//! upper-cased; the characters RFC 3986 does not allow raw in a path (`"`, `<`, `>`, `^`,
//! `` ` ``, `{`, `|`, `}`, space) are encoded. A path that a backend could read otherwise
//! has no canonical form and is refused: an encoded `/` or `\`, a `\`, `.` or `..` segments
//! (also when encoded), empty segments (`//`), `;` path parameters (raw or encoded), NUL and
//! other control characters, double encoding (`%25` followed by two hex digits), malformed
//! escapes and anything that is not ASCII, raw or encoded.

use std::borrow::Cow;

/// Why a path has no safe canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The path does not start with `/`.
    #[error("the path must start with /")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("malformed percent-encoding")]
    MalformedEscape,
    /// `%25` followed by two hex digits: a second decoding would change the path.
    #[error("double percent-encoding")]
    DoubleEncoding,
    /// `/` or `\` percent-encoded, or `\` raw: a segment boundary only some readers see.
    #[error("an encoded slash or a backslash")]
    Separator,
    /// `;`, raw or encoded: path parameters some servers strip before matching.
    #[error("a path parameter")]
    Parameter,
    /// A control character (NUL included), raw or encoded.
    #[error("a control character")]
    Control,
    /// A byte outside ASCII, raw or encoded.
    #[error("a character outside ASCII")]
    NonAscii,
    /// A `.` or `..` segment (after decoding), or an empty segment (`//`).
    #[error("a dot segment or an empty segment")]
    Segment,
}

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Characters allowed raw in a path segment besides unreserved ones (RFC 3986 `pchar`,
/// without `;`, which is refused).
fn is_allowed_raw(byte: u8) -> bool {
    matches!(
        byte,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
    )
}

/// Printable ASCII that RFC 3986 wants encoded: encoding it changes no reader's view.
fn must_be_encoded(byte: u8) -> bool {
    matches!(
        byte,
        b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}' | b' '
    )
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Checks one decoded (or raw) byte that is not a separator of the path.
fn check_byte(byte: u8) -> Result<(), Refused> {
    match byte {
        b'/' | b'\\' => Err(Refused::Separator),
        b';' => Err(Refused::Parameter),
        0x80..=0xff => Err(Refused::NonAscii),
        byte if byte.is_ascii_control() => Err(Refused::Control),
        _ => Ok(()),
    }
}

/// The canonical form of `path` (no query), borrowed when `path` is canonical already.
///
/// # Errors
/// [`Refused`] when the path has no safe canonical form.
pub fn canonical(path: &str) -> Result<Cow<'_, str>, Refused> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(Refused::NotAbsolute);
    }
    // The output, allocated only at the first byte that changes.
    let mut out: Option<Vec<u8>> = None;
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte == b'%' {
            let (Some(high), Some(low)) = (
                bytes.get(index + 1).copied().and_then(hex_value),
                bytes.get(index + 2).copied().and_then(hex_value),
            ) else {
                return Err(Refused::MalformedEscape);
            };
            let decoded = high << 4 | low;
            check_byte(decoded)?;
            if decoded == b'%'
                && bytes.get(index + 3).copied().and_then(hex_value).is_some()
                && bytes.get(index + 4).copied().and_then(hex_value).is_some()
            {
                return Err(Refused::DoubleEncoding);
            }
            let escape = &bytes[index..index + 3];
            if is_unreserved(decoded) {
                out.get_or_insert_with(|| bytes[..index].to_vec())
                    .push(decoded);
            } else {
                let upper = [b'%', HEX[usize::from(high)], HEX[usize::from(low)]];
                if escape != upper || out.is_some() {
                    out.get_or_insert_with(|| bytes[..index].to_vec())
                        .extend_from_slice(&upper);
                }
            }
            index += 3;
            continue;
        }
        if byte != b'/' {
            check_byte(byte)?;
        }
        if byte == b'/' || is_unreserved(byte) || is_allowed_raw(byte) {
            if let Some(out) = &mut out {
                out.push(byte);
            }
        } else if must_be_encoded(byte) {
            out.get_or_insert_with(|| bytes[..index].to_vec())
                .extend_from_slice(&[
                    b'%',
                    HEX[usize::from(byte >> 4)],
                    HEX[usize::from(byte & 0xf)],
                ]);
        } else {
            // Any other printable byte: `%` is handled above, `?` and `#` never reach a path.
            return Err(Refused::Control);
        }
        index += 1;
    }
    let canonical = match out {
        // Only ASCII was pushed, so the bytes are UTF-8.
        Some(out) => Cow::Owned(String::from_utf8(out).map_err(|_| Refused::NonAscii)?),
        None => Cow::Borrowed(path),
    };
    // Decoding may have joined `%25` with hex digits that were escapes before.
    let form = canonical.as_bytes();
    if form.windows(5).any(|window| {
        window.starts_with(b"%25")
            && hex_value(window[3]).is_some()
            && hex_value(window[4]).is_some()
    }) {
        return Err(Refused::DoubleEncoding);
    }
    // `/` alone is the root; one trailing `/` is allowed; otherwise every segment is a
    // name.
    let rest = &canonical[1..];
    if !rest.is_empty() {
        let body = rest.strip_suffix('/').unwrap_or(rest);
        if body
            .split('/')
            .any(|segment| matches!(segment, "" | "." | ".."))
        {
            return Err(Refused::Segment);
        }
    }
    Ok(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_are_returned_as_they_are() {
        for path in [
            "/",
            "/orders",
            "/orders/",
            "/orders/17",
            "/orders/a.b",
            "/orders/..x",
            "/users/me/api-keys",
            "/a/~b_c-d",
            "/files/a%20b",
            "/q/%3F%23%25",
            "/x/!$&'()*+,=:@",
        ] {
            assert!(
                matches!(canonical(path), Ok(Cow::Borrowed(same)) if same == path),
                "{path}: {:?}",
                canonical(path)
            );
        }
    }

    #[test]
    fn respellings_become_one_form() {
        for (path, expected) in [
            ("/api/%61dmin/x", "/api/admin/x"),
            ("/api/%41DMIN", "/api/ADMIN"),
            ("/%6F%72%64%65%72%73", "/orders"),
            ("/a/%7e%2D%5f%2e", "/a/~-_."),
            ("/a/%3a%40", "/a/%3A%40"),
            ("/a/%3A%3f", "/a/%3A%3F"),
            ("/a%20b", "/a%20b"),
            ("/a b", "/a%20b"),
            ("/a|b{c}", "/a%7Cb%7Bc%7D"),
            ("/a/%25", "/a/%25"),
            ("/a/%25zz", "/a/%25zz"),
        ] {
            assert_eq!(canonical(path).unwrap(), expected, "{path}");
        }
    }

    #[test]
    fn paths_without_a_safe_canonical_form_are_refused() {
        for (path, reason) in [
            ("orders", Refused::NotAbsolute),
            ("", Refused::NotAbsolute),
            ("/orders/../admin/users", Refused::Segment),
            ("/orders/./x", Refused::Segment),
            ("/orders/..", Refused::Segment),
            ("/orders/%2e%2e/admin", Refused::Segment),
            ("/orders/.%2E/admin", Refused::Segment),
            ("/orders/%2e", Refused::Segment),
            ("/orders//x", Refused::Segment),
            ("//orders", Refused::Segment),
            ("/orders%2Fadmin", Refused::Separator),
            ("/orders%2fadmin", Refused::Separator),
            ("/orders%5Cadmin", Refused::Separator),
            ("/orders\\admin", Refused::Separator),
            ("/api/admin;x/users", Refused::Parameter),
            ("/api/admin%3Bx/users", Refused::Parameter),
            ("/api/admin%3bx", Refused::Parameter),
            ("/orders/%00", Refused::Control),
            ("/orders/%0a", Refused::Control),
            ("/orders/%7F", Refused::Control),
            ("/orders/\u{1}", Refused::Control),
            ("/orders/%2561", Refused::DoubleEncoding),
            ("/orders/%252e%252e", Refused::DoubleEncoding),
            ("/orders/%252F", Refused::DoubleEncoding),
            ("/orders/%25%34%31", Refused::DoubleEncoding),
            ("/orders/%25%61%62", Refused::DoubleEncoding),
            ("/orders/%", Refused::MalformedEscape),
            ("/orders/%4", Refused::MalformedEscape),
            ("/orders/%zz", Refused::MalformedEscape),
            ("/orders/%%34%31", Refused::MalformedEscape),
            ("/orders/é", Refused::NonAscii),
            ("/orders/%C3%A9", Refused::NonAscii),
            ("/orders/%FF", Refused::NonAscii),
        ] {
            assert_eq!(canonical(path), Err(reason), "{path}");
        }
    }

    /// A small deterministic generator: paths built from the pieces attackers combine.
    fn generated_paths() -> Vec<String> {
        let pieces = [
            "a", "A", "admin", ".", "..", "/", "%2e", "%2E", "%2f", "%2F", "%5c", "%3b", ";",
            "%25", "%252e", "%61", "%41", "%7e", "%3a", "%3A", "%20", "%00", "%", "%4", "~", "\\",
            "|", "é", "%c3%a9", ":", "@", "-", "_",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            // xorshift64*
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_f491_4f6c_dd1d)
        };
        (0..20_000)
            .map(|_| {
                let length = 1 + (next() % 8) as usize;
                let mut path = String::from("/");
                for _ in 0..length {
                    path.push_str(pieces[(next() % pieces.len() as u64) as usize]);
                }
                path
            })
            .collect()
    }

    /// Decodes every escape, as the most eager backend would.
    fn decode_fully(path: &str) -> Vec<u8> {
        let bytes = path.as_bytes();
        let mut out = Vec::new();
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

    #[test]
    fn canonical_forms_are_stable_and_decode_to_the_same_segments() {
        let mut accepted = 0;
        for path in generated_paths() {
            let Ok(form) = canonical(&path) else {
                continue;
            };
            accepted += 1;
            // Idempotent: the canonical form is its own canonical form.
            assert_eq!(canonical(&form).as_deref(), Ok(&*form), "{path}");
            // Decoding once more (a backend that decodes) changes no segment boundary and
            // yields no dot segment, and decoding again changes nothing further.
            let decoded = decode_fully(&form);
            let text = String::from_utf8(decoded.clone()).expect("ASCII");
            assert_eq!(
                text.matches('/').count(),
                form.matches('/').count(),
                "{path} -> {form} -> {text}"
            );
            assert!(
                !text.contains('\\') && !text.contains(';'),
                "{path} -> {text}"
            );
            assert!(
                !text
                    .split('/')
                    .any(|segment| segment == "." || segment == ".."),
                "{path} -> {text}"
            );
            assert!(decoded.iter().all(|b| !b.is_ascii_control()), "{path}");
            // Escapes left in the form are reserved characters, upper-case hex.
            for escape in form.split('%').skip(1) {
                let hex = &escape.as_bytes()[..2];
                assert!(
                    hex.iter()
                        .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase())
                );
                let value = hex_value(hex[0]).unwrap() << 4 | hex_value(hex[1]).unwrap();
                assert!(!is_unreserved(value), "{path} -> {form}");
            }
            // ASCII case aside, two spellings with one canonical form are one path.
            let lower = path.to_ascii_lowercase();
            if let Ok(other) = canonical(&lower) {
                assert_eq!(
                    other.to_ascii_lowercase(),
                    form.to_ascii_lowercase(),
                    "{path}"
                );
            }
        }
        assert!(
            accepted > 1_000,
            "the generator reaches accepted paths: {accepted}"
        );
    }
}
