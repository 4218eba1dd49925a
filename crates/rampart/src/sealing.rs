//! Stored secrets and the key ring: what binds each sealed value to its row, and
//! `rampart keys rotate`, which re-seals every stored secret with the ring's first key.
//!
//! Rotation walks the rows in id order and replaces each value only if it is still the one
//! that was read, so it is safe to interrupt, to run again, and to run while the gateway
//! serves. A value that does not open is reported and left as it is.

use crate::chain::{NewAuditEntry, RequestContext};
use zeroize::Zeroizing;

use crate::keyring::{DecryptError, KeyRing};
use crate::store::{SealedKind, SealedValue, Store, StoreResult};

/// Rows read per round trip while rotating.
const PAGE: i64 = 200;

/// The associated data of an API key's signing secret.
pub fn api_key_secret_aad(prefix: &str) -> Vec<u8> {
    format!("api_keys:{prefix}:secret").into_bytes()
}

/// The associated data of a trading account's broker key: its row and the broker host it
/// may be sent to, so that a key moved to another host (in the database, or copied to
/// another row) no longer opens.
pub fn account_key_aad(uid: &str, host_url: &str) -> Vec<u8> {
    format!(
        "trading_accounts:{uid}:api_key:{}",
        canonical_host_url(host_url)
    )
    .into_bytes()
}

/// The associated data broker keys were sealed with before they were bound to their host.
/// While `encryption.legacy_host_binding` is on, such a value still opens and is re-sealed
/// with [`account_key_aad`], bound to whatever host its row names at that moment, when it
/// is next used or by `rampart keys rotate` (the one pass that re-seals them all); each
/// such re-seal is logged and audited as [`REBOUND`] with the host. Off, it is refused.
pub fn legacy_account_key_aad(uid: &str) -> Vec<u8> {
    format!("trading_accounts:{uid}:api_key").into_bytes()
}

/// One spelling of a broker host URL: scheme and host lower-cased, the default port left
/// out, trailing slashes of the path removed and percent escapes upper-cased. Two URLs
/// with the same canonical form reach the same broker endpoint.
pub fn canonical_host_url(host_url: &str) -> String {
    let Ok(url) = url::Url::parse(host_url) else {
        return host_url.to_ascii_lowercase();
    };
    let mut canonical = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        canonical.push_str(&format!(":{port}"));
    }
    let path = url.path().trim_end_matches('/');
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        canonical.push(c);
        if c == '%' {
            for _ in 0..2 {
                if let Some(hex) = chars.next() {
                    canonical.push(hex.to_ascii_uppercase());
                }
            }
        }
    }
    canonical
}

/// The audit action of a legacy broker key re-sealed bound to a host.
pub const REBOUND: &str = "broker_key_rebound";

/// The associated data a stored value of `kind` is sealed with now.
pub fn aad(kind: SealedKind, value: &SealedValue) -> Vec<u8> {
    match kind {
        SealedKind::ApiKeySecret => api_key_secret_aad(&value.binding),
        SealedKind::AccountKey => account_key_aad(
            &value.binding,
            value.host_url.as_deref().unwrap_or_default(),
        ),
    }
}

/// The associated data an older release sealed a value of `kind` with, if it differs.
fn legacy_aad(kind: SealedKind, value: &SealedValue) -> Option<Vec<u8>> {
    match kind {
        SealedKind::ApiKeySecret => None,
        SealedKind::AccountKey => Some(legacy_account_key_aad(&value.binding)),
    }
}

/// A broker key, opened, and the value to store instead when it was sealed the legacy way.
#[derive(Debug)]
pub struct OpenedKey {
    /// The plaintext key.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The key re-sealed bound to its host, when the stored value was not yet.
    pub rebound: Option<String>,
}

/// Opens a trading account's broker key, bound to `uid` and `host_url`. With
/// `allow_legacy` (`encryption.legacy_host_binding`), a value sealed before keys were bound
/// to their host opens with the legacy associated data and comes back re-sealed for the
/// caller to store (and audit); without, it is refused like a value of another host.
///
/// # Errors
/// As [`KeyRing::decrypt`]: [`DecryptError::Authentication`] when the value belongs to
/// another row or another host, or is a legacy value and `allow_legacy` is off.
pub fn open_account_key(
    ring: &KeyRing,
    sealed: &str,
    uid: &str,
    host_url: &str,
    allow_legacy: bool,
) -> Result<OpenedKey, DecryptError> {
    let bound = account_key_aad(uid, host_url);
    match ring.decrypt(sealed, &bound) {
        Ok(plaintext) => Ok(OpenedKey {
            plaintext,
            rebound: None,
        }),
        Err(DecryptError::Authentication) => {
            let plaintext = ring.decrypt(sealed, &legacy_account_key_aad(uid))?;
            if !allow_legacy {
                drop(plaintext);
                tracing::warn!(
                    uid,
                    "a broker key sealed before host binding was refused \
                     (encryption.legacy_host_binding = false); set api_key again"
                );
                return Err(DecryptError::Authentication);
            }
            let rebound = Some(ring.encrypt(&plaintext, &bound));
            Ok(OpenedKey { plaintext, rebound })
        }
        Err(error) => Err(error),
    }
}

