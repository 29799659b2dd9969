//! Counters a running consumer keeps, readable while it runs.

use std::sync::atomic::{AtomicU64, Ordering};

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
}

impl ConsumerCounters {
    pub(crate) fn add(&self, counter: Counter) {
        let c = match counter {
            Counter::Received => &self.received,
            Counter::Handled => &self.handled,
            Counter::Duplicate => &self.duplicates,
            Counter::Retry => &self.retries,
            Counter::DeadLettered => &self.dead_lettered,
            Counter::DecodeError => &self.decode_errors,
            Counter::Error => &self.errors,
        };
        c.fetch_add(1, Ordering::Relaxed);
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
        }
    }
}
