//! Prometheus metrics of the consumer (`outbox_consumer_*`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: i32,
}

#[derive(Debug)]
struct Inner {
    received: Counter,
    handled: Counter,
    duplicates: Counter,
    retries: Counter,
    dead_lettered: Counter,
    errors: Counter,
    batch_fallbacks: Counter,
    batch_size: Histogram,
    handler_time: Histogram,
    partitions: Gauge,
    lag: Family<PartitionLabels, Gauge>,
}

/// The consumer's Prometheus metrics, in the `outbox_consumer_*` family.
/// Cheap to clone (one `Arc`); give a clone to
/// [`Consumer::with_metrics`](crate::consume::Consumer::with_metrics) and
/// [`register`](Self::register) it once in the service's registry, next to
/// [`OutboxMetrics`](crate::OutboxMetrics). Every metric is exposed from
/// zero, before the first message; lag appears per partition once it is
/// known.
///
/// | metric | type |
/// |---|---|
/// | `outbox_consumer_messages_received_total` | counter |
/// | `outbox_consumer_messages_handled_total` | counter: effects committed |
/// | `outbox_consumer_messages_duplicate_total` | counter: redeliveries skipped by the inbox |
/// | `outbox_consumer_handler_retries_total` | counter |
/// | `outbox_consumer_messages_dead_lettered_total` | counter |
/// | `outbox_consumer_errors_total` | counter: database/broker errors retried |
/// | `outbox_consumer_batch_fallbacks_total` | counter: batches re-run one message at a time |
/// | `outbox_consumer_batch_size` | histogram: messages per batch |
/// | `outbox_consumer_batch_seconds` | histogram: one batch's transaction, handlers included |
/// | `outbox_consumer_partitions` | gauge: partitions assigned |
/// | `outbox_consumer_lag{topic, partition}` | gauge: messages behind the partition's end |
///
/// ```
/// use outbox::consume::ConsumerMetrics;
/// use outbox::prometheus_client::encoding::text::encode;
/// use outbox::prometheus_client::registry::Registry;
///
/// let metrics = ConsumerMetrics::new();
/// let mut registry = Registry::default();
/// metrics.register(&mut registry);
/// let mut text = String::new();
/// encode(&mut text, &registry).unwrap();
/// assert!(text.contains("outbox_consumer_messages_dead_lettered_total 0"));
/// assert!(text.contains("outbox_consumer_batch_size_count 0"));
/// ```
#[derive(Clone, Debug)]
pub struct ConsumerMetrics {
    inner: Arc<Inner>,
}

impl Default for ConsumerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ConsumerMetrics {
    /// Fresh metrics, all zero, not yet registered.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                received: Counter::default(),
                handled: Counter::default(),
                duplicates: Counter::default(),
                retries: Counter::default(),
                dead_lettered: Counter::default(),
                errors: Counter::default(),
                batch_fallbacks: Counter::default(),
                batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
                handler_time: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
                partitions: Gauge::default(),
                lag: Family::default(),
            }),
        }
    }

    /// Registers every metric into `registry` (once per registry).
    pub fn register(&self, registry: &mut Registry) {
        let m = &self.inner;
        let counters = [
            (
                "outbox_consumer_messages_received",
                "Messages the consumer received from Kafka",
                &m.received,
            ),
            (
                "outbox_consumer_messages_handled",
                "Messages whose handler's transaction committed (with their inbox rows)",
                &m.handled,
            ),
            (
                "outbox_consumer_messages_duplicate",
                "Redelivered messages the inbox recognised; their effects were skipped",
                &m.duplicates,
            ),
            (
                "outbox_consumer_handler_retries",
                "Failed handler attempts that were retried",
                &m.retries,
            ),
            (
                "outbox_consumer_messages_dead_lettered",
                "Messages sent to the dead-letter topic (undecodable, or handler retries exhausted)",
                &m.dead_lettered,
            ),
            (
                "outbox_consumer_errors",
                "Database and broker errors the consumer retried (never dead-lettered)",
                &m.errors,
            ),
            (
                "outbox_consumer_batch_fallbacks",
                "Batches rolled back by a handler failure and re-run one message at a time",
                &m.batch_fallbacks,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "outbox_consumer_batch_size",
            "Messages of one partition handled together",
            m.batch_size.clone(),
        );
        registry.register_with_unit(
            "outbox_consumer_batch",
            "Time of one batch's transaction: inbox record, handlers, commit",
            Unit::Seconds,
            m.handler_time.clone(),
        );
        registry.register(
            "outbox_consumer_partitions",
            "Partitions assigned to this consumer",
            m.partitions.clone(),
        );
        registry.register(
            "outbox_consumer_lag",
            "Messages between the partition's end and this consumer's position (librdkafka statistics)",
            m.lag.clone(),
        );
    }

    pub(crate) fn count(&self, counter: super::stats::Counter, n: u64) {
        use super::stats::Counter as C;
        let m = &self.inner;
        let target = match counter {
            C::Received => &m.received,
            C::Handled => &m.handled,
            C::Duplicate => &m.duplicates,
            C::Retry => &m.retries,
            C::DeadLettered => &m.dead_lettered,
            C::Error => &m.errors,
            C::BatchFallback => &m.batch_fallbacks,
            C::DecodeError => return,
        };
        target.inc_by(n);
    }

    pub(crate) fn batch(&self, size: usize, seconds: f64) {
        self.inner.batch_size.observe(size as f64);
        self.inner.handler_time.observe(seconds);
    }

    pub(crate) fn set_partitions(&self, n: usize) {
        self.inner
            .partitions
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    pub(crate) fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.inner
            .lag
            .get_or_create(&PartitionLabels {
                topic: topic.to_owned(),
                partition,
            })
            .set(lag.max(0));
    }

    pub(crate) fn forget_partition(&self, topic: &str, partition: i32) {
        self.inner.lag.remove(&PartitionLabels {
            topic: topic.to_owned(),
            partition,
        });
    }
}
