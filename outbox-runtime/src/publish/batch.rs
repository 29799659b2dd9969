//! [`EventBatch`]: events serialized into their envelopes, ready for one
//! insert.

use crate::columns::Columns;
use crate::context::ResolvedContext;
use crate::envelope::{Envelope, EnvelopeMetadata};
use crate::error::PublishError;
use crate::OutboxEvent;
use chrono::Utc;
use serde::Serialize;
use uuid::Uuid;

/// Events serialized and ready to insert in one statement. May mix event
/// types and aggregates.
///
/// ```no_run
/// # use outbox::{Outbox, OutboxEvent, PublishContext};
/// # #[derive(serde::Serialize, OutboxEvent)]
/// # #[outbox_event(topic = "t.a.v1", aggregate = "a")]
/// # struct A { #[outbox_event(aggregate_id)] id: u32 }
/// # #[derive(serde::Serialize, OutboxEvent)]
/// # #[outbox_event(topic = "t.b.v1", aggregate = "b")]
/// # struct B { #[outbox_event(aggregate_id)] id: u32 }
/// # async fn run(outbox: Outbox) -> Result<(), Box<dyn std::error::Error>> {
/// let mut tx = outbox.transactional_publish().await?;
/// let mut batch = tx.batch();
/// batch.push(&A { id: 1 })?;
/// batch.push(&B { id: 2 })?;
/// tx.publish_batch(batch).await?;
/// tx.commit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct EventBatch {
    source_service: String,
    context: ResolvedContext,
    headers: String,
    cols: Columns,
}

#[derive(Serialize)]
struct StoredHeaders<'a> {
    correlation_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    traceparent: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tracestate: Option<&'a str>,
}

impl EventBatch {
    pub(crate) fn new(source_service: String, context: ResolvedContext) -> Self {
        let headers = serde_json::to_string(&StoredHeaders {
            correlation_id: context.correlation_id,
            traceparent: context.traceparent.as_deref(),
            tracestate: context.tracestate.as_deref(),
        })
        // Serializing a Uuid and two strings cannot fail; keep a valid
        // fallback rather than panic.
        .unwrap_or_else(|_| "{}".to_owned());
        Self {
            source_service,
            context,
            headers,
            cols: Columns::default(),
        }
    }

    /// Serializes `event` into its envelope and adds it; returns its id.
    /// Fails, adding nothing, when the event cannot be serialized.
    pub fn push<E: OutboxEvent>(&mut self, event: &E) -> Result<Uuid, PublishError> {
        let reg = &E::REGISTRATION;
        let aggregate_id = event.aggregate_id();
        if aggregate_id.is_empty() {
            return Err(PublishError::EmptyAggregateId {
                event_type: reg.event_type,
            });
        }
        let event_id = Uuid::now_v7();
        let envelope = Envelope {
            event_id,
            event_type: reg.event_type.to_owned(),
            version: reg.version,
            event_timestamp: Utc::now(),
            source_service: self.source_service.clone(),
            correlation_id: self.context.correlation_id,
            aggregate_type: reg.aggregate_type.to_owned(),
            aggregate_id: aggregate_id.clone(),
            data: event,
            metadata: EnvelopeMetadata {
                traceparent: self.context.traceparent.clone(),
                tracestate: self.context.tracestate.clone(),
                extra: Default::default(),
            },
        };
        let data = serde_json::to_string(&envelope).map_err(|source| PublishError::Serialize {
            event_type: reg.event_type,
            rust_type: reg.rust_type,
            source,
        })?;
        let key = event.partition_key();
        let c = &mut self.cols;
        c.ids.push(event_id);
        c.aggregate_types.push(reg.aggregate_type);
        c.aggregate_ids.push(aggregate_id);
        c.event_types.push(reg.event_type);
        c.versions
            .push(i32::try_from(reg.version).unwrap_or(i32::MAX));
        c.topics.push(reg.topic);
        c.keys.push(key);
        c.data.push(data);
        c.headers.push(self.headers.clone());
        tracing::trace!(
            event_id = %event_id,
            event_type = reg.event_type,
            topic = reg.topic,
            aggregate_type = reg.aggregate_type,
            correlation_id = %self.context.correlation_id,
            "event added to outbox batch"
        );
        Ok(event_id)
    }

    /// Number of events in the batch.
    pub fn len(&self) -> usize {
        self.cols.ids.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.cols.ids.is_empty()
    }

    /// Ids of the events, in insertion order.
    pub fn ids(&self) -> &[Uuid] {
        &self.cols.ids
    }

    /// The correlation id stamped on the batch's events.
    pub fn correlation_id(&self) -> Uuid {
        self.context.correlation_id
    }

    pub(crate) fn into_columns(self) -> Columns {
        self.cols
    }

    /// Events per `(topic, event_type)`, for `outbox_events_added_total`.
    pub(crate) fn tally(&self) -> Tally {
        let mut tally = Tally::new();
        for (topic, event_type) in self.cols.topics.iter().zip(&self.cols.event_types) {
            count_into(&mut tally, topic, event_type, 1);
        }
        tally
    }

    /// The `outbox.publish` span of inserting this batch. Fields that are the
    /// same for every event of the batch are recorded (all of them for a
    /// single event); the others stay empty.
    pub(crate) fn span(&self) -> tracing::Span {
        use tracing::field::Empty;
        let c = &self.cols;
        let span = tracing::info_span!(
            "outbox.publish",
            events = c.ids.len(),
            correlation_id = %self.context.correlation_id,
            event_id = Empty,
            event_type = Empty,
            topic = Empty,
            aggregate_type = Empty,
            aggregate_id = Empty,
        );
        fn uniform<T: PartialEq>(values: &[T]) -> Option<&T> {
            let first = values.first()?;
            values[1..].iter().all(|v| v == first).then_some(first)
        }
        if let [id] = c.ids.as_slice() {
            span.record("event_id", tracing::field::display(id));
        }
        if let Some(v) = uniform(&c.event_types) {
            span.record("event_type", *v);
        }
        if let Some(v) = uniform(&c.topics) {
            span.record("topic", *v);
        }
        if let Some(v) = uniform(&c.aggregate_types) {
            span.record("aggregate_type", *v);
        }
        if let Some(v) = uniform(&c.aggregate_ids) {
            span.record("aggregate_id", v.as_str());
        }
        span
    }
}

/// Event counts per `(topic, event_type)`; a batch holds few distinct pairs.
pub(crate) type Tally = Vec<(&'static str, &'static str, u64)>;

pub(crate) fn count_into(tally: &mut Tally, topic: &'static str, event_type: &'static str, n: u64) {
    match tally
        .iter_mut()
        .find(|(t, e, _)| *t == topic && *e == event_type)
    {
        Some(entry) => entry.2 += n,
        None => tally.push((topic, event_type, n)),
    }
}
