//! The audit trail: a hash chain whose head is sealed with the chain key, appended to in
//! the transaction of the change it records.

use std::sync::Arc;

use super::{Db, LOCK_AUDIT, SNAPSHOT, SqlStore, Tx};
use crate::chain::{self as audit, AuditRecord, ChainKey, GENESIS, NewAuditEntry};
use crate::store::audit_writer::AuditWriter;
use crate::store::sql::{AUDIT_COLUMNS, HEAD_MISSING, KEY_MISMATCH};
use crate::store::{AuditFilter, AuditItem, ChainRecord, StoreError, StoreResult};

impl SqlStore {
    /// Keys the audit chain with `key`.
    ///
    /// A chain with a head must have it sealed by `key`: otherwise the key is not the one
    /// the chain was written with (or the head was tampered with), and opening fails rather
    /// than append links no one can verify. A chain without a head is keyed now, once,
    /// under the audit lock: the switch-over is read from `audit_log` itself (not from the
    /// unsealed records migration 0004 left) and sealed together with a head at the legacy
    /// end, or at row 0 for an empty trail. A record is never sealed just because its seal
    /// is missing.
    ///
    /// # Errors
    /// The database fails, the key does not match, or the head was removed from a chain
    /// that was already keyed.
    pub async fn with_audit_key(mut self, key: ChainKey) -> anyhow::Result<Self> {
        let mut tx = self.pool.begin().await?;
        lock_audit(&mut tx).await?;
        let records: Vec<ChainRecord> =
            sqlx::query_as("SELECT name, row_id, hash, mac FROM audit_chain")
                .fetch_all(&mut *tx)
                .await?;
        if let Some(head) = records.iter().find(|record| record.name == audit::HEAD) {
            anyhow::ensure!(key.record_is_sealed(head), KEY_MISMATCH);
            tx.rollback().await?;
            self.audit_key = Some(Arc::new(key));
            return Ok(self);
        }
        anyhow::ensure!(
            records.iter().all(|record| record.mac.is_none()),
            HEAD_MISSING
        );
        let last: Option<AuditRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY id DESC LIMIT 1"
        )))
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM audit_chain")
            .execute(&mut *tx)
            .await?;
        let mut sealed = Vec::new();
        match last {
            None => sealed.push((audit::HEAD, 0, GENESIS.to_owned())),
            Some(last) => {
                // Rows from before the key are plain SHA-256; a keyed last row means the
                // chain was keyed and its head removed.
                let plain = audit::row_hash(
                    &last.prev_hash,
                    last.at,
                    last.user_id,
                    &last.action,
                    &last.details,
                    &last.request_id,
                    &last.pii_digest,
                );
                anyhow::ensure!(plain == last.hash, HEAD_MISSING);
                let (first_id, first_prev): (i64, String) =
                    sqlx::query_as("SELECT id, prev_hash FROM audit_log ORDER BY id LIMIT 1")
                        .fetch_one(&mut *tx)
                        .await?;
                sealed.push((audit::LEGACY_START, first_id, first_prev));
                sealed.push((audit::LEGACY_END, last.id, last.hash.clone()));
                sealed.push((audit::HEAD, last.id, last.hash));
                tracing::warn!(
                    legacy_end = last.id,
                    "keyed the audit chain: earlier rows stay checked with plain SHA-256"
                );
            }
        }
        for (name, row_id, hash) in sealed {
            sqlx::query(
                "INSERT INTO audit_chain (name, row_id, hash, mac) VALUES ($1, $2, $3, $4)",
            )
            .bind(name)
            .bind(row_id)
            .bind(&hash)
            .bind(key.seal_record(name, row_id, &hash))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.audit_key = Some(Arc::new(key));
        Ok(self)
    }

    /// The same database and chain key, with a writer queue of its own (never started).
    pub(super) fn without_writer(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            audit_key: self.audit_key.clone(),
            writer: AuditWriter::default(),
        }
    }

    /// A transaction that holds the audit lock from its start. Every transaction that
    /// touches `audit_log` begins so: taking the lock after row locks on `audit_log`
    /// deadlocks against a purge, which holds the lock and deletes.
    pub(super) async fn begin_audited(&self) -> StoreResult<Tx> {
        let mut tx = self.pool.begin().await?;
        lock_audit(&mut tx).await?;
        Ok(tx)
    }

    /// Appends `entry` in `tx`, which began with [`Self::begin_audited`].
    pub(super) async fn insert_audit(
        &self,
        tx: &mut sqlx::Transaction<'_, Db>,
        entry: &NewAuditEntry,
    ) -> sqlx::Result<()> {
        let key = self
            .audit_key
            .as_deref()
            .ok_or_else(|| sqlx::Error::Configuration("the audit chain key is not set".into()))?;
        let (_, prev) = chain_tip(tx, key).await?;
        let sealed = audit::seal(entry, &prev, key);
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO audit_log (at, user_id, action, details, ip_address, \
             user_agent, request_id, pii_salt, pii_digest, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(entry.at)
        .bind(entry.user_id)
        .bind(entry.action)
        .bind(&sealed.details)
        .bind(entry.ip_address.as_deref())
        .bind(entry.user_agent.as_deref())
        .bind(&entry.request_id)
        .bind(&sealed.pii_salt)
        .bind(&sealed.pii_digest)
        .bind(&prev)
        .bind(&sealed.hash)
        .fetch_one(&mut **tx)
        .await?;
        // The head moves with the row, in the same transaction.
        sqlx::query(
            "INSERT INTO audit_chain (name, row_id, hash, mac) VALUES ('head', $1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET row_id = excluded.row_id, \
             hash = excluded.hash, mac = excluded.mac",
        )
        .bind(id)
        .bind(&sealed.hash)
        .bind(key.seal_record(audit::HEAD, id, &sealed.hash))
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

async fn lock_audit(tx: &mut sqlx::Transaction<'_, Db>) -> sqlx::Result<()> {
    if let Some(lock) = LOCK_AUDIT {
        sqlx::query(lock).execute(&mut **tx).await?;
    }
    Ok(())
}

/// The sealed head's row id and hash, which the next row links to. A head that is missing
/// or not sealed with the key is not extended: a forged head would otherwise be sealed by
/// the next append.
async fn chain_tip(
    tx: &mut sqlx::Transaction<'_, Db>,
    key: &ChainKey,
) -> sqlx::Result<(i64, String)> {
    let head: Option<ChainRecord> =
        sqlx::query_as("SELECT name, row_id, hash, mac FROM audit_chain WHERE name = 'head'")
            .fetch_optional(&mut **tx)
            .await?;
    match head {
        Some(head) if key.record_is_sealed(&head) => Ok((head.row_id, head.hash)),
        _ => Err(sqlx::Error::Protocol(
            "the audit chain's head is missing or not sealed with the chain key; \
             nothing is appended (run `rampart audit verify`)"
                .into(),
        )),
    }
}

pub(super) async fn append_audit(store: &SqlStore, entry: NewAuditEntry) -> StoreResult<()> {
    let mut tx = store.begin_audited().await?;
    store.insert_audit(&mut tx, &entry).await?;
    tx.commit().await?;
    Ok(())
}

pub(super) async fn list_audit(
    store: &SqlStore,
    filter: &AuditFilter,
) -> StoreResult<Vec<AuditRecord>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_log \
         WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR action = $2) \
         AND ($3 IS NULL OR at >= $3) AND ($4 IS NULL OR at < $4) \
         AND ($5 IS NULL OR id < $5) ORDER BY id DESC LIMIT $6"
    )))
    .bind(filter.user_id)
    .bind(filter.action.as_deref())
    .bind(filter.since)
    .bind(filter.until)
    .bind(filter.before_id)
    .bind(filter.limit)
    .fetch_all(&store.pool)
    .await?)
}

