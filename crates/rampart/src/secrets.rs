//! Secret values: a [`Secret`] never prints its value; fresh secrets, and whether a
//! configured one is weak. The secrets generated once for the embedded defaults are
//! [`crate::config::generated`]'s.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;

/// A string that must not reach logs, errors or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `n` random bytes from the operating system's generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// A fresh HS256 secret: 48 random bytes, base64.
pub fn generate_token_secret() -> String {
    STANDARD.encode(random_bytes::<48>())
}

/// A fresh key-ring entry, `<id>:<base64 of 32 bytes>`.
pub fn generate_key_entry(id: &str) -> String {
    format!("{id}:{}", STANDARD.encode(random_bytes::<32>()))
}

/// Words that mark a placeholder or example value rather than a generated secret, six
/// characters or more. A random secret can contain one by chance, and is then refused
/// (a false refusal: generate another). After folding case, each 6-letter word matches at
/// a position of a base64 secret with probability (2/62)^6 ≈ 1.1e-9, so a 64-character
/// secret from `rampart keygen` is refused about once in four million (≈ 2.3e-7, mostly
/// from the 6-letter words). A hex secret can only contain `123456`: (1/16)^6 per
/// position, about once in 280 000 for 64 hex characters (≈ 3.5e-6) and once in 600 000
/// for 32 (≈ 1.6e-6).
const PLACEHOLDER_WORDS: [&str; 14] = [
    "changeme",
    "changethis",
    "replaceme",
    "example",
    "secret",
    "password",
    "passwd",
    "placeholder",
    "default",
    "insecure",
    "qwerty",
    "123456",
    "dummy1",
    "letmein",
];

/// The least estimated entropy, in bits, a JWT secret must carry in production: well
/// above what a person types, below what 32 random hex characters give.
const MIN_ENTROPY_BITS: f64 = 96.0;

/// Why `secret` looks trivial, or `None` when it looks generated: a known placeholder word
/// or example value, too little Shannon entropy over its bytes (`aaaa…`), a repeated
/// pattern (`abcabc…`, few distinct three-byte windows) or a run of neighbouring
/// characters (`abcdef…`, `123456…`). A heuristic: it refuses the values people type,
/// never proves a value random.
pub fn weakness(secret: &str) -> Option<&'static str> {
    let bytes = secret.as_bytes();
    if bytes.is_empty() {
        return Some("it is empty");
    }
    let folded: String = secret
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if secret.contains('…')
        || secret.contains("...")
        || PLACEHOLDER_WORDS.iter().any(|word| folded.contains(word))
    {
        return Some("it is a placeholder or example value");
    }
    let mut counts = [0u32; 256];
    for &byte in bytes {
        counts[usize::from(byte)] += 1;
    }
    #[allow(clippy::cast_precision_loss)]
    let length = bytes.len() as f64;
    let bits: f64 = counts
        .iter()
        .filter(|&&count| count > 0)
        .map(|&count| {
            let p = f64::from(count) / length;
            -p * p.log2() * length
        })
        .sum();
    if bits < MIN_ENTROPY_BITS {
        return Some("it has too little entropy");
    }
    let windows: std::collections::HashSet<&[u8]> = bytes.windows(3).collect();
    if bytes.len() >= 6 && windows.len() * 4 < (bytes.len() - 2) * 3 {
        return Some("it repeats a pattern");
    }
    let neighbours = bytes
        .windows(2)
        .filter(|pair| pair[0].abs_diff(pair[1]) <= 1)
        .count();
    if neighbours * 2 > bytes.len() - 1 {
        return Some("it is a run of neighbouring characters");
    }
    None
}

/// Why a decoded 32-byte encryption key looks trivial, or `None`: all zeros, few distinct
/// bytes (a random key has about 30 of 32 distinct; fewer than 16 happens by chance with
/// probability below 1e-20), a counting sequence (each byte a fixed step from the one
/// before, like `00 01 02 …`) or printable text (a typed passphrase encoded as the key;
/// (95/256)^32 ≈ 2e-14 by chance).
pub fn key_weakness(key: &[u8]) -> Option<&'static str> {
    if key.iter().all(|&byte| byte == 0) {
        return Some("it is all zeros");
    }
    let distinct: std::collections::HashSet<u8> = key.iter().copied().collect();
    if distinct.len() < 16 {
        return Some("it has too few distinct bytes");
    }
    if key.len() > 2
        && key
            .windows(2)
            .all(|pair| pair[1].wrapping_sub(pair[0]) == key[1].wrapping_sub(key[0]))
    {
        return Some("it is a counting sequence");
    }
    if key.iter().all(|byte| (0x20..0x7f).contains(byte)) {
        return Some("it is printable text, not random bytes");
    }
    None
}

