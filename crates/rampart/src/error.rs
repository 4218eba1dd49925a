//! The one place where failures become HTTP responses.
//!
//! Every refusal is the JSON body of SPEC §1 (`error`, `message`, `request_id`, and
//! `fields` where fields are at fault). `Display` is what a client may see; the detail of
//! an internal error goes to the log only.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

tokio::task_local! {
    /// The id of the request being served, set by the outermost layer.
    pub static REQUEST_ID: std::sync::Arc<str>;
}

/// The current request's id, or `-` outside a request.
pub fn current_request_id() -> std::sync::Arc<str> {
    REQUEST_ID
        .try_with(std::sync::Arc::clone)
        .unwrap_or_else(|_| std::sync::Arc::from("-"))
}

/// An error and its causes on one line, `outer: cause: root cause`. A cause already said
/// by the message before it (a library error that repeats the I/O error it wraps) is left
/// out. Never a backtrace: only each error's `Display` is used.
pub fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !said.is_empty() && !last.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        last = said;
        source = cause.source();
    }
    text
}

/// Lets a log line that may repeat on every request through at most once per `every`:
/// the first occurrence at once, later ones with the number held back in between.
#[derive(Debug, Default)]
pub struct LogThrottle {
    /// When a line was last let through.
    last: std::sync::Mutex<Option<std::time::Instant>>,
    /// Occurrences held back since.
    held_back: std::sync::atomic::AtomicU64,
}

impl LogThrottle {
    /// A throttle that has let nothing through yet.
    pub const fn new() -> Self {
        Self {
            last: std::sync::Mutex::new(None),
            held_back: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(occurrences held back since the last line)` when this one is to be logged.
    pub fn admit(&self, every: Duration) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let now = std::time::Instant::now();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| now.duration_since(at) < every) {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

/// How often a repeated request-path error is logged at most (per kind).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Internal errors answered 500, logged through one throttle.
static INTERNAL_ERRORS: LogThrottle = LogThrottle::new();

/// Field name → every rule it broke.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `invalid_request`.
    #[error("{message}")]
    InvalidRequest {
        /// What was wrong.
        message: Cow<'static, str>,
        /// Per-field problems.
        fields: Option<FieldErrors>,
    },
    /// 401 `unauthorized`: missing, invalid or expired credentials.
    #[error("{0}")]
    Unauthorized(Cow<'static, str>, Challenge),
    /// 401 `invalid_credentials`: a failed login.
    #[error("Invalid username or password")]
    InvalidCredentials,
    /// 401 `token_reused`: an already rotated refresh token came back.
    #[error("Refresh token was already used; the session has been revoked")]
    TokenReused,
    /// 403 `forbidden`.
    #[error("{0}")]
    Forbidden(Cow<'static, str>),
    /// 403 `csrf_failed`.
    #[error("Missing or invalid CSRF token")]
    CsrfFailed,
    /// 403 `disabled`.
    #[error("This account is disabled")]
    Disabled,
    /// 404 `not_found`.
    #[error("Not found")]
    NotFound,
    /// 405, reported as `invalid_request`.
    #[error("Method not allowed")]
    MethodNotAllowed,
    /// 409 `conflict`.
    #[error("{0}")]
    Conflict(Cow<'static, str>),
    /// 413 `payload_too_large`.
    #[error("Request body is too large")]
    PayloadTooLarge,
    /// 415 `unsupported_media_type`.
    #[error("Expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// 408, reported as `invalid_request`: the request body stopped arriving.
    #[error("Request timed out")]
    RequestTimedOut,
    /// 431 `headers_too_large`: the request head is over `server.max_header_bytes`.
    #[error("Request headers are too large")]
    HeadersTooLarge,
    /// 429 `rate_limited`.
    #[error("Too many requests")]
    RateLimited {
        /// When to try again.
        retry_after: Duration,
    },
    /// 429 `locked_out`: too many failed logins.
    #[error("Too many failed logins; try again later")]
    LockedOut {
        /// When the lockout ends.
        retry_after: Duration,
    },
    /// 502 `bad_gateway`.
    #[error("The upstream service could not be reached")]
    BadGateway,
    /// 504 `gateway_timeout`.
    #[error("The upstream service did not answer in time")]
    GatewayTimeout,
    /// 503 `service_unavailable`.
    #[error("{message}")]
    ServiceUnavailable {
        /// What is unavailable.
        message: Cow<'static, str>,
        /// When to try again, if known.
        retry_after: Option<Duration>,
    },
    /// 500 `internal`; the source is logged, never shown.
    #[error("Internal error")]
    Internal(#[source] anyhow::Error),
}

/// What a 401 says in `WWW-Authenticate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// No credentials were sent: `Bearer` with no error attribute.
    Missing,
    /// Credentials were sent and refused: `Bearer error="invalid_token"`.
    InvalidToken,
}

impl ApiError {
    /// A 400 with a message.
    pub fn invalid(message: impl Into<Cow<'static, str>>) -> Self {
        Self::InvalidRequest {
            message: message.into(),
            fields: None,
        }
    }

    /// A 400 listing every broken rule per field.
    pub fn invalid_fields(fields: FieldErrors) -> Self {
        Self::InvalidRequest {
            message: "Invalid request".into(),
            fields: Some(fields),
        }
    }

    /// A 401 for missing credentials.
    pub fn unauthenticated() -> Self {
        Self::Unauthorized("Authentication required".into(), Challenge::Missing)
    }

    /// A 401 for credentials that were sent and refused.
    pub fn invalid_token() -> Self {
        Self::Unauthorized(
            "Invalid or expired credentials".into(),
            Challenge::InvalidToken,
        )
    }

    /// A 403 with the standard message.
    pub fn forbidden() -> Self {
        Self::Forbidden("You do not have permission to do this".into())
    }

    /// A 500 from any error.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }

    /// The status code this failure is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(..) | Self::InvalidCredentials | Self::TokenReused => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden(_) | Self::CsrfFailed | Self::Disabled => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RequestTimedOut => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited { .. } | Self::LockedOut { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BadGateway => StatusCode::BAD_GATEWAY,
            Self::GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::ServiceUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `error` code of the body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest { .. } | Self::MethodNotAllowed | Self::RequestTimedOut => {
                "invalid_request"
            }
            Self::Unauthorized(..) => "unauthorized",
            Self::InvalidCredentials => "invalid_credentials",
            Self::TokenReused => "token_reused",
            Self::Forbidden(_) => "forbidden",
            Self::CsrfFailed => "csrf_failed",
            Self::Disabled => "disabled",
            Self::NotFound => "not_found",
            Self::Conflict(_) => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::HeadersTooLarge => "headers_too_large",
            Self::RateLimited { .. } => "rate_limited",
            Self::LockedOut { .. } => "locked_out",
            Self::BadGateway => "bad_gateway",
            Self::GatewayTimeout => "gateway_timeout",
            Self::ServiceUnavailable { .. } => "service_unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } | Self::LockedOut { retry_after } => {
                Some(*retry_after)
            }
            Self::ServiceUnavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The JSON error body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `rate_limited`.
    pub error: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The request's id, as in `X-Request-Id` and the audit log.
    pub request_id: String,
    /// Per-field problems, for `invalid_request`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<FieldErrors>,
}

/// Marks a response whose body Rampart wrote, so later layers leave it alone.
#[derive(Debug, Clone, Copy)]
pub struct OwnBody;

/// Seconds for `Retry-After`: rounded up, at least one.
pub fn retry_after_seconds(duration: Duration) -> u64 {
    let seconds = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    seconds.max(1)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let Self::Internal(source) = &self
            && let Some(held_back) = INTERNAL_ERRORS.admit(LOG_EVERY)
        {
            tracing::error!(
                error = %chain_text(source.as_ref()),
                held_back,
                "internal error"
            );
        }
        let body = ErrorBody {
            error: self.code(),
            message: self.to_string(),
            request_id: current_request_id().to_string(),
            fields: match &self {
                Self::InvalidRequest { fields, .. } => fields.clone(),
                _ => None,
            },
        };
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(retry_after) = self.retry_after() {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_seconds(retry_after)),
            );
        }
        if let Self::Unauthorized(_, challenge) = &self {
            let value = match challenge {
                Challenge::Missing => "Bearer realm=\"rampart\"",
                Challenge::InvalidToken => "Bearer realm=\"rampart\", error=\"invalid_token\"",
            };
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(value));
        }
        response.extensions_mut().insert(OwnBody);
        response
    }
}

