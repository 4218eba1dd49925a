//! Access tokens (JWS), refresh tokens, CSRF tokens and the revocation cache.
//!
//! Access tokens are signed with the one configured algorithm; verification accepts only
//! that algorithm, issuer and audience, checks `exp`/`nbf` against [`Clock`] with 30 s of
//! leeway, and never fetches keys named in a token (`jku`, `x5u`, `jwk` are ignored).
//! Refresh tokens are 256 random bits, stored only as SHA-256. Each access token carries
//! its login's family id (`sid`); revoked families are held in a [`RevocationCache`] that
//! every instance refreshes from the session store within `tokens.revocation_lag`.
//!
//! [`Clock`]: crate::clock::Clock

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::SharedClock;
use crate::store::{Family, SessionStore, User};

mod config;
pub use config::{RawTokens, StateStoreKind, TokenAlgorithm, TokensConfig};

/// Leeway for `exp` and `nbf`.
pub const LEEWAY_SECONDS: i64 = 30;

/// Longest token text looked at; anything longer is refused unread.
const MAX_TOKEN_LENGTH: usize = 8 * 1024;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// User id as a string.
    pub sub: String,
    /// User id.
    pub user_id: i64,
    /// Username.
    pub username: String,
    /// Role.
    pub role: String,
    /// Rate-limit tier.
    pub tier: String,
    /// Issued at (unix seconds).
    pub iat: i64,
    /// Not before (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Expires (unix seconds).
    pub exp: i64,
    /// Token id.
    pub jti: String,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// The login (token family) this token belongs to.
    pub sid: String,
    /// Cookie sessions: SHA-256 (hex) of the CSRF token that goes with this token. A new
    /// one comes with every refresh, so an older CSRF token stops matching at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csrf: Option<String>,
}

/// Why a token was refused; the label of `rampart_jwt_validation_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid token: {}", self.label())]
pub enum Rejected {
    /// Not a well-formed JWS, or too long.
    Malformed,
    /// Signed with another algorithm than the configured one (incl. `none`).
    WrongAlgorithm,
    /// The signature does not verify.
    BadSignature,
    /// Past `exp`.
    Expired,
    /// Before `nbf`.
    NotYetValid,
    /// Wrong `iss`.
    WrongIssuer,
    /// Wrong `aud`.
    WrongAudience,
    /// A claim is missing or of the wrong type.
    InvalidClaims,
    /// Its login was revoked.
    Revoked,
}

impl Rejected {
    /// Every reason, for metrics that exist from start-up.
    pub const ALL: [Self; 9] = [
        Self::Malformed,
        Self::WrongAlgorithm,
        Self::BadSignature,
        Self::Expired,
        Self::NotYetValid,
        Self::WrongIssuer,
        Self::WrongAudience,
        Self::InvalidClaims,
        Self::Revoked,
    ];

    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::WrongAlgorithm => "wrong_algorithm",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongIssuer => "wrong_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::InvalidClaims => "invalid_claims",
            Self::Revoked => "revoked",
        }
    }
}

/// Issues and verifies access tokens.
pub struct TokenService {
    algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    jwks: Option<serde_json::Value>,
    csrf_key: Vec<u8>,
    issuer: String,
    audience: String,
    access_ttl: i64,
    clock: SharedClock,
    /// HS256 only: the way every token Rampart issued is checked (see [`Hs256::verify`]).
    hs256: Option<Hs256>,
}

/// The common case of HS256 verification, without `jsonwebtoken`'s general path (which
/// parses the header as JSON, keys a new HMAC and parses the claims twice, for every
/// token): a token whose header is byte for byte the one Rampart writes has its HMAC
/// checked from a keyed state made once, and its claims parsed once.
///
/// It only ever accepts: a token it does not accept goes through the general path, which
/// decides, and names the reason for, every refusal. What it accepts the general path
/// accepts too (same header, same signed bytes, same claims type and checks); the tests
/// hold the two to the same answers.
struct Hs256 {
    /// HMAC-SHA-256 with the secret absorbed.
    keyed: hmac::Hmac<Sha256>,
    /// The first segment of every token Rampart issues.
    header: Box<str>,
    issuer: Box<str>,
    audience: Box<str>,
}

/// Claims longer than this (decoded) go through the general path.
const FAST_CLAIMS_MAX: usize = 1024;

