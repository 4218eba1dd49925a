//! What a backend gets: which client headers stop at the gateway, and which the gateway
//! states itself (SPEC §3 "Forwarding").

use std::collections::HashMap;

use rampart::config::{Config, Sources};
use reqwest::Method;
use serde_json::{Value, json};

use crate::backend;
use crate::gateway::{example_setup, routes_setup};
use crate::helpers::{Backend, spawn_app_with};

/// Client-set override and identity headers, each a different spelling of "believe me".
const CLAIMS: [(&str, &str); 19] = [
    ("x-http-method-override", "DELETE"),
    ("x-method-override", "DELETE"),
    ("x-http-method", "DELETE"),
    ("x-original-url", "/admin/users"),
    ("x-rewrite-url", "/admin/users"),
    ("x-real-ip", "6.6.6.6"),
    ("true-client-ip", "6.6.6.6"),
    ("x-client-ip", "6.6.6.6"),
    ("x-forwarded-for", "6.6.6.6"),
    ("x-forwarded-host", "evil.example"),
    ("x-forwarded-proto", "gopher"),
    ("x-forwarded-prefix", "/admin"),
    ("x-forwarded-user", "admin"),
    ("x-remote-user", "admin"),
    ("x-user-id", "1"),
    ("x-authenticated-user", "admin"),
    // Names with `_`: a WSGI or CGI backend reads them as their `-` spelling.
    ("X_Rampart_User_Id", "1"),
    ("X_Forwarded_For", "6.6.6.6"),
    ("x_real_ip", "6.6.6.6"),
];

