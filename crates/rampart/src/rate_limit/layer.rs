//! The pipeline's rate-limiting layer: picks the policies that apply to a request and
//! enforces them.
//!
//! Every request counts against its caller's tier: `anonymous` per client IP, `standard` or
//! `premium` (the token's `tier`) per user. A matched route's own `rate_limit` counts on top,
//! per caller too. The first refusal answers 429 `rate_limited` with `Retry-After`; every
//! limited response carries `RateLimit-Policy` and `RateLimit`. Refusals are counted in
//! `rampart_rate_limit_hits_total{policy}` and audited as `rate_limit_exceeded`, one row per
//! caller and policy a minute.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Decision, PolicyId, RateLimiter};
use crate::audit::{record_in_background, request_entry};
use crate::authentication::Authentication;
use crate::client_ip::ClientIp;
use crate::error::ApiError;
use crate::metrics::PolicyLabel;
use crate::routes::MatchedRoute;
use crate::state::AppState;

/// The tier policies, registered once.
#[derive(Debug, Clone, Copy)]
pub struct Tiers {
    /// Per client IP, for requests without valid credentials.
    pub anonymous: PolicyId,
    /// Per user, tier `standard` (and any tier not named here).
    pub standard: PolicyId,
    /// Per user, tier `premium`.
    pub premium: PolicyId,
}

/// The policy names of the tiers, as they appear in headers and metrics.
pub const TIER_NAMES: [&str; 3] = ["anonymous", "standard", "premium"];

impl Tiers {
    /// Registers the three tier policies of `config`.
    ///
    /// # Errors
    /// A quota that configuration validation should already have refused.
    pub fn register(
        policies: &mut super::Policies,
        config: &crate::config::RateLimitsConfig,
    ) -> Result<Self, String> {
        let mut add = |name: &str, text: &str| {
            let quota = super::Quota::parse(text)
                .map_err(|error| format!("rate_limits.{name}: {error}"))?;
            policies.add(name, quota).map_err(|error| error.to_string())
        };
        Ok(Self {
            anonymous: add(TIER_NAMES[0], &config.anonymous)?,
            standard: add(TIER_NAMES[1], &config.standard)?,
            premium: add(TIER_NAMES[2], &config.premium)?,
        })
    }
}

/// A policy name as a `'static` metric label (names are fixed at start-up).
fn label(limiter: &RateLimiter, policy: PolicyId) -> &'static str {
    limiter.policy_label(policy).unwrap_or("unknown")
}

/// Enforces the tier and route limits.
pub async fn enforce(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if crate::operations::PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let limiter: &Arc<RateLimiter> = &state.limiter;
    let tiers = state.tiers;
    // The caller: a user for valid credentials, else the client IP.
    let mut key = String::with_capacity(48);
    let tier = match request.extensions().get::<Authentication>() {
        Some(Authentication::Authenticated(principal)) => {
            let _ = write!(key, "user:{}", principal.user_id);
            match &*principal.tier {
                "premium" => tiers.premium,
                _ => tiers.standard,
            }
        }
        _ => {
            let ip = request
                .extensions()
                .get::<ClientIp>()
                .map(|ip| ip.0)
                .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
            let _ = write!(key, "ip:{ip}");
            tiers.anonymous
        }
    };
    let route_policy = request
        .extensions()
        .get::<MatchedRoute>()
        .and_then(|route| route.0.limit_policy);

    let mut decisions: [Option<(PolicyId, Decision)>; 2] = [None, None];
    for (slot, policy) in [Some(tier), route_policy].into_iter().enumerate() {
        let Some(policy) = policy else { continue };
        let decision = match limiter.check(policy, &key).await {
            Ok(decision) => decision,
            Err(super::StoreUnavailable) => {
                return ApiError::ServiceUnavailable {
                    message: "The rate-limit store is unavailable".into(),
                    retry_after: Some(std::time::Duration::from_secs(1)),
                }
                .into_response();
            }
        };
        decisions[slot] = Some((policy, decision));
        if !decision.allowed {
            break;
        }
    }

    let refused = decisions
        .iter()
        .flatten()
        .find(|(_, decision)| !decision.allowed)
        .copied();
    let mut response = match refused {
        None => next.run(request).await,
        Some((policy, decision)) => {
            let name = label(limiter, policy);
            state
                .metrics
                .rate_limit_hits
                .get_or_create(&PolicyLabel { policy: name })
                .inc();
            audit_refusal(&state, &request, &key, name);
            ApiError::RateLimited {
                retry_after: decision.retry_after.unwrap_or_default(),
            }
            .into_response()
        }
    };
    let headers = response.headers_mut();
    for (policy, decision) in decisions.iter().flatten() {
        if let Some(fields) = limiter.headers(*policy, decision) {
            fields.append_to(headers);
        }
    }
    response
}

fn audit_refusal(state: &AppState, request: &Request, key: &str, policy: &'static str) {
    let now = state.now();
    let throttle_key = format!("{policy}|{key}");
    let Some(held_back) = state.audit_throttle.admit(&throttle_key, now) else {
        return;
    };
    let entry = request_entry(
        now,
        "rate_limit_exceeded",
        request,
        serde_json::json!({
            "policy": policy,
            "refusals_since_last_entry": held_back,
        }),
    );
    record_in_background(state.stores.data.clone(), entry);
}
