//! What the stages learn about one request, gathered in one [`Context`] that lives on the
//! request's own future: client IP and id first, then route, identity, limits and the
//! upstream's answer time.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request};
use http::{HeaderValue, Method, header};

use crate::authentication::{Authentication, Principal};
use crate::client_ip::{self, ClientIp};
use crate::rate_limit::{Decision, PolicyId};
use crate::request::{RequestId, is_well_formed_id};
use crate::routes::Route;
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
    /// Set by the route stage from [`crate::request::is_operations_path`].
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
