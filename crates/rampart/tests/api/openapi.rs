//! `/openapi.json` describes every endpoint the router serves, and `/docs` serves its page
//! and assets from the binary, with their content types and a policy that allows only the
//! gateway itself.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{Backend, Setup, spawn_app, spawn_app_with};

const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// Every path the router serves, from the tables the routers are built from.
fn served_paths() -> Vec<&'static str> {
    let mut paths = rampart::identity::paths();
    paths.extend(rampart::request::operations_paths());
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_documented_and_every_documented_operation_is_served() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.unwrap();
    let paths = document["paths"].as_object().unwrap();
    for path in served_paths() {
        assert!(
            paths.contains_key(path),
            "{path} is served but undocumented"
        );
    }
    // Methods: each documented one is served (anything but 405), every other one is
    // refused with 405, so the document lists exactly what the router answers. No
    // credentials are sent, so nothing is changed.
    for (path, item) in paths {
        assert!(
            served_paths().contains(&path.as_str()),
            "{path} is documented but not served"
        );
        let concrete = path.replace("{id}", "1");
        for method in METHODS {
            let documented = item.get(method).is_some();
            let status = app
                .client
                .request(
                    Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                    app.url(&concrete),
                )
                .send()
                .await
                .unwrap()
                .status();
            if documented {
                assert_ne!(status, 405, "{method} {path} is documented but not served");
                // The key set is 404 by design with HS256, the default.
                if path != "/.well-known/jwks.json" {
                    assert_ne!(status, 404, "{method} {path} is documented but not served");
                }
            } else {
                assert_eq!(status, 405, "{method} {path} is served but undocumented");
            }
        }
    }
    let schemes = document["components"]["securitySchemes"]
        .as_object()
        .unwrap();
    for scheme in [
        "bearer",
        "apiKey",
        "signature",
        "sessionCookie",
        "csrfToken",
    ] {
        assert!(schemes.contains_key(scheme), "security scheme {scheme}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_and_its_assets_are_served_from_the_binary() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    let page = app.client.get(app.url("/docs")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("script-src 'self';"), "{policy}");
    assert!(policy.contains("connect-src 'self';"), "{policy}");
    assert!(
        !policy.contains("unsafe") && !policy.contains("http"),
        "{policy}"
    );
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no other host"
    );
    for (path, content_type) in [
        (
            "/docs/swagger-ui-bundle.js",
            "text/javascript; charset=utf-8",
        ),
        ("/docs/swagger-ui.css", "text/css; charset=utf-8"),
        ("/docs/docs.js", "text/javascript; charset=utf-8"),
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], content_type, "{path}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        let tag = response.headers()["etag"].clone();
        assert!(response.bytes().await.unwrap().len() > 100, "{path}");
        if path != "/docs/swagger-ui.css" {
            assert!(
                html.contains(&format!("src=\"{path}\"")),
                "the page loads {path}"
            );
        }
        let again = app
            .client
            .get(app.url(path))
            .header("if-none-match", tag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path} revalidates");
    }
    assert!(html.contains("href=\"/docs/swagger-ui.css\""));
    let script = app
        .client
        .get(app.url("/docs/docs.js"))
        .send()
        .await
        .unwrap();
    assert!(
        script.text().await.unwrap().contains("/openapi.json") || html.contains("/openapi.json")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_are_not_rate_limited_like_the_probes() {
    let setup = Setup::default().env("RAMPART_RATE_LIMITS__ANONYMOUS", "1/min");
    let Some(app) = spawn_app_with(Backend::Sqlite, setup).await else {
        return;
    };
    for path in [
        "/docs",
        "/docs/swagger-ui-bundle.js",
        "/openapi.json",
        "/docs",
        "/openapi.json",
    ] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let limited = app.client.get(app.url("/users/me")).send().await.unwrap();
    let second = app.client.get(app.url("/users/me")).send().await.unwrap();
    assert!(
        limited.status() == 401 && second.status() == 429,
        "the tier itself still holds"
    );
}
