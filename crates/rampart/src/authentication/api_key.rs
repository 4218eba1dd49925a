//! API keys (`X-API-Key`) and HMAC-signed requests (SPEC §2 "API keys").
//!
//! A key reads `rk_<prefix>_<secret part>`: the prefix finds its row in one indexed
//! lookup, and the whole key is compared, in constant time, with the SHA-256 stored for
//! it. A request acts as the key's owner with the owner's role and tier as they are now.
//! Any of `X-Timestamp`, `X-Nonce`, `X-Signature` makes it a signed request, which must be
//! signed in full and correctly. A refusal hands the request back with the kind of
//! [`Failure`], for the pipeline to count, charge and refuse (401 on every route); a body
//! over `server.max_body` is 413 `payload_too_large`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use hmac::{KeyInit, Mac};
use http::HeaderMap;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{Credential, Failure, Principal};
use crate::error::ApiError;
use crate::key_cache::CachedKey;
use crate::state::AppState;

/// The header that carries the key.
pub const KEY_HEADER: &str = "x-api-key";
/// Unix seconds at which the request was signed.
pub const TIMESTAMP_HEADER: &str = "x-timestamp";
/// A single-use random value chosen by the client.
pub const NONCE_HEADER: &str = "x-nonce";
/// Lowercase hex HMAC-SHA256 of the string to sign.
pub const SIGNATURE_HEADER: &str = "x-signature";
/// How far a signed request's timestamp may be from the gateway's clock, in seconds.
pub const MAX_SKEW_SECONDS: i64 = 300;

/// What every key starts with.
const KEY_SCHEME: &str = "rk_";
/// Hex characters of the public prefix (64 bits).
const PREFIX_LEN: usize = 16;
/// Hex characters of the key's random part (256 bits).
const RANDOM_LEN: usize = 64;
/// Shortest and longest nonce.
const NONCE_LEN: std::ops::RangeInclusive<usize> = 16..=64;

/// A freshly made key, shown to its owner once.
#[derive(Clone)]
pub struct GeneratedKey {
    /// The public prefix, stored in the clear.
    pub prefix: String,
    /// The whole key, `rk_<prefix>_<random>`.
    pub key: String,
    /// SHA-256 of `key`, stored.
    pub key_hash: String,
    /// The signing secret (64 hex characters; its text is the HMAC key).
    pub secret: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Makes a new key and signing secret from the operating system's generator.
pub fn generate() -> GeneratedKey {
    let prefix = hex::encode(crate::secrets::random_bytes::<8>());
    let key = format!(
        "{KEY_SCHEME}{prefix}_{}",
        hex::encode(crate::secrets::random_bytes::<32>())
    );
    GeneratedKey {
        key_hash: hash_key(&key),
        secret: hex::encode(crate::secrets::random_bytes::<32>()),
        prefix,
        key,
    }
}

/// Lowercase hex SHA-256 of a key, as stored.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// The prefix of a well-formed key; `None` for anything else.
pub fn parse_key(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_SCHEME)?;
    let (prefix, random) = rest.split_once('_')?;
    let lower_hex = |text: &str| text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (prefix.len() == PREFIX_LEN
        && random.len() == RANDOM_LEN
        && lower_hex(prefix)
        && lower_hex(random))
    .then_some(prefix)
}

/// The text a client signs: method, path and query, timestamp, nonce and the body's
/// SHA-256, joined by newlines.
pub fn string_to_sign(
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    nonce: &str,
    body: &[u8],
) -> String {
    format!(
        "{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{}",
        hex::encode(Sha256::digest(body))
    )
}

/// Lowercase hex HMAC-SHA256 of `message` under `secret`.
pub fn sign(secret: &[u8], message: &str) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Whether the request presents an API key or any signing header, and so is for [`authenticate`].
pub fn is_presented(headers: &HeaderMap) -> bool {
    [KEY_HEADER, TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER]
        .iter()
        .any(|name| headers.contains_key(*name))
}

/// The id of the API key a request authenticated with, in its extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyId(pub i64);

