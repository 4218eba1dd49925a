//! Audit entries written off the request path: one task appends them in the order they
//! were queued, and [`AuditWriter::flush`] waits for everything queued before it.

use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};

use crate::chain::NewAuditEntry;
use crate::store::Store;

enum Job {
    Append(NewAuditEntry),
    /// Answered once every job before it is done.
    Flush(oneshot::Sender<()>),
}

/// The queue to one store's background writer. Clones share the queue; the writing task
/// starts with the first entry and ends once every clone is gone and the queue is empty.
#[derive(Debug, Default, Clone)]
pub struct AuditWriter {
    queue: Arc<OnceLock<mpsc::UnboundedSender<Job>>>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Append(entry) => f.debug_tuple("Append").field(&entry.action).finish(),
            Self::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl AuditWriter {
    /// Queues `entry`. The first entry starts the writing task, which appends to the store
    /// `store` returns: a handle that must not hold this queue, or the task would keep
    /// itself alive.
    pub fn queue(&self, entry: NewAuditEntry, store: impl FnOnce() -> Arc<dyn Store>) {
        let queue = self.queue.get_or_init(|| start(store()));
        if let Err(mpsc::error::SendError(job)) = queue.send(Job::Append(entry)) {
            tracing::warn!(?job, "the audit writer has stopped; an audit entry is lost");
        }
    }

    /// Waits until every entry queued before this call is written (or its failure logged).
    pub async fn flush(&self) {
        let Some(queue) = self.queue.get() else {
            return;
        };
        let (done, written) = oneshot::channel();
        if queue.send(Job::Flush(done)).is_ok() {
            let _ = written.await;
        }
    }
}

fn start(store: Arc<dyn Store>) -> mpsc::UnboundedSender<Job> {
    let (queue, mut jobs) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(job) = jobs.recv().await {
            match job {
                Job::Append(entry) => {
                    let action = entry.action;
                    if let Err(error) = store.append_audit(entry).await {
                        tracing::warn!(%error, action, "could not write an audit entry");
                    }
                }
                Job::Flush(done) => {
                    let _ = done.send(());
                }
            }
        }
    });
    queue
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use crate::chain::{ChainKey, NewAuditEntry, RequestContext};
    use crate::store::Store;
    use crate::store::sql::SqliteStore;

    #[tokio::test]
    async fn a_flush_returns_once_everything_queued_before_it_is_written_in_order() {
        let dir = std::env::temp_dir().join(format!("rampart-writer-{}", ulid::Ulid::new()));
        let url = format!("sqlite://{}", dir.join("rampart.db").display());
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::connect(&url)
                .await
                .unwrap()
                .with_audit_key(ChainKey::new("a chain key for this test only"))
                .await
                .unwrap(),
        );
        // Nothing queued yet: there is no writer to wait for.
        store.flush_audit().await;
        let context = RequestContext::default();
        for at in 0..20 {
            let entry = NewAuditEntry::new(at, "auth_failed", None, json!({}), &context);
            store.append_audit_later(entry);
        }
        store.flush_audit().await;
        let written: Vec<i64> = store
            .audit_page(0, 100)
            .await
            .unwrap()
            .iter()
            .map(|row| row.at)
            .collect();
        assert_eq!(written, (0..20).collect::<Vec<_>>());
        drop(store);
        let _ = std::fs::remove_dir_all(dir);
    }
}
