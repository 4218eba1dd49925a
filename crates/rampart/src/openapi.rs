//! `GET /openapi.json`, the API described from the handlers themselves, and `GET /docs`,
//! a Swagger UI page for it served from assets built into the binary.
//!
//! The handlers' own annotations give paths, bodies and their main answers; [`document`]
//! completes them with what every operation shares: the security schemes that apply to
//! it (bearer JWT, API key with optional HMAC signature, session cookie with CSRF), the
//! refusals of the gateway's stages (SPEC §1: 400, 401, 403, 413, 415, 429 with its
//! `RateLimit` fields, 431, 500, 503), the `X-Request-Id` every answer carries, and the
//! operational endpoints (SPEC §8), which are no identity handler.

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};
use utoipa::OpenApi;

use crate::identity::{accounts, admin, api_keys, sessions, users};
use crate::password::PasswordPolicy;
use crate::state::AppState;

/// The identity API as its handlers annotate it; [`document`] completes it.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Rampart",
        description = "Security gateway and identity service for trading platforms. This \
            document describes the endpoints Rampart serves itself: the identity API \
            (SPEC §2) and the operational endpoints (SPEC §8). Routes proxied to \
            upstreams are configured in `rampart.toml` and are not described here.\n\n\
            Every refusal is a JSON error body (`ErrorBody`) and every answer carries \
            `X-Request-Id`."
    ),
    paths(
        sessions::register, sessions::login, sessions::refresh, sessions::logout, sessions::logout_all,
        users::me, users::by_id, users::change_password, users::export, users::delete_me,
        admin::list_users, admin::patch_user, admin::unlock, admin::audit, admin::export_audit,
        api_keys::create, api_keys::list, api_keys::delete,
        accounts::create, accounts::list, accounts::get, accounts::patch, accounts::delete,
        accounts::refresh,
    ),
    components(schemas(crate::error::ErrorBody, crate::audit::AuditRecord)),
    tags(
        (name = "auth", description = "Registration, login, token refresh and logout"),
        (name = "users", description = "The caller's own account, and user lookup (admin)"),
        (name = "api-keys", description = "API keys for programs"),
        (name = "accounts", description = "The caller's trading accounts (broker connections)"),
        (name = "admin", description = "Administration (role `admin`)"),
        (name = "operations", description = "Probes, metrics, signing keys and this documentation; \
            never rate limited nor authenticated"),
    ),
)]
pub struct ApiDoc;

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Anyone (a presented credential that does not hold is still refused with 401).
    Public,
    /// A refresh token in the body, or the refresh cookie with its CSRF token.
    Refresh,
    /// A login: bearer token or session cookie; an API key is refused with 403.
    Session,
    /// Any authenticated caller: bearer token, session cookie or API key.
    Authenticated,
    /// An authenticated admin, with any credential; anyone else gets 403.
    Admin,
    /// An admin's login (bearer token or session cookie); an API key, or anyone else,
    /// gets 403.
    AdminSession,
    /// An operational endpoint: the gateway's stages do not apply.
    Operations,
}

/// Who may call `method path`.
fn access(method: &str, path: &str) -> Access {
    match (method, path) {
        ("post", "/auth/register" | "/auth/login") => Access::Public,
        ("post", "/auth/refresh") => Access::Refresh,
        ("post", "/auth/logout" | "/auth/logout-all")
        | ("put", "/users/me/password")
        | ("delete", "/users/me")
        | (_, "/users/me/api-keys" | "/users/me/api-keys/{id}") => Access::Session,
        (_, "/users/{id}") => Access::Admin,
        _ if path.starts_with("/admin/") => Access::AdminSession,
        _ if crate::request::is_operations_path(path) => Access::Operations,
        _ => Access::Authenticated,
    }
}

/// The document served at `/openapi.json`, with the password rules of `policy` and the
/// defined `roles`.
pub fn document(policy: &PasswordPolicy, roles: &[&str]) -> Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|_| json!({}));
    operational_paths(&mut document);
    components(&mut document, policy);
    constraints(&mut document);
    let schemas = &mut document["components"]["schemas"];
    if schemas["PatchUser"]["properties"].is_object() {
        schemas["PatchUser"]["properties"]["role"] = json!({
            "type": "string",
            "enum": roles,
            "description": "A role defined by `[roles]`; a change revokes the user's logins",
        });
    }
    if let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    complete(method, path, operation);
                }
            }
        }
    }
    drop_unreferenced_schemas(&mut document);
    document
}

