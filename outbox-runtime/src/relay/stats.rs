//! Counters a running relay keeps, readable while it runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Live counters of one relay instance.
#[derive(Debug, Default)]
pub struct RelayCounters {
    batches: AtomicU64,
    delivered: AtomicU64,
    retried: AtomicU64,
    dead: AtomicU64,
    errors: AtomicU64,
    last_loop_unix_ms: AtomicU64,
}

/// A snapshot of [`RelayCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Batches claimed (non-empty).
    pub batches: u64,
    /// Events acknowledged by the broker and marked.
    pub delivered: u64,
    /// Failed attempts that will be retried.
    pub retried: u64,
    /// Events that became dead.
    pub dead: u64,
    /// Transient relay errors (database or broker unreachable).
    pub errors: u64,
    /// When the relay loop last made progress (Unix ms); detects stalls.
    pub last_loop_unix_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl RelayCounters {
    pub(crate) fn shared() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub(crate) fn batch(&self, delivered: u64, retried: u64, dead: u64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.delivered.fetch_add(delivered, Ordering::Relaxed);
        self.retried.fetch_add(retried, Ordering::Relaxed);
        self.dead.fetch_add(dead, Ordering::Relaxed);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn tick(&self) {
        self.last_loop_unix_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Current values.
    pub fn snapshot(&self) -> RelayStats {
        RelayStats {
            batches: self.batches.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            retried: self.retried.load(Ordering::Relaxed),
            dead: self.dead.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_loop_unix_ms: self.last_loop_unix_ms.load(Ordering::Relaxed),
        }
    }
}
