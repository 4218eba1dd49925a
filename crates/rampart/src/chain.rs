//! The audit trail's records and the hash chain that makes them tamper-evident (SPEC §7):
//! what a row holds, how its details are redacted, how it is hashed and sealed onto the
//! previous row. Pure: the stores use it to append inside their transactions and
//! [`crate::audit`] uses it to verify, so it knows nothing of either.

use hmac::{KeyInit, Mac};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

fn serialize_json_text<S: serde::Serializer>(text: &str, serializer: S) -> Result<S::Ok, S::Error> {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => value.serialize(serializer),
        Err(_) => serializer.serialize_str(text),
    }
}

/// The text that replaces secrets in `details`.
pub const REDACTED: &str = "***REDACTED***";

/// The hash a chain starts from.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An audit entry to write.
#[derive(Debug, Clone)]
pub struct NewAuditEntry {
    /// Unix seconds.
    pub at: i64,
    /// The user concerned, if any.
    pub user_id: Option<i64>,
    /// One of the actions of SPEC §7.
    pub action: &'static str,
    /// Structured details; secrets are redacted on construction.
    pub details: Value,
    /// Client IP.
    pub ip_address: Option<String>,
    /// Client user agent, cut to 200 characters.
    pub user_agent: Option<String>,
    /// The request's id.
    pub request_id: String,
}

impl NewAuditEntry {
    /// An entry with its details redacted and its user agent cut to 200 characters.
    pub fn new(
        at: i64,
        action: &'static str,
        user_id: Option<i64>,
        details: Value,
        context: &RequestContext,
    ) -> Self {
        Self {
            at,
            user_id,
            action,
            details: redact(details),
            ip_address: context.ip.clone(),
            user_agent: context
                .user_agent
                .as_ref()
                .map(|agent| user_agent_field(agent)),
            request_id: context.request_id.clone(),
        }
    }
}

/// The most of a user agent an audit row keeps, in characters.
pub const USER_AGENT_CHARS: usize = 200;

/// A user agent as an audit row keeps it: its first [`USER_AGENT_CHARS`] characters. Cut
/// wherever a context is made, so that nothing holding one (a throttled row waiting to be
/// written) keeps a client's whole header.
pub fn user_agent_field(agent: &str) -> String {
    agent.chars().take(USER_AGENT_CHARS).collect()
}

/// Who made the request an entry records.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    /// Client IP as text.
    pub ip: Option<String>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// `X-Request-Id`.
    pub request_id: String,
}

impl RequestContext {
    /// The context of a request that went through the outermost layer.
    pub fn of<B>(request: &http::Request<B>) -> Self {
        Self {
            ip: request
                .extensions()
                .get::<crate::client_ip::ClientIp>()
                .map(|ip| ip.0.to_string()),
            user_agent: request
                .headers()
                .get(http::header::USER_AGENT)
                .and_then(|value| value.to_str().ok())
                .map(user_agent_field),
            request_id: request
                .extensions()
                .get::<crate::request::RequestId>()
                .map_or_else(|| "-".to_owned(), |id| id.0.to_string()),
        }
    }
}

/// A stored audit row.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema, sqlx::FromRow)]
pub struct AuditRecord {
    /// Row id, increasing.
    pub id: i64,
    /// Unix seconds.
    #[serde(serialize_with = "crate::time_format::serialize_unix")]
    #[schema(value_type = String)]
    pub at: i64,
    /// The user concerned.
    pub user_id: Option<i64>,
    /// What happened.
    pub action: String,
    /// JSON text as stored (it is hashed as written); served as the JSON object it holds.
    #[serde(serialize_with = "serialize_json_text")]
    #[schema(value_type = Object)]
    pub details: String,
    /// Client IP (absent once pseudonymised).
    pub ip_address: Option<String>,
    /// Client user agent (absent once pseudonymised).
    pub user_agent: Option<String>,
    /// The request's id.
    pub request_id: String,
    /// Salt of the personal-data digest (absent once pseudonymised).
    #[serde(skip)]
    pub pii_salt: Option<String>,
    /// Digest of IP and user agent.
    #[serde(skip)]
    pub pii_digest: String,
    /// The previous row's hash.
    pub prev_hash: String,
    /// This row's hash.
    pub hash: String,
}

/// The salted digest of the personal fields.
pub fn pii_digest(salt: &str, ip: Option<&str>, user_agent: Option<&str>) -> String {
    let mut hasher = Sha256::new();
    for part in [Some(salt), ip, user_agent] {
        match part {
            Some(text) => {
                hasher.update((text.len() as u64).to_be_bytes());
                hasher.update(text.as_bytes());
            }
            None => hasher.update(u64::MAX.to_be_bytes()),
        }
    }
    hex::encode(hasher.finalize())
}

/// One record of `audit_chain`: a row id and hash the audit chain is checked against,
/// sealed with the chain key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChainRecord {
    /// `head`, `legacy_start` or `legacy_end`.
    pub name: String,
    /// The row it names.
    pub row_id: i64,
    /// That row's hash (for `legacy_start`, the hash the row links to).
    pub hash: String,
    /// HMAC of the above under the chain key; a record without one is not trusted.
    pub mac: Option<String>,
}

