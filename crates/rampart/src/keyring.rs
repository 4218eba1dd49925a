//! Encryption at rest for stored secrets (broker API keys, API-key signing secrets).
//!
//! A [`KeyRing`] holds the keys of `encryption.keys`: the first encrypts, every key
//! decrypts, so keys rotate by prepending a new one and running `rampart keys rotate`.
//! Values are sealed with AES-256-GCM under a fresh random 96-bit nonce and bound to
//! their row by associated data, and stored as `v1:<key id>:<base64url(nonce‖ciphertext‖tag)>`.
//! Bad configuration fails with [`KeyRingError`], bad stored values with [`DecryptError`];
//! neither ever shows key material or the value that failed.

use std::collections::HashSet;
use std::fmt;

use aes_gcm::aead::{Aead, Generate, KeyInit, Nonce, Payload};
use aes_gcm::{Aes256Gcm, Key};
use base64::Engine;
use base64::alphabet;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use zeroize::Zeroizing;

/// Version tag that opens every stored value this module writes.
const FORMAT_VERSION: &str = "v1";

/// Length of an AES-GCM nonce in bytes (96 bits).
const NONCE_LEN: usize = 12;

/// Length of an AES-GCM authentication tag in bytes.
const TAG_LEN: usize = 16;

/// Length of an AES-256 key in bytes.
const KEY_LEN: usize = 32;

/// Longest key id accepted.
const MAX_ID_LEN: usize = 32;

/// Standard base64 that accepts keys written with or without `=` padding.
const KEY_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The key bytes of an `encryption.keys` entry's encoded part, as [`KeyRing::parse`]
/// reads them; `None` when it is not base64.
pub fn decode_key(encoded: &str) -> Option<Zeroizing<Vec<u8>>> {
    KEY_BASE64.decode(encoded.trim()).ok().map(Zeroizing::new)
}

/// Why `encryption.keys` was refused. Positions are 0-based; no variant shows key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRingError {
    /// The list holds no key at all.
    #[error("encryption.keys is empty: at least one key is required")]
    Empty,
    /// An entry is not `<id>:<base64 key>`.
    #[error("encryption.keys[{index}] is not of the form \"<id>:<base64 of 32 bytes>\"")]
    MissingSeparator {
        /// Position of the entry in the list.
        index: usize,
    },
    /// An entry's id is empty, too long or uses characters outside `[A-Za-z0-9_-]`.
    #[error(
        "encryption.keys[{index}] has an invalid key id: use 1 to 32 characters from A-Z, a-z, 0-9, '_' and '-'"
    )]
    InvalidId {
        /// Position of the entry in the list.
        index: usize,
    },
    /// Two entries share an id.
    #[error("encryption.keys[{index}] repeats the key id \"{id}\"")]
    DuplicateId {
        /// Position of the second entry with this id.
        index: usize,
        /// The repeated id.
        id: String,
    },
    /// The key part is not standard base64.
    #[error("encryption.keys[{index}] (id \"{id}\"): the key is not valid base64")]
    InvalidBase64 {
        /// Position of the entry in the list.
        index: usize,
        /// The entry's id.
        id: String,
    },
    /// The key part does not decode to exactly 32 bytes.
    #[error(
        "encryption.keys[{index}] (id \"{id}\"): the key decodes to {length} bytes, 32 are required"
    )]
    WrongKeyLength {
        /// Position of the entry in the list.
        index: usize,
        /// The entry's id.
        id: String,
        /// Number of bytes the key decoded to.
        length: usize,
    },
}

/// Why a stored value could not be decrypted. No variant echoes the value or the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The value is not in the stored format (wrong version, id or base64, too short).
    #[error("encrypted value is malformed")]
    Malformed,
    /// The value names a key id that is not in the key ring.
    #[error("encrypted value was sealed with a key that is not in the key ring")]
    UnknownKey,
    /// Authentication failed: wrong key, wrong associated data (another row), or tampering.
    /// For a legacy Fernet token this covers every token failure.
    #[error("encrypted value failed authentication")]
    Authentication,
    /// The legacy Fernet key is not URL-safe base64 of 32 bytes.
    #[error("legacy Fernet key is invalid")]
    InvalidFernetKey,
}