/// Why [`authenticate`] did not authenticate a request.
#[derive(Debug)]
pub enum Rejection {
    /// The key or signature does not hold: the request (its body restored) and the kind of
    /// failure.
    Refused(Box<Request>, Failure),
    /// Another answer: 413 for a body over `server.max_body`, 400 for an unreadable body,
    /// 503 when a store is down, 500 for a secret that cannot be opened.
    Respond(Response),
}

/// Why a key or signature was refused; kept for the log, never shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    NoKey,
    Malformed,
    UnknownKey,
    Expired,
    OwnerGone,
    PartialSignature,
    BadTimestamp,
    Skewed,
    BadNonce,
    BadSignatureFormat,
    WrongSignature,
    Replayed,
}

/// The signing headers of a request, checked for shape.
struct Signing {
    timestamp: String,
    unix: i64,
    nonce: String,
    signature: [u8; 32],
}

/// The only value of header `name`; `Err` when it is repeated or not visible ASCII.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, Refused> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refused::Malformed);
    }
    first.to_str().map(Some).map_err(|_| Refused::Malformed)
}

impl Signing {
    /// `None` when no signing header is present; refused when only some are, or one is
    /// malformed.
    fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, Refused> {
        let timestamp = single(headers, TIMESTAMP_HEADER)?;
        let nonce = single(headers, NONCE_HEADER)?;
        let signature = single(headers, SIGNATURE_HEADER)?;
        let (timestamp, nonce, signature) = match (timestamp, nonce, signature) {
            (None, None, None) => return Ok(None),
            (Some(timestamp), Some(nonce), Some(signature)) => (timestamp, nonce, signature),
            _ => return Err(Refused::PartialSignature),
        };
        if timestamp.is_empty()
            || timestamp.len() > 12
            || !timestamp.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Refused::BadTimestamp);
        }
        let unix = timestamp
            .parse::<i64>()
            .map_err(|_| Refused::BadTimestamp)?;
        if !NONCE_LEN.contains(&nonce.len()) || !nonce.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Refused::BadNonce);
        }
        let mut decoded = [0u8; 32];
        if signature.len() != 64
            || !signature
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            || hex::decode_to_slice(signature, &mut decoded).is_err()
        {
            return Err(Refused::BadSignatureFormat);
        }
        Ok(Some(Self {
            timestamp: timestamp.to_owned(),
            unix,
            nonce: nonce.to_owned(),
            signature: decoded,
        }))
    }
}

/// `(timestamp, unix seconds, nonce, signature)` of a request's signing headers.
#[cfg(feature = "fuzzing")]
pub(crate) type SigningParts = (String, i64, String, [u8; 32]);

/// The signing headers as [`authenticate`] reads them, or why they are refused. For the fuzz targets, through [`crate::fuzzing`].
#[cfg(feature = "fuzzing")]
pub(crate) fn signing_headers(headers: &HeaderMap) -> Result<Option<SigningParts>, String> {
    match Signing::from_headers(headers) {
        Ok(signing) => Ok(signing.map(|signing| {
            (
                signing.timestamp,
                signing.unix,
                signing.nonce,
                signing.signature,
            )
        })),
        Err(reason) => Err(format!("{reason:?}")),
    }
}

impl Refused {
    fn failure(self) -> Failure {
        match self {
            Self::NoKey | Self::Malformed | Self::UnknownKey | Self::Expired | Self::OwnerGone => {
                Failure::ApiKey
            }
            Self::PartialSignature | Self::BadSignatureFormat | Self::WrongSignature => {
                Failure::Signature
            }
            Self::BadTimestamp | Self::Skewed => Failure::Timestamp,
            Self::BadNonce => Failure::Nonce,
            Self::Replayed => Failure::Replay,
        }
    }
}

fn respond(error: impl Into<ApiError>) -> Rejection {
    Rejection::Respond(error.into().into_response())
}