/// `url` with the password of its user info masked (`postgres://u:****@h/db`), fit for a
/// message or a log line; a URL without one is returned as it is.
pub fn masked_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|at| at + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let Some(colon) = rest[..at].find(':') else {
        return url.to_owned();
    };
    format!(
        "{}{}:****{}",
        &url[..scheme_end],
        &rest[..colon],
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_a_url_is_masked_and_nothing_else_is() {
        assert_eq!(
            masked_url("postgres://app:hunter2@db:5432/rampart"),
            "postgres://app:****@db:5432/rampart"
        );
        assert_eq!(
            masked_url("redis://:p%40ss@127.0.0.1:6379/0"),
            "redis://:****@127.0.0.1:6379/0"
        );
        assert_eq!(
            masked_url("postgres://app:a@b@db/x?sslmode=require"),
            "postgres://app:****@db/x?sslmode=require"
        );
        for plain in [
            "postgres://app@db/rampart",
            "redis://127.0.0.1:6379",
            "sqlite://data/rampart.db",
            "redis://h/0?user=a@b:c",
        ] {
            assert_eq!(masked_url(plain), plain);
        }
    }

    #[test]
    fn trivial_encryption_keys_are_weak_and_random_ones_are_not() {
        let counting: Vec<u8> = (0u8..32).collect();
        let stepped: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(7)).collect();
        for (key, reason) in [
            (vec![0u8; 32], "all zeros"),
            (vec![0xffu8; 32], "distinct"),
            ([1u8, 2, 3, 4].repeat(8), "distinct"),
            (counting, "counting"),
            (stepped, "counting"),
            (b"correct horse battery staple 123".to_vec(), "printable"),
        ] {
            let found = key_weakness(&key).unwrap_or_else(|| panic!("{key:?} passed"));
            assert!(found.contains(reason), "{key:?}: {found}");
        }
        for _ in 0..1000 {
            assert_eq!(key_weakness(&random_bytes::<32>()), None);
        }
    }

    #[test]
    fn a_secret_never_prints_its_value() {
        let secret = Secret::new("hunter2-hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn trivial_secrets_are_weak_and_generated_ones_are_not() {
        let trivial = [
            "a".repeat(64),
            "A".repeat(32),
            "ab".repeat(32),
            "abc123".repeat(8),
            "0123456789abcdef".repeat(4),
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".to_owned(),
            "0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ".to_owned(),
            "bench-secret-bench-secret-bench-secret-0123".to_owned(),
            "changeme-changeme-changeme-changeme".to_owned(),
            "CHANGE_ME_this_is_a_32_byte_string_ok".to_owned(),
            "my-jwt-Secret-for-production-use-only".to_owned(),
            "replace-me-with-the-output-of-keygen".to_owned(),
            "…".to_owned(),
            "your-256-bit-secret-goes-here-please...".to_owned(),
            format!("{}b", "a".repeat(40)),
            "aaaaaaaabbbbbbbbccccccccdddddddd".to_owned(),
        ];
        for secret in &trivial {
            assert!(weakness(secret).is_some(), "{secret:?} passed");
        }
        // Random secrets are refused only by chance (a placeholder word inside them): about
        // once in 280 000 for 64 hex characters, far less for base64. Out of 2 000 of each,
        // three refusals happen by chance about once in a million runs.
        let mut refused = Vec::new();
        for _ in 0..2000 {
            let secret = generate_token_secret();
            let hex = hex::encode(random_bytes::<32>());
            for value in [secret, hex] {
                if weakness(&value).is_some() {
                    refused.push(value);
                }
            }
        }
        assert!(refused.len() <= 2, "random secrets refused: {refused:?}");
    }
}
