//! The one fact about shutdown that every floor may read: whether it has begun. The
//! listener sets it; readiness reports it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once shutdown begins; `/readyz` then answers 503.
#[derive(Debug, Clone, Default)]
pub struct Stopping(Arc<AtomicBool>);

impl Stopping {
    /// Whether the server is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// Marks the server as shutting down.
    pub fn begin(&self) {
        self.0.store(true, Ordering::Release);
    }
}
