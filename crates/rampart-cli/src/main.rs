//! The `rampart` command: run the gateway and operate it.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rampart::audit::{NewAuditEntry, RequestContext, Verification};
use rampart::config::{Config, Sources, parse_duration};
use rampart::store::NewUser;

/// Rampart: a security gateway and identity service for trading platforms.
#[derive(Debug, Parser)]
#[command(name = "rampart", version, about)]
struct Cli {
    /// Configuration file (default: $RAMPART_CONFIG, else ./rampart.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve,
    /// Run the gateway on the example configuration with a sample trading backend and a
    /// sample broker, for a first look at every layer.
    Demo,
    /// Print fresh secrets in .env form.
    Keygen,
    /// Apply database migrations and exit.
    Migrate,
    /// Validate the configuration and print every problem.
    CheckConfig,
    /// Manage users from the operator's console.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Verify or purge the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Manage the encryption keys of stored secrets.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Re-encrypt every stored secret with the first key of encryption.keys; exit 1 if
    /// any value does not decrypt (it is left as it is). Safe to interrupt and re-run.
    Rotate,
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// Create an admin account; the password is read from standard input.
    CreateAdmin {
        /// Username (3–20 of [A-Za-z0-9_]).
        #[arg(long)]
        username: String,
        /// Email address.
        #[arg(long)]
        email: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the hash chain; exit 1 naming the first row that does not check out.
    Verify,
    /// Delete entries older than a duration (default: audit.retention).
    Purge {
        /// For example 365d.
        #[arg(long)]
        older_than: Option<String>,
    },
    /// Stream entries to standard output in id order.
    Export {
        /// `jsonl` (one JSON object a line) or `csv` (a header line, every field quoted).
        #[arg(long, default_value = "jsonl", value_parser = ["jsonl", "csv"])]
        format: String,
        /// Entries at or after this time: RFC 3339 (2026-01-31T00:00:00Z) or an age (7d).
        #[arg(long)]
        since: Option<String>,
        /// Entries before this time: RFC 3339 or an age.
        #[arg(long)]
        until: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Keygen = cli.command {
        println!(
            "RAMPART_TOKENS__SECRET={}",
            rampart::secrets::generate_token_secret()
        );
        println!(
            "RAMPART_ENCRYPTION__KEYS={}",
            rampart::secrets::generate_key_entry("k1")
        );
        println!(
            "RAMPART_AUDIT__CHAIN_KEY={}",
            rampart::secrets::generate_token_secret()
        );
        return ExitCode::SUCCESS;
    }
    let sources = if let Command::Demo = cli.command {
        Ok(demo_sources())
    } else {
        Sources::from_process(cli.config.as_deref())
    };
    let config = match sources.and_then(|s| Config::load(&s)) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(2);
        }
    };
    if let Command::CheckConfig = cli.command {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    // Declared before the runtime, so dropped after it: what is queued is written out.
    // An export owns standard output, so its log lines go to standard error.
    let _log = if matches!(
        cli.command,
        Command::Audit {
            command: AuditCommand::Export { .. }
        }
    ) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
            )
            .with_writer(std::io::stderr)
            .init();
        None
    } else {
        Some(init_logging(&config.log))
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if config.server.worker_threads > 0 {
        runtime.worker_threads(config.server.worker_threads);
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, config)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", rampart::error::chain_text(error.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// Every log line goes to stdout through one buffered writer thread (SPEC §9 `[log]`):
/// JSON unless `log.format` says text (or `auto` and stdout is a terminal), colour only on
/// a terminal. `RUST_LOG` (or `RAMPART_LOG`), when set, wins over `log.level`.
fn init_logging(log: &rampart::config::LogConfig) -> rampart::gateway::access_log::Guard {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_env("RAMPART_LOG"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&log.level));
    let json = log.format.is_json();
    let guard = rampart::gateway::access_log::install(json);
    let Some(sink) = rampart::gateway::access_log::sink() else {
        return guard;
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(!json && std::io::stdout().is_terminal())
        .with_writer(sink.make_writer());
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    guard
}

async fn run(command: Command, config: Config) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve => {
            let app = rampart::app::Application::build(config).await?;
            tracing::info!(address = %app.local_addr()?, "rampart is listening");
            app.run_until_stopped().await?;
        }
        Command::Demo => return demo(config).await,
        Command::Migrate => {
            rampart::app::open_store(config.database_url.expose(), 4, None).await?;
            println!("migrations applied");
        }
        Command::Users {
            command: UsersCommand::CreateAdmin { username, email },
        } => return create_admin(config, username, email).await,
        Command::Audit {
            command:
                AuditCommand::Export {
                    format,
                    since,
                    until,
                },
        } => return export_audit(&config, &format, since, until).await,
        Command::Audit { command } => {
            let mut config = config;
            // The chain key lives with the other secrets, as `serve` finds them.
            fill_secrets(&mut config).await?;
            let secret = config
                .audit_chain_key
                .clone()
                .context("audit.chain_key is not set")?;
            let store = rampart::app::open_store(config.database_url.expose(), 4, Some(&secret))
                .await?
                .data();
            let key = rampart::audit::ChainKey::new(secret.expose());
            match command {
                AuditCommand::Verify => match rampart::audit::verify(&*store, &key).await? {
                    Verification::Intact {
                        rows,
                        legacy_rows,
                        anchor,
                        head,
                        legacy_end,
                    } => {
                        println!("audit trail intact: {rows} rows verified");
                        if legacy_rows > 0 {
                            println!(
                                "  {legacy_rows} of them were written before the chain was keyed \
                                 and are checked with plain SHA-256 up to the recorded switch-over"
                            );
                        }
                        if let Some(end) = legacy_end {
                            println!("  keyed after row {end} (the switch-over)");
                        }
                        println!(
                            "  sealed head: row {} hash {} (keep a copy: a later head must not be \
                             lower)",
                            head.0, head.1
                        );
                        match anchor {
                            Some(id) => println!(
                                "  checked from the anchor recorded by the purge at row {id} \
                                 to the sealed head"
                            ),
                            None => println!("  checked from the chain's start to the sealed head"),
                        }
                    }
                    Verification::Broken { id, reason } => {
                        eprintln!("audit trail broken at row {id}: {reason}");
                        return Ok(ExitCode::FAILURE);
                    }
                },
                AuditCommand::Export { .. } => unreachable!("handled above"),
                AuditCommand::Purge { older_than } => {
                    let age = match older_than {
                        Some(text) => parse_duration(&text)
                            .map_err(|message| anyhow::anyhow!("--older-than: {message}"))?,
                        None => config.audit_retention,
                    };
                    let now = time::OffsetDateTime::now_utc().unix_timestamp();
                    let removed = rampart::audit::purge_older_than(
                        &*store,
                        age,
                        now,
                        "rampart audit purge",
                        "console",
                    )
                    .await?;
                    println!(
                        "purged {removed} audit entries older than {}s",
                        age.as_secs()
                    );
                }
            }
        }
        Command::Keys {
            command: KeysCommand::Rotate,
        } => return rotate_keys(config).await,
        Command::Keygen | Command::CheckConfig => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// `rampart audit export`: reads need no chain key, so none is looked for.
async fn export_audit(
    config: &Config,
    format: &str,
    since: Option<String>,
    until: Option<String>,
) -> anyhow::Result<ExitCode> {
    use rampart::audit::export::Format;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let bound = |name: &str, text: Option<String>| -> anyhow::Result<Option<i64>> {
        let Some(text) = text else { return Ok(None) };
        if let Some(at) = rampart::time_format::parse_rfc3339(&text) {
            return Ok(Some(at));
        }
        let age = parse_duration(&text).map_err(|_| {
            anyhow::anyhow!(
                "--{name}: {text:?} is neither an RFC 3339 time (2026-01-31T00:00:00Z) nor an \
                 age such as 7d"
            )
        })?;
        Ok(Some(
            now - i64::try_from(age.as_secs()).unwrap_or(i64::MAX / 2),
        ))
    };
    let since = bound("since", since)?;
    let until = bound("until", until)?;
    let format = if format == "csv" {
        Format::Csv
    } else {
        Format::Jsonl
    };
    let store = rampart::app::open_store(config.database_url.expose(), 2, None)
        .await?
        .data();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
    match rampart::audit::export::write(store, since, until, format, &mut out).await {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // The reader went away (`| head`): not an error of the export.
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(error) => Err(anyhow::anyhow!("audit export: {error}")),
    }
}

/// Fills in the secrets `serve` would use, from `<data_dir>/secrets.toml`. A command run
/// from another directory would find no such file and generate new secrets: refused when
/// the database's audit trail already has entries, as a new chain key would append links
/// no one can verify (opening also checks the key against the sealed head).
async fn fill_secrets(config: &mut Config) -> anyhow::Result<()> {
    if rampart::config::generated::would_generate_chain_key(config) {
        let store = rampart::app::open_store(config.database_url.expose(), 1, None)
            .await?
            .data();
        let written = !store.audit_chain().await?.is_empty()
            || !store.audit_page(i64::MIN, 1).await?.is_empty();
        anyhow::ensure!(
            !written,
            "no audit.chain_key is configured and {} holds none, but this database's audit \
             trail already has entries: a new key would break its chain. Run from the \
             directory whose data/secrets.toml the gateway uses (or pass its --config), or \
             set RAMPART_AUDIT__CHAIN_KEY",
            config.data_dir.join("secrets.toml").display()
        );
    }
    rampart::config::generated::fill_generated(config)
}

/// The example configuration with the demo's overrides; the process environment still wins.
fn demo_sources() -> Sources {
    let mut env: std::collections::HashMap<String, String> = rampart::demo::DEMO_OVERRIDES
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    env.extend(std::env::vars());
    Sources {
        file_path: None,
        file: Some(rampart::demo::EXAMPLE_CONFIG.to_owned()),
        env,
        data_dir: None,
    }
}

async fn demo(config: Config) -> anyhow::Result<ExitCode> {
    let backend = config
        .upstreams
        .get("orders")
        .and_then(|upstream| upstream.targets.first())
        .and_then(|uri| {
            uri.authority()
                .map(|authority| authority.as_str().to_owned())
        })
        .and_then(|authority| authority.parse::<std::net::SocketAddr>().ok())
        .context("the example configuration names no loopback address for upstream `orders`")?;
    let backend = rampart::demo::spawn(backend, rampart::demo::trading_backend())
        .await
        .with_context(|| format!("starting the sample trading backend on {backend}"))?;
    let broker: std::net::SocketAddr = rampart::demo::SAMPLE_BROKER.parse()?;
    let broker = rampart::demo::spawn(broker, rampart::demo::sample_broker())
        .await
        .with_context(|| format!("starting the sample broker on {broker}"))?;
    let app = rampart::app::Application::build(config).await?;
    let address = app.local_addr()?;
    println!(
        "Rampart demo\n  \
         gateway                 http://{address}\n  \
         sample trading backend  http://{backend}  (orders, positions: a sample, not an exchange)\n  \
         sample broker           http://{broker}/api/v1/funds  (a sample, not a broker)\n\
         Register the first user (it becomes admin), log in, and follow the tour in README.md."
    );
    app.run_until_stopped().await?;
    Ok(ExitCode::SUCCESS)
}

async fn rotate_keys(mut config: Config) -> anyhow::Result<ExitCode> {
    // The embedded defaults keep their keys in data/secrets.toml, as `serve` does.
    fill_secrets(&mut config).await?;
    let ring = rampart::app::keyring(&config)?;
    let store = rampart::app::open_store(
        config.database_url.expose(),
        4,
        config.audit_chain_key.as_ref(),
    )
    .await?
    .data();
    let context = RequestContext {
        ip: None,
        user_agent: Some("rampart keys rotate".into()),
        request_id: "console".into(),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let report = rampart::sealing::rotate_all(
        &*store,
        &ring,
        config.encryption_legacy_host_binding,
        now,
        &context,
    )
    .await?;
    println!(
        "sealed with key {}: {} re-encrypted ({} legacy broker keys bound to their host), \
         {} already current, {} changed meanwhile, {} failed",
        ring.primary_id(),
        report.rotated,
        report.rebound,
        report.current,
        report.raced,
        report.failed.len()
    );
    if report.failed.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for failed in &report.failed {
        eprintln!(
            "- {} row {}: {} (left as it is)",
            failed.kind.as_str(),
            failed.id,
            failed.error
        );
    }
    Ok(ExitCode::FAILURE)
}

async fn create_admin(
    mut config: Config,
    username: String,
    email: String,
) -> anyhow::Result<ExitCode> {
    // The audit chain key lives with the other secrets, as `serve` finds them.
    fill_secrets(&mut config).await?;
    let mut problems = Vec::new();
    for problem in rampart::identity::check_username(&username) {
        problems.push(format!("username {problem}"));
    }
    for problem in rampart::identity::check_email(&email) {
        problems.push(format!("email {problem}"));
    }
    eprintln!("password for {username} (read from standard input):");
    let mut password = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut password)
        .context("reading the password")?;
    let password = password.trim_end_matches(['\r', '\n']).to_owned();
    for problem in rampart::password::check_policy(&config.password, &password, &username) {
        problems.push(format!("password {problem}"));
    }
    if !problems.is_empty() {
        for problem in problems {
            eprintln!("- {problem}");
        }
        return Ok(ExitCode::from(2));
    }
    let store = rampart::app::open_store(
        config.database_url.expose(),
        4,
        config.audit_chain_key.as_ref(),
    )
    .await?
    .data();
    let hasher = rampart::password::Hasher::new(1);
    let hash = hasher.hash(password).await?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let context = RequestContext {
        ip: None,
        user_agent: Some("rampart users create-admin".into()),
        request_id: "console".into(),
    };
    let user = store
        .create_user(
            NewUser {
                username,
                email,
                password_hash: hash,
                role: "admin".into(),
                force_admin: true,
                created_at: now,
            },
            NewAuditEntry::new(
                now,
                "user_registration",
                None,
                serde_json::json!({ "via": "console" }),
                &context,
            ),
        )
        .await
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    println!("created admin {} (id {})", user.username, user.id);
    Ok(ExitCode::SUCCESS)
}