/// Removes the schemas nothing refers to any more (those the hand-written ones replaced,
/// such as the field-error map, which the derive names after its Rust type).
fn drop_unreferenced_schemas(document: &mut Value) {
    fn references(value: &Value, found: &mut std::collections::BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value.as_str()) {
                        ("$ref", Some(target)) => {
                            if let Some(name) = target.strip_prefix("#/components/schemas/") {
                                found.insert(name.to_owned());
                            }
                        }
                        _ => references(value, found),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| references(item, found)),
            _ => {}
        }
    }
    loop {
        let mut found = std::collections::BTreeSet::new();
        references(&document["paths"], &mut found);
        references(&document["components"]["schemas"], &mut found);
        references(&document["components"]["responses"], &mut found);
        let Some(schemas) = document["components"]["schemas"].as_object_mut() else {
            return;
        };
        let before = schemas.len();
        schemas.retain(|name, _| found.contains(name));
        if schemas.len() == before {
            return;
        }
    }
}

/// `GET /openapi.json`.
pub async fn served(State(state): State<AppState>) -> Json<Value> {
    let roles: Vec<&str> = state.config.roles.keys().map(String::as_str).collect();
    Json(document(&state.config.password, &roles))
}

/// An error answer: the JSON error body, the codes it may carry, and `headers`.
fn error_response(description: &str, codes: &[&str], headers: Value) -> Value {
    json!({
        "description": format!("{description} (`error`: {})", codes.iter().map(|code| format!("`{code}`")).collect::<Vec<_>>().join(", ")),
        "headers": headers,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } },
    })
}

fn header_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/headers/{name}") })
}

