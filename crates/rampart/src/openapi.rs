//! `GET /openapi.json`: the identity API described from the handlers themselves.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::identity::{accounts, admin, api_keys, sessions, users};

/// The OpenAPI document.
#[derive(OpenApi)]
#[openapi(
    info(title = "Rampart", description = "Security gateway and identity service for trading platforms"),
    paths(
        sessions::register, sessions::login, sessions::refresh, sessions::logout, sessions::logout_all,
        users::me, users::by_id, users::change_password, users::export, users::delete_me,
        admin::list_users, admin::patch_user, admin::unlock, admin::audit, admin::export_audit,
        api_keys::create, api_keys::list, api_keys::delete,
        accounts::create, accounts::list, accounts::get, accounts::patch, accounts::delete,
        accounts::refresh,
    ),
    components(schemas(crate::error::ErrorBody, crate::audit::AuditRecord)),
    modifiers(&BearerScheme),
)]
pub struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Serves the document.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_identity_endpoint_is_documented_with_its_errors() {
        let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for (path, method) in [
            ("/auth/register", "post"),
            ("/auth/login", "post"),
            ("/auth/refresh", "post"),
            ("/auth/logout", "post"),
            ("/auth/logout-all", "post"),
            ("/users/me", "get"),
            ("/users/me", "delete"),
            ("/users/me/password", "put"),
            ("/users/me/export", "get"),
            ("/users/{id}", "get"),
            ("/admin/users", "get"),
            ("/admin/users/{id}", "patch"),
            ("/admin/users/{id}/unlock", "post"),
            ("/admin/audit", "get"),
            ("/admin/audit/export", "get"),
            ("/users/me/api-keys", "post"),
            ("/users/me/api-keys", "get"),
            ("/users/me/api-keys/{id}", "delete"),
            ("/accounts", "post"),
            ("/accounts", "get"),
            ("/accounts/{id}", "get"),
            ("/accounts/{id}", "patch"),
            ("/accounts/{id}", "delete"),
            ("/accounts/{id}/refresh", "post"),
        ] {
            let operation = &document["paths"][path][method];
            assert!(operation.is_object(), "{method} {path} undocumented");
            let responses = operation["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|code| code.starts_with('4')),
                "{method} {path} documents no error"
            );
        }
        assert!(document["components"]["schemas"]["ErrorBody"].is_object());
    }
}
