//! Per-request gateway costs: an in-memory rate-limit decision, a route lookup and the
//! intrusion scan of a typical request.
//!
//! `cargo bench -p rampart --bench pipeline`

// Benchmark code: a failed unwrap is a broken benchmark, and `criterion_group!` makes
// undocumented public functions.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use futures::FutureExt;
use rampart::config::{Config, Sources};
use rampart::rate_limit::{Policies, Quota, RateLimiter};
use rampart::routes::{Matched, RouteConfig, RouteTable};

fn limiter(c: &mut Criterion) {
    let mut policies = Policies::new();
    let policy = policies
        .add("standard", Quota::parse("1000000/s").unwrap())
        .unwrap();
    let limiter = RateLimiter::memory(policies);
    c.bench_function("rate limit decision, one hot key (memory)", |b| {
        b.iter(|| {
            // The memory store decides synchronously; the future is ready at once.
            let decision = limiter
                .check(policy, black_box("user:42"))
                .now_or_never()
                .expect("ready")
                .expect("decided");
            black_box(decision)
        });
    });
    let keys: Vec<String> = (0..100_000)
        .map(|i| format!("ip:10.0.{}.{}", i / 256, i % 256))
        .collect();
    let mut next = 0;
    c.bench_function("rate limit decision, 100k distinct keys (memory)", |b| {
        b.iter(|| {
            next = (next + 1) % keys.len();
            let decision = limiter
                .check(policy, &keys[next])
                .now_or_never()
                .expect("ready")
                .expect("decided");
            black_box(decision)
        });
    });
}

/// Decisions against the machine's Redis (127.0.0.1:6379): one at a time (the round trip) and
/// 64 in flight over the one multiplexed connection (the throughput one instance can get).
fn redis_limiter(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut policies = Policies::new();
    let policy = policies
        .add("standard", Quota::parse("1000000/s").unwrap())
        .unwrap();
    let prefix = format!("bench:{}:", std::process::id());
    let limiter = std::sync::Arc::new(
        runtime
            .block_on(RateLimiter::redis(
                "redis://127.0.0.1:6379",
                prefix,
                rampart::rate_limit::OnStoreError::Deny,
                policies,
            ))
            .unwrap(),
    );
    if runtime.block_on(limiter.check(policy, "probe")).is_err() {
        eprintln!("!!! SKIPPED: Redis at 127.0.0.1:6379 is unreachable; no Redis figures !!!");
        return;
    }
    c.bench_function("rate limit decision (redis, one at a time)", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(limiter.check(policy, "user:42").await.expect("decided")) });
    });
    c.bench_function(
        "rate limit decision (redis, 64 in flight, time per decision)",
        |b| {
            b.to_async(&runtime).iter_custom(|iterations| {
                let limiter = limiter.clone();
                async move {
                    let started = std::time::Instant::now();
                    let mut tasks = Vec::new();
                    for worker in 0..64u64 {
                        let limiter = limiter.clone();
                        let share = iterations / 64 + u64::from(worker < iterations % 64);
                        tasks.push(tokio::spawn(async move {
                            let key = format!("user:{worker}");
                            for _ in 0..share {
                                black_box(limiter.check(policy, &key).await.expect("decided"));
                            }
                        }));
                    }
                    for task in tasks {
                        task.await.unwrap();
                    }
                    started.elapsed()
                }
            });
        },
    );
}

fn route(path: &str, methods: &[&str], upstream: Option<&str>) -> RouteConfig {
    RouteConfig {
        methods: methods
            .iter()
            .map(|m| http::Method::from_bytes(m.as_bytes()).unwrap())
            .collect(),
        upstream: upstream.map(str::to_owned),
        ..RouteConfig::new(path)
    }
}

/// The example table (11 routes) against the same table with 2 000 more prefix routes: the
/// lookup must cost the same (the routes are indexed by path segment, not scanned).
fn routing(c: &mut Criterion) {
    let config = Config::load(&Sources {
        file_path: None,
        file: Some(rampart::demo::EXAMPLE_CONFIG.to_owned()),
        ..Default::default()
    })
    .expect("the example loads");
    let mut routes = config.routes.clone();
    routes.push(route("/orders/*", &["GET"], Some("orders")));
    let upstreams: BTreeMap<_, _> = config.upstreams.clone();
    let small = RouteTable::new(&routes, &upstreams, 1 << 20, &mut Policies::new()).unwrap();
    let mut many = routes.clone();
    many.extend((0..2000).map(|i| route(&format!("/service{i}/*"), &["GET"], Some("orders"))));
    let large = RouteTable::new(&many, &upstreams, 1 << 20, &mut Policies::new()).unwrap();
    for (name, table) in [
        (
            format!("route lookup ({} routes)", small.routes().len()),
            &small,
        ),
        (
            format!("route lookup ({} routes)", large.routes().len()),
            &large,
        ),
    ] {
        c.bench_function(&name, |b| {
            b.iter(|| {
                let matched = table.lookup(black_box(&http::Method::GET), black_box("/positions"));
                assert!(matches!(matched, Matched::Route(_)));
            });
        });
        c.bench_function(&format!("{name}, deep prefix path"), |b| {
            b.iter(|| {
                let matched = table.lookup(
                    black_box(&http::Method::GET),
                    black_box("/orders/12345/fills"),
                );
                assert!(matches!(matched, Matched::Route(_)));
            });
        });
    }
}

fn intrusion(c: &mut Criterion) {
    c.bench_function("intrusion scan, path and query", |b| {
        b.iter(|| {
            black_box(rampart::intrusion::scan_request(
                black_box("/orders/12345"),
                black_box(Some("symbol=INFY&side=BUY&limit=50")),
                None,
            ))
        });
    });
    let body = br#"{"symbol":"INFY","side":"BUY","quantity":10,"price":1500.5,"note":"rebalance the portfolio"}"#;
    c.bench_function("intrusion scan, small JSON body", |b| {
        b.iter(|| black_box(rampart::intrusion::scan_bytes(black_box(body))));
    });
}

criterion_group!(benches, limiter, redis_limiter, routing, intrusion);
criterion_main!(benches);
