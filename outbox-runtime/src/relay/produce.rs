//! The relay's one way to the broker: produce a batch of keyed messages
//! with headers, in order, and get one result per message ([`Broker`]),
//! with Kafka (librdkafka's idempotent producer) its implementation.

use crate::relay::claim::ClaimedRow;
use crate::relay::record::unfinished::Unfinished;
use crate::relay::record::Failure;
use crate::topic::validate_topic_name;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use uuid::Uuid;

/// What happened to one claimed row.
#[derive(Debug)]
pub(crate) enum RowOutcome {
    Delivered,
    Failed(Failure),
    /// Not produced because an earlier row of its aggregate failed in this
    /// batch; stays pending untouched.
    Held,
}

/// Where the relay sends its batches.
///
/// `enqueue` must keep the order of `rows` per key, as Kafka does per
/// partition, and hold back (`RowOutcome::Held`) the rows of an aggregate
/// after one of its rows failed to enqueue. A failure is
/// [`Failure::Counted`] only when it is the message's own fault (too large,
/// invalid, a topic that does not exist or may not be written):
/// everything the broker or the client does wrong (outages, timeouts,
/// leader changes, a fatal producer error) is [`Failure::Uncounted`].
pub(crate) trait Broker: Send {
    /// The results of an enqueued batch, one per row, in order; they arrive
    /// whether or not the future is polled.
    type Acks: Future<Output = Vec<RowOutcome>> + Send + Sync + Unpin + 'static;

    /// Hands `rows` to the client for `topic_prefix` + their topics.
    fn enqueue<'a>(
        &'a self,
        topic_prefix: &'a str,
        rows: &'a [ClaimedRow],
    ) -> impl Future<Output = Self::Acks> + Send + 'a;

    /// Why the client cannot produce any more, if it cannot (a fatal error:
    /// every later produce fails until it is rebuilt).
    fn fatal_error(&self) -> Option<String>;

    /// Replaces the client with a fresh one. Only called with nothing in
    /// flight.
    fn rebuild(&mut self) -> Result<(), String>;

    /// Waits up to `timeout` for anything still queued.
    fn flush(&self, timeout: Duration) -> impl Future<Output = ()> + Send;
}

/// The Kafka producer behind [`Broker`].
pub(crate) struct KafkaBroker {
    producer: FutureProducer,
    config: ClientConfig,
}

impl KafkaBroker {
    pub(crate) fn new(config: ClientConfig) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: config.create()?,
            config,
        })
    }
}

/// The results of a batch enqueued to Kafka.
pub(crate) type KafkaAcks = Pin<Box<dyn Future<Output = Vec<RowOutcome>> + Send + Sync>>;

impl Broker for KafkaBroker {
    type Acks = KafkaAcks;

    fn enqueue<'a>(
        &'a self,
        topic_prefix: &'a str,
        rows: &'a [ClaimedRow],
    ) -> impl Future<Output = KafkaAcks> + Send + 'a {
        enqueue_batch(&self.producer, topic_prefix, rows)
    }

    fn fatal_error(&self) -> Option<String> {
        self.producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{reason} ({code})"))
    }

    fn rebuild(&mut self) -> Result<(), String> {
        self.producer = self.config.create().map_err(|e| e.to_string())?;
        Ok(())
    }

    fn flush(&self, timeout: Duration) -> impl Future<Output = ()> + Send {
        let producer = self.producer.clone();
        async move {
            let _ = tokio::task::spawn_blocking(move || producer.flush(timeout)).await;
        }
    }
}

/// Errors that are the message's own fault: producing it again fails the
/// same way. Every other error (timeouts, unreachable or changing brokers,
/// missing replicas, a fatal producer error and the purge that follows it)
/// is the broker's or the client's, and is never counted against the event.
fn is_own_fault(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::InvalidMessage
            | C::InvalidMessageSize
            | C::MessageSizeTooLarge
            | C::InvalidRecord
            | C::InvalidTimestamp
            | C::UnsupportedForMessageFormat
            | C::PolicyViolation
            | C::InvalidTopic
            | C::TopicAuthorizationFailed
            | C::UnknownTopic
            | C::UnknownTopicOrPartition
            | C::UnknownPartition
    )
}

fn classify(error: &KafkaError) -> Failure {
    let text = error.to_string();
    match error.rdkafka_error_code() {
        Some(code) if is_own_fault(code) => Failure::Counted(text),
        _ => Failure::Uncounted(text),
    }
}

fn headers_for(row: &ClaimedRow) -> OwnedHeaders {
    let mut id = Uuid::encode_buffer();
    let id = row.id.hyphenated().encode_lower(&mut id);
    let mut headers = OwnedHeaders::new_with_capacity(7)
        .insert(Header {
            key: "event_id",
            value: Some(id.as_bytes()),
        })
        .insert(Header {
            key: "event_type",
            value: Some(row.event_type().as_bytes()),
        })
        .insert(Header {
            key: "aggregate_type",
            value: Some(row.aggregate_type().as_bytes()),
        })
        .insert(Header {
            key: "aggregate_id",
            value: Some(row.aggregate_id().as_bytes()),
        });
    for (name, value) in [
        ("correlation_id", row.correlation_id()),
        ("traceparent", row.traceparent()),
        ("tracestate", row.tracestate()),
    ] {
        if let Some(value) = value {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
    }
    headers
}

/// The broker topic of each row: prefix + the row's topic, validated. A
/// batch mostly repeats a few topics, so the last one is remembered rather
/// than built and checked per row.
struct Topics<'a> {
    prefix: &'a str,
    /// The last row topic seen, and its full name or why it is invalid.
    last: Option<(String, Result<String, String>)>,
}