/// Adds to `operation` what its access and shape imply.
fn complete(method: &str, path: &str, operation: &mut Value) {
    let access = access(method, path);
    let unsafe_method = matches!(method, "post" | "put" | "patch" | "delete");
    let has_body = operation.get("requestBody").is_some();
    let has_id = path.contains("{id}");
    let Some(operation) = operation.as_object_mut() else {
        return;
    };
    operation.insert("security".into(), security(access, unsafe_method));
    // Handler names repeat across modules (`list`, `create`); the tag makes them unique.
    if access != Access::Operations {
        let tag = operation
            .get("tags")
            .and_then(|tags| tags.get(0))
            .and_then(Value::as_str)
            .map(|tag| tag.replace('-', "_"));
        let name = operation.get("operationId").and_then(Value::as_str);
        if let (Some(tag), Some(name)) = (tag, name) {
            let unique = format!("{tag}_{name}");
            operation.insert("operationId".into(), json!(unique));
        }
    }
    // These handlers take their body as optional: none at all is an empty one.
    if matches!(
        (method, path),
        (
            "post",
            "/auth/refresh" | "/auth/logout-all" | "/admin/users/{id}/unlock"
        )
    ) && let Some(body) = operation.get_mut("requestBody")
    {
        body["required"] = json!(false);
    }
    if has_id {
        id_parameter(operation);
    }
    let mut standard: Vec<(&str, Value)> = Vec::new();
    let limited = access != Access::Operations;
    if limited {
        standard.push((
            "400",
            error_response(
                "The request is malformed: a body, query or path parameter of the wrong shape, \
                 unknown fields, a path with no canonical form, or an intrusion pattern \
                 (`intrusion.mode = \"block\"`); `fields` lists every broken rule per field",
                &["invalid_request"],
                json!({}),
            ),
        ));
        standard.push((
            "401",
            error_response(
                if access == Access::Public {
                    "A credential was presented (an API key or signature) and does not hold"
                } else {
                    "Missing, invalid, expired or revoked credentials"
                },
                &["unauthorized"],
                json!({ "WWW-Authenticate": header_ref("WWW-Authenticate") }),
            ),
        ));
        let forbidden: Option<(&str, &[&str])> = match (access, unsafe_method) {
            (Access::Session, _) => Some((
                "An API key (this needs a login session), or a session cookie without its \
                 `X-CSRF-Token` on an unsafe method",
                &["forbidden", "csrf_failed"][..],
            )),
            (Access::Admin, _) => Some((
                "The caller is not an admin, or a session cookie came without its \
                 `X-CSRF-Token` on an unsafe method",
                &["forbidden", "csrf_failed"][..],
            )),
            (Access::AdminSession, _) => Some((
                "The caller is not an admin, or used an API key (keys never reach `/admin/*`), \
                 or a session cookie came without its `X-CSRF-Token` on an unsafe method",
                &["forbidden", "csrf_failed"][..],
            )),
            (Access::Refresh, _) => Some((
                "The refresh cookie came without its `X-CSRF-Token`",
                &["csrf_failed"][..],
            )),
            (Access::Authenticated, true) => Some((
                "A session cookie came without its `X-CSRF-Token`",
                &["csrf_failed"][..],
            )),
            _ => None,
        };
        if let Some((description, codes)) = forbidden {
            standard.push(("403", error_response(description, codes, json!({}))));
        }
        if has_id {
            standard.push((
                "404",
                error_response(
                    "No such resource, or one that belongs to another user",
                    &["not_found"],
                    json!({}),
                ),
            ));
        }
        if has_body {
            standard.push((
                "413",
                error_response(
                    "The body is larger than the route's `max_body` (default `server.max_body`)",
                    &["payload_too_large"],
                    json!({}),
                ),
            ));
            standard.push((
                "415",
                error_response(
                    "The body is not `application/json`",
                    &["unsupported_media_type"],
                    json!({}),
                ),
            ));
        }
        standard.push((
            "429",
            error_response(
                "A rate limit is spent (the caller's tier, the route's limit, or a failed \
                 credential's anonymous budget), or too many failed logins",
                &["rate_limited", "locked_out"],
                json!({
                    "Retry-After": header_ref("Retry-After"),
                    "RateLimit": header_ref("RateLimit"),
                    "RateLimit-Policy": header_ref("RateLimit-Policy"),
                }),
            ),
        ));
        standard.push((
            "500",
            error_response(
                "An unexpected failure; the body never carries its detail",
                &["internal"],
                json!({}),
            ),
        ));
        standard.push((
            "503",
            error_response(
                "A backing store is unreachable (or the rate-limit store, with \
                 `rate_limits.on_store_error = \"deny\"`), or an upstream circuit is open",
                &["service_unavailable"],
                json!({ "Retry-After": header_ref("Retry-After") }),
            ),
        ));
    }
    standard.push((
        "431",
        error_response(
            "The request head is larger than `server.max_header_bytes`",
            &["headers_too_large"],
            json!({}),
        ),
    ));
    let responses = operation
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let Some(responses) = responses else {
        return;
    };
    for (status, response) in standard {
        match responses.get_mut(status) {
            // The handler's own description is more precise; the body and headers are
            // the standard ones.
            Some(existing) => {
                if let (Some(existing), Some(standard)) =
                    (existing.as_object_mut(), response.as_object())
                {
                    for key in ["headers", "content"] {
                        if let Some(value) = standard.get(key) {
                            existing.insert(key.into(), value.clone());
                        }
                    }
                }
            }
            None => {
                responses.insert(status.into(), response);
            }
        }
    }
    for (status, response) in responses.iter_mut() {
        let Some(response) = response.as_object_mut() else {
            continue;
        };
        if response
            .get("description")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            response.insert("description".into(), json!(describe(status)));
        }
        if limited && (status.starts_with('4') || status.starts_with('5')) {
            response.insert(
                "content".into(),
                json!({ "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } }),
            );
        }
        let headers = response
            .entry("headers")
            .or_insert_with(|| json!({}))
            .as_object_mut();
        if let Some(headers) = headers {
            headers.insert("X-Request-Id".into(), header_ref("X-Request-Id"));
            if limited {
                headers
                    .entry("RateLimit")
                    .or_insert_with(|| header_ref("RateLimit"));
                headers
                    .entry("RateLimit-Policy")
                    .or_insert_with(|| header_ref("RateLimit-Policy"));
            }
        }
    }
}

/// A description for a status the handler left undescribed.
fn describe(status: &str) -> &'static str {
    match status {
        "200" => "OK",
        "201" => "Created",
        "204" => "Done; no body",
        "400" => "Invalid request",
        "401" => "Missing or invalid credentials",
        "403" => "Forbidden",
        "404" => "Not found",
        "409" => "Conflict",
        _ => "See the error body",
    }
}

/// `{id}` is a positive integer (400 otherwise).
fn id_parameter(operation: &mut Map<String, Value>) {
    if let Some(parameters) = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    {
        for parameter in parameters {
            if parameter["name"] == "id" && parameter["in"] == "path" {
                parameter["schema"] = json!({ "type": "integer", "format": "int64", "minimum": 1 });
            }
        }
    }
}