/// One named key of the ring.
#[derive(Clone)]
struct RingKey {
    id: String,
    cipher: Aes256Gcm,
}

/// The keys of `encryption.keys`: the first encrypts, all decrypt.
///
/// `Debug` shows the key ids only.
#[derive(Clone)]
pub struct KeyRing {
    /// Never empty; `keys[0]` is the primary key.
    keys: Vec<RingKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|key| key.id.as_str()).collect();
        f.debug_struct("KeyRing").field("key_ids", &ids).finish()
    }
}

/// Whether `id` is 1 to 32 characters from `[A-Za-z0-9_-]`.
fn is_valid_id(id: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl KeyRing {
    /// Checks `encryption.keys`, adding every problem to `problems`: the ring, or `None`
    /// when no key is configured (outside production one is then generated at start-up).
    /// In production a weak key is refused too. No message shows key material.
    pub fn from_config(
        entries: &[String],
        production: bool,
        problems: &mut crate::settings::Problems,
    ) -> Option<Self> {
        if entries.is_empty() {
            if production {
                problems.add(
                    "encryption.keys",
                    "RAMPART_ENV=production needs configured keys (see `rampart keygen`)",
                );
            }
            return None;
        }
        // The message names the entry's position and id, never the key.
        let ring = Self::parse(entries)
            .map_err(|error| problems.add("encryption.keys", error))
            .ok();
        if production {
            for (index, entry) in entries.iter().enumerate() {
                // Malformed entries are reported above.
                let Some((id, encoded)) = entry.trim().split_once(':') else {
                    continue;
                };
                let Some(key) = decode_key(encoded) else {
                    continue;
                };
                if let Some(reason) = crate::secrets::key_weakness(&key) {
                    problems.add(
                        "encryption.keys",
                        format!(
                            "entry {index} ({id}): RAMPART_ENV=production refuses a weak key: \
                             {reason} (see `rampart keygen`)"
                        ),
                    );
                }
            }
        }
        ring
    }

    /// Builds a ring from `<id>:<base64 of 32 bytes>` entries, the first being the primary key.
    ///
    /// Surrounding whitespace of an entry is ignored; the key is standard base64, with or
    /// without padding.
    ///
    /// # Errors
    /// [`KeyRingError`] for the first bad entry, naming its position (and id once known).
    pub fn parse(entries: &[impl AsRef<str>]) -> Result<Self, KeyRingError> {
        if entries.is_empty() {
            return Err(KeyRingError::Empty);
        }
        let mut seen = HashSet::new();
        let mut keys = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let entry = entry.as_ref().trim();
            let Some((id, encoded)) = entry.split_once(':') else {
                return Err(KeyRingError::MissingSeparator { index });
            };
            if !is_valid_id(id) {
                return Err(KeyRingError::InvalidId { index });
            }
            if !seen.insert(id) {
                return Err(KeyRingError::DuplicateId {
                    index,
                    id: id.to_owned(),
                });
            }
            let bytes = Zeroizing::new(KEY_BASE64.decode(encoded).map_err(|_| {
                KeyRingError::InvalidBase64 {
                    index,
                    id: id.to_owned(),
                }
            })?);
            if bytes.len() != KEY_LEN {
                return Err(KeyRingError::WrongKeyLength {
                    index,
                    id: id.to_owned(),
                    length: bytes.len(),
                });
            }
            let key = Key::<Aes256Gcm>::try_from(bytes.as_slice()).map_err(|_| {
                KeyRingError::WrongKeyLength {
                    index,
                    id: id.to_owned(),
                    length: bytes.len(),
                }
            })?;
            keys.push(RingKey {
                id: id.to_owned(),
                cipher: Aes256Gcm::new(&key),
            });
        }
        Ok(Self { keys })
    }

    /// A fresh random key entry `<id>:<base64 of 32 bytes>`, for `rampart keygen`.
    ///
    /// `id` should follow the id rules of [`KeyRing::parse`]; an entry with a bad id is
    /// refused when parsed.
    pub fn generate_entry(id: &str) -> String {
        let key = Zeroizing::new(<[u8; KEY_LEN]>::generate());
        format!("{id}:{}", STANDARD.encode(key.as_slice()))
    }

    /// The id of the key that encrypts.
    pub fn primary_id(&self) -> &str {
        &self.primary().id
    }

    /// The ids of every key, primary first.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|key| key.id.as_str())
    }

    fn primary(&self) -> &RingKey {
        // `parse` is the only constructor and refuses an empty list.
        &self.keys[0]
    }

    /// Seals `plaintext` with the primary key, bound to `aad` (e.g. `b"accounts:42:api_key"`).
    pub fn encrypt(&self, plaintext: &[u8], aad: &[u8]) -> String {
        let primary = self.primary();
        let nonce = Nonce::<Aes256Gcm>::generate();
        let sealed = primary
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("AES-GCM refuses only inputs over 64 GiB, far above any stored secret");
        let mut blob = Vec::with_capacity(NONCE_LEN + sealed.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&sealed);
        format!(
            "{FORMAT_VERSION}:{}:{}",
            primary.id,
            URL_SAFE_NO_PAD.encode(blob)
        )
    }

    /// Opens a value written by [`KeyRing::encrypt`] with the same `aad`.
    ///
    /// # Errors
    /// [`DecryptError::Malformed`] when `stored` is not in the stored format,
    /// [`DecryptError::UnknownKey`] when its key is not in the ring, and
    /// [`DecryptError::Authentication`] for a wrong `aad`, a wrong key or tampering.
    pub fn decrypt(&self, stored: &str, aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
        let (id, blob) = split_stored(stored)?;
        let key = self
            .keys
            .iter()
            .find(|key| key.id == id)
            .ok_or(DecryptError::UnknownKey)?;
        let (nonce, sealed) = blob.split_at(NONCE_LEN);
        let nonce = Nonce::<Aes256Gcm>::try_from(nonce).map_err(|_| DecryptError::Malformed)?;
        key.cipher
            .decrypt(&nonce, Payload { msg: sealed, aad })
            .map(Zeroizing::new)
            .map_err(|_| DecryptError::Authentication)
    }

    /// Whether `stored` was sealed with the primary key, so `rampart keys rotate` can skip it.
    pub fn is_current(&self, stored: &str) -> bool {
        stored
            .strip_prefix(FORMAT_VERSION)
            .and_then(|rest| rest.strip_prefix(':'))
            .and_then(|rest| rest.strip_prefix(self.primary_id()))
            .is_some_and(|rest| rest.starts_with(':'))
    }

    /// Opens `stored` with `old_aad` and seals its plaintext with the primary key bound to
    /// `new_aad`: moves a value to new associated data.
    ///
    /// # Errors
    /// As [`KeyRing::decrypt`] with `old_aad`.
    pub fn rebind(
        &self,
        stored: &str,
        old_aad: &[u8],
        new_aad: &[u8],
    ) -> Result<String, DecryptError> {
        let plaintext = self.decrypt(stored, old_aad)?;
        Ok(self.encrypt(&plaintext, new_aad))
    }

    /// Re-seals `stored` with the primary key: `None` when it already uses it.
    ///
    /// Rotating row by row with this is safe to interrupt and run again.
    ///
    /// # Errors
    /// As [`KeyRing::decrypt`].
    pub fn rotate(&self, stored: &str, aad: &[u8]) -> Result<Option<String>, DecryptError> {
        if self.is_current(stored) {
            return Ok(None);
        }
        let plaintext = self.decrypt(stored, aad)?;
        Ok(Some(self.encrypt(&plaintext, aad)))
    }
}