impl<'a> Topics<'a> {
    fn new(prefix: &'a str) -> Self {
        Self { prefix, last: None }
    }

    /// The full topic name, or why the row's topic is invalid.
    fn of(&mut self, topic: &str) -> Result<&str, &str> {
        if !matches!(&self.last, Some((name, _)) if name == topic) {
            self.last = None;
        }
        let prefix = self.prefix;
        let (_, checked) = self.last.get_or_insert_with(|| {
            let checked = validate_topic_name(topic).map(|()| format!("{prefix}{topic}"));
            (topic.to_owned(), checked)
        });
        checked.as_deref().map_err(String::as_str)
    }
}

enum Pending {
    Sent(DeliveryFuture),
    Done(RowOutcome),
}

/// Enqueues `rows` in order. Rows of an aggregate that already failed to
/// enqueue in this batch are held back, so a retried event is never
/// overtaken by a later event of its aggregate that was enqueued after the
/// failure.
async fn enqueue_batch(
    producer: &FutureProducer,
    topic_prefix: &str,
    rows: &[ClaimedRow],
) -> KafkaAcks {
    let mut failed = Unfinished::default();
    let mut topics = Topics::new(topic_prefix);
    let mut pending = Vec::with_capacity(rows.len());
    for row in rows {
        if failed.holds(row) {
            pending.push(Pending::Done(RowOutcome::Held));
            continue;
        }
        let checked = match topics.of(row.topic()) {
            Ok(topic) if row.envelope_ok => Ok(topic),
            Ok(_) => Err(malformed_envelope(row)),
            Err(reason) => Err(invalid_topic(row, reason)),
        };
        let topic = match checked {
            Ok(topic) => topic,
            Err(failure) => {
                failed.insert(row);
                pending.push(Pending::Done(RowOutcome::Failed(failure)));
                continue;
            }
        };
        match enqueue(producer, topic, row).await {
            Ok(future) => pending.push(Pending::Sent(future)),
            Err(error) => {
                failed.insert(row);
                pending.push(Pending::Done(RowOutcome::Failed(classify(&error))));
            }
        }
    }
    Box::pin(acknowledgements(pending))
}

/// Awaited in order: acknowledgements arrive in bursts (one per produce
/// request), so after the first of a burst wakes the task the rest are
/// already complete and cost no wake-up (`join_all` woke it per message).
async fn acknowledgements(pending: Vec<Pending>) -> Vec<RowOutcome> {
    let mut outcomes = Vec::with_capacity(pending.len());
    for p in pending {
        outcomes.push(match p {
            Pending::Done(outcome) => outcome,
            Pending::Sent(future) => match future.await {
                Ok(Ok(_)) => RowOutcome::Delivered,
                Ok(Err((error, _message))) => RowOutcome::Failed(classify(&error)),
                Err(_canceled) => RowOutcome::Failed(Failure::Uncounted(
                    "the Kafka producer was dropped before delivering".into(),
                )),
            },
        });
    }
    outcomes
}

/// A row whose topic can never be produced to.
fn invalid_topic(row: &ClaimedRow, reason: &str) -> Failure {
    Failure::Permanent(format!(
        "invalid topic in outbox row: {reason}; correct the row's topic and run `outbox retry {}`",
        row.id
    ))
}

/// A row whose payload is not an envelope.
fn malformed_envelope(row: &ClaimedRow) -> Failure {
    Failure::Permanent(format!(
        "malformed envelope in outbox row: event_data must be a JSON object with event_id, \
         event_type and data (see docs/reference/envelope.md); correct it and run `outbox retry {}`",
        row.id
    ))
}

async fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    row: &ClaimedRow,
) -> Result<DeliveryFuture, KafkaError> {
    let mut record = FutureRecord::to(topic)
        .key(row.key())
        .payload(row.payload())
        .headers(headers_for(row));
    loop {
        match producer.send_result(record) {
            Ok(future) => return Ok(future),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                // The local queue is full: wait for deliveries to drain it.
                record = returned;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_prefixed_and_checked_again_when_they_change() {
        let mut topics = Topics::new("p.");
        assert_eq!(topics.of("essays.v1"), Ok("p.essays.v1"));
        assert_eq!(topics.of("essays.v1"), Ok("p.essays.v1"));
        assert!(topics.of("bad topic").is_err());
        assert_eq!(topics.of("files.v1"), Ok("p.files.v1"));
    }

    #[test]
    fn only_the_messages_own_faults_count() {
        use RDKafkaErrorCode as C;
        for code in [
            C::MessageTimedOut,
            C::RequestTimedOut,
            C::NotLeaderForPartition,
            C::LeaderNotAvailable,
            C::NotEnoughReplicas,
            C::NotEnoughReplicasAfterAppend,
            C::AllBrokersDown,
            C::BrokerTransportFailure,
            C::OutOfOrderSequenceNumber,
            C::Fatal,
            C::PurgeQueue,
            C::PurgeInflight,
            C::GaplessGuarantee,
        ] {
            let error = KafkaError::MessageProduction(code);
            assert!(
                matches!(classify(&error), Failure::Uncounted(_)),
                "{code:?}"
            );
        }
        for code in [
            C::MessageSizeTooLarge,
            C::InvalidRecord,
            C::TopicAuthorizationFailed,
            C::UnknownTopic,
        ] {
            let error = KafkaError::MessageProduction(code);
            assert!(matches!(classify(&error), Failure::Counted(_)), "{code:?}");
        }
    }
}
