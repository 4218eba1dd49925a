//! The one place where a stage's refusal becomes an answer: the JSON error body of SPEC §1
//! (rendered by [`ApiError`]), its extra headers (`Allow`, `Connection: close`), and the
//! metric and audit row the refusal stands for.
//!
//! Events that are not refusals but are counted and audited the same way (a refused
//! credential the route may not need, a suspicious request in `detect` mode) are
//! [`Note`]s, recorded here too, so that every audit row about a request at the gateway is
//! written by [`record`].

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use serde_json::Value;

use super::context::Context;
use crate::audit::throttle::Pending;
use crate::audit::{NewAuditEntry, RequestContext, record_in_background};
use crate::error::ApiError;
use crate::metrics::{PatternLabel, PolicyLabel, ReasonLabel};
use crate::state::AppState;

/// Why a stage stopped a request, and what to tell and record. Boxed: refusals are the
/// rare path, and the stages' `Result`s stay one word wide on the common one.
#[derive(Debug)]
pub struct Refusal(Box<Parts>);

#[derive(Debug)]
struct Parts {
    answer: Answer,
    allow: Option<HeaderValue>,
    close: bool,
    note: Option<Note>,
}

#[derive(Debug)]
enum Answer {
    Error(ApiError),
    /// An answer made elsewhere (the API-key check's own refusals).
    Ready(Response),
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Self::new(error)
    }
}

impl Refusal {
    /// A refusal answered with `error`'s JSON body.
    pub fn new(error: ApiError) -> Self {
        Self(Box::new(Parts {
            answer: Answer::Error(error),
            allow: None,
            close: false,
            note: None,
        }))
    }

    /// A refusal whose answer is already made.
    pub fn ready(response: Response) -> Self {
        Self(Box::new(Parts {
            answer: Answer::Ready(response),
            allow: None,
            close: false,
            note: None,
        }))
    }

    /// 405 naming the methods the path allows.
    pub fn method_not_allowed(allow: Option<HeaderValue>) -> Self {
        let mut refusal = Self::new(ApiError::MethodNotAllowed);
        refusal.0.allow = allow;
        refusal
    }

    /// 413, closing the connection: the rest of the body is never read, so the connection
    /// cannot carry another request.
    pub fn too_large() -> Self {
        let mut refusal = Self::new(ApiError::PayloadTooLarge);
        refusal.0.close = true;
        refusal
    }

    /// The same refusal, counted and audited as `note` says.
    #[must_use]
    pub fn noted(mut self, note: Note) -> Self {
        self.0.note = Some(note);
        self
    }
}

/// What a refusal or a flagged request is counted and audited as.
#[derive(Debug)]
pub struct Note {
    /// The counter it adds one to.
    pub metric: Metric,
    /// Its audit row, if any.
    pub audit: Option<Audit>,
}

/// The counter of a [`Note`].
#[derive(Debug, Clone, Copy)]
pub enum Metric {
    /// `rampart_rate_limit_hits_total{policy}`.
    RateLimitHit(&'static str),
    /// `rampart_auth_failures_total{reason}`.
    AuthFailure(&'static str),
    /// `rampart_suspicious_requests_total{pattern}`.
    Suspicious(&'static str),
    /// None.
    Nothing,
}

/// The audit row of a [`Note`]: an entry about the request (its caller when it
/// authenticated, the matched route's pattern and the method are added to `details`).
#[derive(Debug)]
pub struct Audit {
    /// The action, e.g. `rate_limit_exceeded`.
    pub action: &'static str,
    /// Rows under the same key are written at most once per throttle window; the count
    /// of those held back goes into `details` under the given field name.
    pub throttle: Option<(String, &'static str)>,
    /// What the row says.
    pub details: Value,
}

/// Turns a refusal into its answer, recording its note.
pub fn answer(state: &AppState, context: &Context, refusal: Refusal) -> Response {
    let refusal = *refusal.0;
    if let Some(note) = refusal.note {
        record(state, context, note);
    }
    let mut response = match refusal.answer {
        Answer::Error(error) => error.into_response(),
        Answer::Ready(response) => response,
    };
    let headers = response.headers_mut();
    if let Some(allow) = refusal.allow {
        headers.insert(header::ALLOW, allow);
    }
    if refusal.close {
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Counts a note and writes its audit row in the background.
pub fn record(state: &AppState, context: &Context, note: Note) {
    let metrics = &state.metrics;
    match note.metric {
        Metric::RateLimitHit(policy) => metrics
            .rate_limit_hits
            .get_or_create(&PolicyLabel { policy })
            .inc(),
        Metric::AuthFailure(reason) => metrics
            .auth_failures
            .get_or_create(&ReasonLabel { reason })
            .inc(),
        Metric::Suspicious(pattern) => metrics
            .suspicious_requests
            .get_or_create(&PatternLabel { pattern })
            .inc(),
        Metric::Nothing => 0,
    };
    let Some(audit) = note.audit else {
        return;
    };
    let now = state.now();
    let mut details = audit.details;
    if let Value::Object(fields) = &mut details {
        fields.insert(
            "route".into(),
            context.route.as_ref().map(|route| route.name).into(),
        );
        fields.insert("method".into(), context.method.as_str().into());
    }
    let request = audit_context(context);
    if let Some((key, field)) = &audit.throttle {
        // The row also stands for its window's later occurrences, should the gateway stop
        // before the next row of the key.
        let row = Pending {
            action: audit.action,
            user_id: context.user_id(),
            details,
            field,
            context: request,
        };
        for entry in state.audit_throttle.rows(key, now, row) {
            record_in_background(state.stores.data.clone(), entry);
        }
        return;
    }
    let entry = NewAuditEntry::new(now, audit.action, context.user_id(), details, &request);
    record_in_background(state.stores.data.clone(), entry);
}

/// Who made the request, as an audit row names them.
pub fn audit_context(context: &Context) -> RequestContext {
    RequestContext {
        ip: Some(context.client.0.to_string()),
        user_agent: context
            .user_agent
            .as_ref()
            .and_then(|value| value.to_str().ok())
            .map(crate::chain::user_agent_field),
        request_id: context.id.0.to_string(),
    }
}