/// Splits `v1:<id>:<base64url>` into the id and the decoded `nonce‖ciphertext‖tag`.
fn split_stored(stored: &str) -> Result<(&str, Vec<u8>), DecryptError> {
    let mut parts = stored.splitn(3, ':');
    let (Some(version), Some(id), Some(encoded)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(DecryptError::Malformed);
    };
    if version != FORMAT_VERSION || !is_valid_id(id) {
        return Err(DecryptError::Malformed);
    }
    let blob = URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| DecryptError::Malformed)?;
    if blob.len() < NONCE_LEN + TAG_LEN {
        return Err(DecryptError::Malformed);
    }
    Ok((id, blob))
}

/// Decrypts a legacy token written by Python `cryptography`'s Fernet, for migrating old rows.
///
/// `fernet_key_b64` is the URL-safe base64 Fernet key. The token's age is not checked;
/// only tokens dated more than a minute in the future are refused (Fernet's clock-skew rule).
///
/// # Errors
/// [`DecryptError::InvalidFernetKey`] for a bad key, [`DecryptError::Authentication`] for
/// any token that does not verify and decrypt.
pub fn decrypt_fernet(
    fernet_key_b64: &str,
    token: &str,
) -> Result<Zeroizing<Vec<u8>>, DecryptError> {
    let fernet =
        fernet::Fernet::new(fernet_key_b64.trim()).ok_or(DecryptError::InvalidFernetKey)?;
    fernet
        .decrypt(token.trim())
        .map(Zeroizing::new)
        .map_err(|_| DecryptError::Authentication)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed test key entry: 32 bytes of `0x01`.
    fn entry(id: &str, byte: u8) -> String {
        format!("{id}:{}", STANDARD.encode([byte; KEY_LEN]))
    }

    fn ring(entries: &[String]) -> KeyRing {
        KeyRing::parse(entries).unwrap()
    }

    #[test]
    fn encrypted_values_decrypt_to_the_plaintext_with_the_same_aad() {
        let ring = ring(&[entry("k1", 1)]);
        let stored = ring.encrypt(b"broker-api-key-123", b"accounts:42:api_key");
        assert!(stored.starts_with("v1:k1:"), "{stored}");
        assert!(!stored.contains("broker-api-key"));
        let plaintext = ring.decrypt(&stored, b"accounts:42:api_key").unwrap();
        assert_eq!(plaintext.as_slice(), b"broker-api-key-123");
    }

    #[test]
    fn empty_plaintext_round_trips() {
        let ring = ring(&[entry("k1", 1)]);
        let stored = ring.encrypt(b"", b"aad");
        assert_eq!(ring.decrypt(&stored, b"aad").unwrap().as_slice(), b"");
    }

    #[test]
    fn each_encryption_uses_a_fresh_nonce() {
        let ring = ring(&[entry("k1", 1)]);
        let first = ring.encrypt(b"same", b"aad");
        let second = ring.encrypt(b"same", b"aad");
        assert_ne!(first, second);
    }

    #[test]
    fn a_value_moved_to_another_row_fails_authentication() {
        let ring = ring(&[entry("k1", 1)]);
        let stored = ring.encrypt(b"secret", b"accounts:42:api_key");
        assert_eq!(
            ring.decrypt(&stored, b"accounts:43:api_key"),
            Err(DecryptError::Authentication)
        );
        assert_eq!(
            ring.decrypt(&stored, b""),
            Err(DecryptError::Authentication)
        );
    }

    #[test]
    fn any_flipped_bit_in_nonce_ciphertext_or_tag_fails_authentication() {
        let ring = ring(&[entry("k1", 1)]);
        let stored = ring.encrypt(b"secret value", b"aad");
        let blob = URL_SAFE_NO_PAD.decode(&stored["v1:k1:".len()..]).unwrap();
        for position in 0..blob.len() {
            let mut tampered = blob.clone();
            tampered[position] ^= 0x01;
            let tampered = format!("v1:k1:{}", URL_SAFE_NO_PAD.encode(&tampered));
            assert_eq!(
                ring.decrypt(&tampered, b"aad"),
                Err(DecryptError::Authentication),
                "flipped byte {position}"
            );
        }
    }

    #[test]
    fn a_value_relabelled_with_another_key_id_fails_authentication() {
        let ring = ring(&[entry("k2", 2), entry("k1", 1)]);
        let stored = ring.encrypt(b"secret", b"aad");
        let relabelled = stored.replacen("v1:k2:", "v1:k1:", 1);
        assert_eq!(
            ring.decrypt(&relabelled, b"aad"),
            Err(DecryptError::Authentication)
        );
    }

    #[test]
    fn a_ring_with_a_new_first_key_decrypts_old_values_and_encrypts_with_the_new_key() {
        let old_ring = ring(&[entry("k1", 1)]);
        let old_value = old_ring.encrypt(b"secret", b"accounts:1:api_key");

        let new_ring = ring(&[entry("k2", 2), entry("k1", 1)]);
        assert_eq!(new_ring.primary_id(), "k2");
        assert!(!new_ring.is_current(&old_value));
        assert_eq!(
            new_ring
                .decrypt(&old_value, b"accounts:1:api_key")
                .unwrap()
                .as_slice(),
            b"secret"
        );

        let new_value = new_ring.encrypt(b"secret", b"accounts:1:api_key");
        assert!(new_value.starts_with("v1:k2:"));
        assert!(new_ring.is_current(&new_value));
        assert_eq!(
            old_ring.decrypt(&new_value, b"accounts:1:api_key"),
            Err(DecryptError::UnknownKey)
        );
    }

    #[test]
    fn rotate_re_encrypts_old_values_once_and_then_skips_them() {
        let old_ring = ring(&[entry("k1", 1)]);
        let old_value = old_ring.encrypt(b"secret", b"row");
        let new_ring = ring(&[entry("k2", 2), entry("k1", 1)]);

        let rotated = new_ring.rotate(&old_value, b"row").unwrap().unwrap();
        assert!(new_ring.is_current(&rotated));
        assert_eq!(
            new_ring.decrypt(&rotated, b"row").unwrap().as_slice(),
            b"secret"
        );
        assert_eq!(new_ring.rotate(&rotated, b"row"), Ok(None));

        // Once the old key is dropped, rotated values still open.
        let final_ring = ring(&[entry("k2", 2)]);
        assert_eq!(
            final_ring.decrypt(&rotated, b"row").unwrap().as_slice(),
            b"secret"
        );
    }

    #[test]
    fn is_current_matches_the_whole_primary_id_only() {
        let ring = ring(&[entry("k1", 1)]);
        assert!(ring.is_current("v1:k1:AAAA"));
        assert!(!ring.is_current("v1:k10:AAAA"));
        assert!(!ring.is_current("v1:k:AAAA"));
        assert!(!ring.is_current("v2:k1:AAAA"));
        assert!(!ring.is_current("gAAAAABfernet"));
        assert!(!ring.is_current(""));
    }

    #[test]
    fn malformed_stored_values_are_refused_as_malformed() {
        let ring = ring(&[entry("k1", 1)]);
        let short = format!(
            "v1:k1:{}",
            URL_SAFE_NO_PAD.encode([0u8; NONCE_LEN + TAG_LEN - 1])
        );
        let cases = [
            ("", "empty"),
            ("v1", "version only"),
            ("v1:k1", "no payload"),
            (
                "v2:k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                "unknown version",
            ),
            ("v1:k 1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "bad id"),
            ("v1:k1:not*base64", "bad base64"),
            ("v1:k1:AAAA+AAA", "standard instead of url-safe base64"),
            (short.as_str(), "shorter than nonce and tag"),
        ];
        for (stored, description) in cases {
            assert_eq!(
                ring.decrypt(stored, b"aad"),
                Err(DecryptError::Malformed),
                "{description}"
            );
        }
    }

    #[test]
    fn a_value_for_a_key_not_in_the_ring_is_unknown_key() {
        let ring = ring(&[entry("k1", 1)]);
        let other = KeyRing::parse(&[entry("k9", 9)]).unwrap();
        let stored = other.encrypt(b"secret", b"aad");
        assert_eq!(ring.decrypt(&stored, b"aad"), Err(DecryptError::UnknownKey));
    }

    #[test]
    fn parse_refuses_bad_entries_with_errors_that_hide_key_material() {
        let key = STANDARD.encode([7u8; KEY_LEN]);
        let unpadded = key.trim_end_matches('=').to_owned();
        let short = STANDARD.encode([7u8; 16]);
        let long = STANDARD.encode([7u8; 33]);
        let long_id = "a".repeat(33);
        let cases: Vec<(Vec<String>, KeyRingError, &str)> = vec![
            (vec![], KeyRingError::Empty, "empty list"),
            (
                vec![key.clone()],
                KeyRingError::MissingSeparator { index: 0 },
                "key without id",
            ),
            (
                vec![format!(":{key}")],
                KeyRingError::InvalidId { index: 0 },
                "empty id",
            ),
            (
                vec![format!("{long_id}:{key}")],
                KeyRingError::InvalidId { index: 0 },
                "id of 33 characters",
            ),
            (
                vec![format!("k1:{key}"), format!("k.2:{key}")],
                KeyRingError::InvalidId { index: 1 },
                "id with a dot",
            ),
            (
                vec![format!("k1:{key}"), format!("k1:{key}")],
                KeyRingError::DuplicateId {
                    index: 1,
                    id: "k1".into(),
                },
                "repeated id",
            ),
            (
                vec![format!("k1:{}*{}", &key[..10], &key[11..])],
                KeyRingError::InvalidBase64 {
                    index: 0,
                    id: "k1".into(),
                },
                "not base64",
            ),
            (
                vec![format!("k1:{short}")],
                KeyRingError::WrongKeyLength {
                    index: 0,
                    id: "k1".into(),
                    length: 16,
                },
                "16-byte key",
            ),
            (
                vec![format!("k1:{long}")],
                KeyRingError::WrongKeyLength {
                    index: 0,
                    id: "k1".into(),
                    length: 33,
                },
                "33-byte key",
            ),
        ];
        for (entries, expected, description) in cases {
            let error = KeyRing::parse(&entries).unwrap_err();
            assert_eq!(error, expected, "{description}");
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains(&unpadded[..20]), "{description}: {shown}");
            assert!(!shown.contains(&short[..12]), "{description}: {shown}");
        }
    }

    #[test]
    fn parse_accepts_keys_with_or_without_padding_and_any_valid_id() {
        let key = STANDARD.encode([5u8; KEY_LEN]);
        assert!(key.ends_with('='));
        let unpadded = key.trim_end_matches('=');
        let ring = KeyRing::parse(&[
            format!("Key_2026-01:{key}"),
            format!("  k1:{unpadded}  "),
            format!("{}:{key}", "z".repeat(32)),
        ])
        .unwrap();
        assert_eq!(ring.primary_id(), "Key_2026-01");
        assert_eq!(
            ring.key_ids().collect::<Vec<_>>(),
            ["Key_2026-01", "k1", &"z".repeat(32)]
        );
    }

    #[test]
    fn generated_entries_parse_and_differ() {
        let first = KeyRing::generate_entry("k1");
        let second = KeyRing::generate_entry("k1");
        assert_ne!(first, second);
        assert!(first.starts_with("k1:"));
        let ring = KeyRing::parse(&[first]).unwrap();
        let stored = ring.encrypt(b"x", b"y");
        assert_eq!(ring.decrypt(&stored, b"y").unwrap().as_slice(), b"x");
    }

    #[test]
    fn debug_shows_key_ids_but_not_keys() {
        let key = STANDARD.encode([0xABu8; KEY_LEN]);
        let ring = KeyRing::parse(&[format!("k1:{key}")]).unwrap();
        let shown = format!("{ring:?} {ring:#?}");
        assert!(shown.contains("k1"), "{shown}");
        assert!(!shown.contains(&key[..16]), "{shown}");
        assert!(!shown.to_lowercase().contains("abab"), "{shown}");
        assert!(!shown.contains("171"), "{shown}");
    }

    #[test]
    fn decrypt_errors_do_not_echo_the_stored_value() {
        let ring = ring(&[entry("k1", 1)]);
        for error in [
            ring.decrypt("v1:k1:c2VjcmV0LXRva2VuLXZhbHVlLWhlcmU", b"aad")
                .unwrap_err(),
            ring.decrypt("v1:zz:c2VjcmV0LXRva2VuLXZhbHVlLWhlcmU", b"aad")
                .unwrap_err(),
            ring.decrypt("garbage-secret-looking", b"aad").unwrap_err(),
        ] {
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains("c2Vj"), "{shown}");
            assert!(!shown.contains("zz"), "{shown}");
            assert!(!shown.contains("garbage"), "{shown}");
        }
    }

    // Published vector from the Fernet specification (github.com/fernet/spec, generate.json).
    const FERNET_SECRET: &str = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";
    const FERNET_TOKEN: &str = "gAAAAAAdwJ6wAAECAwQFBgcICQoLDA0ODy021cpGVWKZ_eEwCGM4BLLF_5CV9dOPmrhuVUPgJobwOz7JcbmrR64jVmpU4IwqDA==";

    #[test]
    fn fernet_spec_vector_decrypts_to_hello() {
        let plaintext = decrypt_fernet(FERNET_SECRET, FERNET_TOKEN).unwrap();
        assert_eq!(plaintext.as_slice(), b"hello");
    }

    #[test]
    fn fernet_spec_invalid_tokens_fail_authentication() {
        // From the Fernet specification's invalid.json.
        let cases = [
            (
                "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAl1-szkFVzXTuGb4hR8AKtwcaX1YdykQUFBQUFBQUFBQQ==",
                "incorrect mac",
            ),
            (
                "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPA==",
                "too short",
            ),
            (
                "%%%%%%%%%%%%%AECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPAl1-szkFVzXTuGb4hR8AKtwcaX1YdykRtfsH-p1YsUD2Q==",
                "invalid base64",
            ),
            (
                "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0OD3HkMATM5lFqGaerZ-fWPOm73QeoCk9uGib28Xe5vz6oxq5nmxbx_v7mrfyudzUm",
                "payload size not multiple of block size",
            ),
            (
                "gAAAAAAdwJ6xAAECAwQFBgcICQoLDA0ODz4LEpdELGQAad7aNEHbf-JkLPIpuiYRLQ3RtXatOYREu2FWke6CnJNYIbkuKNqOhw==",
                "payload padding error",
            ),
            ("", "empty token"),
        ];
        for (token, description) in cases {
            assert_eq!(
                decrypt_fernet(FERNET_SECRET, token),
                Err(DecryptError::Authentication),
                "{description}"
            );
        }
    }

    #[test]
    fn fernet_token_under_another_key_fails_authentication() {
        let other_key = URL_SAFE_NO_PAD.encode([3u8; 32]);
        assert_eq!(
            decrypt_fernet(&other_key, FERNET_TOKEN),
            Err(DecryptError::Authentication)
        );
    }

    #[test]
    fn a_bad_fernet_key_is_refused() {
        for key in ["", "not base64!", &URL_SAFE_NO_PAD.encode([3u8; 16])] {
            assert_eq!(
                decrypt_fernet(key, FERNET_TOKEN),
                Err(DecryptError::InvalidFernetKey),
                "{key:?}"
            );
        }
    }
}