/// The key of the audit chain's HMAC (`audit.chain_key`).
#[derive(Clone)]
pub struct ChainKey(Zeroizing<Vec<u8>>);

impl ChainKey {
    /// The key made of `secret`'s bytes.
    pub fn new(secret: &str) -> Self {
        Self(Zeroizing::new(secret.as_bytes().to_vec()))
    }

    fn mac(&self, message: &[u8]) -> String {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC takes a key of any length");
        mac.update(message);
        hex::encode(mac.finalize().into_bytes())
    }

    /// The seal of a chain record (`head`, `legacy_start`, `legacy_end`).
    pub fn seal_record(&self, name: &str, row_id: i64, hash: &str) -> String {
        self.mac(format!("audit_chain:{name}:{row_id}:{hash}").as_bytes())
    }

    /// Whether `record` carries its own seal.
    pub fn record_is_sealed(&self, record: &ChainRecord) -> bool {
        record.mac.as_deref().is_some_and(|mac| {
            constant_time_eq(
                mac.as_bytes(),
                self.seal_record(&record.name, record.row_id, &record.hash)
                    .as_bytes(),
            )
        })
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(***)")
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The chain record that holds the last row's id and hash.
pub const HEAD: &str = "head";
/// The chain record that holds the first row (and the hash it links to) when the chain
/// was keyed.
pub const LEGACY_START: &str = "legacy_start";
/// The chain record that holds the last row hashed without a key.
pub const LEGACY_END: &str = "legacy_end";
/// The action that records a purge and the hash it cut at.
pub const PURGED: &str = "audit_purged";

/// The bytes a row's hash covers: every field, length-prefixed, and the previous hash.
#[allow(clippy::too_many_arguments)]
fn row_message(
    prev_hash: &str,
    at: i64,
    user_id: Option<i64>,
    action: &str,
    details: &str,
    request_id: &str,
    pii_digest: &str,
) -> Vec<u8> {
    let mut message = Vec::with_capacity(160 + details.len());
    message.extend_from_slice(prev_hash.as_bytes());
    message.extend_from_slice(&at.to_be_bytes());
    match user_id {
        Some(id) => {
            message.push(1);
            message.extend_from_slice(&id.to_be_bytes());
        }
        None => message.push(0),
    }
    for text in [action, details, request_id, pii_digest] {
        message.extend_from_slice(&(text.len() as u64).to_be_bytes());
        message.extend_from_slice(text.as_bytes());
    }
    message
}

/// A row's hash as written before the chain was keyed: plain SHA-256 of its fields.
#[allow(clippy::too_many_arguments)]
pub fn row_hash(
    prev_hash: &str,
    at: i64,
    user_id: Option<i64>,
    action: &str,
    details: &str,
    request_id: &str,
    pii_digest: &str,
) -> String {
    hex::encode(Sha256::digest(row_message(
        prev_hash, at, user_id, action, details, request_id, pii_digest,
    )))
}

/// A row's hash: HMAC-SHA256 under `key` of its fields and the previous hash.
#[allow(clippy::too_many_arguments)]
pub fn keyed_row_hash(
    key: &ChainKey,
    prev_hash: &str,
    at: i64,
    user_id: Option<i64>,
    action: &str,
    details: &str,
    request_id: &str,
    pii_digest: &str,
) -> String {
    key.mac(&row_message(
        prev_hash, at, user_id, action, details, request_id, pii_digest,
    ))
}

/// The fields a store writes for a new entry, given the previous row's hash.
#[derive(Debug)]
pub struct SealedEntry {
    /// Details as JSON text.
    pub details: String,
    /// Fresh random salt.
    pub pii_salt: String,
    /// Digest of IP and user agent.
    pub pii_digest: String,
    /// This row's hash.
    pub hash: String,
}

/// Computes what a store writes for `entry` after a row whose hash is `prev_hash`.
pub fn seal(entry: &NewAuditEntry, prev_hash: &str, key: &ChainKey) -> SealedEntry {
    let details = entry.details.to_string();
    let pii_salt = hex::encode(crate::secrets::random_bytes::<16>());
    let pii_digest = pii_digest(
        &pii_salt,
        entry.ip_address.as_deref(),
        entry.user_agent.as_deref(),
    );
    let hash = keyed_row_hash(
        key,
        prev_hash,
        entry.at,
        entry.user_id,
        entry.action,
        &details,
        &entry.request_id,
        &pii_digest,
    );
    SealedEntry {
        details,
        pii_salt,
        pii_digest,
        hash,
    }
}

/// Replaces the values of secret-looking keys with [`REDACTED`], at any depth.
pub fn redact(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    // A flag (`"cookie": true`) or an absent value carries no secret.
                    if is_secret_key(&key) && !matches!(value, Value::Bool(_) | Value::Null) {
                        (key, Value::String(REDACTED.into()))
                    } else {
                        (key, redact(value))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        other => other,
    }
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "token",
        "secret",
        "key",
        "authorization",
        "cookie",
        "signature",
    ]
    .iter()
    .any(|word| key.contains(word))
        && !key.ends_with("_id")
        && key != "key_id"
}