/// The security requirements of an operation: any one of them is enough.
fn security(access: Access, unsafe_method: bool) -> Value {
    let cookie = if unsafe_method {
        json!({ "sessionCookie": [], "csrfToken": [] })
    } else {
        json!({ "sessionCookie": [] })
    };
    match access {
        Access::Public | Access::Operations => json!([]),
        Access::Refresh => json!([{}, { "refreshCookie": [], "csrfToken": [] }]),
        Access::Session | Access::AdminSession => json!([{ "bearer": [] }, cookie]),
        Access::Authenticated | Access::Admin => json!([
            { "bearer": [] },
            cookie,
            { "apiKey": [] },
            { "apiKey": [], "signatureTimestamp": [], "signatureNonce": [], "signature": [] },
        ]),
    }
}

/// Schemas, headers and security schemes shared by the operations.
fn components(document: &mut Value, policy: &PasswordPolicy) {
    let components = &mut document["components"];
    components["schemas"]["ErrorBody"] = json!({
        "type": "object",
        "description": "Every refusal and error (SPEC §1). Never a stack trace, SQL text, secret or file path.",
        "required": ["error", "message", "request_id"],
        "properties": {
            "error": {
                "type": "string",
                "description": "Machine-readable code",
                "enum": [
                    "invalid_request", "unauthorized", "invalid_credentials", "token_reused",
                    "mfa_required", "forbidden", "csrf_failed", "disabled", "ip_not_allowed",
                    "not_found", "conflict", "payload_too_large", "unsupported_media_type",
                    "order_rejected", "idempotency_mismatch", "rate_limited", "locked_out",
                    "broker_quota", "headers_too_large", "internal", "bad_gateway",
                    "gateway_timeout", "service_unavailable", "trading_halted"
                ]
            },
            "message": { "type": "string", "description": "Human-readable message" },
            "request_id": { "type": "string", "description": "The request's id, as in `X-Request-Id` and the audit log" },
            "fields": {
                "type": "object",
                "description": "For `invalid_request`: field name → every rule it broke",
                "additionalProperties": { "type": "array", "items": { "type": "string" } }
            }
        }
    });
    let password = |description: &str| {
        json!({
            "type": "string",
            "minLength": policy.min_length,
            "maxLength": policy.max_length,
            "description": description,
        })
    };
    let rules = password_rules(policy);
    let schemas = &mut components["schemas"];
    if schemas["RegisterBody"].is_object() {
        schemas["RegisterBody"]["properties"]["password"] =
            password(&format!("Must meet the password policy: {rules}"));
    }
    if schemas["PasswordChange"].is_object() {
        schemas["PasswordChange"]["properties"]["new_password"] = password(&format!(
            "Must meet the password policy and differ from the current one: {rules}"
        ));
    }
    components["headers"] = json!({
        "X-Request-Id": {
            "description": "The request's id: the client's own when it sent a well-formed one (1–128 characters of `[A-Za-z0-9._:-]`), else a new one",
            "schema": { "type": "string" }
        },
        "RateLimit": {
            "description": "IETF RateLimit header fields draft: what is left of the policy that limits this request",
            "schema": { "type": "string" }
        },
        "RateLimit-Policy": {
            "description": "IETF RateLimit header fields draft: the policies that apply to this request",
            "schema": { "type": "string" }
        },
        "Retry-After": {
            "description": "Seconds to wait before trying again",
            "schema": { "type": "integer", "minimum": 1 }
        },
        "WWW-Authenticate": {
            "description": "`Bearer` when no credentials were sent, `Bearer error=\"invalid_token\"` when they were refused",
            "schema": { "type": "string" }
        }
    });
    components["securitySchemes"] = json!({
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "`Authorization: Bearer <access_token>` from `POST /auth/login` or `POST /auth/refresh`."
        },
        "apiKey": {
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": "An API key from `POST /users/me/api-keys`; the request acts as the key's user, with the user's role. \
                Keys never reach session management, their own keys, the password or the account's deletion (403). \
                A request may also be signed (required on routes with `signed = true`): send `X-Timestamp`, `X-Nonce` and `X-Signature` as well."
        },
        "signatureTimestamp": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Timestamp",
            "description": "Signed API-key requests: unix seconds; refused (401) when more than 300 s off the gateway's clock."
        },
        "signatureNonce": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Nonce",
            "description": "Signed API-key requests: 16–64 characters, never reused within the timestamp window (a replay is refused with 401)."
        },
        "signature": {
            "type": "apiKey",
            "in": "header",
            "name": "X-Signature",
            "description": "Signed API-key requests: lowercase hex HMAC-SHA256(secret, METHOD + \"\\n\" + PATH_AND_QUERY + \"\\n\" + X-Timestamp + \"\\n\" + X-Nonce + \"\\n\" + lowercase hex SHA-256(body)), with the key's secret; compared in constant time."
        },
        "sessionCookie": {
            "type": "apiKey",
            "in": "cookie",
            "name": "__Host-access_token",
            "description": "The access-token cookie set by `POST /auth/login` with `\"cookie\": true`. Unsafe methods (POST, PUT, PATCH, DELETE) also need `X-CSRF-Token` (403 `csrf_failed` otherwise)."
        },
        "refreshCookie": {
            "type": "apiKey",
            "in": "cookie",
            "name": "__Secure-refresh_token",
            "description": "The refresh-token cookie (Path=/auth) set by `POST /auth/login` with `\"cookie\": true`; used with `X-CSRF-Token`."
        },
        "csrfToken": {
            "type": "apiKey",
            "in": "header",
            "name": "X-CSRF-Token",
            "description": "The `csrf_token` of the login (or of the last refresh) with a session cookie; it changes at every refresh."
        }
    });
}

