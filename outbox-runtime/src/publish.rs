//! The `transactional_publish` guard and event batches.

use crate::columns::Columns;
use crate::context::ResolvedContext;
use crate::envelope::{Envelope, EnvelopeMetadata};
use crate::error::PublishError;
use crate::handle::Outbox;
use crate::{wake, OutboxEvent};
use chrono::Utc;
use serde::Serialize;
use sqlx::{PgConnection, Postgres, Transaction};
use std::ops::{Deref, DerefMut};
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

fn count_into(tally: &mut Tally, topic: &'static str, event_type: &'static str, n: u64) {
    match tally
        .iter_mut()
        .find(|(t, e, _)| *t == topic && *e == event_type)
    {
        Some(entry) => entry.2 += n,
        None => tally.push((topic, event_type, n)),
    }
}

/// The `transactional_publish` guard: a Postgres transaction whose events
/// commit or roll back together with your business writes.
///
/// Run your own queries with `.execute(&mut *guard)`. Dropping the guard
/// without [`commit`](Self::commit) rolls back: neither business rows nor
/// events survive.
#[derive(Debug)]
pub struct TransactionalPublish<'c> {
    outbox: Outbox,
    tx: Transaction<'c, Postgres>,
    context: ResolvedContext,
    added: usize,
    /// Added events per `(topic, event_type)`, counted in the metrics at
    /// commit (only when the outbox has metrics).
    tally: Tally,
}

impl<'c> TransactionalPublish<'c> {
    pub(crate) fn new(
        outbox: Outbox,
        tx: Transaction<'c, Postgres>,
        context: ResolvedContext,
    ) -> Self {
        Self {
            outbox,
            tx,
            context,
            added: 0,
            tally: Vec::new(),
        }
    }

    /// The correlation id of this transaction's events.
    pub fn correlation_id(&self) -> Uuid {
        self.context.correlation_id
    }

    /// Number of events added so far.
    pub fn events_added(&self) -> usize {
        self.added
    }

    /// An empty batch carrying this transaction's context.
    pub fn batch(&self) -> EventBatch {
        EventBatch::new(
            self.outbox.inner.source_service.clone(),
            self.context.clone(),
        )
    }

    /// Adds one event; returns its id.
    pub async fn publish<E: OutboxEvent>(&mut self, event: &E) -> Result<Uuid, PublishError> {
        let mut batch = self.batch();
        let id = batch.push(event)?;
        self.publish_batch(batch).await?;
        Ok(id)
    }

    /// Adds many events of one type in a single statement; returns their ids.
    /// If any fails to serialize, nothing is added.
    pub async fn publish_all<'e, E: OutboxEvent>(
        &mut self,
        events: impl IntoIterator<Item = &'e E>,
    ) -> Result<Vec<Uuid>, PublishError> {
        let mut batch = self.batch();
        for event in events {
            batch.push(event)?;
        }
        self.publish_batch(batch).await
    }

    /// Adds a prepared batch (possibly of mixed types) in a single statement.
    pub async fn publish_batch(&mut self, batch: EventBatch) -> Result<Vec<Uuid>, PublishError> {
        let ids = batch.ids().to_vec();
        let tally = match &self.outbox.inner.metrics {
            Some(_) => batch.tally(),
            None => Vec::new(),
        };
        self.added += self.outbox.insert(&mut self.tx, batch).await?;
        for (topic, event_type, n) in tally {
            count_into(&mut self.tally, topic, event_type, n);
        }
        Ok(ids)
    }

    /// Commits business writes and events together, then wakes relays in
    /// this process. Returns the number of events committed.
    pub async fn commit(self) -> Result<usize, PublishError> {
        let added = self.added;
        self.tx
            .commit()
            .await
            .map_err(PublishError::db("committing the publishing transaction"))?;
        if let Some(metrics) = &self.outbox.inner.metrics {
            for (topic, event_type, n) in self.tally {
                metrics.events_added(topic, event_type, n);
            }
        }
        if added > 0 {
            wake::wake_local_relays();
            tracing::debug!(events = added, correlation_id = %self.context.correlation_id, "outbox transaction committed");
        }
        Ok(added)
    }

    /// Rolls back explicitly (dropping the guard does the same).
    pub async fn rollback(self) -> Result<(), PublishError> {
        self.tx
            .rollback()
            .await
            .map_err(PublishError::db("rolling back the publishing transaction"))
    }

    /// The underlying sqlx transaction.
    pub fn transaction(&mut self) -> &mut Transaction<'c, Postgres> {
        &mut self.tx
    }
}

impl Deref for TransactionalPublish<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for TransactionalPublish<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}
