//! The dead-letter path: the original message, unchanged, plus headers
//! saying what went wrong and where it came from.

use super::config::ConsumerConfig;
use super::error::ConsumeError;
use super::pace::{infra_backoff, sleep_or_shutdown, Flow};
use super::stats::{ConsumerCounters, Counter};
use chrono::{SecondsFormat, Utc};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Header names the consumer adds to dead-lettered messages. Original
/// headers (`event_id`, `event_type`, `correlation_id`, ...) are kept.
pub mod headers {
    /// The error, as text (the [`ConsumeError`](crate::consume::ConsumeError) message).
    pub const ERROR: &str = "dlq_error";
    /// The error's [kind](crate::consume::ConsumeError::kind), e.g. `unknown_event_type`.
    pub const ERROR_KIND: &str = "dlq_error_kind";
    /// The topic the message was read from.
    pub const ORIGINAL_TOPIC: &str = "dlq_original_topic";
    /// Its partition, in decimal.
    pub const ORIGINAL_PARTITION: &str = "dlq_original_partition";
    /// Its offset, in decimal.
    pub const ORIGINAL_OFFSET: &str = "dlq_original_offset";
    /// The consumer group that gave up on it.
    pub const CONSUMER_GROUP: &str = "dlq_consumer_group";
    /// How many times the handler ran (0 for messages that could not be decoded).
    pub const ATTEMPTS: &str = "dlq_attempts";
    /// When it was dead-lettered (RFC 3339, UTC).
    pub const FAILED_AT: &str = "dlq_failed_at";
}

/// The original headers (minus earlier `dlq_*` ones, when a dead-lettered
/// message failed again after a replay) plus the dead-letter headers.
pub(crate) fn dead_letter_headers(
    message: &impl Message,
    error: &ConsumeError,
    group_id: &str,
) -> OwnedHeaders {
    let mut out = OwnedHeaders::new_with_capacity(16);
    if let Some(original) = message.headers() {
        for h in original.iter().filter(|h| !h.key.starts_with("dlq_")) {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let attempts = match error {
        ConsumeError::Handler { attempts, .. } => *attempts,
        _ => 0,
    };
    let fields = [
        (headers::ERROR, crate::error::Chain(&error).to_string()),
        (headers::ERROR_KIND, error.kind().to_owned()),
        (headers::ORIGINAL_TOPIC, message.topic().to_owned()),
        (headers::ORIGINAL_PARTITION, message.partition().to_string()),
        (headers::ORIGINAL_OFFSET, message.offset().to_string()),
        (headers::CONSUMER_GROUP, group_id.to_owned()),
        (headers::ATTEMPTS, attempts.to_string()),
        (
            headers::FAILED_AT,
            Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
        ),
    ];
    for (key, value) in &fields {
        out = out.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
    out
}

/// Sends messages to their dead-letter topic.
pub(crate) struct DeadLetters {
    pub(crate) producer: FutureProducer,
    pub(crate) config: Arc<ConsumerConfig>,
    pub(crate) counters: Arc<ConsumerCounters>,
}

impl DeadLetters {
    /// Produces the original message with dead-letter headers and waits for
    /// the broker's acknowledgement; retried until it succeeds or shutdown
    /// (then the message is not committed and comes back on restart).
    pub(crate) async fn send(
        &self,
        message: &impl Message,
        error: &ConsumeError,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Flow {
        let topic = self.config.dead_letter.for_topic(message.topic());
        let headers = dead_letter_headers(message, error, &self.config.group_id);
        let mut backoff = infra_backoff(&self.config);
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&topic).headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            match self.producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => {
                    self.counters.add(Counter::DeadLettered, 1);
                    tracing::warn!(
                        dead_letter_topic = %topic,
                        kind = error.kind(),
                        event_id = ?error.event_id(),
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        "message dead-lettered; moving on"
                    );
                    return Flow::Commit;
                }
                Err((kafka_error, _)) => {
                    self.counters.add(Counter::Error, 1);
                    let delay = backoff.next().unwrap_or(self.config.max_retry_backoff);
                    tracing::warn!(error = %kafka_error, dead_letter_topic = %topic, ?delay, "could not produce to the dead-letter topic; retrying (the offset stays uncommitted)");
                    if !sleep_or_shutdown(delay, shutdown).await {
                        return Flow::Stop;
                    }
                }
            }
        }
    }
}