impl Hs256 {
    fn new(secret: &[u8], issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let mut header = Header::new(Algorithm::HS256);
        header.typ = Some("JWT".into());
        let sample = jsonwebtoken::encode(
            &header,
            &serde_json::json!({}),
            &EncodingKey::from_secret(secret),
        )?;
        let header = sample.split('.').next().unwrap_or_default();
        Ok(Self {
            keyed: <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret)
                .map_err(|_| anyhow::anyhow!("HMAC key"))?,
            header: header.into(),
            issuer: issuer.into(),
            audience: audience.into(),
        })
    }

    /// The claims of `token` when it is one of Rampart's own, signed with the secret, with
    /// the configured issuer and audience; `None` leaves the decision to the general path.
    fn verify(&self, token: &str) -> Option<Claims> {
        let (signed, signature) = token.rsplit_once('.')?;
        let (header, payload) = signed.split_once('.')?;
        if header != &*self.header {
            return None;
        }
        let mut tag = [0_u8; 32];
        if URL_SAFE_NO_PAD.decode_slice(signature, &mut tag).ok()? != tag.len() {
            return None;
        }
        let mut mac = self.keyed.clone();
        mac.update(signed.as_bytes());
        mac.verify_slice(&tag).ok()?;
        let mut json = [0_u8; FAST_CLAIMS_MAX];
        let length = URL_SAFE_NO_PAD.decode_slice(payload, &mut json).ok()?;
        let claims: Claims = serde_json::from_slice(json.get(..length)?).ok()?;
        (claims.iss == *self.issuer && claims.aud == *self.audience).then_some(claims)
    }
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Installs the RustCrypto backend of `jsonwebtoken`; idempotent.
fn install_crypto() {
    let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
}

