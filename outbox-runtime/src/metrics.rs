//! Prometheus metrics of the outbox (with the `prometheus-client` crate).
//!
//! One [`OutboxMetrics`] is shared by a service's [`Outbox`](crate::Outbox)
//! handle (events added) and its [`Relay`](crate::Relay) (delivery, errors,
//! queue gauges), and registered once into the service's own registry.
//! `docs/guide/operations.md` describes every metric and suggests alert rules.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `outbox_queue_depth` | gauge: pending rows | |
//! | `outbox_oldest_pending_age_seconds` | gauge | |
//! | `outbox_dead_events` | gauge: dead rows | |
//! | `outbox_events_added_total` | counter | `topic`, `event_type` |
//! | `outbox_events_published_total` | counter | `topic`, `event_type` |
//! | `outbox_events_failed_total` | counter: events that became dead | `topic`, `event_type` |
//! | `outbox_relay_errors_total` | counter: transient errors | `kind` |
//! | `outbox_event_age_seconds` | histogram: commit to broker ack | |
//! | `outbox_relay_processing_seconds` | histogram: one batch | |
//! | `outbox_relay_last_loop_timestamp_seconds` | gauge: Unix time | |
//!
//! Labels are bounded: topics and event types come from the registry (the
//! topic as stored, without the relay's topic prefix); ids never become
//! labels.
//!
//! ```no_run
//! use outbox::{Outbox, OutboxMetrics, Relay, RelayConfig};
//! use prometheus_client::registry::Registry;
//!
//! # async fn run(pool: sqlx::PgPool, kafka: rdkafka::ClientConfig) -> Result<(), Box<dyn std::error::Error>> {
//! let metrics = OutboxMetrics::new();
//! let mut registry = Registry::default();
//! metrics.register(&mut registry);
//!
//! let outbox = Outbox::builder(pool.clone(), "file_service")
//!     .metrics(metrics.clone())
//!     .build();
//! let relay = Relay::new(pool, kafka, RelayConfig::from_env()?)
//!     .await?
//!     .with_metrics(metrics)
//!     .spawn();
//! # Ok(()) }
//! ```

use crate::identifier::{Names, SchemaName};
use crate::ops::queue_stats::{fetch_summary, summary_sql, QueueSummary, StatsError};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use sqlx::PgPool;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Buckets of `outbox_event_age_seconds`: from a few milliseconds (a relay
/// woken by NOTIFY) to an hour (an outage).
const EVENT_AGE_BUCKETS: [f64; 18] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1800.0, 3600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    topic: Cow<'static, str>,
    event_type: Cow<'static, str>,
}

/// Kinds of transient relay errors (label `kind` of
/// `outbox_relay_errors_total`).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// Claiming, recording or lease maintenance failed.
    Database,
    /// The broker could not be reached for a whole batch.
    BrokerUnreachable,
    /// The broker refused one message; it will be retried.
    Delivery,
    /// The producer failed fatally and was replaced.
    Producer,
    /// An event reached the broker after an earlier event of its aggregate
    /// failed; it is sent again after that event.
    Reordered,
}

impl ErrorKind {
    /// Every kind, so each series is exposed at zero from the start.
    const ALL: [ErrorKind; 5] = [
        Self::Database,
        Self::BrokerUnreachable,
        Self::Delivery,
        Self::Producer,
        Self::Reordered,
    ];
}

impl EncodeLabelValue for ErrorKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Database => "database",
            Self::BrokerUnreachable => "broker_unreachable",
            Self::Delivery => "delivery",
            Self::Producer => "producer",
            Self::Reordered => "reordered",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: ErrorKind,
}

#[derive(Debug)]
struct Inner {
    queue_depth: Gauge,
    oldest_pending_age: Gauge<f64, AtomicU64>,
    dead_events: Gauge,
    added: Family<EventLabels, Counter>,
    published: Family<EventLabels, Counter>,
    failed: Family<EventLabels, Counter>,
    relay_errors: Family<ErrorLabels, Counter>,
    event_age: Histogram,
    processing: Histogram,
    last_loop: Gauge<f64, AtomicU64>,
}

/// The outbox's Prometheus metrics. Cheap to clone (one `Arc`); give clones
/// to the [`Outbox`](crate::OutboxBuilder::metrics) handle and the
/// [`Relay`](crate::Relay::with_metrics), and
/// [`register`](Self::register) it once.
///
/// ```
/// use outbox::OutboxMetrics;
/// use prometheus_client::encoding::text::encode;
/// use prometheus_client::registry::Registry;
///
/// let metrics = OutboxMetrics::new();
/// let mut registry = Registry::default();
/// metrics.register(&mut registry);
/// let mut text = String::new();
/// encode(&mut text, &registry).unwrap();
/// assert!(text.contains("# TYPE outbox_queue_depth gauge"));
/// assert!(text.ends_with("# EOF\n"));
/// ```
#[derive(Clone, Debug)]
pub struct OutboxMetrics {
    inner: Arc<Inner>,
}

