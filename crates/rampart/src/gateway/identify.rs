//! The identity stage: who is asking. A bearer token, a cookie session (with its CSRF
//! token on unsafe methods) or an API key (charged to its client's anonymous budget before
//! its lookup unless it verified recently); the outcome goes into the [`Context`], and a
//! refused credential is counted and audited here.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::Request;
use http::{HeaderMap, Method, header};

use super::context::Context;
use super::limit::{charge_anonymous, refund_anonymous, refuse_when_spent};
use super::refusal::{Audit, Metric, Note, Refusal as GatewayRefusal};
use crate::authentication::{
    Authentication, CSRF_HEADER, Credential, Failure, Refusal, api_key, authenticate_headers,
    is_unsafe,
};
use crate::error::ApiError;
use crate::state::AppState;

/// The identity stage: records who is asking in the context; never refuses by itself,
/// except with 429 when a client whose anonymous budget is spent presents an API key not
/// verified recently (checking it would cost a lookup) and with 413/400/503 when a signed
/// body cannot be read or a store is down.
///
/// # Errors
/// The refusals above.
pub async fn identify(
    state: &AppState,
    context: &mut Context,
    mut request: Request,
) -> Result<Request, GatewayRefusal> {
    // Probes, scrapers and public documents need no identity (SPEC §8).
    if context.operations {
        return Ok(request);
    }
    let headers = request.headers();
    let bearer = headers.contains_key(header::AUTHORIZATION);
    let (authentication, failure) = if bearer && headers.contains_key(api_key::KEY_HEADER) {
        // Two credentials: no telling which is meant.
        (
            Authentication::Refused(Refusal::InvalidKey),
            Some(Failure::Ambiguous),
        )
    } else if !bearer && api_key::is_presented(headers) {
        let ip = context.client.0;
        // A key that authenticated recently is looked up and checked as usual but not
        // charged: junk from the same address cannot lock its client out, nor can the
        // anonymous burst cap its requests in flight.
        let now = state.now();
        let digest = single_key(request.headers()).map(crate::verified_keys::digest);
        let known = digest.is_some_and(|digest| state.verified_keys.contains(&digest, now));
        // Any other is charged before the lookup, so that guesses in flight at once cannot
        // outrun the budget; given back as soon as the key is found to hold (a signature
        // that then fails is charged by the limiter like any refused credential).
        let charged = if known {
            None
        } else {
            let charged = charge_anonymous(state, ip).await;
            refuse_when_spent(state, context, &charged)?;
            charged.ok()
        };
        let held = AtomicBool::new(charged.is_some());
        let key_found = || async {
            if held.swap(false, Ordering::Relaxed) {
                refund_anonymous(state, ip).await;
            }
        };
        // Boxed: a key's lookup and a signed body's read make a large future, which would
        // otherwise be part of every request's.
        let outcome = Box::pin(api_key::authenticate(state, request, key_found)).await;
        let held = held.load(Ordering::Relaxed);
        if let (Some(digest), false) = (digest, outcome.is_ok()) {
            // It failed: charged before its lookup again from now on.
            state.verified_keys.remove(&digest);
        }
        match outcome {
            Ok((authenticated, principal)) => {
                if let Some(digest) = digest {
                    state.verified_keys.insert(digest, now);
                }
                request = authenticated;
                context.key_id = request
                    .extensions()
                    .get::<api_key::KeyId>()
                    .map(|key| key.0);
                (Authentication::Authenticated(principal), None)
            }
            Err(api_key::Rejection::Refused(refused, failure)) => {
                request = *refused;
                if held {
                    context.anonymous_charge = charged;
                }
                (Authentication::Refused(Refusal::InvalidKey), Some(failure))
            }
            Err(api_key::Rejection::Respond(response)) => {
                if held {
                    // Refused before the key was found (a store is down): not its fault.
                    refund_anonymous(state, ip).await;
                } else {
                    // A body over the limit or unreadable, a secret that cannot be opened:
                    // answered here, before the limiter, so charged here, or such requests
                    // (each two lookups and a body read) would cost nothing.
                    let _ = charge_anonymous(state, ip).await;
                }
                return Err(GatewayRefusal::ready(response));
            }
        }
    } else {
        let authentication = authenticate_headers(state, request.method(), request.headers());
        let authentication =
            confirm_csrf(state, authentication, request.method(), request.headers()).await?;
        let failure = match authentication {
            Authentication::Refused(Refusal::InvalidToken) if bearer => Some(Failure::Bearer),
            Authentication::Refused(Refusal::InvalidToken) => Some(Failure::Cookie),
            Authentication::Refused(Refusal::CsrfFailed) => Some(Failure::Csrf),
            _ => None,
        };
        (authentication, failure)
    };
    if let Some(failure) = failure {
        record_failure(state, context, failure);
    }
    context.authentication = authentication;
    Ok(request)
}

/// For a cookie-authenticated unsafe request whose CSRF token matched its access token:
/// checks it is still its login's current one. An access cookie outlives the refresh that
/// replaced it (until it expires), and with it its CSRF token; the login's stored hash is
/// the one that counts, so a replaced token stops working at once.
async fn confirm_csrf(
    state: &AppState,
    authentication: Authentication,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Authentication, ApiError> {
    let Authentication::Authenticated(principal) = &authentication else {
        return Ok(authentication);
    };
    if principal.credential != Credential::Cookie || !is_unsafe(method) {
        return Ok(authentication);
    }
    let family = state.stores.sessions.family(&principal.family_id).await?;
    // The login must still be live: the revocation cache may lag, the store does not.
    let Some(family) =
        family.filter(|family| family.revoked_at.is_none() && family.expires_at > state.now())
    else {
        return Ok(Authentication::Refused(Refusal::InvalidToken));
    };
    let presented = headers
        .get(CSRF_HEADER)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    if family.csrf_hash.is_some()
        && !state.tokens.csrf_matches_hash(
            &principal.family_id,
            family.csrf_hash.as_deref(),
            presented,
        )
    {
        return Ok(Authentication::Refused(Refusal::CsrfFailed));
    }
    Ok(authentication)
}

/// Counts a refused credential and audits it, one `auth_failed` row per client address
/// and minute standing for every failure since the last.
fn record_failure(state: &AppState, context: &Context, failure: Failure) {
    let keys = crate::rate_limit::CallerKeys::new(
        context.client.0,
        state.config.rate_limits.ipv6_prefix,
        None,
        None,
    );
    let note = Note {
        metric: Metric::AuthFailure(failure.label()),
        audit: Some(Audit {
            action: "auth_failed",
            throttle: Some((
                format!("auth_failed|{}", keys.ip()),
                "failures_since_last_entry",
            )),
            details: serde_json::json!({ "reason": failure.label() }),
        }),
    };
    super::refusal::record(state, context, note);
}

/// The one `X-API-Key` value, if there is exactly one.
fn single_key(headers: &HeaderMap) -> Option<&[u8]> {
    let mut values = headers.get_all(api_key::KEY_HEADER).iter();
    let first = values.next()?;
    values.next().is_none().then(|| first.as_bytes())
}
