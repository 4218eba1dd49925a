//! Rampart: a security gateway and identity service for trading platforms.
//!
//! Every request meets the stages of [`gateway::pipeline`] in this order: the route,
//! who is asking, rate limits, authorization, body policy and intrusion detection, then the
//! upstream through its circuit breaker (or the built-in identity API), and on the way out
//! security headers, audit and metrics. Durable state lives behind [`store::Store`]
//! (SQLite or PostgreSQL); short-lived security state (refresh tokens, lockouts, nonces,
//! rate limits) can move to Redis so that any number of stateless instances share it.
//!
//! # The module map
//!
//! Imports run one way: a module uses only the floors below it, never one above, and the
//! files inside a module never use each other in a loop (`tests/module_graph.rs` fails on
//! any loop; `cargo test --test module_graph -- --nocapture` prints the floors). From the
//! top down:
//!
//! | floor | module | owns | may import |
//! |---|---|---|---|
//! | 13 | [`app`] | start-up: config → stores → services → listener; signals, background tasks | everything |
//! | 12 | [`server`] | the listener: TLS, connection caps, HTTP/1.1 and h2 deadlines, drain | gateway and below |
//! | 11 | [`gateway`] | the data plane: [`gateway::pipeline`] and one file per stage (`route`, `identify`, `limit`, `authorize`, `validate`), [`gateway::refusal`], the access log | every floor below |
//! | 10 | [`operations`] | `/healthz`, `/readyz`, `/metrics`, JWKS, `/openapi.json`, `/docs` | openapi, state and below |
//! | 9 | [`openapi`] | the OpenAPI document from the handlers; the `/docs` page | identity and below |
//! | 8 | [`identity`] | the identity API handlers (SPEC §2) | authentication, state and below |
//! | 8 | [`proxy`] | forwarding to an upstream: headers both ways, retries, WebSocket tunnels, health checks | authentication, state and below |
//! | 7 | [`authentication`] | credentials: bearer and cookie tokens, CSRF, API keys and signatures | state and below |
//! | 6 | [`state`] | the shared services one running gateway holds | config and below |
//! | 5 | [`config`] | layering file, `.env` and environment; gathers every section's problems | the modules that own sections |
//! | 4 | [`key_cache`] | verified API keys in memory, invalidated on every instance | store, tokens |
//! | 4 | [`security_headers`] | the headers every response carries | routes |
//! | 3 | [`audit`] | the audit service: verify, export, retention, throttled rows | store, chain |
//! | 3 | [`routes`] | the route table, canonical paths, route policy | upstream, rate_limit |
//! | 3 | [`sealing`] | stored secrets bound to their rows; key rotation | store, keyring, chain |
//! | 3 | [`tokens`] | access, refresh and CSRF tokens; the revocation cache | store, secrets |
//! | 2 | [`store`] | SQLite, PostgreSQL and Redis stores; the audit writer | chain, error |
//! | 2 | [`upstream`] | targets, keep-alive connections, balancing, header policy, tunnel counts | circuit_breaker |
//! | 2 | [`brokers`] | calls to brokers' hosts through the SSRF-safe client | outbound, circuit_breaker |
//! | 1 | [`chain`] | audit records and the hash chain that makes them tamper-evident | floor 0 |
//! | 1 | [`rate_limit`] | quotas, GCRA, in-memory and Redis limiters, `RateLimit` headers | floor 0 |
//! | 1 | [`circuit_breaker`], [`intrusion`], [`keyring`], [`password`], [`json`], [`server_config`] | engines and their config sections | floor 0 |
//! | 0 | [`settings`], [`request`], [`error`], [`client_ip`], [`outbound`], [`metrics`], [`clock`], [`secrets`], [`shutdown`], [`time_format`], [`verified_keys`], [`demo`] | shared vocabulary and engines that import nothing of the crate | nothing of the crate |

pub mod app;
pub mod audit;
pub mod authentication;
pub mod brokers;
pub mod chain;
pub mod circuit_breaker;
pub mod client_ip;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod identity;
pub mod intrusion;
pub mod json;
pub mod key_cache;
pub mod keyring;
pub mod metrics;
pub mod openapi;
pub mod operations;
pub mod outbound;
pub mod password;
pub mod proxy;
pub mod rate_limit;
pub mod request;
pub mod routes;
pub mod sealing;
pub mod secrets;
pub mod security_headers;
pub mod server;
pub mod server_config;
pub mod settings;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod time_format;
pub mod tokens;
pub mod upstream;
pub mod verified_keys;

/// Entry points for the fuzz targets under `fuzz/` (feature `fuzzing`, off in every normal
/// build): the few checks they exercise that are not public API. Not for other use.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    /// The signing headers of an API-key request (`X-Timestamp`, `X-Nonce`,
    /// `X-Signature`), checked for shape as a request's are.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SigningHeaders {
        /// `X-Timestamp` as sent.
        pub timestamp: String,
        /// `X-Timestamp` as Unix seconds.
        pub unix: i64,
        /// `X-Nonce` as sent.
        pub nonce: String,
        /// `X-Signature`, decoded from hex.
        pub signature: [u8; 32],
    }

    /// The signing headers of `headers`: `Ok(None)` when none is present, `Err` with the
    /// reason when they are refused (only some present, repeated, or malformed).
    ///
    /// # Errors
    /// The reason the headers are refused.
    pub fn signing_headers(headers: &http::HeaderMap) -> Result<Option<SigningHeaders>, String> {
        crate::authentication::api_key::signing_headers(headers).map(|found| {
            found.map(|(timestamp, unix, nonce, signature)| SigningHeaders {
                timestamp,
                unix,
                nonce,
                signature,
            })
        })
    }
}

/// The old path of [`outbound`], which configuration validation still names.
#[doc(hidden)]
pub use outbound as ssrf;
