//! The production backend: PostgreSQL.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::chain::ChainKey;
use crate::store::audit_writer::AuditWriter;

/// The production store: a PostgreSQL connection pool.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    audit_key: Option<Arc<ChainKey>>,
    /// Appends the entries queued with `append_audit_later`.
    writer: AuditWriter,
}

impl PostgresStore {
    /// Connects to `url` and applies migrations.
    ///
    /// # Errors
    /// The server cannot be reached or a migration fails.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            // A request that needs the database fails (503) within 2 s when no connection
            // can be had (server down or hanging) instead of queueing behind it.
            .acquire_timeout(Duration::from_secs(2))
            .connect_with(options.clone())
            .await;
        let pool = match pool {
            Ok(pool) => pool,
            // The pool only says it waited; one connection of its own says why.
            Err(sqlx::Error::PoolTimedOut) => {
                return Err(match sqlx::ConnectOptions::connect(&options).await {
                    Ok(_) => sqlx::Error::PoolTimedOut.into(),
                    Err(error) => error.into(),
                });
            }
            Err(error) => return Err(error.into()),
        };
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        Ok(Self {
            pool,
            audit_key: None,
            writer: AuditWriter::default(),
        })
    }
}

/// What the seam files below are written against.
type Db = sqlx::Postgres;
type SqlStore = PostgresStore;
type Tx = sqlx::Transaction<'static, Db>;

/// Serialises audit appends (each row links to the previous row's hash).
const LOCK_AUDIT: Option<&str> = Some("SELECT pg_advisory_xact_lock(7260001)");
/// Locks the selected rows for the transaction.
const FOR_UPDATE: &str = " FOR UPDATE";
/// The newest id the revocation log handed out.
const LOG_HEAD: &str =
    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM revocations_id_seq";
/// One consistent view of the whole trail for verification.
const SNAPSHOT: Option<&str> = Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY");

// Each seam is compiled once per backend, against the definitions above.
#[allow(clippy::duplicate_mod)]
#[path = "accounts.rs"]
mod accounts;
#[allow(clippy::duplicate_mod)]
#[path = "audit.rs"]
mod audit;
#[allow(clippy::duplicate_mod)]
#[path = "credentials.rs"]
mod credentials;
#[allow(clippy::duplicate_mod)]
#[path = "records.rs"]
mod records;
#[allow(clippy::duplicate_mod)]
#[path = "sessions.rs"]
mod sessions;
#[allow(clippy::duplicate_mod)]
#[path = "users.rs"]
mod users;