/// A label (an API key's or account's name, a broker): what
/// [`crate::identity::check_label`] accepts.
fn label(max: usize, description: &str) -> Value {
    json!({
        "type": "string",
        "minLength": 1,
        "maxLength": max,
        "pattern": "^[A-Za-z0-9_.()-]([A-Za-z0-9 _.()-]*[A-Za-z0-9_.()-])?$",
        "description": format!("{description}: 1 to {max} letters, digits, spaces and `_ - . ( )`, not starting or ending with a space"),
    })
}

/// The limits the handlers check, on the fields and parameters they check them on.
fn constraints(document: &mut Value) {
    let username = json!({
        "type": "string", "minLength": 3, "maxLength": 20, "pattern": "^[A-Za-z0-9_]+$",
        "description": "3–20 characters of `[A-Za-z0-9_]`; unique without regard to case",
    });
    let email = json!({
        "type": "string", "format": "email", "maxLength": 254,
        "description": "A valid address of at most 254 characters; unique without regard to case",
    });
    let broker_key = json!({
        "type": "string", "minLength": 1, "maxLength": accounts::MAX_KEY_LEN, "pattern": "^[!-~]+$",
        "description": format!("The broker API key: 1 to {} visible ASCII characters; stored encrypted, shown only masked", accounts::MAX_KEY_LEN),
    });
    let host_url = json!({
        "type": "string", "format": "uri",
        "description": "The broker's base URL: `https` (`http` only with `accounts.allow_http`), a host allowed by \
            `accounts.allowed_hosts`, no query, and every address it resolves to public unless in `accounts.allowed_networks` (400 otherwise)",
    });
    let schemas = &mut document["components"]["schemas"];
    let set = |schemas: &mut Value, schema: &str, field: &str, value: Value| {
        if schemas[schema]["properties"].is_object() {
            schemas[schema]["properties"][field] = value;
        }
    };
    set(schemas, "RegisterBody", "username", username);
    set(schemas, "RegisterBody", "email", email);
    set(schemas, "NewApiKey", "name", label(64, "The key's name"));
    set(
        schemas,
        "NewApiKey",
        "expires_in_days",
        json!({
            "type": ["integer", "null"], "minimum": 1, "maximum": api_keys::MAX_LIFETIME_DAYS,
            "description": "Days until the key stops working; absent or null: it never expires",
        }),
    );
    for (schema, optional) in [("NewAccount", false), ("AccountChange", true)] {
        let nullable = |mut value: Value| {
            if optional {
                value["type"] = json!(["string", "null"]);
            }
            value
        };
        set(
            schemas,
            schema,
            "name",
            nullable(label(64, "The account's name")),
        );
        set(schemas, schema, "broker", nullable(label(32, "The broker")));
        set(schemas, schema, "api_key", nullable(broker_key.clone()));
        set(schemas, schema, "host_url", nullable(host_url.clone()));
    }
    set(
        schemas,
        "PatchUser",
        "tier",
        json!({ "type": "string", "enum": ["standard", "premium"], "description": "Rate-limit tier" }),
    );
    set(
        schemas,
        "PatchUser",
        "disabled",
        json!({ "type": "boolean", "description": "Refuse logins (`true`); a change revokes the user's logins" }),
    );
    if schemas["PatchUser"].is_object() {
        // At least one of the three (400 otherwise).
        schemas["PatchUser"]["minProperties"] = json!(1);
    }
    set(
        schemas,
        "UnlockBody",
        "ip",
        json!({
            "type": ["string", "null"],
            "anyOf": [{ "format": "ipv4" }, { "format": "ipv6" }, { "type": "null" }],
            "description": "An IP address whose login lockout to lift as well",
        }),
    );
    // Times are served as RFC 3339 (UTC).
    if let Some(schemas) = schemas.as_object_mut() {
        for schema in schemas.values_mut() {
            let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut)
            else {
                continue;
            };
            for (name, property) in properties.iter_mut() {
                if matches!(
                    name.as_str(),
                    "at" | "created_at" | "updated_at" | "expires_at" | "last_used_at"
                ) {
                    property["format"] = json!("date-time");
                    if name == "at" {
                        property["description"] = json!("When it happened, RFC 3339 (UTC)");
                    }
                }
            }
        }
    }
    let parameters: [(&str, &str, Value); 4] = [
        (
            "/admin/users",
            "limit",
            json!({ "type": "integer", "format": "int64", "minimum": 1, "maximum": 200, "default": 50 }),
        ),
        (
            "/admin/users",
            "offset",
            json!({ "type": "integer", "format": "int64", "minimum": 0, "default": 0 }),
        ),
        (
            "/admin/audit",
            "limit",
            json!({ "type": "integer", "format": "int64", "minimum": 1, "maximum": 500, "default": 100 }),
        ),
        (
            "/admin/audit/export",
            "format",
            json!({ "type": "string", "enum": ["jsonl", "csv"], "default": "jsonl" }),
        ),
    ];
    for (path, name, schema) in parameters {
        parameter(document, path, name, schema);
    }
    for path in ["/admin/audit", "/admin/audit/export"] {
        for name in ["since", "until"] {
            parameter(
                document,
                path,
                name,
                json!({ "type": "string", "format": "date-time" }),
            );
        }
    }
    parameter(
        document,
        "/admin/audit",
        "cursor",
        json!({ "type": "string", "pattern": "^0*[1-9][0-9]{0,17}$" }),
    );
}

