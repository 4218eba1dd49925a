//! Per-request identity costs: verifying an access token, checking a password.
//!
//! `cargo bench -p rampart --bench identity`

// Benchmark code: a failed unwrap is a broken benchmark, and `criterion_group!` makes
// undocumented public functions.
#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use rampart::clock::SystemClock;
use rampart::config::{StateStoreKind, TokenAlgorithm, TokensConfig};
use rampart::secrets::Secret;
use rampart::store::User;
use rampart::tokens::TokenService;

fn user() -> User {
    User {
        id: 42,
        username: "alice_1".into(),
        email: "alice@example.com".into(),
        password_hash: String::new(),
        role: "trader".into(),
        tier: "standard".into(),
        disabled: false,
        created_at: 0,
    }
}

fn service(algorithm: TokenAlgorithm, key: Option<std::path::PathBuf>) -> TokenService {
    TokenService::new(
        &TokensConfig {
            algorithm,
            secret: Some(Secret::new("bench-secret-bench-secret-bench-secret!!")),
            private_key_file: key,
            issuer: "rampart".into(),
            audience: "rampart".into(),
            access_ttl: Duration::from_secs(3600),
            refresh_ttl: Duration::from_secs(86_400),
            store: StateStoreKind::Database,
            revocation_lag: Duration::from_secs(5),
        },
        std::sync::Arc::new(SystemClock),
    )
    .expect("token service")
}

fn tokens(c: &mut Criterion) {
    let hs256 = service(TokenAlgorithm::Hs256, None);
    let token = hs256.issue(&user(), "family").expect("token");
    c.bench_function("jwt_verify_hs256", |b| {
        b.iter(|| hs256.verify(black_box(&token)).expect("valid"))
    });
    c.bench_function("jwt_issue_hs256", |b| {
        b.iter(|| hs256.issue(black_box(&user()), "family").expect("issued"))
    });
    let key = std::env::temp_dir().join("rampart-bench-ed25519.pem");
    std::fs::write(
        &key,
        "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIGmieKHfFridDGU/BnnfrMH3QuDHQFQr3Wx3GQA+mLgi\n-----END PRIVATE KEY-----\n",
    )
    .expect("key file");
    let eddsa = service(TokenAlgorithm::EdDsa, Some(key));
    let token = eddsa.issue(&user(), "family").expect("token");
    c.bench_function("jwt_verify_eddsa", |b| {
        b.iter(|| eddsa.verify(black_box(&token)).expect("valid"))
    });
}

fn passwords(c: &mut Criterion) {
    let mut group = c.benchmark_group("password");
    group.sample_size(10);
    let hash = rampart::password::verify_now;
    let stored = {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime
            .block_on(rampart::password::Hasher::new(1).hash("Tr4ding!Desk#42".into()))
            .expect("hash")
    };
    group.bench_function("argon2id_verify_owasp", |b| {
        b.iter(|| assert!(hash(black_box("Tr4ding!Desk#42"), &stored)))
    });
    group.bench_function("policy_check", |b| {
        let policy = rampart::config::PasswordPolicy::default();
        b.iter(|| rampart::password::check_policy(&policy, black_box("Tr4ding!Desk#42"), "alice_1"))
    });
    group.finish();
}

criterion_group!(benches, tokens, passwords);
criterion_main!(benches);
