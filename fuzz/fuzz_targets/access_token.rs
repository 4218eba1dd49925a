//! Access-token verification (`TokenService::verify`): the JWS header, base64 and claims.
//!
//! Input: a mode byte, then
//! - mode 0: a token, as sent;
//! - mode 1: header JSON and claims JSON, one newline between them, which the target
//!   encodes and signs with the HS256 secret, so that the claims are reached;
//! - mode 2: the same, signed with the EdDSA service's public key as an HMAC secret (the
//!   algorithm-confusion forgery);
//! - mode 3: two base64 segments `header.claims` as sent, signed with the HS256 secret.
//!
//! Properties: a token verifies only if it is HMAC-signed with the configured secret under
//! `alg: HS256` (never with a public key, never under another algorithm for the EdDSA
//! service); what verifies satisfies every claim check (issuer, audience, `exp`/`nbf`
//! with leeway, `sub` = `user_id`, a family id); its claims round-trip through JSON and,
//! re-encoded and signed again, verify to the same claims; a changed signature does not
//! verify; verification is deterministic.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use rampart::clock::{Clock, SharedClock};
use rampart::secrets::Secret;
use rampart::tokens::{
    Claims, LEEWAY_SECONDS, StateStoreKind, TokenAlgorithm, TokenService, TokensConfig,
};
use sha2::Sha256;

/// The fixed time of every run, so that a crash reproduces.
const NOW: i64 = 1_800_000_000;
const SECRET: &str = "fuzzing-secret-fuzzing-secret-32";
const ISSUER: &str = "rampart";
const AUDIENCE: &str = "rampart-api";
const ED25519_KEY: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIGmieKHfFridDGU/BnnfrMH3QuDHQFQr3Wx3GQA+mLgi
-----END PRIVATE KEY-----
";

#[derive(Debug)]
struct Fixed;

impl Clock for Fixed {
    fn now(&self) -> time::OffsetDateTime {
        time::OffsetDateTime::from_unix_timestamp(NOW).expect("a valid time")
    }
}

fn config(algorithm: TokenAlgorithm) -> TokensConfig {
    TokensConfig {
        algorithm,
        secret: Some(Secret::new(SECRET)),
        private_key_file: None,
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        access_ttl: Duration::from_secs(900),
        refresh_ttl: Duration::from_secs(86_400),
        store: StateStoreKind::Database,
        revocation_lag: Duration::from_secs(5),
    }
}

struct Services {
    hs256: TokenService,
    hs256_key: EncodingKey,
    eddsa: TokenService,
    eddsa_key: EncodingKey,
    /// The EdDSA public key (the JWKS `x`), raw and as published.
    public_keys: [Vec<u8>; 2],
}

static SERVICES: LazyLock<Services> = LazyLock::new(|| {
    let clock: SharedClock = Arc::new(Fixed);
    let hs256 = TokenService::new(&config(TokenAlgorithm::Hs256), Arc::clone(&clock))
        .expect("HS256 service");
    let key = std::env::temp_dir().join(format!("rampart-fuzz-ed25519-{}.pem", std::process::id()));
    std::fs::write(&key, ED25519_KEY).expect("write the key");
    let mut eddsa_config = config(TokenAlgorithm::EdDsa);
    eddsa_config.secret = None;
    eddsa_config.private_key_file = Some(key.clone());
    let eddsa = TokenService::new(&eddsa_config, clock).expect("EdDSA service");
    let _ = std::fs::remove_file(&key);
    let x = eddsa.jwks().expect("published keys")["keys"][0]["x"]
        .as_str()
        .expect("x")
        .to_owned();
    let raw = URL_SAFE_NO_PAD.decode(&x).expect("base64 x");
    Services {
        hs256,
        hs256_key: EncodingKey::from_secret(SECRET.as_bytes()),
        eddsa,
        eddsa_key: EncodingKey::from_ed_pem(ED25519_KEY.as_bytes()).expect("the key"),
        public_keys: [raw, x.into_bytes()],
    }
});

fn hmac(secret: &[u8], message: &str) -> String {
    let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any length");
    mac.update(message.as_bytes());
    URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
}

/// Checks a token a service accepted: `service` signs with `algorithm` and `key`.
fn accepted(
    service: &TokenService,
    algorithm: Algorithm,
    key: &EncodingKey,
    token: &str,
    claims: &Claims,
) {
    let header = jsonwebtoken::decode_header(token).expect("an accepted token has a header");
    assert_eq!(header.alg, algorithm, "{token}");
    assert_eq!(claims.iss, ISSUER, "{token}");
    assert_eq!(claims.aud, AUDIENCE, "{token}");
    assert!(
        claims.exp.saturating_add(LEEWAY_SECONDS) >= NOW,
        "expired: {token}"
    );
    assert!(
        claims.nbf.unwrap_or(claims.iat) <= NOW + LEEWAY_SECONDS,
        "not yet valid: {token}"
    );
    assert_eq!(claims.sub, claims.user_id.to_string(), "{token}");
    assert!(!claims.sid.is_empty(), "{token}");
    // The claims round-trip through JSON.
    let json = serde_json::to_string(claims).expect("claims serialise");
    let back: Claims = serde_json::from_str(&json).expect("claims parse back");
    assert_eq!(&back, claims);
    // Re-encoded and signed again, they verify to the same claims.
    let mut fresh = Header::new(algorithm);
    fresh.typ = Some("JWT".into());
    let again = jsonwebtoken::encode(&fresh, claims, key).expect("claims encode");
    assert_eq!(
        service.verify(&again).as_ref(),
        Ok(claims),
        "{token} -> {again}"
    );
    // Another signature does not verify: change the first character of the signature.
    let (signed, signature) = token.rsplit_once('.').expect("three segments");
    if let Some(first) = signature.chars().next() {
        let other = if first == 'A' { 'B' } else { 'A' };
        let forged = format!("{signed}.{other}{}", &signature[first.len_utf8()..]);
        assert!(service.verify(&forged).is_err(), "{forged} verifies");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let services = &*SERVICES;
    let (token, signer) = match mode % 4 {
        0 => (text.into_owned(), None),
        1 | 2 => {
            let (header, claims) = text.split_once('\n').unwrap_or((&text, ""));
            let signed = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let key: &[u8] = if mode % 4 == 1 {
                SECRET.as_bytes()
            } else {
                &services.public_keys[usize::from(mode / 4 % 2)]
            };
            let signature = hmac(key, &signed);
            (format!("{signed}.{signature}"), Some(mode % 4))
        }
        _ => {
            let signature = hmac(SECRET.as_bytes(), &text);
            (format!("{text}.{signature}"), Some(1))
        }
    };
    let by_secret = services.hs256.verify(&token);
    assert_eq!(
        by_secret,
        services.hs256.verify(&token),
        "not deterministic"
    );
    if let Ok(claims) = &by_secret {
        assert_ne!(
            signer,
            Some(2),
            "signed with the public key, accepted: {token}"
        );
        accepted(
            &services.hs256,
            Algorithm::HS256,
            &services.hs256_key,
            &token,
            claims,
        );
    }
    // The EdDSA service accepts no HMAC-signed token, whatever its header says.
    let by_key = services.eddsa.verify(&token);
    assert!(
        signer.is_none() || by_key.is_err(),
        "an HMAC-signed token verifies as EdDSA: {token}"
    );
    if let Ok(claims) = &by_key {
        accepted(
            &services.eddsa,
            Algorithm::EdDSA,
            &services.eddsa_key,
            &token,
            claims,
        );
    }
});