/// Sets the schema of query parameter `name` of `GET path`.
fn parameter(document: &mut Value, path: &str, name: &str, schema: Value) {
    if let Some(parameters) = document["paths"][path]["get"]["parameters"].as_array_mut() {
        for parameter in parameters {
            if parameter["name"] == name {
                parameter["schema"] = schema.clone();
            }
        }
    }
}

/// The password rules of `policy`, in words.
fn password_rules(policy: &PasswordPolicy) -> String {
    let mut rules = vec![format!(
        "{} to {} characters",
        policy.min_length, policy.max_length
    )];
    for (required, rule) in [
        (policy.require_upper, "an upper-case letter"),
        (policy.require_lower, "a lower-case letter"),
        (policy.require_digit, "a digit"),
        (
            policy.require_special,
            "a character that is neither a letter nor a digit",
        ),
    ] {
        if required {
            rules.push(format!("at least {rule}"));
        }
    }
    if policy.reject_common {
        rules.push("not a common or breached password".to_owned());
    }
    rules.push("not containing the username".to_owned());
    rules.join("; ")
}

/// The operational endpoints (SPEC §8) and this documentation.
fn operational_paths(document: &mut Value) {
    let error =
        json!({ "application/json": { "schema": { "$ref": "#/components/schemas/ErrorBody" } } });
    let html = |description: &str| json!({ "200": { "description": description, "content": { "text/html; charset=utf-8": { "schema": { "type": "string" } } } } });
    let asset = |summary: &str, content_type: &str| {
        json!({ "get": {
            "tags": ["operations"], "summary": summary,
            "responses": {
                "200": { "description": summary, "content": { content_type: { "schema": { "type": "string" } } } },
                "304": { "description": "Not modified (`If-None-Match` matched the `ETag`)" }
            }
        } })
    };
    let paths = document["paths"].as_object_mut();
    let Some(paths) = paths else {
        return;
    };
    paths.insert("/healthz".into(), json!({ "get": {
        "tags": ["operations"], "summary": "Liveness probe", "operationId": "healthz",
        "description": "Answers while the process serves requests.",
        "responses": { "200": { "description": "Alive", "content": { "application/json": { "schema": {
            "type": "object", "required": ["status"],
            "properties": { "status": { "type": "string", "enum": ["ok"] } }
        } } } } }
    } }));
    let readiness = json!({
        "type": "object", "required": ["status"],
        "properties": {
            "status": { "type": "string", "enum": ["ready", "unavailable", "stopping"] },
            "checks": {
                "type": "object", "required": ["database", "session_store"],
                "properties": {
                    "database": { "type": "boolean" },
                    "session_store": { "type": "boolean" }
                }
            }
        }
    });
    paths.insert("/readyz".into(), json!({ "get": {
        "tags": ["operations"], "summary": "Readiness probe", "operationId": "readyz",
        "description": "Ready when the database and the session store answer within a second, and not shutting down.",
        "responses": {
            "200": { "description": "Ready", "content": { "application/json": { "schema": readiness } } },
            "503": {
                "description": "A store is unreachable (`unavailable`), or shutdown has begun (`stopping`)",
                "headers": { "Retry-After": header_ref("Retry-After") },
                "content": { "application/json": { "schema": readiness } }
            }
        }
    } }));
    paths.insert("/metrics".into(), json!({ "get": {
        "tags": ["operations"], "summary": "Prometheus metrics", "operationId": "metrics",
        "description": "Prometheus text format, served only to `metrics.allowed_networks` (default loopback).",
        "responses": {
            "200": { "description": "The metrics", "content": { "text/plain; version=0.0.4; charset=utf-8": { "schema": { "type": "string" } } } },
            "404": { "description": "The client is outside `metrics.allowed_networks` (`error`: `not_found`)", "content": error }
        }
    } }));
    paths.insert("/.well-known/jwks.json".into(), json!({ "get": {
        "tags": ["operations"], "summary": "Token signing keys", "operationId": "jwks",
        "description": "The public key that verifies access tokens, as a JSON Web Key Set (`EdDSA` and `RS256` only).",
        "responses": {
            "200": { "description": "The key set", "content": { "application/json": { "schema": {
                "type": "object", "required": ["keys"],
                "properties": { "keys": { "type": "array", "items": { "type": "object" } } }
            } } } },
            "404": { "description": "Tokens are signed with `HS256`, whose key is secret (`error`: `not_found`)", "content": error }
        }
    } }));
    paths.insert("/openapi.json".into(), json!({ "get": {
        "tags": ["operations"], "summary": "This document", "operationId": "openapi",
        "responses": { "200": { "description": "The OpenAPI document", "content": { "application/json": { "schema": { "type": "object" } } } } }
    } }));
    paths.insert(
        "/docs".into(),
        json!({ "get": {
        "tags": ["operations"], "summary": "API documentation page", "operationId": "docs",
        "description": "Swagger UI for this document, from assets built into the binary.",
        "responses": html("The documentation page")
    } }),
    );
    for (path, summary, content_type) in
        ASSETS.map(|asset| (asset.path, asset.summary, asset.content_type))
    {
        let mut item = asset(summary, content_type);
        item["get"]["operationId"] = json!(
            path.trim_start_matches('/')
                .replace(['/', '.', '-'], "_")
                .to_lowercase()
        );
        paths.insert(path.into(), item);
    }
}