/// Authenticates a request that presents an API key (and perhaps a signature), handing
/// back the request (its body restored after being read for the signature, [`KeyId`] in
/// its extensions) and the owner. `key_found` is awaited once the key itself holds, before
/// the body is read and the signature checked.
///
/// # Errors
/// [`Rejection::Refused`] for a key or signature that does not hold,
/// [`Rejection::Respond`] for anything else.
pub async fn authenticate<F: Future<Output = ()>>(
    state: &AppState,
    request: Request,
    key_found: impl FnOnce() -> F,
) -> Result<(Request, Principal), Rejection> {
    let checked = check_key(state, request.headers()).await;
    let (record, signing) = match checked {
        Ok(found) => found,
        Err(Err(error)) => return Err(respond(error)),
        Err(Ok(reason)) => return Err(refuse(request, reason)),
    };
    key_found().await;
    let principal = |signed| Principal {
        user_id: record.user_id,
        username: Arc::clone(&record.username),
        role: Arc::clone(&record.role),
        tier: Arc::clone(&record.tier),
        family_id: Arc::from(""),
        credential: Credential::ApiKey,
        signed,
    };
    let Some(signing) = signing else {
        let mut request = request;
        request.extensions_mut().insert(KeyId(record.key_id));
        return Ok((request, principal(false)));
    };

    let (parts, body) = request.into_parts();
    let limit = state.config.server.max_body;
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(respond(ApiError::PayloadTooLarge));
    }
    let body = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(respond(ApiError::PayloadTooLarge));
        }
        Err(_) => {
            return Err(respond(ApiError::invalid(
                "Could not read the request body",
            )));
        }
    };
    // Opened once per cached key; the entry keeps it for the signed requests after.
    let opened;
    let secret: &[u8] = match record.secret.get() {
        Some(secret) => secret,
        None => {
            opened = state
                .keyring
                .decrypt(
                    &record.sealed_secret,
                    &crate::sealing::api_key_secret_aad(&record.prefix),
                )
                .map_err(|error| {
                    respond(ApiError::internal(anyhow::anyhow!(
                        "the signing secret of API key {} cannot be opened: {error}",
                        record.key_id
                    )))
                })?;
            record.secret.get_or_init(|| opened.clone())
        }
    };
    // The client signs the target exactly as it sent it, even if the route stage has
    // since put the path in canonical form. The route, and so whether a signature is
    // required, is chosen on the canonical form of this same target, so a respelling can
    // neither dodge a signed route nor reuse another spelling's signature.
    let target = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or(&parts.uri, |original| &original.0);
    let path_and_query = target
        .path_and_query()
        .map_or_else(|| target.path(), |value| value.as_str());
    let message = string_to_sign(
        parts.method.as_str(),
        path_and_query,
        &signing.timestamp,
        &signing.nonce,
        &body,
    );
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(message.as_bytes());
    if mac.verify_slice(&signing.signature).is_err() {
        let request = Request::from_parts(parts, Body::from(body));
        return Err(refuse(request, Refused::WrongSignature));
    }
    // Claimed only once the signature holds, so that unsigned junk cannot use up nonces;
    // remembered for as long as the timestamp stays acceptable. Scoped by key, so two
    // keys never collide.
    let now = state.now();
    let ttl = (signing.unix + MAX_SKEW_SECONDS - now + 1).max(1);
    let scoped = format!("api_key:{}:{}", record.key_id, signing.nonce);
    let fresh = state
        .stores
        .sessions
        .claim_nonce(&scoped, now, ttl)
        .await
        .map_err(respond)?;
    let mut request = Request::from_parts(parts, Body::from(body));
    if !fresh {
        return Err(refuse(request, Refused::Replayed));
    }
    request.extensions_mut().insert(KeyId(record.key_id));
    Ok((request, principal(true)))
}

fn refuse(request: Request, reason: Refused) -> Rejection {
    tracing::debug!(?reason, "API-key request refused");
    Rejection::Refused(Box::new(request), reason.failure())
}