impl Default for OutboxMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl OutboxMetrics {
    /// Fresh metrics, not yet registered. Every counter is exposed from the
    /// start, at zero, so `rate()` and `increase()` see the first event:
    /// `outbox_relay_errors_total` for each `kind`, and the event counters
    /// for each event type in the [registry](crate::registry) (an event type
    /// the binary does not link, as a standalone relay sees it, is exposed
    /// when the relay first publishes or fails one, both series at once).
    pub fn new() -> Self {
        let metrics = Self {
            inner: Arc::new(Inner {
                queue_depth: Gauge::default(),
                oldest_pending_age: Gauge::default(),
                dead_events: Gauge::default(),
                added: Family::default(),
                published: Family::default(),
                failed: Family::default(),
                relay_errors: Family::default(),
                event_age: Histogram::new(EVENT_AGE_BUCKETS),
                processing: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
                last_loop: Gauge::default(),
            }),
        };
        for kind in ErrorKind::ALL {
            let _zero = metrics
                .inner
                .relay_errors
                .get_or_create(&ErrorLabels { kind });
        }
        for registration in crate::registry::registrations() {
            let labels = EventLabels {
                topic: Cow::Borrowed(registration.topic),
                event_type: Cow::Borrowed(registration.event_type),
            };
            let _zero = metrics.inner.added.get_or_create(&labels);
            let _zero = metrics.inner.published.get_or_create(&labels);
            let _zero = metrics.inner.failed.get_or_create(&labels);
        }
        metrics
    }

    /// Registers every metric into `registry` (once per registry: the
    /// registry does not detect duplicates). A prefix or constant labels
    /// can be added with [`Registry::sub_registry_with_prefix`] /
    /// [`Registry::sub_registry_with_label`].
    pub fn register(&self, registry: &mut Registry) {
        let m = &self.inner;
        registry.register(
            "outbox_queue_depth",
            "Outbox rows waiting for delivery (state pending, including those waiting for a retry)",
            m.queue_depth.clone(),
        );
        registry.register_with_unit(
            "outbox_oldest_pending_age",
            "Age of the oldest pending outbox event (0 when nothing is pending)",
            Unit::Seconds,
            m.oldest_pending_age.clone(),
        );
        registry.register(
            "outbox_dead_events",
            "Outbox rows that are dead (retries exhausted) and wait for an operator",
            m.dead_events.clone(),
        );
        registry.register(
            "outbox_events_added",
            "Events added to the outbox (committed through the transactional_publish guard; \
             inserted, for transactions the caller commits)",
            m.added.clone(),
        );
        registry.register(
            "outbox_events_published",
            "Events acknowledged by the broker and marked published by this relay",
            m.published.clone(),
        );
        registry.register(
            "outbox_events_failed",
            "Events that became dead in this relay (retries exhausted or unusable row)",
            m.failed.clone(),
        );
        registry.register(
            "outbox_relay_errors",
            "Transient relay errors: database, broker_unreachable (whole batch), delivery (one \
             message refused, will be retried)",
            m.relay_errors.clone(),
        );
        registry.register_with_unit(
            "outbox_event_age",
            "Time from an event's insert transaction to the broker's acknowledgement",
            Unit::Seconds,
            m.event_age.clone(),
        );
        registry.register_with_unit(
            "outbox_relay_processing",
            "Time the relay took for one batch: claim, produce, await acknowledgements, mark",
            Unit::Seconds,
            m.processing.clone(),
        );
        registry.register_with_unit(
            "outbox_relay_last_loop_timestamp",
            "Unix time of this relay's last loop iteration; stops moving when the relay stalls",
            Unit::Seconds,
            m.last_loop.clone(),
        );
    }

    /// Reads the queue depth, the oldest pending age and the dead count
    /// (cheap, see [`QueueSummary`]) and sets the gauges. A running relay
    /// with these metrics does this every few seconds on its own; call it
    /// from a service that runs no relay but wants the gauges.
    pub async fn refresh_queue_gauges(
        &self,
        pool: &PgPool,
        schema: Option<&SchemaName>,
    ) -> Result<QueueSummary, StatsError> {
        let summary = fetch_summary(pool, &summary_sql(&Names::new(schema))).await?;
        self.set_queue(&summary);
        Ok(summary)
    }