/// A file of the documentation page.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Where it is served.
    pub path: &'static str,
    /// What it is.
    summary: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    body: &'static [u8],
}

/// The page's assets: Swagger UI's bundle and style sheet (swagger-ui-dist, Apache-2.0), and
/// the script that points it at `/openapi.json`.
pub const ASSETS: [Asset; 4] = [
    Asset {
        path: "/docs/swagger-ui-bundle.js",
        summary: "Swagger UI script",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/docs/swagger-ui-bundle.js"),
    },
    Asset {
        path: "/docs/swagger-ui.css",
        summary: "Swagger UI style sheet",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../assets/docs/swagger-ui.css"),
    },
    Asset {
        path: "/docs/docs.js",
        summary: "Documentation page script",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../assets/docs/docs.js"),
    },
    Asset {
        path: "/docs/LICENSE",
        summary: "Swagger UI licence",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../assets/docs/LICENSE"),
    },
];

/// The documentation page.
const PAGE: &str = include_str!("../assets/docs/index.html");

/// The page's policy: its own scripts, style sheet and this document only; images also
/// from `data:` URIs, which the style sheet uses for its icons. No inline script or style,
/// no other host.
pub const DOCS_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `/docs` and its assets.
pub fn docs_routes() -> Router<AppState> {
    let mut router = Router::new().route(
        "/docs",
        get(|headers: HeaderMap| async move {
            static_file(
                &headers,
                PAGE.as_bytes(),
                "text/html; charset=utf-8",
                "/docs",
            )
        }),
    );
    for asset in ASSETS {
        router = router.route(
            asset.path,
            get(move |headers: HeaderMap| async move {
                static_file(&headers, asset.body, asset.content_type, asset.path)
            }),
        );
    }
    router
}

