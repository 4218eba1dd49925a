//! The deployment files under `deploy/` hold together: the production configuration passes
//! `RAMPART_ENV=production` with the environment and secret files that compose and systemd
//! give it, the Grafana dashboard queries only series a running instance exports, and the
//! compose file runs three instances on one database, one Redis and one set of secrets
//! behind an nginx that balances all three.

// Test code: a failed unwrap is a failed test, helpers included.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use rampart::config::{Config, Sources, StateStoreKind, parse_duration};
use serde_yaml::Value;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(deploy_dir().join(name))
        .unwrap_or_else(|error| panic!("deploy/{name}: {error}"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "rampart-deploy-{name}-{}",
        ulid::Ulid::new().to_string().to_lowercase()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Where compose mounts a secret inside a container, and where the production file
/// expects each one.
const SECRETS_IN_CONTAINER: &str = "/run/secrets/";

/// Fresh secrets, as `rampart keygen` prints them, written to `dir` under the names the
/// production file uses below `/run/secrets/`: the production file's text, pointing there.
fn production_toml_with_secrets_in(dir: &Path) -> String {
    for (name, value) in [
        (
            "rampart_jwt_secret",
            rampart::secrets::generate_token_secret(),
        ),
        (
            "rampart_encryption_keys",
            format!(
                "# the first key seals\n{}\n",
                rampart::secrets::generate_key_entry("k1")
            ),
        ),
        (
            "rampart_audit_chain_key",
            rampart::secrets::generate_token_secret(),
        ),
        ("jwt_secret", rampart::secrets::generate_token_secret()),
        (
            "encryption_keys",
            rampart::secrets::generate_key_entry("k1"),
        ),
        ("audit_chain_key", rampart::secrets::generate_token_secret()),
    ] {
        std::fs::write(dir.join(name), format!("{value}\n")).unwrap();
    }
    read("rampart.production.toml").replace(SECRETS_IN_CONTAINER, &format!("{}/", dir.display()))
}

/// `deploy/compose.yaml`, with `<<: *anchor` merges applied.
fn compose() -> Value {
    let mut compose: Value = serde_yaml::from_str(&read("compose.yaml")).unwrap();
    compose.apply_merge().unwrap();
    compose
}

/// The compose services that run Rampart, by name.
fn rampart_services(compose: &Value) -> Vec<(String, Value)> {
    let services = compose["services"].as_mapping().unwrap();
    services
        .iter()
        .filter(|(_, service)| {
            service["image"]
                .as_str()
                .is_some_and(|image| image.starts_with("rampart:"))
        })
        .map(|(name, service)| (name.as_str().unwrap().to_owned(), service.clone()))
        .collect()
}

/// A service's `environment`, in either of compose's spellings.
fn environment(service: &Value) -> HashMap<String, String> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(key, value)| {
                let value = match value {
                    Value::String(text) => text.clone(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                };
                (key.as_str().unwrap().to_owned(), value)
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let (key, value) = item.as_str().unwrap().split_once('=').unwrap();
                (key.to_owned(), value.to_owned())
            })
            .collect(),
        _ => HashMap::new(),
    }
}

/// Where each of a service's secrets is mounted, and the host file it comes from.
fn secret_mounts(compose: &Value, service: &Value) -> BTreeSet<(String, String)> {
    let Some(entries) = service["secrets"].as_sequence() else {
        return BTreeSet::new();
    };
    entries
        .iter()
        .map(|entry| {
            let (source, target) = match entry {
                Value::String(name) => (name.clone(), name.clone()),
                _ => {
                    let source = entry["source"].as_str().unwrap().to_owned();
                    let target = entry["target"].as_str().unwrap_or(&source).to_owned();
                    (source, target)
                }
            };
            let target = if target.starts_with('/') {
                target
            } else {
                format!("{SECRETS_IN_CONTAINER}{target}")
            };
            let file = compose["secrets"][source.as_str()]["file"]
                .as_str()
                .unwrap_or_else(|| panic!("secret {source} has no file"))
                .to_owned();
            (target, file)
        })
        .collect()
}

