//! Extractors that refuse bad input with the JSON error body instead of the framework's
//! plain-text rejections.

use axum::extract::{FromRequest, FromRequestParts, Request};
use bytes::Bytes;
use http::header;
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body: `Content-Type: application/json` (415 otherwise), within the size limit
/// (413), well-formed and of the expected shape with no unknown fields (400).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        read(request, state, false)
            .await?
            .ok_or_else(|| ApiError::invalid("The body must be a JSON object"))
            .map(ApiJson)
    }
}

/// An optional JSON body: none at all gives `T::default()`; any body at all is held to
/// every rule of [`ApiJson`] (415, 413, an object, 400).
#[derive(Debug, Clone, Copy, Default)]
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        Ok(OptionalJson(
            read(request, state, true).await?.unwrap_or_default(),
        ))
    }
}

/// Reads a JSON object body, parsed once; `None` for an empty body when `optional`.
async fn read<S: Send + Sync, T: DeserializeOwned>(
    request: Request,
    state: &S,
    optional: bool,
) -> Result<Option<T>, ApiError> {
    let is_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            let mime = mime.trim();
            mime.eq_ignore_ascii_case("application/json")
                || (mime.starts_with("application/") && mime.ends_with("+json"))
        });
    if !optional && !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let bytes = Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::invalid("Could not read the request body")
            }
        })?;
    if optional && bytes.is_empty() {
        return Ok(None);
    }
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    // Every body is an object: serde would otherwise fill a struct from an array, by
    // field order (`["old", "new"]` as a password change).
    if bytes.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid("The body must be a JSON object"));
    }
    parse(&bytes).map(Some)
}

/// Parses a JSON object body, naming the path of the first problem.
///
/// Only an object is a body (SPEC §2): serde would otherwise fill a struct from an array
/// positionally, so `["alice_1", "a@example.com", "…"]` would register a user.
///
/// # Errors
/// 400 with a message saying what was wrong and where.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let first = bytes
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
    if first.is_some_and(|b| *b != b'{') {
        return Err(ApiError::invalid("The body must be a JSON object"));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("Malformed JSON: {inner}")
        } else if path == "." {
            format!("Invalid body: {inner}")
        } else {
            format!("Invalid field `{path}`: {inner}")
        };
        ApiError::invalid(message)
    })?;
    deserializer
        .end()
        .map_err(|_| ApiError::invalid("Malformed JSON: trailing characters"))?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Login {
        username: String,
        password: String,
    }

    #[test]
    fn only_a_json_object_is_a_body() {
        assert!(parse::<Login>(br#" {"username": "a", "password": "b"}"#).is_ok());
        for bad in [
            &br#"["alice_1", "secret"]"#[..],
            b" \n[\"alice_1\", \"secret\"]",
            b"\"alice_1\"",
            b"17",
            b"null",
            b"true",
            b"",
        ] {
            assert!(
                parse::<Login>(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

/// Query parameters of the expected shape (400 otherwise).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|error| ApiError::invalid(format!("Invalid query: {error}")))
    }
}

/// A numeric path parameter (400 otherwise, never the framework's plain text).
#[derive(Debug, Clone, Copy)]
pub struct IdPath(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for IdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let axum::extract::Path(raw) =
            axum::extract::Path::<String>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::invalid("Invalid path parameter"))?;
        raw.parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(IdPath)
            .ok_or_else(|| ApiError::invalid("The id must be a positive integer"))
    }
}