/// A built-in file: revalidated by `ETag` (the assets change only with the binary), under
/// [`DOCS_POLICY`].
fn static_file(
    headers: &HeaderMap,
    body: &'static [u8],
    content_type: &'static str,
    path: &str,
) -> Response {
    let tag = format!(
        "\"{}-{}\"",
        env!("CARGO_PKG_VERSION"),
        path.replace('/', "_")
    );
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.split(',').any(|candidate| candidate.trim() == tag));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response()
    };
    let headers = response.headers_mut();
    if let Ok(tag) = HeaderValue::from_str(&tag) {
        headers.insert(header::ETAG, tag);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, no-cache"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DOCS_POLICY),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_names(document: &Value) -> Vec<String> {
        document["components"]["schemas"]
            .as_object()
            .map(|schemas| schemas.keys().cloned().collect())
            .unwrap_or_default()
    }

    #[test]
    fn every_identity_endpoint_is_documented_with_its_errors() {
        let document = document(&PasswordPolicy::default(), &["admin", "trader", "viewer"]);
        for path in crate::identity::paths() {
            let item = document["paths"][path].as_object();
            assert!(
                item.is_some_and(|item| !item.is_empty()),
                "{path} undocumented"
            );
            for (method, operation) in item.into_iter().flatten() {
                let responses = operation["responses"].as_object().unwrap();
                for status in ["400", "401", "429", "500", "503"] {
                    let response = &responses[status];
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{method} {path} {status}"
                    );
                }
                assert!(
                    responses["429"]["headers"]["RateLimit"].is_object(),
                    "{method} {path}"
                );
                if method != "get" && path != "/auth/register" && path != "/auth/login" {
                    assert!(
                        responses.contains_key("403"),
                        "{method} {path}: csrf_failed"
                    );
                }
                if operation.get("requestBody").is_some() {
                    assert!(responses.contains_key("413") && responses.contains_key("415"));
                }
            }
        }
        assert!(document["paths"]["/users/me"]["get"]["security"][0]["bearer"].is_array());
        let unlock = &document["paths"]["/admin/users/{id}/unlock"]["post"];
        assert_eq!(
            unlock["requestBody"]["required"], false,
            "the body is optional"
        );
    }

    #[test]
    fn the_three_credential_kinds_are_security_schemes() {
        let document = document(&PasswordPolicy::default(), &["admin", "trader", "viewer"]);
        let schemes = &document["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["apiKey"]["name"], "X-API-Key");
        assert_eq!(schemes["signature"]["name"], "X-Signature");
        assert_eq!(schemes["signatureTimestamp"]["name"], "X-Timestamp");
        assert_eq!(schemes["signatureNonce"]["name"], "X-Nonce");
        assert_eq!(schemes["sessionCookie"]["in"], "cookie");
        assert_eq!(schemes["csrfToken"]["name"], "X-CSRF-Token");
        // An API key may not manage keys: only logins are offered there.
        let keys = document["paths"]["/users/me/api-keys"]["post"]["security"].to_string();
        assert!(
            !keys.contains("apiKey") && keys.contains("csrfToken"),
            "{keys}"
        );
        // Nor reach /admin/* (SPEC §11), though an admin's key may look a user up.
        let admin = document["paths"]["/admin/users"]["get"]["security"].to_string();
        assert!(!admin.contains("apiKey"), "{admin}");
        let lookup = document["paths"]["/users/{id}"]["get"]["security"].to_string();
        assert!(lookup.contains("apiKey"), "{lookup}");
    }

    #[test]
    fn operation_ids_are_unique() {
        let document = document(&PasswordPolicy::default(), &["admin"]);
        let mut seen = std::collections::BTreeSet::new();
        for item in document["paths"].as_object().unwrap().values() {
            for operation in item.as_object().unwrap().values() {
                let id = operation["operationId"].as_str().unwrap().to_owned();
                assert!(seen.insert(id.clone()), "{id} twice");
            }
        }
    }

    #[test]
    fn no_schema_is_named_after_a_rust_type() {
        let document = document(&PasswordPolicy::default(), &["admin", "trader", "viewer"]);
        for name in schema_names(&document) {
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric()),
                "schema {name}"
            );
        }
        let text = document.to_string();
        for rust in ["BTreeMap", "Vec<", "Option<", "HashMap"] {
            assert!(!text.contains(rust), "{rust} in the document");
        }
    }

    #[test]
    fn password_limits_follow_the_policy() {
        let policy = PasswordPolicy {
            min_length: 15,
            ..PasswordPolicy::default()
        };
        let document = document(&policy, &["admin"]);
        let password = &document["components"]["schemas"]["RegisterBody"]["properties"]["password"];
        assert_eq!(password["minLength"], 15);
        assert_eq!(password["maxLength"], 128);
    }
}