/// What the key grants (from memory, or read from the store and then held) and the
/// signing headers, checked for everything but the signature itself. `Err(Ok(reason))`
/// refuses the key; `Err(Err(error))` answers otherwise (a store is down).
async fn check_key(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(Arc<CachedKey>, Option<Signing>), Result<Refused, ApiError>> {
    let key = single(headers, KEY_HEADER)
        .map_err(Ok)?
        .ok_or(Refused::NoKey)
        .map_err(Ok)?;
    let prefix = parse_key(key).ok_or(Refused::Malformed).map_err(Ok)?;
    let signing = Signing::from_headers(headers).map_err(Ok)?;
    let now = state.now();
    if let Some(signing) = &signing
        && (signing.unix - now).abs() > MAX_SKEW_SECONDS
    {
        return Err(Ok(Refused::Skewed));
    }
    let digest = crate::verified_keys::digest(key.as_bytes());
    let cache = &state.api_keys;
    let record = match cache.get(&digest) {
        Some(record) => record,
        None => {
            let generation = cache.generation();
            let record = read_key(state, prefix, &digest, now).await?;
            cache.insert(digest, Arc::clone(&record), generation);
            record
        }
    };
    // Checked on every use: a held key expires on time.
    if record
        .expires_at
        .is_some_and(|expires_at| expires_at <= now)
    {
        cache.remove(&digest);
        return Err(Ok(Refused::Expired));
    }
    Ok((record, signing))
}

/// Reads a key and its owner from the store and checks them in full.
async fn read_key(
    state: &AppState,
    prefix: &str,
    digest: &crate::verified_keys::KeyDigest,
    now: i64,
) -> Result<Arc<CachedKey>, Result<Refused, ApiError>> {
    let record = state
        .stores
        .data
        .api_key_by_prefix(prefix)
        .await
        .map_err(|error| Err(ApiError::from(error)))?
        .ok_or(Ok(Refused::UnknownKey))?;
    let mut presented = [0u8; 64];
    hex::encode_to_slice(digest, &mut presented)
        .unwrap_or_else(|_| unreachable!("64 hex characters for 32 bytes"));
    let matches: bool = presented.ct_eq(record.key_hash.as_bytes()).into();
    if !matches {
        return Err(Ok(Refused::UnknownKey));
    }
    if record
        .expires_at
        .is_some_and(|expires_at| expires_at <= now)
    {
        return Err(Ok(Refused::Expired));
    }
    let user = state
        .stores
        .data
        .user_by_id(record.user_id)
        .await
        .map_err(|error| Err(ApiError::from(error)))?
        .filter(|user| !user.disabled)
        .ok_or(Ok(Refused::OwnerGone))?;
    Ok(Arc::new(CachedKey {
        key_id: record.id,
        user_id: user.id,
        username: Arc::from(user.username),
        role: Arc::from(user.role),
        tier: Arc::from(user.tier),
        expires_at: record.expires_at,
        prefix: record.prefix.into(),
        sealed_secret: record.secret.into(),
        secret: std::sync::OnceLock::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_to_their_prefix_and_hash_to_what_is_stored() {
        let generated = generate();
        assert_eq!(parse_key(&generated.key), Some(generated.prefix.as_str()));
        assert_eq!(hash_key(&generated.key), generated.key_hash);
        assert_eq!(generated.secret.len(), 64);
        assert_ne!(generate().key, generated.key);
        assert!(!format!("{generated:?}").contains(&generated.secret));
    }

    #[test]
    fn malformed_keys_have_no_prefix() {
        let good = generate().key;
        for bad in [
            String::new(),
            "rk_".into(),
            good.replacen("rk_", "RK_", 1),
            good.to_uppercase(),
            format!("{good}0"),
            good[..good.len() - 1].to_owned(),
            good.replacen('_', "-", 2),
            format!("rk_{}_{}", "g".repeat(16), "0".repeat(64)),
        ] {
            assert_eq!(parse_key(&bad), None, "{bad}");
        }
    }

    #[test]
    fn the_signature_matches_a_known_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let message = string_to_sign("POST", "/orders?x=1", "1700000000", "n", b"");
        assert_eq!(
            message,
            "POST\n/orders?x=1\n1700000000\nn\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
