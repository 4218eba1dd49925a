//! Rampart: a security gateway and identity service for trading platforms.
//!
//! Every request meets the stages of [`gateway::pipeline`] in this order: rate limiting,
//! authentication, authorization, input validation and intrusion detection, the
//! circuit breaker of its upstream, the backend (or the built-in identity API), then
//! security headers, audit and metrics on the way out. Durable state lives behind
//! [`store::Store`] (SQLite or PostgreSQL); short-lived security state (refresh
//! tokens, lockouts, nonces, rate limits) can move to Redis so that any number of
//! stateless instances share it.

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

/// The old path of [`outbound`], which configuration validation still names.
#[doc(hidden)]
pub use outbound as ssrf;
