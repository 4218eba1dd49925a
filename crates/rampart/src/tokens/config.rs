//! `[tokens]`: how access tokens are signed and how long tokens live.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::secrets::Secret;
use crate::settings::{Problems, parse_duration};

/// `[tokens]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTokens {
    /// The one signing algorithm (`HS256` by default).
    pub algorithm: String,
    /// The HMAC secret for `HS*`; absent: generated into `secrets.toml` outside production.
    pub secret: Option<String>,
    /// A file holding `secret` (a container secret); read at start-up.
    pub secret_file: Option<PathBuf>,
    /// PEM private key for the asymmetric algorithms.
    pub private_key_file: Option<PathBuf>,
    /// `iss` of issued tokens, required on verification.
    pub issuer: String,
    /// `aud` of issued tokens, required on verification.
    pub audience: String,
    /// Lifetime of an access token (a duration).
    pub access_ttl: String,
    /// Lifetime of a refresh token.
    pub refresh_ttl: String,
    /// Where sessions live: `database` or a `redis://` URL.
    pub store: String,
    /// How often each instance re-reads revoked sessions: the longest a revoked token
    /// still passes.
    pub revocation_lag: String,
}

impl Default for RawTokens {
    fn default() -> Self {
        Self {
            algorithm: "HS256".into(),
            secret: None,
            secret_file: None,
            private_key_file: None,
            issuer: "rampart".into(),
            audience: "rampart".into(),
            access_ttl: "1h".into(),
            refresh_ttl: "7d".into(),
            store: "database".into(),
            revocation_lag: "5s".into(),
        }
    }
}

/// The JWS algorithm tokens are signed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAlgorithm {
    /// HMAC-SHA256 with `tokens.secret`.
    Hs256,
    /// Ed25519 with `tokens.private_key_file` (PKCS#8 PEM).
    EdDsa,
    /// RSA-SHA256 with `tokens.private_key_file` (PKCS#8 or PKCS#1 PEM).
    Rs256,
}

impl fmt::Display for TokenAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hs256 => "HS256",
            Self::EdDsa => "EdDSA",
            Self::Rs256 => "RS256",
        })
    }
}

/// Where refresh tokens, revocations, nonces and lockout counters live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateStoreKind {
    /// The main database.
    Database,
    /// A Redis server, shared by every instance.
    Redis(String),
}

/// Token settings.
#[derive(Debug, Clone)]
pub struct TokensConfig {
    /// Signing algorithm; tokens signed otherwise are refused.
    pub algorithm: TokenAlgorithm,
    /// HS256 secret.
    pub secret: Option<Secret>,
    /// PEM private key for EdDSA/RS256.
    pub private_key_file: Option<PathBuf>,
    /// `iss` claim issued and required.
    pub issuer: String,
    /// `aud` claim issued and required.
    pub audience: String,
    /// Access token lifetime.
    pub access_ttl: Duration,
    /// Refresh token lifetime.
    pub refresh_ttl: Duration,
    /// Where session state lives.
    pub store: StateStoreKind,
    /// Longest time a revoked access token may still pass on another instance.
    pub revocation_lag: Duration,
}

impl TokensConfig {
    /// Checks `[tokens]`, adding every problem to `problems`; in production a missing or
    /// weak HS256 secret is one too (the secret itself is never shown).
    pub fn from_raw(raw: RawTokens, production: bool, problems: &mut Problems) -> Self {
        let algorithm = match raw.algorithm.as_str() {
            "HS256" => TokenAlgorithm::Hs256,
            "EdDSA" => TokenAlgorithm::EdDsa,
            "RS256" => TokenAlgorithm::Rs256,
            other => {
                problems.add(
                    "tokens.algorithm",
                    format!("`{other}` is not one of HS256, EdDSA, RS256"),
                );
                TokenAlgorithm::Hs256
            }
        };
        if algorithm != TokenAlgorithm::Hs256 && raw.private_key_file.is_none() {
            problems.add(
                "tokens.private_key_file",
                format!("required with algorithm {}", raw.algorithm),
            );
        }
        if let Some(secret) = &raw.secret
            && secret.len() < 32
        {
            problems.add(
                "tokens.secret",
                format!("must be at least 32 bytes (is {})", secret.len()),
            );
        }
        let mut duration = |key: &str, text: &str| {
            parse_duration(text).unwrap_or_else(|message| {
                problems.add(key, message);
                Duration::from_secs(1)
            })
        };
        let access_ttl = duration("tokens.access_ttl", &raw.access_ttl);
        let refresh_ttl = duration("tokens.refresh_ttl", &raw.refresh_ttl);
        let revocation_lag = duration("tokens.revocation_lag", &raw.revocation_lag);
        let store = match raw.store.as_str() {
            "database" => StateStoreKind::Database,
            url if url.starts_with("redis://") || url.starts_with("rediss://") => {
                StateStoreKind::Redis(url.to_owned())
            }
            _ => {
                problems.add("tokens.store", "must be \"database\" or a redis:// URL");
                StateStoreKind::Database
            }
        };
        if production {
            if algorithm == TokenAlgorithm::Hs256 && raw.secret.is_none() {
                problems.add(
                    "tokens.secret",
                    "RAMPART_ENV=production needs a configured secret (see `rampart keygen`)",
                );
            }
            if let Some(reason) = raw.secret.as_deref().and_then(crate::secrets::weakness) {
                problems.add(
                    "tokens.secret",
                    format!(
                        "RAMPART_ENV=production refuses a weak secret: {reason} (see `rampart keygen`)"
                    ),
                );
            }
        }
        Self {
            algorithm,
            secret: raw.secret.map(Secret::new),
            private_key_file: raw.private_key_file,
            issuer: raw.issuer,
            audience: raw.audience,
            access_ttl,
            refresh_ttl,
            store,
            revocation_lag,
        }
    }
}