impl TokenService {
    /// Builds the keys from configuration.
    ///
    /// # Errors
    /// The secret is missing or the key file cannot be read or parsed.
    pub fn new(config: &TokensConfig, clock: SharedClock) -> anyhow::Result<Self> {
        install_crypto();
        let (algorithm, encoding, decoding, csrf_key) = match config.algorithm {
            TokenAlgorithm::Hs256 => {
                let secret = config
                    .secret
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("tokens.secret is required for HS256"))?;
                let secret = secret.expose().as_bytes();
                (
                    Algorithm::HS256,
                    EncodingKey::from_secret(secret),
                    DecodingKey::from_secret(secret),
                    derive_key(secret, b"rampart csrf"),
                )
            }
            TokenAlgorithm::EdDsa | TokenAlgorithm::Rs256 => {
                let path = config
                    .private_key_file
                    .as_ref()
                    .ok_or_else(|| anyhow::anyhow!("tokens.private_key_file is required"))?;
                let pem = std::fs::read(path).map_err(|error| {
                    anyhow::anyhow!("tokens.private_key_file {}: {error}", path.display())
                })?;
                let (algorithm, encoding) = if config.algorithm == TokenAlgorithm::EdDsa {
                    (Algorithm::EdDSA, EncodingKey::from_ed_pem(&pem))
                } else {
                    (Algorithm::RS256, EncodingKey::from_rsa_pem(&pem))
                };
                let encoding = encoding
                    .map_err(|error| anyhow::anyhow!("tokens.private_key_file: {error}"))?;
                let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, algorithm)
                    .map_err(|error| anyhow::anyhow!("tokens.private_key_file: {error}"))?;
                let decoding = DecodingKey::from_jwk(&jwk)
                    .map_err(|error| anyhow::anyhow!("tokens.private_key_file: {error}"))?;
                (
                    algorithm,
                    encoding,
                    decoding,
                    derive_key(&pem, b"rampart csrf"),
                )
            }
        };
        let mut validation = Validation::new(algorithm);
        // Expiry and not-before are checked against the injected clock below.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims.clear();
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);
        let jwks = if algorithm == Algorithm::HS256 {
            None
        } else {
            let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, algorithm)?;
            jwk.common.key_id = Some(key_id(&serde_json::to_vec(&jwk.algorithm)?));
            Some(serde_json::json!({ "keys": [jwk] }))
        };
        Ok(Self {
            algorithm,
            encoding,
            decoding,
            validation,
            jwks,
            csrf_key,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            access_ttl: i64::try_from(config.access_ttl.as_secs()).unwrap_or(3600),
            clock,
            hs256: match (algorithm, &config.secret) {
                (Algorithm::HS256, Some(secret)) => Some(Hs256::new(
                    secret.expose().as_bytes(),
                    &config.issuer,
                    &config.audience,
                )?),
                _ => None,
            },
        })
    }

    /// Access-token lifetime in seconds.
    pub fn access_ttl(&self) -> i64 {
        self.access_ttl
    }

    /// The public keys, for `/.well-known/jwks.json` (asymmetric algorithms only).
    pub fn jwks(&self) -> Option<&serde_json::Value> {
        self.jwks.as_ref()
    }

    /// Signs an access token for `user` in login `family_id`.
    ///
    /// # Errors
    /// Signing failed.
    pub fn issue(&self, user: &User, family_id: &str) -> anyhow::Result<String> {
        self.issue_with_csrf(user, family_id, None)
    }

    /// Signs an access token bound to a CSRF token by its hash ([`hash_csrf_token`]).
    ///
    /// # Errors
    /// Signing failed.
    pub fn issue_with_csrf(
        &self,
        user: &User,
        family_id: &str,
        csrf_hash: Option<&str>,
    ) -> anyhow::Result<String> {
        self.sign(user, family_id, csrf_hash, i64::MAX)
    }

    /// Signs an access token of a login: bound to its current CSRF hash, and expiring no
    /// later than the login itself. Returns the token and its lifetime in seconds.
    ///
    /// # Errors
    /// Signing failed.
    pub fn issue_for(&self, user: &User, family: &Family) -> anyhow::Result<(String, i64)> {
        let now = self.clock.unix();
        let token = self.sign(
            user,
            &family.id,
            family.csrf_hash.as_deref(),
            family.expires_at,
        )?;
        Ok((token, (now + self.access_ttl).min(family.expires_at) - now))
    }

    fn sign(
        &self,
        user: &User,
        family_id: &str,
        csrf_hash: Option<&str>,
        not_after: i64,
    ) -> anyhow::Result<String> {
        let now = self.clock.unix();
        let claims = Claims {
            sub: user.id.to_string(),
            user_id: user.id,
            username: user.username.clone(),
            role: user.role.clone(),
            tier: user.tier.clone(),
            iat: now,
            nbf: Some(now),
            exp: (now + self.access_ttl).min(not_after),
            jti: ulid::Ulid::new().to_string(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sid: family_id.to_owned(),
            csrf: csrf_hash.map(str::to_owned),
        };
        let mut header = Header::new(self.algorithm);
        header.typ = Some("JWT".into());
        if let Some(jwks) = &self.jwks {
            header.kid = jwks["keys"][0]["kid"].as_str().map(str::to_owned);
        }
        Ok(jsonwebtoken::encode(&header, &claims, &self.encoding)?)
    }

    /// Verifies signature, algorithm, issuer, audience, expiry and not-before.
    ///
    /// # Errors
    /// Why the token is refused.
    pub fn verify(&self, token: &str) -> Result<Claims, Rejected> {
        if token.len() > MAX_TOKEN_LENGTH || token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err(Rejected::Malformed);
        }
        let claims = match self.hs256.as_ref().and_then(|hs256| hs256.verify(token)) {
            Some(claims) => claims,
            None => self.verify_general(token)?,
        };
        let now = self.clock.unix();
        // Saturating: `exp` is the token's to choose, up to `i64::MAX`.
        if claims.exp.saturating_add(LEEWAY_SECONDS) < now {
            return Err(Rejected::Expired);
        }
        if claims.nbf.unwrap_or(claims.iat) > now + LEEWAY_SECONDS {
            return Err(Rejected::NotYetValid);
        }
        if claims.sub != itoa::Buffer::new().format(claims.user_id) || claims.sid.is_empty() {
            return Err(Rejected::InvalidClaims);
        }
        Ok(claims)
    }

    /// Header, signature, algorithm, issuer, audience and claims' shape, by `jsonwebtoken`.
    fn verify_general(&self, token: &str) -> Result<Claims, Rejected> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejected::Malformed)?;
        if header.alg != self.algorithm {
            return Err(Rejected::WrongAlgorithm);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::InvalidSignature => Rejected::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
                    Rejected::WrongAlgorithm
                }
                ErrorKind::InvalidIssuer => Rejected::WrongIssuer,
                ErrorKind::InvalidAudience => Rejected::WrongAudience,
                ErrorKind::Json(_) | ErrorKind::MissingRequiredClaim(_) => Rejected::InvalidClaims,
                ErrorKind::ExpiredSignature => Rejected::Expired,
                ErrorKind::ImmatureSignature => Rejected::NotYetValid,
                _ => Rejected::Malformed,
            })?;
        Ok(data.claims)
    }

    /// Whether `presented` is the CSRF token whose hash a token or family carries; without
    /// a hash (a login from before CSRF tokens rotated), the login's original token.
    pub fn csrf_matches_hash(
        &self,
        family_id: &str,
        expected_hash: Option<&str>,
        presented: &str,
    ) -> bool {
        match expected_hash {
            Some(expected) => {
                let presented = hash_csrf_token(presented);
                !presented.is_empty() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
            }
            None => self.csrf_matches(family_id, presented),
        }
    }

    /// The CSRF token of a login that carries no CSRF hash: an HMAC of its family id.
    pub fn csrf_token(&self, family_id: &str) -> String {
        URL_SAFE_NO_PAD.encode(derive_key(&self.csrf_key, family_id.as_bytes()))
    }

    /// Whether `presented` is the CSRF token of `family_id`, compared in constant time.
    pub fn csrf_matches(&self, family_id: &str, presented: &str) -> bool {
        let expected = self.csrf_token(family_id);
        expected.as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

fn derive_key(key: &[u8], label: &[u8]) -> Vec<u8> {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(label);
    mac.finalize().into_bytes().to_vec()
}

fn key_id(material: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(&Sha256::digest(material)[..12])
}

/// A fresh refresh token: 256 random bits, URL-safe base64.
pub fn new_refresh_token() -> String {
    URL_SAFE_NO_PAD.encode(crate::secrets::random_bytes::<32>())
}

/// A fresh family id.
pub fn new_family_id() -> String {
    URL_SAFE_NO_PAD.encode(crate::secrets::random_bytes::<18>())
}

/// A fresh CSRF token: 256 random bits, URL-safe base64.
pub fn new_csrf_token() -> String {
    URL_SAFE_NO_PAD.encode(crate::secrets::random_bytes::<32>())
}

/// How CSRF tokens are stored and carried in access tokens: SHA-256, hex; empty for an
/// empty token, which never matches.
pub fn hash_csrf_token(token: &str) -> String {
    if token.is_empty() {
        return String::new();
    }
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// How refresh tokens are stored: SHA-256, hex.
pub fn hash_refresh_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Revoked login families, shared by every request of this instance.
#[derive(Debug)]
pub struct RevocationCache {
    revoked: RwLock<HashMap<Box<str>, i64>>,
    keep_for: i64,
}

impl RevocationCache {
    /// An empty cache remembering revocations for `keep_for` seconds (longer than any
    /// access token lives).
    pub fn new(keep_for: i64) -> Arc<Self> {
        Arc::new(Self {
            revoked: RwLock::new(HashMap::new()),
            keep_for,
        })
    }

    /// Whether a family is known to be revoked.
    pub fn is_revoked(&self, family_id: &str) -> bool {
        self.revoked
            .read()
            .map(|revoked| revoked.contains_key(family_id))
            .unwrap_or(true)
    }

    /// Records revocations (learned locally or from the store); a family already known
    /// keeps its first time.
    pub fn insert(&self, entries: impl IntoIterator<Item = (String, i64)>) {
        if let Ok(mut revoked) = self.revoked.write() {
            for (id, at) in entries {
                revoked.entry(id.into_boxed_str()).or_insert(at);
            }
        }
    }

    /// Forgets revocations older than the longest access-token lifetime.
    pub fn prune(&self, now: i64) {
        if let Ok(mut revoked) = self.revoked.write() {
            let keep_for = self.keep_for;
            revoked.retain(|_, at| *at + keep_for >= now);
        }
    }

    /// Follows the store's revocation log every `interval` until the cache is dropped.
    ///
    /// The log is read by position (a row id, a stream id), never by time, so neither a
    /// skewed clock on the revoking instance nor a slow commit can hide a revocation.
    /// PostgreSQL hands out ids from a sequence when a transaction inserts, and a later id
    /// can commit (become visible) before an earlier one: reading only past the highest id
    /// seen would skip the earlier one for good. So each poll re-reads from the position
    /// reached [`SETTLE`] ago: a revocation whose transaction commits within that time
    /// after taking its id is always seen (revoking transactions are single statements or
    /// a few, far shorter). Re-read entries are idempotent. Entries are timed by this
    /// instance's clock when learned, for pruning.
    ///
    /// `loaded` is the position [`Self::load`] reached. When a poll finds nothing new, the
    /// store is asked whether its log went backwards (a restored database, a Redis that
    /// restarted without persistence, a deleted stream): then the cursor starts over from
    /// the beginning, with a warning.
    pub fn spawn_refresher(
        self: &Arc<Self>,
        sessions: Arc<dyn SessionStore>,
        clock: SharedClock,
        interval: Duration,
        loaded: String,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            // Positions reached by recent polls; the oldest one past `SETTLE` is `settled`.
            let mut settled = String::new();
            let mut recent: std::collections::VecDeque<(tokio::time::Instant, String)> =
                std::collections::VecDeque::from([(tokio::time::Instant::now(), loaded)]);
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(cache) = weak.upgrade() else { return };
                let now = clock.unix();
                let polled_at = tokio::time::Instant::now();
                match read_log(&*sessions, &settled).await {
                    Ok((ids, reached)) => {
                        let nothing_new = ids.is_empty();
                        cache.insert(ids.into_iter().map(|id| (id, now)));
                        cache.prune(now);
                        // The furthest position any poll reached.
                        let furthest = recent
                            .back()
                            .map_or_else(|| reached.clone(), |(_, position)| position.clone());
                        if nothing_new && !furthest.is_empty() {
                            match sessions.revocation_log_rewound(&furthest).await {
                                Ok(true) => {
                                    tracing::warn!(
                                        cursor = %furthest,
                                        "the revocation log went backwards; reading it again from the start"
                                    );
                                    settled.clear();
                                    recent.clear();
                                    if let Ok((ids, reached)) = read_log(&*sessions, "").await {
                                        cache.insert(ids.into_iter().map(|id| (id, now)));
                                        recent.push_back((polled_at, reached));
                                    }
                                    continue;
                                }
                                Ok(false) => {}
                                Err(error) => {
                                    tracing::warn!(error = %error, "revocation log check failed");
                                }
                            }
                        }
                        recent.push_back((polled_at, reached));
                        while let Some((at, position)) = recent.front()
                            && at.elapsed() >= SETTLE
                        {
                            settled = position.clone();
                            recent.pop_front();
                        }
                    }
                    Err(error) => tracing::warn!(error = %error, "revocation poll failed"),
                }
            }
        })
    }

    /// Reads the whole revocation log once, before the instance serves: a new instance
    /// must not accept a token revoked before it started. Returns the position reached.
    ///
    /// # Errors
    /// The store cannot be read.
    pub async fn load(
        &self,
        sessions: &dyn SessionStore,
        clock: &SharedClock,
    ) -> crate::store::StoreResult<String> {
        let (ids, reached) = read_log(sessions, "").await?;
        let now = clock.unix();
        self.insert(ids.into_iter().map(|id| (id, now)));
        Ok(reached)
    }
}