/// 413, closing the connection: the rest of the body is never read, so the connection
/// cannot carry another request, and the client must not try.
pub fn too_large() -> Response {
    let mut response = ApiError::PayloadTooLarge.into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_variant_has_its_documented_status_and_code() {
        let cases: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::invalid("x"), 400, "invalid_request"),
            (ApiError::unauthenticated(), 401, "unauthorized"),
            (ApiError::InvalidCredentials, 401, "invalid_credentials"),
            (ApiError::TokenReused, 401, "token_reused"),
            (ApiError::forbidden(), 403, "forbidden"),
            (ApiError::CsrfFailed, 403, "csrf_failed"),
            (ApiError::Disabled, 403, "disabled"),
            (ApiError::NotFound, 404, "not_found"),
            (ApiError::Conflict("x".into()), 409, "conflict"),
            (ApiError::PayloadTooLarge, 413, "payload_too_large"),
            (
                ApiError::UnsupportedMediaType,
                415,
                "unsupported_media_type",
            ),
            (
                ApiError::RateLimited {
                    retry_after: Duration::from_secs(1),
                },
                429,
                "rate_limited",
            ),
            (
                ApiError::LockedOut {
                    retry_after: Duration::from_secs(1),
                },
                429,
                "locked_out",
            ),
            (ApiError::BadGateway, 502, "bad_gateway"),
            (ApiError::GatewayTimeout, 504, "gateway_timeout"),
            (
                ApiError::ServiceUnavailable {
                    message: "x".into(),
                    retry_after: None,
                },
                503,
                "service_unavailable",
            ),
            (
                ApiError::internal(anyhow::anyhow!("secret detail")),
                500,
                "internal",
            ),
        ];
        for (error, status, code) in cases {
            assert_eq!(error.status().as_u16(), status, "{code}");
            assert_eq!(error.code(), code);
        }
    }

    #[test]
    fn an_internal_error_never_shows_its_detail() {
        let error = ApiError::internal(anyhow::anyhow!("SELECT * FROM users /etc/passwd"));
        assert_eq!(error.to_string(), "Internal error");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
    }
}