pub(super) async fn audit_page(
    store: &SqlStore,
    after_id: i64,
    limit: i64,
) -> StoreResult<Vec<AuditRecord>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2"
    )))
    .bind(after_id)
    .bind(limit)
    .fetch_all(&store.pool)
    .await?)
}

pub(super) async fn purge_audit(
    store: &SqlStore,
    before: i64,
    mut audit: NewAuditEntry,
) -> StoreResult<u64> {
    let mut tx = store.begin_audited().await?;
    // Only a prefix of the chain goes: every row before the first one that is not older
    // than `before`. A row older than that which follows a newer one (clocks of several
    // instances) waits for a later purge.
    let removed = sqlx::query(
        "DELETE FROM audit_log WHERE id < COALESCE(\
         (SELECT MIN(id) FROM audit_log WHERE at >= $1), \
         (SELECT MAX(id) + 1 FROM audit_log))",
    )
    .bind(before)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // The hash the purge cut at: what the first kept row links to, or, with nothing kept,
    // what this entry will link to.
    let first_kept: Option<String> =
        sqlx::query_scalar("SELECT prev_hash FROM audit_log ORDER BY id LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    let anchor = match first_kept {
        Some(anchor) => anchor,
        None => {
            let key = store.audit_key.as_deref().ok_or_else(|| {
                StoreError::Other(anyhow::anyhow!("the audit chain key is not set"))
            })?;
            chain_tip(&mut tx, key).await?.1
        }
    };
    if let serde_json::Value::Object(details) = &mut audit.details {
        details.insert("removed".into(), removed.into());
        details.insert("anchor".into(), anchor.into());
    }
    store.insert_audit(&mut tx, &audit).await?;
    tx.commit().await?;
    Ok(removed)
}