/// The file a service's `target` config comes from.
fn config_file(compose: &Value, service: &Value, target: &str) -> Option<String> {
    service["configs"].as_sequence()?.iter().find_map(|entry| {
        (entry["target"].as_str() == Some(target)).then(|| {
            let source = entry["source"].as_str().unwrap();
            compose["configs"][source]["file"]
                .as_str()
                .unwrap()
                .to_owned()
        })
    })
}

#[test]
fn the_production_config_runs_in_production_with_the_compose_environment() {
    let compose = compose();
    let services = rampart_services(&compose);
    let (name, service) = services.first().unwrap();
    let env = environment(service);
    assert_eq!(
        env.get("RAMPART_ENV").map(String::as_str),
        Some("production"),
        "{name}"
    );
    let config_path = env.get("RAMPART_CONFIG").unwrap();
    assert_eq!(
        config_file(&compose, service, config_path).as_deref(),
        Some("./rampart.production.toml"),
        "{name} runs deploy/rampart.production.toml"
    );
    // Every secret file the configuration names is one the instance has mounted.
    let mounted: BTreeSet<String> = secret_mounts(&compose, service)
        .into_iter()
        .map(|(target, _)| target)
        .collect();
    let text = read("rampart.production.toml");
    let named: Vec<&str> = text
        .match_indices(SECRETS_IN_CONTAINER)
        .map(|(at, _)| {
            let rest = &text[at..];
            &rest[..rest.find('"').unwrap()]
        })
        .collect();
    assert_eq!(named.len(), 3, "three secrets as files: {named:?}");
    for path in named.iter().copied().chain([env["PGPASSFILE"].as_str()]) {
        assert!(mounted.contains(path), "{path} is not mounted in {name}");
    }

    let secrets = temp_dir("secrets");
    let config = Config::load(&Sources {
        file_path: None,
        file: Some(production_toml_with_secrets_in(&secrets)),
        env: env.clone(),
        data_dir: None,
    })
    .unwrap_or_else(|error| panic!("deploy/rampart.production.toml is refused:\n{error}"));
    assert!(config.production);
    assert!(config.server.behind_tls);
    assert!(config.database_url.expose().starts_with("postgres://"));
    assert!(matches!(config.tokens.store, StateStoreKind::Redis(_)));
    assert!(config.rate_limits.redis_url.is_some());
    assert!(config.keyring.is_some());
    assert!(config.audit_chain_key.is_some());
    assert!(config.tokens.secret.is_some());
    // What `serve` does first with a loaded configuration: in production it refuses to
    // generate any secret, so this passes only when the file gave them all.
    let mut config = config;
    rampart::config::generated::fill_generated(&mut config).unwrap();

    // The test can fail: one misspelt key, or one secret left out, and the same load is
    // refused naming it.
    for (from, to, named) in [
        ("chain_key_file =", "chain_key_fil =", "chain_key_fil"),
        ("keys_file =", "# keys_file =", "encryption.keys"),
        (
            "behind_tls = true",
            "behind_tls = false",
            "server.behind_tls",
        ),
    ] {
        let text = production_toml_with_secrets_in(&secrets);
        assert!(text.contains(from), "{from}");
        let error = Config::load(&Sources {
            file_path: None,
            file: Some(text.replacen(from, to, 1)),
            env: env.clone(),
            data_dir: None,
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains(named), "{named} not named in: {error}");
    }
}

/// The unit's `Environment=` settings, with `%d` (the credentials directory) standing for
/// `credentials`, and the ids of its `LoadCredential=` lines.
fn unit_settings(unit: &str, credentials: &Path) -> (HashMap<String, String>, BTreeSet<String>) {
    let mut env = HashMap::new();
    let mut loaded = BTreeSet::new();
    for line in unit.lines() {
        if let Some(assignment) = line.strip_prefix("Environment=") {
            let (key, value) = assignment.split_once('=').unwrap();
            let value = value.replace("%d", &credentials.display().to_string());
            env.insert(key.to_owned(), value);
        }
        if let Some(credential) = line.strip_prefix("LoadCredential=") {
            loaded.insert(credential.split_once(':').unwrap().0.to_owned());
        }
    }
    (env, loaded)
}

#[test]
fn the_systemd_unit_runs_the_production_config_with_its_credentials() {
    let unit = read("rampart.service");
    let credentials = temp_dir("credentials");
    let text = production_toml_with_secrets_in(&credentials);
    let (env, loaded) = unit_settings(&unit, &credentials);
    // Each *_FILE variable names a credential the unit loads.
    let mut files = 0;
    for (key, value) in &env {
        if key.ends_with("_FILE") || key == "PGPASSFILE" {
            let id = Path::new(value).file_name().unwrap().to_str().unwrap();
            assert!(
                loaded.contains(id),
                "{key} names {id}, which no LoadCredential= loads"
            );
            files += 1;
        }
    }
    assert_eq!(files, 4, "three secrets and the pgpass file as credentials");
    assert_eq!(env["RAMPART_ENV"], "production");
    let config = Config::load(&Sources {
        file_path: None,
        file: Some(text),
        env,
        data_dir: None,
    })
    .unwrap_or_else(|error| panic!("the unit's settings are refused:\n{error}"));
    assert_eq!(config.server.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/rampart"));
    let stop = unit
        .lines()
        .find_map(|line| line.strip_prefix("TimeoutStopSec="))
        .unwrap();
    assert!(
        parse_duration(stop).unwrap() > config.server.shutdown_timeout,
        "TimeoutStopSec={stop} must outlast server.shutdown_timeout"
    );
    for line in [
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "ProtectSystem=strict",
        "SystemCallFilter=@system-service",
        "StateDirectory=rampart",
    ] {
        assert!(unit.contains(line), "rampart.service lacks {line}");
    }
}

#[test]
fn compose_runs_three_instances_on_one_database_one_redis_and_one_set_of_secrets() {
    let compose = compose();
    let services = rampart_services(&compose);
    let names: Vec<&str> = services.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["rampart-1", "rampart-2", "rampart-3"]);

    let secrets = temp_dir("compose");
    let text = production_toml_with_secrets_in(&secrets);
    let stores = |service: &Value| {
        let config = Config::load(&Sources {
            file_path: None,
            file: Some(text.clone()),
            env: environment(service),
            data_dir: None,
        })
        .unwrap();
        let StateStoreKind::Redis(sessions) = config.tokens.store.clone() else {
            panic!("sessions must be in Redis to be shared")
        };
        (
            config.database_url.expose().to_owned(),
            sessions,
            config.rate_limits.redis_url.clone().unwrap(),
            config.server.shutdown_timeout,
            config.server.listen.port(),
        )
    };
    let first = stores(&services[0].1);
    let secret_files = secret_mounts(&compose, &services[0].1);
    for (name, service) in &services {
        assert_eq!(stores(service), first, "{name} shares the stores");
        assert_eq!(
            secret_mounts(&compose, service),
            secret_files,
            "{name} has the same secrets"
        );
        assert_eq!(environment(service), environment(&services[0].1), "{name}");
        let grace = parse_duration(service["stop_grace_period"].as_str().unwrap()).unwrap();
        assert!(
            grace > first.3,
            "{name}: stop_grace_period must outlast shutdown_timeout"
        );
        for store in ["postgres", "redis"] {
            assert_eq!(
                service["depends_on"][store]["condition"].as_str(),
                Some("service_healthy"),
                "{name} waits for {store}"
            );
        }
    }
    // The stores are the compose services of those names, each with a health check.
    let (database, sessions, limits, _, port) = first;
    assert!(database.starts_with("postgres://rampart@postgres:5432/"));
    assert!(sessions.starts_with("redis://redis:6379"));
    assert!(limits.starts_with("redis://redis:6379"));
    for store in ["postgres", "redis"] {
        assert!(
            compose["services"][store]["healthcheck"]["test"].is_sequence(),
            "{store} has a health check"
        );
    }
    let mounted: Vec<&str> = secret_files.iter().map(|(_, file)| file.as_str()).collect();
    for file in [
        "./secrets/jwt_secret",
        "./secrets/encryption_keys",
        "./secrets/audit_chain_key",
        "./secrets/pgpass",
    ] {
        assert!(mounted.contains(&file), "{file} not mounted: {mounted:?}");
    }

    // nginx balances exactly these instances, and the instances trust its address.
    let nginx = read("nginx.conf");
    let block = &nginx[nginx.find("upstream rampart {").unwrap()..];
    let block = &block[..block.find('}').unwrap()];
    let upstreams: Vec<String> = block
        .lines()
        .filter_map(|line| line.trim().strip_prefix("server "))
        .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = names.iter().map(|name| format!("{name}:{port}")).collect();
    assert_eq!(upstreams, expected);
    assert!(nginx.contains("location = /metrics {\n            return 404;"));
    let address: std::net::IpAddr =
        compose["services"]["nginx"]["networks"]["frontend"]["ipv4_address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
    let config = Config::load(&Sources {
        file_path: None,
        file: Some(text),
        env: environment(&services[0].1),
        data_dir: None,
    })
    .unwrap();
    assert!(
        config
            .server
            .trusted_proxies
            .iter()
            .any(|network| network.contains(&address)),
        "nginx's {address} is not in server.trusted_proxies"
    );
    let subnet = compose["networks"]["frontend"]["ipam"]["config"][0]["subnet"]
        .as_str()
        .unwrap();
    assert!(
        config
            .server
            .trusted_proxies
            .iter()
            .any(|network| network.to_string() == subnet),
        "server.trusted_proxies is the compose network {subnet}"
    );
}

/// Every PromQL expression of the dashboard: its panels' targets and its variables.
fn dashboard_queries() -> Vec<String> {
    let dashboard: serde_json::Value = serde_json::from_str(&read("grafana/rampart.json")).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().unwrap().to_owned());
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            queries.push(query.to_owned());
        }
    }
    assert_eq!(
        dashboard["templating"]["list"][0]["type"], "datasource",
        "the data source is a variable"
    );
    queries
}

