//! HMAC-signed API-key requests: the key's shape (`parse_key`), the signing headers
//! (`X-Timestamp`, `X-Nonce`, `X-Signature`, checked as `authenticate` checks them) and the
//! string to sign. Properties: the headers are accepted exactly when SPEC §2 says (all three,
//! once each, a 1–12 digit timestamp, a 16–64 character visible-ASCII nonce, 64 lower-case
//! hex digits), what is accepted is what was sent; the string to sign splits back into its
//! parts (no field can move a boundary); a signature made by `sign` is accepted and verifies.
//!
//! Input: a flags byte (bits 0–2: which of the three headers are sent; bits 3–5: which are
//! sent twice), then newline-separated fields: timestamp, nonce, signature, method, path and
//! query, API key; the rest is the body.
#![no_main]

use hmac::{KeyInit, Mac};
use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::fuzz_target;
use rampart::authentication::api_key::{
    NONCE_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, hash_key, parse_key, sign, string_to_sign,
};
use rampart::fuzzing::{SigningHeaders, signing_headers};
use sha2::{Digest, Sha256};

const NAMES: [&str; 3] = [TIMESTAMP_HEADER, NONCE_HEADER, SIGNATURE_HEADER];

/// What SPEC §2 accepts, written out independently of the gateway's reading.
fn spec_accepts(timestamp: &[u8], nonce: &[u8], signature: &[u8]) -> bool {
    (1..=12).contains(&timestamp.len())
        && timestamp.iter().all(u8::is_ascii_digit)
        && (16..=64).contains(&nonce.len())
        && nonce.iter().all(u8::is_ascii_graphic)
        && signature.len() == 64
        && signature
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

fn headers(values: [&[u8]; 3], sent: u8, twice: u8) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (index, (name, value)) in NAMES.iter().zip(values).enumerate() {
        if sent & (1 << index) == 0 {
            continue;
        }
        let value = HeaderValue::from_bytes(value).ok()?;
        headers.append(*name, value.clone());
        if twice & (1 << index) != 0 {
            headers.append(*name, value);
        }
    }
    Some(headers)
}

fn check_key(key: &[u8]) {
    let Ok(key) = std::str::from_utf8(key) else {
        return;
    };
    let hash = hash_key(key);
    assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()));
    let Some(prefix) = parse_key(key) else {
        return;
    };
    let lower_hex = |text: &str| text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let random = key
        .strip_prefix("rk_")
        .and_then(|rest| rest.strip_prefix(prefix))
        .and_then(|rest| rest.strip_prefix('_'))
        .unwrap_or_else(|| panic!("{key:?} is not rk_<prefix>_<random>"));
    assert!(prefix.len() == 16 && lower_hex(prefix), "{key:?}");
    assert!(random.len() == 64 && lower_hex(random), "{key:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut fields = rest.splitn(7, |b| *b == b'\n');
    let mut next = || fields.next().unwrap_or_default();
    let (timestamp, nonce, signature) = (next(), next(), next());
    let (method, path, key) = (next(), next(), next());
    let body = next();
    check_key(key);

    let (sent, twice) = (flags & 0b111, (flags >> 3) & 0b111);
    let Some(map) = headers([timestamp, nonce, signature], sent, twice) else {
        return;
    };
    let found = signing_headers(&map);
    match &found {
        Ok(None) => assert_eq!(sent, 0, "signing headers ignored: {map:?}"),
        Ok(Some(SigningHeaders {
            timestamp: read_timestamp,
            unix,
            nonce: read_nonce,
            signature: read_signature,
        })) => {
            assert_eq!(sent, 0b111, "a partial signature accepted: {map:?}");
            assert_eq!(twice, 0, "a repeated signing header accepted: {map:?}");
            assert!(
                spec_accepts(timestamp, nonce, signature),
                "accepted outside the spec: {map:?}"
            );
            assert_eq!(read_timestamp.as_bytes(), timestamp);
            assert_eq!(read_timestamp.parse::<i64>().ok(), Some(*unix));
            assert!((0..1_000_000_000_000).contains(unix));
            assert_eq!(read_nonce.as_bytes(), nonce);
            assert_eq!(
                hex::decode(signature).ok().as_deref(),
                Some(&read_signature[..])
            );
        }
        Err(_) => assert!(
            sent != 0b111 || twice != 0 || !spec_accepts(timestamp, nonce, signature),
            "refused within the spec: {map:?}: {found:?}"
        ),
    }

    // The string to sign, for a request the gateway could have received.
    let (Ok(Some(signing)), Ok(method)) = (&found, Method::from_bytes(method)) else {
        return;
    };
    let Ok(target) = http::uri::PathAndQuery::try_from(path) else {
        return;
    };
    let message = string_to_sign(
        method.as_str(),
        target.as_str(),
        &signing.timestamp,
        &signing.nonce,
        body,
    );
    let parts: Vec<&str> = message.split('\n').collect();
    let body_hash = hex::encode(Sha256::digest(body));
    assert_eq!(
        parts,
        [
            method.as_str(),
            target.as_str(),
            signing.timestamp.as_str(),
            signing.nonce.as_str(),
            body_hash.as_str(),
        ],
        "a field moved a boundary of the string to sign"
    );

    // A signature made as a client makes it is read back and verifies, as `authenticate`
    // checks it; the key's text is the HMAC key.
    let secret = hex::encode(Sha256::digest(key));
    let made = sign(secret.as_bytes(), &message);
    let resigned =
        headers([timestamp, nonce, made.as_bytes()], 0b111, 0).expect("valid header values");
    let Ok(Some(read)) = signing_headers(&resigned) else {
        panic!("a signature made by sign() is refused: {made}");
    };
    let mut mac =
        <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(message.as_bytes());
    assert!(mac.verify_slice(&read.signature).is_ok());
    // The same signature in upper case is not the signature.
    if made.bytes().any(|b| b.is_ascii_alphabetic()) {
        let upper = made.to_ascii_uppercase();
        let refused =
            headers([timestamp, nonce, upper.as_bytes()], 0b111, 0).expect("valid header values");
        assert!(signing_headers(&refused).is_err());
    }
});