async fn echo_with_claims(app: &crate::helpers::TestApp, method: Method, path: &str) -> Value {
    let mut request = app
        .client
        .request(method, app.url(path))
        .header("x-custom", "kept");
    for (name, value) in CLAIMS {
        request = request.header(name, value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn client_set_override_identity_and_underscore_headers_never_reach_the_backend(
    backend: Backend,
) {
    let upstream = backend::start().await;
    let setup = routes_setup(
        &upstream,
        "[[routes]]\npath = \"/app/*\"\nupstream = \"app\"\nauth = false\n",
        "",
    );
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let echo = echo_with_claims(&app, Method::GET, "/app/x").await;
    let headers = echo["headers"].as_object().unwrap();
    for (name, value) in CLAIMS {
        let name = name.to_ascii_lowercase();
        let got = headers.get(&name);
        assert!(
            got.is_none_or(|got| !got.to_string().contains(value)),
            "{name}: {value} reached the backend: {echo}"
        );
    }
    assert!(
        headers.keys().all(|name| !name.contains('_')),
        "no header name with `_` reaches the backend: {echo}"
    );
    assert_eq!(echo["method"], "GET");
    // What the gateway states itself, from the trusted client IP.
    assert_eq!(headers["x-real-ip"], json!(["127.0.0.1"]), "{echo}");
    assert_eq!(headers["x-forwarded-for"], json!(["127.0.0.1"]), "{echo}");
    assert_eq!(headers["x-forwarded-proto"], json!(["http"]), "{echo}");
    assert_eq!(headers["x-custom"], json!(["kept"]), "{echo}");
}

async fn a_signed_order_cannot_carry_an_unsigned_method_override(backend: Backend) {
    use crate::api_keys::{Signed, create_key};
    let upstream = backend::start().await;
    let Some(app) = spawn_app_with(backend, example_setup(&upstream)).await else {
        return;
    };
    let admin = app.user("admin_1").await;
    let key = create_key(&app, &admin, "bot").await;
    let body = br#"{"symbol":"INFY","side":"BUY","quantity":1}"#;
    let signed = Signed::new(&app, Method::POST, "/orders", body, &key);
    let response = app
        .client
        .post(app.url("/orders"))
        .header("x-api-key", &key.key)
        .header("x-timestamp", &signed.timestamp)
        .header("x-nonce", &signed.nonce)
        .header("x-signature", &signed.signature)
        .header("content-type", "application/json")
        .header("x-http-method-override", "DELETE")
        .header("x-method-override", "DELETE")
        .header("x-original-url", "/orders/17")
        .header("X_HTTP_Method_Override", "DELETE")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: Value = response.json().await.unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/orders");
    assert!(
        !echo["headers"].to_string().contains("DELETE"),
        "the override reached the backend: {echo}"
    );
    assert!(
        !echo["headers"].to_string().contains("/orders/17"),
        "{echo}"
    );
    // No decision reads a `_` spelling either: it is not the key header.
    let response = app
        .client
        .get(app.url("/orders"))
        .header("X_API_Key", &key.key)
        .send()
        .await
        .unwrap();
    crate::helpers::assert_error(response, 401, "unauthorized").await;
}

async fn an_upstream_strips_more_and_passes_named_built_in_headers(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(
        &upstream,
        "[[routes]]\npath = \"/app/*\"\nupstream = \"app\"\nauth = false\n",
        "strip_request_headers = [\"X-Custom\"]\n\
         pass_request_headers = [\"X-HTTP-Method-Override\", \"x-forwarded-prefix\"]\n",
    );
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let echo = echo_with_claims(&app, Method::POST, "/app/x").await;
    let headers = &echo["headers"];
    assert!(headers.get("x-custom").is_none(), "{echo}");
    assert_eq!(
        headers["x-http-method-override"],
        json!(["DELETE"]),
        "{echo}"
    );
    assert_eq!(headers["x-forwarded-prefix"], json!(["/admin"]), "{echo}");
    // Everything else on the built-in list still stops.
    for gone in ["x-method-override", "x-forwarded-user", "x-remote-user"] {
        assert!(headers.get(gone).is_none(), "{gone}: {echo}");
    }
    assert_eq!(headers["x-real-ip"], json!(["127.0.0.1"]), "{echo}");
}

#[test]
fn credentials_and_rampart_headers_cannot_be_passed_to_a_backend() {
    for name in [
        "Authorization",
        "cookie",
        "X-API-Key",
        "X-Rampart-User-Id",
        "x_user_id",
        "x-not-on-the-list",
    ] {
        let toml = format!(
            "[upstreams.app]\nurl = \"http://127.0.0.1:9\"\npass_request_headers = [\"{name}\"]\n"
        );
        let error = Config::load(&Sources {
            file_path: None,
            file: Some(toml),
            env: HashMap::new(),
            data_dir: Some(std::env::temp_dir()),
        })
        .expect_err(name);
        assert!(
            error
                .problems
                .iter()
                .any(|problem| problem.contains("upstreams.app.pass_request_headers")),
            "{name}: {:?}",
            error.problems
        );
    }
}

/// Host values a backend's parser might read as more than a host.
const HOSTILE_HOSTS: [&str; 10] = [
    "a, for=127.0.0.1;x=y",
    "a,for=127.0.0.1",
    "a;for=127.0.0.1",
    "a;host=b",
    "a=b",
    "a\"b",
    "a b",
    "user@a",
    "a:80:90",
    "[::1]x",
];

/// The `Forwarded` and `X-Forwarded-Host` a backend got.
fn host_headers(echo: &Value) -> (String, Option<String>) {
    let headers = echo["headers"].as_object().unwrap();
    let forwarded = headers["forwarded"].as_array().unwrap();
    assert_eq!(forwarded.len(), 1, "{echo}");
    let host = headers
        .get("x-forwarded-host")
        .map(|values| values[0].as_str().unwrap().to_owned());
    (forwarded[0].as_str().unwrap().to_owned(), host)
}

/// One request over HTTP/2 (h2c) with the given `:authority`; `None` when the client
/// library will not send it.
async fn h2c_with_authority(app: &crate::helpers::TestApp, authority: &str) -> Option<Value> {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let address = app.address.trim_start_matches("http://").to_owned();
    let uri: http::Uri = format!("http://{authority}/app/x").parse().ok()?;
    let stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = http::Request::builder()
        .uri(uri)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.ok()?;
    assert_eq!(response.status(), 200, "{authority}");
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Some(serde_json::from_slice(&bytes).unwrap())
}

async fn only_a_plain_host_is_forwarded(backend: Backend) {
    let upstream = backend::start().await;
    let setup = routes_setup(
        &upstream,
        "[[routes]]\npath = \"/app/*\"\nupstream = \"app\"\nauth = false\n",
        "",
    );
    let Some(app) = spawn_app_with(backend, setup).await else {
        return;
    };
    let over_http1 = async |host: &str| -> Value {
        let response = app
            .client
            .get(app.url("/app/x"))
            .header("host", host)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{host}");
        response.json().await.unwrap()
    };
    for host in [
        "example.com",
        "api.example.com:8443",
        "192.0.2.1:80",
        "[2001:db8::1]:443",
        "[::1]",
    ] {
        let (forwarded, forwarded_host) = host_headers(&over_http1(host).await);
        assert_eq!(
            forwarded,
            format!("for=127.0.0.1;proto=http;host=\"{host}\"")
        );
        assert_eq!(forwarded_host.as_deref(), Some(host));
        let echo = h2c_with_authority(&app, host).await.expect(host);
        let (forwarded, forwarded_host) = host_headers(&echo);
        assert_eq!(
            forwarded,
            format!("for=127.0.0.1;proto=http;host=\"{host}\""),
            "h2 {host}"
        );
        assert_eq!(forwarded_host.as_deref(), Some(host), "h2 {host}");
    }
    let mut sent_over_h2 = 0;
    for host in HOSTILE_HOSTS {
        let (forwarded, forwarded_host) = host_headers(&over_http1(host).await);
        assert_eq!(forwarded, "for=127.0.0.1;proto=http", "{host}");
        assert_eq!(forwarded_host, None, "{host}");
        if let Some(echo) = h2c_with_authority(&app, host).await {
            sent_over_h2 += 1;
            let (forwarded, forwarded_host) = host_headers(&echo);
            assert_eq!(forwarded, "for=127.0.0.1;proto=http", "h2 {host}");
            assert_eq!(forwarded_host, None, "h2 {host}");
        }
    }
    assert!(
        sent_over_h2 >= 4,
        "the hostile authorities were sent over HTTP/2"
    );
}

crate::on_databases!(
    client_set_override_identity_and_underscore_headers_never_reach_the_backend,
    a_signed_order_cannot_carry_an_unsigned_method_override,
    an_upstream_strips_more_and_passes_named_built_in_headers,
    only_a_plain_host_is_forwarded,
);
