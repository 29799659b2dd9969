//! The [`Outbox`] handle a service publishes through.

use super::batch::EventBatch;
use super::guard::TransactionalPublish;
use super::writer::Writer;
use crate::context::PublishContext;
use crate::error::{ConfigError, PublishError};
use crate::identifier::{Names, SchemaName};
use crate::metrics::OutboxMetrics;
use crate::OutboxEvent;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Default window within which one process folds NOTIFYs of several commits.
pub const DEFAULT_NOTIFY_WINDOW: Duration = Duration::from_millis(5);

/// A service's handle to its outbox: cheap to clone, share it.
///
/// ```no_run
/// use outbox::{Outbox, OutboxEvent};
/// use serde::Serialize;
///
/// #[derive(Serialize, OutboxEvent)]
/// #[outbox_event(topic = "files.batch-file-added.v1", aggregate = "file_upload")]
/// struct BatchFileAddedV1 {
///     #[outbox_event(aggregate_id)]
///     batch_id: String,
///     file_upload_id: String,
/// }
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = Outbox::new(pool, "file_service");
/// let mut tx = outbox.transactional_publish().await?;
/// sqlx::query("INSERT INTO file_uploads (id, batch_id) VALUES ($1, $2)")
///     .bind("f-1")
///     .bind("b-1")
///     .execute(&mut *tx)
///     .await?;
/// tx.publish(&BatchFileAddedV1 { batch_id: "b-1".into(), file_upload_id: "f-1".into() })
///     .await?;
/// tx.commit().await?; // business row and event commit together
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Outbox {
    pool: PgPool,
    writer: Arc<Writer>,
}

impl Outbox {
    /// An outbox in the pool's default schema, stamping `source_service` on
    /// every envelope.
    pub fn new(pool: PgPool, source_service: impl Into<String>) -> Self {
        Self::builder(pool, source_service).build()
    }

    /// Starts configuring an outbox (schema, NOTIFY folding window).
    pub fn builder(pool: PgPool, source_service: impl Into<String>) -> OutboxBuilder {
        OutboxBuilder {
            pool,
            source_service: source_service.into(),
            schema: None,
            notify_window: DEFAULT_NOTIFY_WINDOW,
            metrics: None,
        }
    }

    /// The pool this outbox writes through.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The service name written into envelopes.
    pub fn source_service(&self) -> &str {
        &self.writer.source_service
    }