/// Re-seals `value` with the primary key and its current associated data; `None` when
/// it already is. The flag tells a legacy value, re-bound (only with `allow_legacy`).
fn reseal(
    ring: &KeyRing,
    kind: SealedKind,
    value: &SealedValue,
    allow_legacy: bool,
) -> Result<Option<(String, bool)>, DecryptError> {
    let bound = aad(kind, value);
    let Some(legacy) = legacy_aad(kind, value) else {
        return Ok(ring
            .rotate(&value.sealed, &bound)?
            .map(|sealed| (sealed, false)));
    };
    // A value that may still carry legacy associated data is opened even when its key is
    // current, so that rotation also moves it to the bound form.
    match ring.decrypt(&value.sealed, &bound) {
        Ok(plaintext) if ring.is_current(&value.sealed) => {
            drop(plaintext);
            Ok(None)
        }
        Ok(plaintext) => Ok(Some((ring.encrypt(&plaintext, &bound), false))),
        Err(DecryptError::Authentication) if allow_legacy => ring
            .rebind(&value.sealed, &legacy, &bound)
            .map(|sealed| Some((sealed, true))),
        Err(error) => Err(error),
    }
}

/// A value that could not be re-sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unopened {
    /// Which kind of value.
    pub kind: SealedKind,
    /// Its row id.
    pub id: i64,
    /// Why it did not open.
    pub error: DecryptError,
}

/// What a rotation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotationReport {
    /// Values re-sealed with the first key.
    pub rotated: u64,
    /// Values already sealed with the first key.
    pub current: u64,
    /// Values that changed while being rotated (rewritten by a request meanwhile); those
    /// were sealed with the first key by whoever wrote them.
    pub raced: u64,
    /// Of `rotated`, legacy broker keys re-sealed bound to their row's host (each
    /// audited as [`REBOUND`]).
    pub rebound: u64,
    /// Values that did not open; left unchanged.
    pub failed: Vec<Unopened>,
}

