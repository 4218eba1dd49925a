//! The embedded backend: SQLite.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

use crate::chain::ChainKey;
use crate::store::audit_writer::AuditWriter;

/// The embedded store: one SQLite file (or memory), one connection.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    audit_key: Option<Arc<ChainKey>>,
    /// Appends the entries queued with `append_audit_later`.
    writer: AuditWriter,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` and applies migrations.
    ///
    /// # Errors
    /// The file cannot be opened or a migration fails.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        if let Some(parent) = options.get_filename().parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        // One connection: SQLite serialises writers anyway, and one connection makes every
        // transaction (audit chain, first-admin claim) serial without busy retries.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        sqlx::migrate!("migrations/sqlite").run(&pool).await?;
        Ok(Self {
            pool,
            audit_key: None,
            writer: AuditWriter::default(),
        })
    }
}

/// What the seam files below are written against.
type Db = sqlx::Sqlite;
type SqlStore = SqliteStore;
type Tx = sqlx::Transaction<'static, Db>;

/// The single connection already serialises audit appends.
const LOCK_AUDIT: Option<&str> = None;
/// No row locks: the single connection makes every transaction serial.
const FOR_UPDATE: &str = "";
/// The newest id the revocation log handed out.
const LOG_HEAD: &str = "SELECT CAST(seq AS BIGINT) FROM sqlite_sequence WHERE name = 'revocations'";
/// A read transaction is already one WAL snapshot.
const SNAPSHOT: Option<&str> = None;

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
