//! Stored secrets and the key ring: what binds each sealed value to its row, and
//! `rampart keys rotate`, which re-seals every stored secret with the ring's first key.
//!
//! Rotation walks the rows in id order and replaces each value only if it is still the one
//! that was read, so it is safe to interrupt, to run again, and to run while the gateway
//! serves. A value that does not open is reported and left as it is.

use crate::audit::{NewAuditEntry, RequestContext};
use crate::keyring::{DecryptError, KeyRing};
use crate::store::{SealedKind, Store, StoreResult};

/// Rows read per round trip while rotating.
const PAGE: i64 = 200;

/// The associated data of an API key's signing secret.
pub fn api_key_secret_aad(prefix: &str) -> Vec<u8> {
    format!("api_keys:{prefix}:secret").into_bytes()
}

/// The associated data of a trading account's broker key.
pub fn account_key_aad(uid: &str) -> Vec<u8> {
    format!("trading_accounts:{uid}:api_key").into_bytes()
}

/// The associated data of a sealed value of `kind` bound to `binding`.
pub fn aad(kind: SealedKind, binding: &str) -> Vec<u8> {
    match kind {
        SealedKind::ApiKeySecret => api_key_secret_aad(binding),
        SealedKind::AccountKey => account_key_aad(binding),
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
    /// Values that did not open; left unchanged.
    pub failed: Vec<Unopened>,
}

/// Re-seals every stored secret with `ring`'s first key and audits `secrets_rotated`.
///
/// # Errors
/// The store fails; what was rotated until then stays rotated.
pub async fn rotate_all(
    store: &dyn Store,
    ring: &KeyRing,
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
                match ring.rotate(&value.sealed, &aad(kind, &value.binding)) {
                    Ok(None) => report.current += 1,
                    Ok(Some(resealed)) => {
                        if store
                            .reseal(kind, value.id, &value.sealed, &resealed)
                            .await?
                        {
                            report.rotated += 1;
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
                "failed": report.failed.len(),
            }),
            context,
        ))
        .await?;
    Ok(report)
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

    #[test]
    fn each_row_and_kind_has_its_own_associated_data() {
        assert_ne!(
            aad(SealedKind::AccountKey, "a"),
            aad(SealedKind::AccountKey, "b")
        );
        assert_ne!(
            aad(SealedKind::AccountKey, "a"),
            aad(SealedKind::ApiKeySecret, "a")
        );
    }
}
