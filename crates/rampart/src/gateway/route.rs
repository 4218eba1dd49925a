//! The route stage: the path in canonical form and the `[[routes]]` entry it matches,
//! looked up in the table compiled at start-up ([`crate::routes::RouteTable`]).

use std::sync::Arc;

use axum::extract::Request;
use http::Method;

use super::context::Context;
use super::refusal::Refusal;
use crate::error::ApiError;
use crate::routes::Matched;
use crate::state::AppState;

/// The route stage: puts the request's path in canonical form and finds its route for the
/// stages after it; refuses paths without a safe canonical form and case respellings of a
/// protected route (400), and methods a matched path does not allow (405 with `Allow`).
///
/// # Errors
/// The refusals above.
pub fn resolve(
    state: &AppState,
    context: &mut Context,
    request: &mut Request,
) -> Result<(), Refusal> {
    let not_canonical = || {
        Refusal::new(ApiError::invalid(
            "The request path is not in canonical form",
        ))
    };
    let canonical = match crate::routes::path::canonical(request.uri().path()) {
        Ok(std::borrow::Cow::Borrowed(_)) => None,
        Ok(std::borrow::Cow::Owned(form)) => Some(form),
        Err(_) => return Err(not_canonical()),
    };
    if let Some(form) = canonical {
        // The query is forwarded as sent; only the path changes.
        let target = match request.uri().query() {
            Some(query) => format!("{form}?{query}"),
            None => form,
        };
        let mut parts = request.uri().clone().into_parts();
        match target.parse() {
            Ok(path_and_query) => parts.path_and_query = Some(path_and_query),
            Err(_) => return Err(not_canonical()),
        }
        match http::Uri::from_parts(parts) {
            Ok(uri) => {
                // What the client sent stays known (a signature covers it as sent).
                let original = std::mem::replace(request.uri_mut(), uri);
                request
                    .extensions_mut()
                    .insert(axum::extract::OriginalUri(original));
            }
            Err(_) => return Err(not_canonical()),
        }
    }
    let path = request.uri().path();
    // Probes and scrapers are never subject to a route's policy (SPEC §8), whatever
    // catch-all route the configuration has.
    if crate::request::is_operations_path(path) {
        context.operations = true;
        return Ok(());
    }
    match state.routes.lookup(request.method(), path) {
        Matched::Route(route) => context.route = Some(Arc::clone(route)),
        Matched::Respelled => {
            return Err(Refusal::new(ApiError::invalid(
                "The request path respells a more specific route",
            )));
        }
        Matched::WrongMethod { allowed, proxied } if proxied => {
            let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
            return Err(Refusal::method_not_allowed(
                http::HeaderValue::from_str(&allow.join(", ")).ok(),
            ));
        }
        Matched::WrongMethod { .. } | Matched::None => {}
    }
    Ok(())
}