/// Re-seals every stored secret with `ring`'s first key and audits `secrets_rotated`:
/// the one pass that also moves every legacy broker key to the host-bound form (with
/// `allow_legacy`, each audited as [`REBOUND`] with its host; without, they fail).
///
/// # Errors
/// The store fails; what was rotated until then stays rotated.
pub async fn rotate_all(
    store: &dyn Store,
    ring: &KeyRing,
    allow_legacy: bool,
    now: i64,
    context: &RequestContext,
) -> StoreResult<RotationReport> {
    let mut report = RotationReport::default();
    for kind in SealedKind::ALL {
        let mut after = 0;
        loop {
            let page = store.sealed_values(kind, after, PAGE).await?;
            let Some(last) = page.last() else {
                break;
            };
            after = last.id;
            for value in page {
                match reseal(ring, kind, &value, allow_legacy) {
                    Ok(None) => report.current += 1,
                    Ok(Some((resealed, legacy))) => {
                        if store
                            .reseal(kind, value.id, &value.sealed, &resealed)
                            .await?
                        {
                            report.rotated += 1;
                            if legacy {
                                report.rebound += 1;
                                let host = value.host_url.as_deref().unwrap_or_default();
                                audit_rebound(store, value.id, host, now, context).await?;
                            }
                        } else {
                            report.raced += 1;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(kind = kind.as_str(), id = value.id, %error, "stored secret does not open; left as it is");
                        report.failed.push(Unopened {
                            kind,
                            id: value.id,
                            error,
                        });
                    }
                }
            }
        }
    }
    store
        .append_audit(NewAuditEntry::new(
            now,
            "secrets_rotated",
            None,
            serde_json::json!({
                "sealed_with": ring.primary_id(),
                "rotated": report.rotated,
                "already_current": report.current,
                "changed_meanwhile": report.raced,
                "legacy_rebound": report.rebound,
                "failed": report.failed.len(),
            }),
            context,
        ))
        .await?;
    Ok(report)
}

/// Logs and audits that the legacy broker key of trading account `id` was re-sealed
/// bound to `host_url` (the host its row named then).
///
/// # Errors
/// The store fails.
pub async fn audit_rebound(
    store: &dyn Store,
    id: i64,
    host_url: &str,
    now: i64,
    context: &RequestContext,
) -> StoreResult<()> {
    let host_url = canonical_host_url(host_url);
    tracing::warn!(
        account_id = id,
        host_url = %host_url,
        "a broker key sealed before host binding was opened and re-sealed bound to this host"
    );
    store
        .append_audit(NewAuditEntry::new(
            now,
            REBOUND,
            None,
            serde_json::json!({ "account_id": id, "host_url": host_url }),
            context,
        ))
        .await
}

/// How a broker key is shown: its first and last four characters, or `***` when it is
/// shorter than 12 characters.
pub fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() < 12 {
        return "***".to_owned();
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}...{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_mask_to_their_ends_and_short_keys_to_stars() {
        assert_eq!(mask("abcd1234567890wxyz"), "abcd...wxyz");
        assert_eq!(mask("abcdefghijkl"), "abcd...ijkl");
        assert_eq!(mask("abcdefghijk"), "***");
        assert_eq!(mask(""), "***");
    }

    fn value(binding: &str, host_url: &str) -> SealedValue {
        SealedValue {
            id: 1,
            binding: binding.into(),
            sealed: String::new(),
            host_url: Some(host_url.into()),
        }
    }

    #[test]
    fn each_row_host_and_kind_has_its_own_associated_data() {
        let host = "https://broker.example.com";
        assert_ne!(
            aad(SealedKind::AccountKey, &value("a", host)),
            aad(SealedKind::AccountKey, &value("b", host))
        );
        assert_ne!(
            aad(SealedKind::AccountKey, &value("a", host)),
            aad(
                SealedKind::AccountKey,
                &value("a", "https://evil.example.com")
            )
        );
        assert_ne!(
            aad(SealedKind::AccountKey, &value("a", host)),
            aad(SealedKind::ApiKeySecret, &value("a", host))
        );
        assert_ne!(account_key_aad("a", host), legacy_account_key_aad("a"));
    }

    #[test]
    fn respellings_of_one_host_share_a_canonical_form_and_other_hosts_do_not() {
        let canonical = canonical_host_url("https://broker.example.com/openalgo");
        for spelling in [
            "https://broker.example.com/openalgo/",
            "HTTPS://Broker.Example.COM/openalgo",
            "https://broker.example.com:443/openalgo//",
        ] {
            assert_eq!(canonical_host_url(spelling), canonical, "{spelling}");
        }
        assert_eq!(
            canonical_host_url("https://b.example.com/a%2fb"),
            canonical_host_url("https://b.example.com/a%2Fb")
        );
        for other in [
            "http://broker.example.com/openalgo",
            "https://broker.example.com:8443/openalgo",
            "https://broker.example.com/OpenAlgo",
            "https://broker.example.com",
            "https://broker.example.co/openalgo",
        ] {
            assert_ne!(canonical_host_url(other), canonical, "{other}");
        }
    }

    #[test]
    fn a_legacy_key_opens_once_and_comes_back_bound_to_its_host() {
        let ring = KeyRing::parse(&[KeyRing::generate_entry("k1")]).unwrap();
        let host = "https://broker.example.com";
        let legacy = ring.encrypt(b"broker-key", &legacy_account_key_aad("u1"));
        assert_eq!(
            open_account_key(&ring, &legacy, "u1", host, false).err(),
            Some(DecryptError::Authentication),
            "refused with legacy_host_binding = false"
        );
        let opened = open_account_key(&ring, &legacy, "u1", host, true).unwrap();
        assert_eq!(opened.plaintext.as_slice(), b"broker-key");
        let bound = opened.rebound.unwrap();
        let again = open_account_key(&ring, &bound, "u1", host, false).unwrap();
        assert!(again.rebound.is_none());
        assert_eq!(
            open_account_key(&ring, &bound, "u1", "https://evil.example.com", true).err(),
            Some(DecryptError::Authentication)
        );
        assert_eq!(
            open_account_key(&ring, &bound, "u2", host, true).err(),
            Some(DecryptError::Authentication)
        );
        // Rotation moves a legacy value sealed with the current key to the bound form.
        let mut stored = value("u1", host);
        stored.sealed = legacy;
        assert_eq!(
            reseal(&ring, SealedKind::AccountKey, &stored, false),
            Err(DecryptError::Authentication)
        );
        let (resealed, legacy) = reseal(&ring, SealedKind::AccountKey, &stored, true)
            .unwrap()
            .unwrap();
        assert!(legacy);
        stored.sealed = resealed;
        assert_eq!(
            reseal(&ring, SealedKind::AccountKey, &stored, false),
            Ok(None)
        );
    }
}
