//! The data plane: one service that takes every request through the pipeline's stages
//! ([`pipeline`]) and finishes every answer in one place on the way out ([`Gateway::handle`]):
//! the JSON body of framework rejections, `RateLimit` fields, CORS, security headers,
//! `X-Request-Id`, metrics and the access line.

pub mod access_log;
pub mod authorize;
pub mod context;
pub mod identify;
pub mod limit;
pub mod pipeline;
pub mod refusal;
pub mod route;
pub mod validate;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};

use crate::error::{ApiError, OwnBody, REQUEST_ID};
use crate::metrics::{RequestLabels, RouteLabel, UpstreamStatusLabels, method_label};
use crate::request::RouteName;
use crate::state::AppState;
use context::Context;

/// The whole gateway as one service; cheap to clone.
#[derive(Clone)]
pub struct Gateway(Arc<Inner>);

/// What the gateway is made of, built once.
pub struct Inner {
    state: AppState,
    /// Rampart's own API: identity and operations.
    api: Router,
    cors: Option<Cors>,
    /// Whether to write access lines.
    access: bool,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Gateway")
    }
}

impl Gateway {
    /// The gateway of `state`.
    pub fn new(state: AppState) -> Self {
        let api = crate::identity::routes()
            .merge(crate::operations::routes())
            .fallback(|| async { ApiError::NotFound })
            .layer(DefaultBodyLimit::max(state.config.server.max_body))
            .with_state(state.clone());
        Self(Arc::new(Inner {
            cors: Cors::new(&state.config.cors_allowed_origins),
            access: state.config.log.access,
            api,
            state,
        }))
    }

    /// Serves one request.
    pub async fn handle(&self, mut request: Request) -> Response {
        let inner = &*self.0;
        let started = tokio::time::Instant::now();
        let _in_flight = inner.state.metrics.in_flight();
        let mut context = Context::begin(&inner.state, &mut request);
        let credentialed = crate::security_headers::carries_credentials(request.headers());
        let origin = inner
            .cors
            .as_ref()
            .and_then(|cors| cors.allowed(request.headers()));
        let sent = request.uri().path_and_query().cloned();
        let mut canonical = None;
        let response = REQUEST_ID
            .scope(
                Arc::clone(&context.id.0),
                pipeline::run(inner, &mut context, request, &mut canonical),
            )
            .await;
        // Decided on the canonical path the route stage made, not by canonicalising again;
        // a request answered before that stage is judged on the path it sent.
        let private = credentialed
            || match &canonical {
                Some(path) => crate::security_headers::is_private_canonical(path.path()),
                None => crate::security_headers::is_private(
                    sent.as_ref().map_or("/", http::uri::PathAndQuery::path),
                ),
            };
        let target = canonical.or(sent);
        let path = target.as_ref().map_or("/", http::uri::PathAndQuery::path);
        self.finish(&context, response, private, origin, path, started)
    }

    /// Everything every answer gets on its way out.
    fn finish(
        &self,
        context: &Context,
        response: Response,
        private: bool,
        origin: Option<HeaderValue>,
        path: &str,
        started: tokio::time::Instant,
    ) -> Response {
        let inner = &*self.0;
        let state = &inner.state;
        let status = response.status();
        let mut response = if (status.is_client_error() || status.is_server_error())
            && response.extensions().get::<OwnBody>().is_none()
        {
            REQUEST_ID.sync_scope(Arc::clone(&context.id.0), || rewrite(response))
        } else {
            response
        };
        let route = response
            .extensions()
            .get::<RouteName>()
            .map(|name| name.0)
            .or_else(|| context.route.as_ref().map(|route| route.name))
            .unwrap_or("unmatched");
        let headers = response.headers_mut();
        for (policy, decision) in context.limits.iter().flatten() {
            if let Some(fields) = state.limiter.headers(*policy, decision) {
                fields.append_to(headers);
            }
        }
        if let Some(cors) = &inner.cors {
            cors.decorate(headers, origin, context.method == Method::OPTIONS);
        }
        state.security_headers.decorate(headers, private);
        if let Some(value) = &context.id_header {
            headers.insert("x-request-id", value.clone());
        }

        let status = status.as_u16();
        let elapsed = started.elapsed();
        let method = method_label(&context.method);
        state
            .metrics
            .http_requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
        state
            .metrics
            .http_duration
            .get_or_create(&RouteLabel { route })
            .observe(elapsed.as_secs_f64());
        if let Some((upstream, _)) = context.upstream {
            state
                .metrics
                .upstream_requests
                .get_or_create(&UpstreamStatusLabels { upstream, status })
                .inc();
        }
        if inner.access
            && let Some(sink) = access_log::sink()
        {
            let entry = access_log::Entry {
                request_id: &context.id.0,
                client: context.client.0,
                method: context.method.as_str(),
                path,
                route,
                status,
                bytes: hyper::body::Body::size_hint(response.body()).exact(),
                duration: elapsed,
                upstream: context.upstream,
                user_id: context.user_id(),
                key_id: context.key_id,
                user_agent: context.user_agent.as_ref().map(HeaderValue::as_bytes),
            };
            sink.send(entry.line(sink.json(), std::time::SystemTime::now()));
        }
        response
    }
}

