//! The rate-limit stage: picks the policies that apply to a request and enforces them.
//!
//! Every request counts against its caller's tier: `anonymous` per client address (an IPv6
//! client's prefix), `standard` or `premium` (the token's `tier`) per user; a request whose
//! credentials were refused is anonymous. A matched route's own `rate_limit` counts on top,
//! keyed as its `per` says, and so does an identity route's built-in limit (SPEC §3). The
//! first refusal answers 429 `rate_limited` with `Retry-After`; every limited response
//! carries `RateLimit-Policy` and `RateLimit`. Refusals are counted in
//! `rampart_rate_limit_hits_total{policy}` and audited as `rate_limit_exceeded`, one row per
//! caller and policy a minute.

use std::net::IpAddr;
use std::sync::Arc;

use super::context::Context;
use super::refusal::{Audit, Metric, Note, Refusal};
use crate::error::ApiError;
use crate::rate_limit::{CallerKeys, Decision, Per, PolicyId, RateLimiter, StoreUnavailable};
use crate::state::AppState;

/// The keys of the request in `context`, from what the stages before recorded.
fn caller_keys(state: &AppState, context: &Context) -> CallerKeys {
    CallerKeys::new(
        context.client.0,
        state.config.rate_limits.ipv6_prefix,
        context.user_id(),
        context.key_id,
    )
}

/// A policy name as a `'static` metric label (names are fixed at start-up).
fn label(limiter: &RateLimiter, policy: PolicyId) -> &'static str {
    limiter.policy_label(policy).unwrap_or("unknown")
}

/// The rate-limit stage: the tier, route and built-in identity limits. The decisions go
/// into the context, whose answer carries their `RateLimit` fields.
///
/// # Errors
/// 429 for the first limit refused, 503 when the shared store cannot decide.
pub async fn enforce(state: &AppState, context: &mut Context, path: &str) -> Result<(), Refusal> {
    if context.operations {
        return Ok(());
    }
    let limiter: &Arc<RateLimiter> = &state.limiter;
    let tiers = state.tiers;
    let keys = caller_keys(state, context);
    // The tier: the user's for valid credentials; anonymous (per address) otherwise, which
    // is also what every refused credential spends.
    let tier = match context.principal() {
        Some(principal) => match &*principal.tier {
            "premium" => tiers.premium,
            _ => tiers.standard,
        },
        None => tiers.anonymous,
    };
    let route = context
        .route
        .as_ref()
        .and_then(|route| route.limit_policy.map(|policy| (policy, route.per)));
    let identity = state
        .routes
        .identity_limit(&context.method, path)
        .map(|limit| (limit.policy, limit.per));

    // A refused API key was charged to the anonymous budget before it was looked up.
    let charged = context.anonymous_charge.filter(|_| tier == tiers.anonymous);
    let mut refused = None;
    for (slot, check) in [Some((tier, Per::User)), route, identity]
        .into_iter()
        .enumerate()
    {
        let Some((policy, per)) = check else { continue };
        if let (0, Some(decision)) = (slot, charged) {
            context.limits[slot] = Some((policy, decision));
            if !decision.allowed {
                refused = Some((policy, per, decision));
                break;
            }
            continue;
        }
        let decision = match limiter.check(policy, keys.per(per)).await {
            Ok(decision) => decision,
            Err(StoreUnavailable) => {
                context.limits = [None; 3];
                return Err(store_unavailable());
            }
        };
        context.limits[slot] = Some((policy, decision));
        if !decision.allowed {
            refused = Some((policy, per, decision));
            break;
        }
    }
    match refused {
        None => Ok(()),
        Some((policy, per, decision)) => Err(refusal(state, keys.per(per), policy, &decision)),
    }
}

/// Charges one request to the anonymous budget of the client at `ip`, before checking an
/// API key: so that failed keys cost the budget whatever their number in flight, and once
/// it is spent further ones cost no lookup. A key that turns out valid is given the request
/// back ([`refund_anonymous`]).
///
/// # Errors
/// As [`RateLimiter::check`].
pub async fn charge_anonymous(state: &AppState, ip: IpAddr) -> Result<Decision, StoreUnavailable> {
    let keys = CallerKeys::new(ip, state.config.rate_limits.ipv6_prefix, None, None);
    state.limiter.check(state.tiers.anonymous, keys.ip()).await
}

/// Gives back what [`charge_anonymous`] took, for a credential that held (or a request
/// refused for another reason). A store failure only leaves the charge in place.
pub async fn refund_anonymous(state: &AppState, ip: IpAddr) {
    let keys = CallerKeys::new(ip, state.config.rate_limits.ipv6_prefix, None, None);
    let _ = state.limiter.refund(state.tiers.anonymous, keys.ip()).await;
}

/// Refuses a request whose [`charge_anonymous`] was refused (429, counted and audited;
/// the decision's `RateLimit` fields go into the context) or could not be decided (503).
///
/// # Errors
/// The refusals above.
pub fn refuse_when_spent(
    state: &AppState,
    context: &mut Context,
    charged: &Result<Decision, StoreUnavailable>,
) -> Result<(), Refusal> {
    let decision = match charged {
        Ok(decision) if decision.allowed => return Ok(()),
        Ok(decision) => *decision,
        Err(StoreUnavailable) => return Err(store_unavailable()),
    };
    let keys = caller_keys(state, context);
    let policy = state.tiers.anonymous;
    context.limits[0] = Some((policy, decision));
    Err(refusal(state, keys.ip(), policy, &decision))
}

fn store_unavailable() -> Refusal {
    Refusal::new(ApiError::ServiceUnavailable {
        message: "The rate-limit store is unavailable".into(),
        retry_after: Some(std::time::Duration::from_secs(1)),
    })
}

/// The 429 for a refused decision, counted and audited (one row per caller and policy a
/// minute).
fn refusal(state: &AppState, key: &str, policy: PolicyId, decision: &Decision) -> Refusal {
    let name = label(&state.limiter, policy);
    Refusal::new(ApiError::RateLimited {
        retry_after: decision.retry_after.unwrap_or_default(),
    })
    .noted(Note {
        metric: Metric::RateLimitHit(name),
        audit: Some(Audit {
            action: "rate_limit_exceeded",
            throttle: Some((format!("{name}|{key}"), "refusals_since_last_entry")),
            details: serde_json::json!({ "policy": name }),
        }),
    })
}