/// Reads the revocation log from `from` to its end, page by page.
async fn read_log(
    sessions: &dyn SessionStore,
    from: &str,
) -> crate::store::StoreResult<(Vec<String>, String)> {
    let mut ids = Vec::new();
    let mut position = from.to_owned();
    loop {
        let (page, reached) = sessions.revocations_after(&position).await?;
        if page.is_empty() || reached == position {
            return Ok((ids, position));
        }
        ids.extend(page);
        position = reached;
    }
}

/// How long after a poll its position is trusted to have no earlier id still to commit.
pub const SETTLE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::secrets::Secret;

    fn config() -> TokensConfig {
        TokensConfig {
            algorithm: TokenAlgorithm::Hs256,
            secret: Some(Secret::new("0123456789abcdef0123456789abcdef")),
            private_key_file: None,
            issuer: "rampart".into(),
            audience: "rampart".into(),
            access_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(86_400),
            store: crate::config::StateStoreKind::Database,
            revocation_lag: Duration::from_secs(5),
        }
    }

    fn user() -> User {
        User {
            id: 7,
            username: "alice_1".into(),
            email: "a@example.com".into(),
            password_hash: String::new(),
            role: "trader".into(),
            tier: "standard".into(),
            disabled: false,
            created_at: 0,
        }
    }

    #[test]
    fn a_token_verifies_until_it_expires() {
        let clock = ManualClock::new();
        let service = TokenService::new(&config(), clock.clone()).unwrap();
        let token = service.issue(&user(), "fam").unwrap();
        let claims = service.verify(&token).unwrap();
        assert_eq!(claims.user_id, 7);
        assert_eq!(claims.sub, "7");
        assert_eq!(claims.exp - claims.iat, 3600);
        clock.advance(Duration::from_secs(3600 + 29));
        assert!(service.verify(&token).is_ok(), "within leeway");
        clock.advance(Duration::from_secs(2));
        assert_eq!(service.verify(&token), Err(Rejected::Expired));
    }

    /// Signs `claims` under `header` (raw JSON) with `secret`, as an attacker who varied
    /// everything but the format might.
    fn forge(header: &[u8], claims: &[u8], secret: &str) -> String {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(signed.as_bytes());
        format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
        )
    }

    #[test]
    fn the_hs256_fast_path_accepts_only_what_the_general_path_accepts() {
        let clock = ManualClock::new();
        let service = TokenService::new(&config(), clock.clone()).unwrap();
        let fast = service.hs256.as_ref().expect("HS256 has the fast path");
        let secret = "0123456789abcdef0123456789abcdef";
        let token = service.issue(&user(), "fam").unwrap();
        let claims: serde_json::Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).unwrap())
                .unwrap(),
        )
        .unwrap();
        let ours: &[u8] = br#"{"typ":"JWT","alg":"HS256"}"#;
        assert_eq!(&*fast.header, URL_SAFE_NO_PAD.encode(ours));
        let with = |key: &str, value: serde_json::Value| {
            let mut changed = claims.clone();
            changed[key] = value;
            serde_json::to_vec(&changed).unwrap()
        };
        let json = |value: serde_json::Value| serde_json::to_vec(&value).unwrap();
        let same = json(claims.clone());
        let (head, rest) = token.split_once('.').unwrap();
        let (payload, signature) = rest.split_once('.').unwrap();
        let mut flipped = signature.as_bytes().to_vec();
        flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        let candidates = [
            token.clone(),
            format!("{head}.{payload}.{flipped}"),
            format!("{head}.{payload}.{signature}A"),
            format!("{head}.{payload}="),
            format!("{head}.{payload}=.{signature}"),
            format!("{head}.{payload}.{signature}=="),
            format!("{head}.{payload}.{}", &signature[..signature.len() - 1]),
            forge(ours, &same, secret),
            forge(ours, &same, "another-secret-another-secret-xx"),
            forge(br#"{"alg":"HS256"}"#, &same, secret),
            forge(br#"{"alg":"HS256","typ":"JWT"}"#, &same, secret),
            forge(br#"{"typ":"JWT","alg":"none"}"#, &same, secret),
            forge(br#"{"typ":"JWT","alg":"HS384"}"#, &same, secret),
            forge(ours, &with("iss", "someone-else".into()), secret),
            forge(ours, &with("aud", "someone-else".into()), secret),
            forge(ours, &with("aud", serde_json::json!(["rampart"])), secret),
            forge(ours, &with("user_id", "7".into()), secret),
            forge(ours, &with("exp", serde_json::json!(1.5)), secret),
            forge(ours, &with("sid", serde_json::Value::Null), secret),
            forge(
                ours,
                &with("extra", serde_json::json!({"nested": [1, 2]})),
                secret,
            ),
            forge(ours, b"[1,2,3]", secret),
            forge(ours, b"\"text\"", secret),
            // A duplicated claim: the same JSON parser refuses it on both paths.
            forge(ours, br#"{"sub":"7","user_id":7,"user_id":8}"#, secret),
        ];
        let mut accepted = 0;
        for candidate in &candidates {
            let general = service.verify_general(candidate);
            match fast.verify(candidate) {
                Some(claims) => {
                    accepted += 1;
                    assert_eq!(Ok(claims), general, "{candidate}");
                }
                None => assert!(
                    general.is_err() || !candidate.starts_with(&*fast.header),
                    "the fast path passed over an ordinary valid token: {candidate}"
                ),
            }
        }
        // The issued token, its forged twin and the one with an extra claim.
        assert_eq!(accepted, 3);
    }

    #[test]
    fn an_expiry_at_the_end_of_time_is_checked_without_overflowing() {
        use crate::clock::Clock as _;
        let clock = ManualClock::new();
        let service = TokenService::new(&config(), clock.clone()).unwrap();
        let now = clock.unix();
        let claims = |exp: i64| Claims {
            sub: "7".into(),
            user_id: 7,
            username: "alice_1".into(),
            role: "trader".into(),
            tier: "standard".into(),
            iat: now,
            nbf: None,
            exp,
            jti: "j".into(),
            iss: "rampart".into(),
            aud: "rampart".into(),
            sid: "fam".into(),
            csrf: None,
        };
        let sign = |claims: &Claims| {
            let key = EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef");
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key).unwrap()
        };
        let far = claims(i64::MAX);
        assert_eq!(service.verify(&sign(&far)), Ok(far));
        assert_eq!(
            service.verify(&sign(&claims(i64::MIN))),
            Err(Rejected::Expired)
        );
    }

    #[test]
    fn a_token_from_another_secret_is_refused() {
        let clock = ManualClock::new();
        let service = TokenService::new(&config(), clock.clone()).unwrap();
        let mut other = config();
        other.secret = Some(Secret::new("another-secret-another-secret-xx"));
        let other = TokenService::new(&other, clock).unwrap();
        let token = other.issue(&user(), "fam").unwrap();
        assert_eq!(service.verify(&token), Err(Rejected::BadSignature));
    }

    #[test]
    fn csrf_tokens_belong_to_their_login() {
        let service = TokenService::new(&config(), ManualClock::new()).unwrap();
        let token = service.csrf_token("fam-a");
        assert!(service.csrf_matches("fam-a", &token));
        assert!(!service.csrf_matches("fam-b", &token));
        assert!(!service.csrf_matches("fam-a", ""));
    }

    #[test]
    fn a_csrf_token_matches_only_its_own_hash() {
        let service = TokenService::new(&config(), ManualClock::new()).unwrap();
        let token = new_csrf_token();
        let hash = hash_csrf_token(&token);
        assert!(service.csrf_matches_hash("fam", Some(&hash), &token));
        assert!(!service.csrf_matches_hash("fam", Some(&hash), &new_csrf_token()));
        assert!(!service.csrf_matches_hash("fam", Some(&hash), &hash));
        assert!(!service.csrf_matches_hash("fam", Some(""), ""));
        // A login without a hash keeps its original, derived token.
        let legacy = service.csrf_token("fam");
        assert!(service.csrf_matches_hash("fam", None, &legacy));
        assert!(!service.csrf_matches_hash("fam", Some(&hash), &legacy));
    }

    #[test]
    fn an_access_token_carries_its_csrf_hash() {
        let service = TokenService::new(&config(), ManualClock::new()).unwrap();
        let hash = hash_csrf_token(&new_csrf_token());
        let token = service
            .issue_with_csrf(&user(), "fam", Some(&hash))
            .unwrap();
        assert_eq!(service.verify(&token).unwrap().csrf, Some(hash));
        let plain = service.issue(&user(), "fam").unwrap();
        assert_eq!(service.verify(&plain).unwrap().csrf, None);
    }

    #[test]
    fn refresh_tokens_carry_256_bits_and_are_stored_hashed() {
        let token = new_refresh_token();
        assert_eq!(URL_SAFE_NO_PAD.decode(&token).unwrap().len(), 32);
        assert_ne!(new_refresh_token(), token);
        assert_eq!(hash_refresh_token(&token).len(), 64);
        assert!(!hash_refresh_token(&token).contains(&token));
    }

    #[test]
    fn the_revocation_cache_forgets_only_old_entries() {
        let cache = RevocationCache::new(100);
        cache.insert([("old".to_owned(), 0), ("new".to_owned(), 150)]);
        cache.prune(200);
        assert!(!cache.is_revoked("old"));
        assert!(cache.is_revoked("new"));
    }

    #[test]
    fn a_revocation_read_again_keeps_its_first_time() {
        let cache = RevocationCache::new(100);
        cache.insert([("fam".to_owned(), 0)]);
        cache.insert([("fam".to_owned(), 150)]);
        cache.prune(101);
        assert!(!cache.is_revoked("fam"));
    }
}
