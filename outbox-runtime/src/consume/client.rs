//! The Kafka clients of the consumer: settings the loop relies on, and the
//! context that follows rebalances and statistics.

use super::config::ConsumerConfig;
use super::stats::ConsumerCounters;
use crate::ConfigError;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, TopicPartitionList};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Settings the loop enforces on the Kafka consumer for its guarantee.
const REQUIRED: [(&str, &str); 2] = [
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

/// Defaults the loop sets unless the `ClientConfig` has its own value.
const DEFAULTS: [(&str, &str); 3] = [
    ("auto.offset.reset", "earliest"),
    // A rebalance moves only the partitions that change owner; the others
    // keep being consumed through it.
    ("partition.assignment.strategy", "cooperative-sticky"),
    // Per-partition lag for the metrics.
    ("statistics.interval.ms", "5000"),
];

/// The consumer's settings: `kafka` plus the group, static membership and
/// the settings above.
pub(crate) fn consumer_config(
    kafka: &ClientConfig,
    config: &ConsumerConfig,
) -> Result<ClientConfig, ConfigError> {
    let mut cc = kafka.clone();
    for (key, want) in REQUIRED {
        if let Some(value) = cc.get(key) {
            if value != want {
                return Err(ConfigError::Invalid {
                    setting: key,
                    reason: format!(
                        "the consumer loop requires {key}={want} so offsets are committed only \
                         after the handler's transaction; remove the override {key}={value}"
                    ),
                });
            }
        }
        cc.set(key, want);
    }
    cc.set("group.id", &config.group_id);
    if let Some(id) = &config.group_instance_id {
        cc.set("group.instance.id", id);
    }
    for (key, value) in DEFAULTS {
        if cc.get(key).is_none() {
            cc.set(key, value);
        }
    }
    Ok(cc)
}

/// The dead-letter producer's settings: `kafka` without consumer settings,
/// idempotent, acknowledged by all replicas.
pub(crate) fn producer_config(kafka: &ClientConfig) -> ClientConfig {
    let mut cc = kafka.clone();
    for key in [
        "group.id",
        "group.instance.id",
        "auto.offset.reset",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
        "partition.assignment.strategy",
        "statistics.interval.ms",
    ] {
        cc.remove(key);
    }
    cc.set("enable.idempotence", "true").set("acks", "all");
    cc
}

/// The error of an offset commit, unless there was only nothing to commit.
pub(crate) fn commit_failure(result: KafkaResult<()>) -> Option<KafkaError> {
    match result {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => None,
        Err(error) => Some(error),
    }
}

/// Partitions taken from this consumer by rebalances, for the loop to
/// retire their workers.
#[derive(Default)]
pub(crate) struct Revocations {
    revoked: Mutex<Vec<(String, i32)>>,
    notify: Notify,
}

impl Revocations {
    fn push(&self, tpl: &TopicPartitionList) {
        if let Ok(mut revoked) = self.revoked.lock() {
            revoked.extend(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition())),
            );
        }
        self.notify.notify_one();
    }

    /// The partitions revoked since the last call.
    pub(crate) fn take(&self) -> Vec<(String, i32)> {
        self.revoked
            .lock()
            .map(|mut revoked| std::mem::take(&mut *revoked))
            .unwrap_or_default()
    }

    /// Resolves after the next revocation (or at once if one is pending).
    pub(crate) async fn wait(&self) {
        self.notify.notified().await;
    }
}

/// Commits before partitions go, logs rebalances, and feeds the metrics.
pub(crate) struct LoopContext {
    pub(crate) group_id: String,
    pub(crate) counters: Arc<ConsumerCounters>,
    pub(crate) revocations: Arc<Revocations>,
}

impl ClientContext for LoopContext {
    fn stats(&self, statistics: Statistics) {
        let Some(metrics) = self.counters.metrics() else {
            return;
        };
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics.set_lag(topic, *partition, p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // Offsets stored but not yet committed would be lost with the
        // partitions; commit them while this member still owns them.
        if let Rebalance::Revoke(tpl) = rebalance {
            self.revocations.push(tpl);
            if let Some(error) = commit_failure(consumer.commit_consumer_state(CommitMode::Sync)) {
                tracing::warn!(group_id = %self.group_id, %error, "could not commit offsets before giving partitions up; their last messages will be redelivered and skipped by the inbox");
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        let metrics = self.counters.metrics();
        if let Some(metrics) = metrics {
            metrics.set_partitions(assigned);
        }
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(group_id = %self.group_id, partitions = tpl.count(), assigned, "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                if let Some(metrics) = metrics {
                    for e in tpl.elements() {
                        metrics.forget_partition(e.topic(), e.partition());
                    }
                }
                tracing::info!(group_id = %self.group_id, partitions = tpl.count(), assigned, "partitions revoked");
            }
            Rebalance::Error(error) => {
                tracing::warn!(group_id = %self.group_id, %error, "rebalance error");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Some(error) = commit_failure(result) {
            tracing::warn!(group_id = %self.group_id, %error, "offset commit failed; those messages will be redelivered and skipped by the inbox");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_membership_and_the_cooperative_assignor_are_set() {
        let mut kafka = ClientConfig::new();
        kafka.set("bootstrap.servers", "b:9092");
        let config = ConsumerConfig {
            group_instance_id: Some("pod-0".into()),
            ..ConsumerConfig::new("g")
        };
        let cc = consumer_config(&kafka, &config).unwrap();
        assert_eq!(cc.get("group.instance.id"), Some("pod-0"));
        assert_eq!(
            cc.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(cc.get("enable.auto.offset.store"), Some("false"));
        kafka.set("partition.assignment.strategy", "range");
        let cc = consumer_config(&kafka, &ConsumerConfig::new("g")).unwrap();
        assert_eq!(cc.get("partition.assignment.strategy"), Some("range"));
        assert_eq!(cc.get("group.instance.id"), None);
        let producer = producer_config(&cc);
        assert_eq!(producer.get("group.id"), None);
        assert_eq!(producer.get("partition.assignment.strategy"), None);
        kafka.set("enable.auto.commit", "true");
        let err = consumer_config(&kafka, &config).unwrap_err();
        assert!(err.to_string().contains("enable.auto.commit"), "{err}");
    }
}
