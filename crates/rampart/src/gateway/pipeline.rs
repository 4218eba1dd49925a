//! The stages a request goes through, in order, over one [`Context`]:
//!
//! 1. client IP and request id ([`Context::begin`]);
//! 2. CORS preflight, answered at once when `[cors]` is configured;
//! 3. the route ([`super::route::resolve`]): the path in canonical form, its `[[routes]]`
//!    entry, 400 for a path without a safe canonical form or a case respelling, 405;
//! 4. who is asking ([`super::identify::identify`]), which refuses only an API key
//!    whose client's anonymous budget is spent (429) or a store that is down;
//! 5. rate limits ([`super::limit::enforce`]): tier, route, built-in identity limits;
//! 6. authorization ([`super::authorize::authorize`]): 401/403;
//! 7. body policy ([`super::validate::validate`]): size (413), encoding (415),
//!    intrusion detection (400 in `block` mode);
//! 8. the upstream through its circuit breaker ([`crate::proxy::forward`]), or Rampart's
//!    own identity and operations API (axum).
//!
//! A stage that refuses returns a [`Refusal`]; [`super::refusal::answer`] turns it into the
//! answer. Nothing is boxed per stage and the context lives on the request's own future.

use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method};
use tower::ServiceExt;

use super::Inner;
use super::context::Context;
use super::refusal::{self, Refusal};
use crate::routes::MatchedRoute;

/// Runs the stages; a refusal is answered here. `canonical` receives the path and query in
/// canonical form once the route stage has made it.
pub(super) async fn run(
    inner: &Inner,
    context: &mut Context,
    request: Request,
    canonical: &mut Option<PathAndQuery>,
) -> Response {
    match stages(inner, context, request, canonical).await {
        Ok(response) => response,
        Err(refusal) => refusal::answer(&inner.state, context, refusal),
    }
}

/// What a route without a method list passes on: every method but CONNECT and TRACE.
const ANY_METHOD: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

async fn stages(
    inner: &Inner,
    context: &mut Context,
    mut request: Request,
    canonical: &mut Option<PathAndQuery>,
) -> Result<Response, Refusal> {
    let state = &inner.state;
    if let Some(cors) = &inner.cors
        && request.method() == Method::OPTIONS
    {
        return Ok(cors.preflight());
    }
    // CONNECT and TRACE are never passed on: one would open a tunnel through the gateway,
    // the other would echo the request's credentials back. Each 405 names what is allowed
    // (RFC 9110). CONNECT names a host rather than a path, so it is refused before the
    // path is looked at; TRACE once the route is known, naming the route's methods.
    // Rampart's own paths answer TRACE from their router, which has no handler for it.
    if *request.method() == Method::CONNECT {
        return Err(Refusal::method_not_allowed(Some(HeaderValue::from_static(
            ANY_METHOD,
        ))));
    }
    super::route::resolve(state, context, &mut request)?;
    if *request.method() == Method::TRACE
        && let Some(route) = context
            .route
            .as_ref()
            .filter(|route| route.upstream.is_some())
    {
        let allow = if route.methods.is_empty() {
            ANY_METHOD.to_owned()
        } else {
            let methods: Vec<&str> = route
                .methods
                .iter()
                .filter(|method| !matches!(**method, Method::CONNECT | Method::TRACE))
                .map(Method::as_str)
                .collect();
            methods.join(", ")
        };
        return Err(Refusal::method_not_allowed(
            HeaderValue::from_str(&allow).ok(),
        ));
    }
    // The access line and the response's cache policy go by the path the decisions were
    // made on.
    *canonical = request.uri().path_and_query().cloned();
    let request = super::identify::identify(state, context, request).await?;
    super::limit::enforce(state, context, request.uri().path()).await?;
    super::authorize::authorize(state, context)?;
    let mut request = super::validate::validate(state, context, request).await?;

    let upstream = context.route.as_ref().and_then(|route| {
        let name = route.upstream.as_deref()?;
        Some((route, state.routes.upstreams.get(name)?))
    });
    if let Some((route, upstream)) = upstream {
        // The backend's headers are made from the context itself, not from extensions.
        let caller = crate::proxy::Caller {
            client: context.client,
            id: &context.id,
            id_header: context.id_header.as_ref(),
            authentication: &context.authentication,
            key_id: context.key_id,
            route,
        };
        let started = tokio::time::Instant::now();
        let response = crate::proxy::forward(state, upstream, &caller, request).await;
        context.upstream = Some((upstream.name, started.elapsed()));
        return Ok(response);
    }
    // What the handlers read.
    let extensions = request.extensions_mut();
    extensions.insert(context.client);
    extensions.insert(context.id.clone());
    extensions.insert(context.authentication.clone());
    if let Some(route) = &context.route {
        extensions.insert(MatchedRoute(Arc::clone(route)));
    }
    match inner.api.clone().oneshot(request).await {
        Ok(response) => Ok(response),
        Err(never) => match never {},
    }
}