    /// Begins a transaction: run your business queries through the returned
    /// guard, add events, then [`commit`](TransactionalPublish::commit).
    /// Dropping the guard without committing rolls everything back.
    pub async fn transactional_publish(
        &self,
    ) -> Result<TransactionalPublish<'static>, PublishError> {
        self.transactional_publish_with(PublishContext::new()).await
    }

    /// Like [`transactional_publish`](Self::transactional_publish), with an
    /// explicit correlation id / trace context (gaps filled from the current
    /// task's [`PublishContext`]).
    pub async fn transactional_publish_with(
        &self,
        context: PublishContext,
    ) -> Result<TransactionalPublish<'static>, PublishError> {
        let tx = self
            .pool
            .begin()
            .await
            .map_err(PublishError::db("beginning the publishing transaction"))?;
        Ok(TransactionalPublish::new(
            self.writer.clone(),
            tx,
            context.resolve(),
        ))
    }

    /// Wraps a transaction you already began (e.g. from a connection you
    /// hold) in the publishing guard.
    pub fn wrap<'c>(&self, tx: Transaction<'c, Postgres>) -> TransactionalPublish<'c> {
        TransactionalPublish::new(self.writer.clone(), tx, PublishContext::new().resolve())
    }

    /// Adds one event to a transaction the caller owns and commits itself.
    /// Returns the event id.
    ///
    /// ```no_run
    /// # use outbox::{Outbox, OutboxEvent};
    /// # #[derive(serde::Serialize, OutboxEvent)]
    /// # #[outbox_event(topic = "t.v1", aggregate = "a")]
    /// # struct E { #[outbox_event(aggregate_id)] id: u32 }
    /// # async fn run(outbox: Outbox) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = outbox.pool().begin().await?;
    /// outbox.publish_in(&mut tx, &E { id: 1 }).await?;
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_in<E: OutboxEvent>(
        &self,
        conn: &mut PgConnection,
        event: &E,
    ) -> Result<Uuid, PublishError> {
        let mut batch = self.batch_with(PublishContext::new());
        let id = batch.push(event)?;
        self.insert_counted(conn, batch).await?;
        Ok(id)
    }

    /// Adds many events to a transaction the caller owns, in one statement.
    pub async fn publish_all_in<'e, E: OutboxEvent>(
        &self,
        conn: &mut PgConnection,
        events: impl IntoIterator<Item = &'e E>,
    ) -> Result<Vec<Uuid>, PublishError> {
        let mut batch = self.batch_with(PublishContext::new());
        for event in events {
            batch.push(event)?;
        }
        let ids = batch.ids().to_vec();
        self.insert_counted(conn, batch).await?;
        Ok(ids)
    }

    /// An empty batch that can hold events of different types, stamped with
    /// `context` (gaps filled from the current task).
    pub fn batch_with(&self, context: PublishContext) -> EventBatch {
        EventBatch::new(self.writer.source_service.clone(), context.resolve())
    }

    /// Inserts a batch into the caller's transaction, in one statement.
    pub async fn insert_batch(
        &self,
        conn: &mut PgConnection,
        batch: EventBatch,
    ) -> Result<Vec<Uuid>, PublishError> {
        let ids = batch.ids().to_vec();
        self.insert_counted(conn, batch).await?;
        Ok(ids)
    }

    /// Inserts and counts the events in `outbox_events_added_total` at once:
    /// the caller commits this transaction, out of the outbox's sight.
    async fn insert_counted(
        &self,
        conn: &mut PgConnection,
        batch: EventBatch,
    ) -> Result<usize, PublishError> {
        let added = match &self.writer.metrics {
            Some(_) => batch.tally(),
            None => Vec::new(),
        };
        let n = self.writer.insert(conn, batch).await?;
        if let Some(metrics) = &self.writer.metrics {
            for (topic, event_type, count) in added {
                metrics.events_added(topic, event_type, count);
            }
        }
        Ok(n)
    }
}

/// Configures an [`Outbox`].
#[derive(Debug)]
pub struct OutboxBuilder {
    pool: PgPool,
    source_service: String,
    schema: Option<SchemaName>,
    notify_window: Duration,
    metrics: Option<OutboxMetrics>,
}

impl OutboxBuilder {
    /// Uses the outbox tables in `schema` (a validated identifier; see
    /// [`migrate_in_schema`](crate::migrate_in_schema)).
    pub fn schema(mut self, schema: SchemaName) -> Self {
        self.schema = Some(schema);
        self
    }

    /// Parses and sets the schema.
    pub fn schema_name(self, schema: &str) -> Result<Self, ConfigError> {
        Ok(self.schema(SchemaName::new(schema)?))
    }

    /// Commits within `window` of a commit that sent a NOTIFY send none
    /// (the relay's trailing poll picks them up). Zero: one NOTIFY per
    /// transaction. Default 5 ms.
    pub fn notify_window(mut self, window: Duration) -> Self {
        self.notify_window = window;
        self
    }

    /// Counts added events in `outbox_events_added_total` (labels `topic`,
    /// `event_type`). Events added through the
    /// [`transactional_publish`](Outbox::transactional_publish) guard are
    /// counted when it commits; events added to a transaction the caller
    /// commits itself ([`publish_in`](Outbox::publish_in),
    /// [`publish_all_in`](Outbox::publish_all_in),
    /// [`insert_batch`](Outbox::insert_batch)) are counted once inserted,
    /// even if that transaction later rolls back.
    ///
    /// ```no_run
    /// use outbox::{Outbox, OutboxMetrics};
    ///
    /// # fn run(pool: sqlx::PgPool, metrics: OutboxMetrics) {
    /// let outbox = Outbox::builder(pool, "file_service").metrics(metrics).build();
    /// # }
    /// ```
    pub fn metrics(mut self, metrics: OutboxMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Builds the handle.
    pub fn build(self) -> Outbox {
        let names = Names::new(self.schema.as_ref());
        let writer = Writer::new(self.source_service, names, self.notify_window, self.metrics);
        Outbox {
            pool: self.pool,
            writer: Arc::new(writer),
        }
    }
}
