//! Black-box tests: each starts a gateway on port 0 against a fresh database and talks
//! real HTTP to it. Every test runs on SQLite and on PostgreSQL; those about session
//! state run a third time with that state in Redis.

// Test code: a failed unwrap is a failed test, and the helpers' `pub` is for the sibling
// modules of this test binary.
#![allow(clippy::unwrap_used, unreachable_pub)]

mod accounts;
mod admin;
mod api_keys;
mod audit;
mod audit_operations;
mod backend;
mod bodies;
mod forwarded_for;
mod forwarding;
mod gateway;
mod helpers;
mod hostile;
mod http;
mod key_cache;
mod login;
mod openapi;
mod paths;
mod protocols;
mod rate_limits;
mod readiness;
mod registration;
mod server;
mod session_security;
mod tokens;
mod upstreams;