pub(super) async fn audit_chain(store: &SqlStore) -> StoreResult<Vec<ChainRecord>> {
    Ok(
        sqlx::query_as("SELECT name, row_id, hash, mac FROM audit_chain ORDER BY name")
            .fetch_all(&store.pool)
            .await?,
    )
}

pub(super) async fn audit_snapshot(
    store: &SqlStore,
    visit: &mut (dyn FnMut(AuditItem) -> bool + Send),
) -> StoreResult<()> {
    // One transaction: a repeatable-read snapshot on PostgreSQL, a read transaction (one
    // WAL snapshot) on SQLite. The head is read first and rows after it are not walked, so
    // appends meanwhile do not look like a cut end.
    let mut tx = store.pool.begin().await?;
    if let Some(statement) = SNAPSHOT {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    let records: Vec<ChainRecord> =
        sqlx::query_as("SELECT name, row_id, hash, mac FROM audit_chain ORDER BY name")
            .fetch_all(&mut *tx)
            .await?;
    let until = records
        .iter()
        .find(|record| record.name == audit::HEAD)
        .map_or(i64::MAX, |head| head.row_id);
    if !visit(AuditItem::Chain(records)) {
        return Ok(());
    }
    let mut after = i64::MIN;
    loop {
        let page: Vec<AuditRecord> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE id > $1 AND id <= $2 \
             ORDER BY id LIMIT 1000"
        )))
        .bind(after)
        .bind(until)
        .fetch_all(&mut *tx)
        .await?;
        if page.is_empty() {
            return Ok(());
        }
        for record in page {
            after = record.id;
            if !visit(AuditItem::Row(record)) {
                return Ok(());
            }
        }
    }
}

/// Overwrites one audit row's details; only for tamper-detection tests.
#[cfg(any(test, feature = "test-util"))]
pub(super) async fn tamper_audit_for_test(
    store: &SqlStore,
    id: i64,
    details: &str,
) -> StoreResult<()> {
    sqlx::query("UPDATE audit_log SET details = $1 WHERE id = $2")
        .bind(details)
        .bind(id)
        .execute(&store.pool)
        .await?;
    Ok(())
}