fn metric_names(query: &str) -> Vec<String> {
    let regex = regex::Regex::new(r"\b(?:rampart|process)_[a-z0-9_]+\b").unwrap();
    regex
        .find_iter(query)
        .map(|m| m.as_str().to_owned())
        .collect()
}

/// A backend that answers every request with 200 `[]`.
async fn backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(|| async { axum::Json(serde_json::json!([])) });
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

#[tokio::test]
async fn the_dashboard_queries_only_series_a_running_instance_exports() {
    // The production file's routes and upstreams, on SQLite and in-memory stores.
    let dir = temp_dir("dashboard");
    let text = production_toml_with_secrets_in(&dir);
    let backend = format!("http://{}", backend().await);
    let env: HashMap<String, String> = [
        ("RAMPART_SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        (
            "RAMPART_DATABASE__URL",
            format!("sqlite://{}", dir.join("rampart.db").display()),
        ),
        ("RAMPART_TOKENS__STORE", "database".to_owned()),
        ("RAMPART_RATE_LIMITS__STORE", "memory".to_owned()),
        ("RAMPART_UPSTREAMS__ORDERS__URL", backend.clone()),
        ("RAMPART_UPSTREAMS__POSITIONS__URL", backend),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_owned(), value))
    .collect();
    let config = Config::load(&Sources {
        file_path: None,
        file: Some(text),
        env,
        data_dir: Some(dir.clone()),
    })
    .unwrap();
    let app = rampart::app::Application::build(config).await.unwrap();
    let base = format!("http://{}", app.local_addr().unwrap());
    tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();

    // Traffic for the series that exist only once something happened: requests and their
    // durations, and a proxied request (the first user is an admin, who may list orders).
    let password = "violet anchor meadow 1729";
    let registered = client
        .post(format!("{base}/auth/register"))
        .json(&serde_json::json!({
            "username": "operator",
            "email": "operator@example.com",
            "password": password,
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        registered.status(),
        201,
        "{}",
        registered.text().await.unwrap()
    );
    let login: serde_json::Value = client
        .post(format!("{base}/auth/login"))
        .json(&serde_json::json!({ "username": "operator", "password": password }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap();
    let orders = client
        .get(format!("{base}/orders"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(orders.status(), 200);
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // Series (sample lines), by metric name, with their label names.
    let mut exported: HashMap<String, BTreeSet<String>> = HashMap::new();
    for line in metrics.lines().filter(|line| !line.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = exported.entry(line[..name_end].to_owned()).or_default();
        if let Some(inside) = line[name_end..]
            .strip_prefix('{')
            .and_then(|rest| rest.split_once('}'))
        {
            for pair in inside.0.split(',') {
                labels.insert(pair.split('=').next().unwrap().to_owned());
            }
        }
    }

    let queries = dashboard_queries();
    let by = regex::Regex::new(r"\bby\s*\(([^)]*)\)").unwrap();
    let mut used = BTreeSet::new();
    for query in &queries {
        let names = metric_names(query);
        for name in &names {
            assert!(
                exported.contains_key(name),
                "{name} (in `{query}`) is not in /metrics:\n{metrics}"
            );
            used.insert(name.trim_end_matches("_bucket").to_owned());
        }
        // Every label a query groups by is carried by the series it reads.
        for group in by.captures_iter(query) {
            for label in group[1].split(',').map(str::trim) {
                if matches!(label, "job" | "instance") {
                    continue;
                }
                assert!(
                    names.iter().any(|name| exported[name].contains(label)),
                    "no series of {names:?} has the label {label} (in `{query}`)"
                );
            }
        }
    }
    // Every family of SPEC §8 has a panel.
    for family in [
        "rampart_http_requests_total",
        "rampart_http_request_duration_seconds",
        "rampart_upstream_duration_seconds",
        "rampart_upstream_requests_total",
        "rampart_http_requests_in_flight",
        "rampart_rate_limit_hits_total",
        "rampart_auth_failures_total",
        "rampart_jwt_validation_failures_total",
        "rampart_failed_login_attempts_total",
        "rampart_circuit_breaker_state",
        "rampart_circuit_breaker_opens_total",
        "rampart_suspicious_requests_total",
        "rampart_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            used.contains(family),
            "the dashboard shows nothing of {family}"
        );
    }
}

#[test]
fn the_dashboard_queries_are_valid_promql() {
    // promtool has no query parser of its own; recording rules are checked with it.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, query) in dashboard_queries().iter().enumerate() {
        if query.starts_with("label_values(") {
            continue; // Grafana's, not PromQL
        }
        let query = query
            .replace("$__rate_interval", "5m")
            .replace("$__range", "1h")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{index}\n        expr: {}\n",
            serde_json::to_string(&query).unwrap()
        ));
    }
    let dir = temp_dir("promql");
    std::fs::write(dir.join("rules.yml"), &rules).unwrap();
    let output = match std::process::Command::new("promtool")
        .args(["check", "rules", "rules.yml"])
        .current_dir(&dir)
        .output()
    {
        Ok(output) => output,
        Err(error) => {
            assert!(
                std::env::var("CI").is_err(),
                "promtool is needed to check the dashboard in CI: {error}"
            );
            eprintln!("\n!!! SKIPPED: promtool not found ({error}) !!!\n");
            return;
        }
    };
    assert!(
        output.status.success(),
        "promtool check rules failed:\n{}\n{}\n{rules}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
