//! Counters a running consumer keeps, readable while it runs.

use super::metrics::ConsumerMetrics;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Live counters of one consumer.
#[derive(Debug, Default)]
pub struct ConsumerCounters {
    received: AtomicU64,
    handled: AtomicU64,
    duplicates: AtomicU64,
    retries: AtomicU64,
    dead_lettered: AtomicU64,
    decode_errors: AtomicU64,
    errors: AtomicU64,
    batches: AtomicU64,
    batch_fallbacks: AtomicU64,
    metrics: OnceLock<ConsumerMetrics>,
}

/// A snapshot of [`ConsumerCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConsumerStats {
    /// Messages received from Kafka.
    pub received: u64,
    /// Messages whose handler transaction committed.
    pub handled: u64,
    /// Redeliveries the inbox recognised and skipped.
    pub duplicates: u64,
    /// Handler attempts that failed and were retried.
    pub retries: u64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// Messages that could not be decoded (a subset of `dead_lettered`).
    pub decode_errors: u64,
    /// Infrastructure errors (database, broker) that were retried.
    pub errors: u64,
    /// Batches finished (each one transaction, or one per message after a
    /// fallback).
    pub batches: u64,
    /// Batches a handler failure rolled back, re-run one message at a time.
    pub batch_fallbacks: u64,
}

impl ConsumerStats {
    /// Messages finished: handled, skipped as duplicates or dead-lettered.
    pub fn finished(&self) -> u64 {
        self.handled + self.duplicates + self.dead_lettered
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Counter {
    Received,
    Handled,
    Duplicate,
    Retry,
    DeadLettered,
    DecodeError,
    Error,
    BatchFallback,
}

impl ConsumerCounters {
    pub(crate) fn add(&self, counter: Counter, n: u64) {
        let c = match counter {
            Counter::Received => &self.received,
            Counter::Handled => &self.handled,
            Counter::Duplicate => &self.duplicates,
            Counter::Retry => &self.retries,
            Counter::DeadLettered => &self.dead_lettered,
            Counter::DecodeError => &self.decode_errors,
            Counter::Error => &self.errors,
            Counter::BatchFallback => &self.batch_fallbacks,
        };
        c.fetch_add(n, Ordering::Relaxed);
        if let Some(metrics) = self.metrics.get() {
            metrics.count(counter, n);
        }
    }

    /// One batch finished: `size` messages in `seconds`.
    pub(crate) fn batch(&self, size: usize, seconds: f64) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        if let Some(metrics) = self.metrics.get() {
            metrics.batch(size, seconds);
        }
    }

    /// Feeds `metrics` from now on; false when metrics were attached before.
    pub(crate) fn attach(&self, metrics: ConsumerMetrics) -> bool {
        self.metrics.set(metrics).is_ok()
    }

    pub(crate) fn metrics(&self) -> Option<&ConsumerMetrics> {
        self.metrics.get()
    }

    /// The current values.
    pub fn snapshot(&self) -> ConsumerStats {
        ConsumerStats {
            received: self.received.load(Ordering::Relaxed),
            handled: self.handled.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            decode_errors: self.decode_errors.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            batch_fallbacks: self.batch_fallbacks.load(Ordering::Relaxed),
        }
    }
}
