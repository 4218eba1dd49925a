//! The stages a request goes through, in order, over one [`Context`]:
//!
//! 1. client IP and request id ([`Context::begin`]);
//! 2. CORS preflight, answered at once when `[cors]` is configured;
//! 3. the route ([`crate::routes::resolve`]): the path in canonical form, its `[[routes]]`
//!    entry, 400 for a path without a safe canonical form or a case respelling, 405;
//! 4. who is asking ([`crate::authentication::identify`]), which refuses only an API key
//!    whose client's anonymous budget is spent (429) or a store that is down;
//! 5. rate limits ([`crate::rate_limit::enforce`]): tier, route, built-in identity limits;
//! 6. authorization ([`crate::authorization::authorize`]): 401/403;
//! 7. body policy ([`crate::validation::validate`]): size (413), encoding (415),
//!    intrusion detection (400 in `block` mode);
//! 8. the upstream through its circuit breaker ([`crate::proxy::forward`]), or Rampart's
//!    own identity and operations API (axum).
//!
//! A stage that refuses returns a [`Refusal`]; [`super::refusal::answer`] turns it into the
//! answer. Nothing is boxed per stage and the context lives on the request's own future.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use axum::response::Response;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, header};
use tower::ServiceExt;

use super::Inner;
use super::refusal::{self, Refusal};
use crate::authentication::{Authentication, Principal};
use crate::client_ip::{self, ClientIp};
use crate::rate_limit::{Decision, PolicyId};
use crate::request::{RequestId, is_well_formed_id};
use crate::routes::{MatchedRoute, Route};
use crate::state::AppState;

/// Everything the stages learn about a request, in one place.
#[derive(Debug)]
pub struct Context {
    /// The trusted client IP.
    pub client: ClientIp,
    /// The request id (adopted from a well-formed `X-Request-Id`, else a fresh ULID).
    pub id: RequestId,
    /// The same id as a header value, for the response and the backend.
    pub id_header: Option<HeaderValue>,
    /// The method.
    pub method: Method,
    /// `User-Agent`, for audit rows and the access log.
    pub user_agent: Option<HeaderValue>,
    /// A probe, scraper or public document path (SPEC §8): no route, identity or limit.
    /// Set by the route stage from [`crate::operations::is_operations_path`].
    pub operations: bool,
    /// The matched `[[routes]]` entry.
    pub route: Option<Arc<Route>>,
    /// Who is asking.
    pub authentication: Authentication,
    /// The API key the request authenticated with.
    pub key_id: Option<i64>,
    /// A refused API key's charge to the anonymous budget, taken before its lookup.
    pub anonymous_charge: Option<Decision>,
    /// The rate-limit decisions taken (tier, route, identity limit), for the response's
    /// `RateLimit` fields.
    pub limits: [Option<(PolicyId, Decision)>; 3],
    /// The upstream the request went to, and how long it took.
    pub upstream: Option<(&'static str, std::time::Duration)>,
}

impl Context {
    /// The client IP and request id of `request`; the id is also put in its
    /// `X-Request-Id` header.
    pub fn begin(state: &AppState, request: &mut Request) -> Self {
        let adopted = request
            .headers()
            .get("x-request-id")
            .filter(|value| value.to_str().is_ok_and(is_well_formed_id))
            .cloned();
        // One header value serves the request, the response and the backend; the text
        // form is made once for logs, audit rows and error bodies.
        let (id, id_header): (Arc<str>, Option<HeaderValue>) = match adopted {
            Some(header) => (Arc::from(header.to_str().unwrap_or("-")), Some(header)),
            None => {
                let mut buffer = [0u8; ulid::ULID_LEN];
                let text = ulid::Ulid::new().array_to_str(&mut buffer);
                (Arc::from(&*text), HeaderValue::from_str(text).ok())
            }
        };
        let peer = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), |info| info.0);
        let client = client_ip::resolve(
            peer,
            request.headers(),
            &state.config.server.trusted_proxies,
        );
        if let Some(value) = &id_header {
            request.headers_mut().insert("x-request-id", value.clone());
        }
        Self {
            client: ClientIp(client),
            id: RequestId(id),
            id_header,
            method: request.method().clone(),
            user_agent: request.headers().get(header::USER_AGENT).cloned(),
            operations: false,
            route: None,
            authentication: Authentication::Anonymous,
            key_id: None,
            anonymous_charge: None,
            limits: [None; 3],
            upstream: None,
        }
    }

    /// The authenticated caller.
    pub fn principal(&self) -> Option<&Principal> {
        self.authentication.principal()
    }

    /// The authenticated caller's user id.
    pub fn user_id(&self) -> Option<i64> {
        self.principal().map(|principal| principal.user_id)
    }
}

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
    // the other would echo the request's credentials back.
    if matches!(*request.method(), Method::CONNECT | Method::TRACE) {
        return Err(Refusal::method_not_allowed(None));
    }
    crate::routes::resolve(state, context, &mut request)?;
    // The access line and the response's cache policy go by the path the decisions were
    // made on.
    *canonical = request.uri().path_and_query().cloned();
    let request = crate::authentication::identify(state, context, request).await?;
    crate::rate_limit::enforce(state, context, request.uri().path()).await?;
    crate::authorization::authorize(state, context)?;
    let mut request = crate::validation::validate(state, context, request).await?;

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