    pub(crate) fn set_queue(&self, summary: &QueueSummary) {
        let m = &self.inner;
        m.queue_depth
            .set(i64::try_from(summary.pending).unwrap_or(i64::MAX));
        m.oldest_pending_age
            .set(summary.oldest_pending_age_seconds.unwrap_or(0.0).max(0.0));
        m.dead_events
            .set(i64::try_from(summary.dead).unwrap_or(i64::MAX));
    }

    pub(crate) fn events_added(&self, topic: &'static str, event_type: &'static str, n: u64) {
        self.inner
            .added
            .get_or_create(&EventLabels {
                topic: Cow::Borrowed(topic),
                event_type: Cow::Borrowed(event_type),
            })
            .inc_by(n);
    }

    fn owned_labels(topic: &str, event_type: &str) -> EventLabels {
        EventLabels {
            topic: Cow::Owned(topic.to_owned()),
            event_type: Cow::Owned(event_type.to_owned()),
        }
    }

    /// Counts a published event. The first one of an event type the
    /// registry does not hold also exposes its failed series, at zero.
    pub(crate) fn event_published(&self, topic: &str, event_type: &str, age_seconds: f64) {
        let labels = Self::owned_labels(topic, event_type);
        let before = self.inner.published.get_or_create(&labels).inc();
        if before == 0 {
            let _zero = self.inner.failed.get_or_create(&labels);
        }
        self.inner.event_age.observe(age_seconds.max(0.0));
    }

    /// Counts an event that became dead; its first one also exposes the
    /// published series.
    pub(crate) fn event_failed(&self, topic: &str, event_type: &str) {
        let labels = Self::owned_labels(topic, event_type);
        let before = self.inner.failed.get_or_create(&labels).inc();
        if before == 0 {
            let _zero = self.inner.published.get_or_create(&labels);
        }
    }

    pub(crate) fn relay_error(&self, kind: ErrorKind) {
        self.inner
            .relay_errors
            .get_or_create(&ErrorLabels { kind })
            .inc();
    }

    pub(crate) fn batch_processed(&self, seconds: f64) {
        self.inner.processing.observe(seconds);
    }

    pub(crate) fn relay_loop(&self) {
        self.inner.last_loop.set(unix_now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn exposition(metrics: &OutboxMetrics) -> String {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn names_labels_and_values() {
        let m = OutboxMetrics::new();
        m.events_added("files.added.v1", "FileAdded", 3);
        m.event_published("files.added.v1", "FileAdded", 0.2);
        m.event_failed("files.added.v1", "FileAdded");
        m.relay_error(ErrorKind::BrokerUnreachable);
        m.set_queue(&QueueSummary {
            pending: 4,
            oldest_pending_age_seconds: Some(61.5),
            dead: 1,
        });
        let text = exposition(&m);
        for line in [
            "outbox_events_added_total{topic=\"files.added.v1\",event_type=\"FileAdded\"} 3",
            "outbox_events_published_total{topic=\"files.added.v1\",event_type=\"FileAdded\"} 1",
            "outbox_events_failed_total{topic=\"files.added.v1\",event_type=\"FileAdded\"} 1",
            "outbox_relay_errors_total{kind=\"broker_unreachable\"} 1",
            "outbox_queue_depth 4",
            "outbox_oldest_pending_age_seconds 61.5",
            "outbox_dead_events 1",
            "outbox_event_age_seconds_count 1",
            "# UNIT outbox_event_age_seconds seconds",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[test]
    fn every_error_kind_and_the_other_series_of_a_seen_event_type_start_at_zero() {
        let m = OutboxMetrics::new();
        let idle = exposition(&m);
        for kind in [
            "database",
            "broker_unreachable",
            "delivery",
            "producer",
            "reordered",
        ] {
            let line = format!("outbox_relay_errors_total{{kind=\"{kind}\"}} 0");
            assert!(
                idle.lines().any(|l| l == line),
                "missing {line:?} in\n{idle}"
            );
        }
        m.event_published("seen.v1", "Seen", 0.1);
        let text = exposition(&m);
        let line = "outbox_events_failed_total{topic=\"seen.v1\",event_type=\"Seen\"} 0";
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }

    #[test]
    fn clones_share_values() {
        let m = OutboxMetrics::new();
        m.clone().events_added("t.v1", "E", 2);
        assert!(
            exposition(&m).contains("outbox_events_added_total{topic=\"t.v1\",event_type=\"E\"} 2")
        );
    }
}