impl tower::Service<Request> for Gateway {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    /// For callers that need a `tower` service (tests, embedding); the server calls
    /// [`Gateway::handle`] directly, without the box.
    fn call(&mut self, request: Request) -> Self::Future {
        let gateway = self.clone();
        Box::pin(async move { Ok(gateway.handle(request).await) })
    }
}

/// Turns a framework rejection (plain text or empty) into the JSON error body, keeping
/// headers such as `Allow`.
fn rewrite(response: Response) -> Response {
    let status = response.status();
    let error = match status {
        StatusCode::NOT_FOUND => ApiError::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType,
        StatusCode::UNAUTHORIZED => ApiError::unauthenticated(),
        StatusCode::FORBIDDEN => ApiError::forbidden(),
        StatusCode::REQUEST_TIMEOUT => ApiError::invalid("Request timed out"),
        status if status.is_client_error() => ApiError::invalid("Bad request"),
        StatusCode::SERVICE_UNAVAILABLE => ApiError::ServiceUnavailable {
            message: "Service unavailable".into(),
            retry_after: None,
        },
        _ => ApiError::internal(anyhow::anyhow!("unhandled {status} from the framework")),
    };
    let (parts, _) = response.into_parts();
    let route = parts.extensions.get::<RouteName>().copied();
    let mut rewritten = error.into_response();
    *rewritten.status_mut() = status;
    // Keep what the handler or framework added (`Allow`, …); only the body and its
    // description change.
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    if let Some(route) = route {
        rewritten.extensions_mut().insert(route);
    }
    rewritten
}

/// `[cors]`: the origins allowed, and the header values answered, built once.
struct Cors {
    origins: Vec<HeaderValue>,
    allow_methods: HeaderValue,
    allow_headers: HeaderValue,
    expose_headers: HeaderValue,
}

const VARY_CORS: HeaderValue = HeaderValue::from_static(
    "origin, access-control-request-method, access-control-request-headers",
);

impl Cors {
    fn new(origins: &[String]) -> Option<Self> {
        let origins: Vec<HeaderValue> = origins
            .iter()
            .filter_map(|origin| HeaderValue::from_str(origin).ok())
            .collect();
        if origins.is_empty() {
            return None;
        }
        Some(Self {
            origins,
            allow_methods: HeaderValue::from_static("GET,POST,PUT,PATCH,DELETE"),
            allow_headers: HeaderValue::from_static(
                "authorization,content-type,x-csrf-token,x-api-key,x-request-id,x-timestamp,x-nonce,x-signature",
            ),
            expose_headers: HeaderValue::from_static(
                "x-request-id,ratelimit,ratelimit-policy,retry-after",
            ),
        })
    }

    /// The request's `Origin`, when it is allowed.
    fn allowed(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        self.origins.contains(origin).then(|| origin.clone())
    }

    /// The answer to a preflight (any `OPTIONS` request); its CORS fields are added by
    /// [`Cors::decorate`] like every answer's.
    fn preflight(&self) -> Response {
        (StatusCode::OK, ()).into_response()
    }

    fn decorate(&self, headers: &mut HeaderMap, origin: Option<HeaderValue>, preflight: bool) {
        // Rampart decides CORS for the whole gateway: a backend's own fields (an echoed
        // `Origin`, say) never reach the browser beside Rampart's credentials grant.
        for name in [
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            header::ACCESS_CONTROL_ALLOW_METHODS,
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            header::ACCESS_CONTROL_MAX_AGE,
        ] {
            headers.remove(name);
        }
        headers.append(header::VARY, VARY_CORS);
        let Some(origin) = origin else {
            return;
        };
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
        if preflight {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                self.allow_methods.clone(),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                self.allow_headers.clone(),
            );
        } else {
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                self.expose_headers.clone(),
            );
        }
    }
}
