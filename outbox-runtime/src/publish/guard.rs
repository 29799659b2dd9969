//! The [`TransactionalPublish`] guard: business writes and events in one
//! transaction.

use super::batch::{count_into, EventBatch, Tally};
use super::writer::Writer;
use crate::context::ResolvedContext;
use crate::error::PublishError;
use crate::{wake, OutboxEvent};
use sqlx::{PgConnection, Postgres, Transaction};
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use uuid::Uuid;

/// The `transactional_publish` guard: a Postgres transaction whose events
/// commit or roll back together with your business writes.
///
/// Run your own queries with `.execute(&mut *guard)`. Dropping the guard
/// without [`commit`](Self::commit) rolls back: neither business rows nor
/// events survive.
#[derive(Debug)]
pub struct TransactionalPublish<'c> {
    writer: Arc<Writer>,
    tx: Transaction<'c, Postgres>,
    context: ResolvedContext,
    added: usize,
    /// Added events per `(topic, event_type)`, counted in the metrics at
    /// commit (only when the outbox has metrics).
    tally: Tally,
}

impl<'c> TransactionalPublish<'c> {
    pub(crate) fn new(
        writer: Arc<Writer>,
        tx: Transaction<'c, Postgres>,
        context: ResolvedContext,
    ) -> Self {
        Self {
            writer,
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

    /// Publishes the events added from now on with `context` (resolved as
    /// [`Outbox::transactional_publish_with`](crate::Outbox::transactional_publish_with)
    /// does): the consumer sets each consumed event's context before its
    /// handler, so follow-up events keep their own correlation id.
    pub fn set_context(&mut self, context: crate::PublishContext) {
        self.context = context.resolve();
    }

    /// Number of events added so far.
    pub fn events_added(&self) -> usize {
        self.added
    }

    /// An empty batch carrying this transaction's context.
    pub fn batch(&self) -> EventBatch {
        EventBatch::new(self.writer.source_service.clone(), self.context.clone())
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
        let tally = match &self.writer.metrics {
            Some(_) => batch.tally(),
            None => Vec::new(),
        };
        self.added += self.writer.insert(&mut self.tx, batch).await?;
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
        if let Some(metrics) = &self.writer.metrics {
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
