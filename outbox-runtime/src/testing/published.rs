//! [`Published`]: the events a test published, read back for assertions.

use super::expect::ExpectedEvent;
use super::tables::ensure_table;
use super::typed::{self, PublishedEvent};
use super::{check, Mark, RecordedEvent, TestingError};
use crate::{OutboxEvent, SchemaName};
use serde::de::DeserializeOwned;
use sqlx::PgPool;
use std::fmt::Display;

/// Events read back from the outbox table (or from the
/// [mock broker](super::MockBroker)), in the order they were added, for
/// typed access and assertions.
///
/// ```no_run
/// use outbox::testing::{Mark, Published};
/// use outbox::{Outbox, OutboxEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
/// #[outbox_event(topic = "files.batch-file-added.v1", aggregate = "file_upload")]
/// struct BatchFileAddedV1 {
///     #[outbox_event(aggregate_id)]
///     file_upload_id: String,
///     batch_id: String,
/// }
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = Outbox::new(pool.clone(), "file_service");
/// let mark = Mark::take(&pool).await?;
/// let added = BatchFileAddedV1 { file_upload_id: "f-1".into(), batch_id: "b-1".into() };
/// let mut tx = outbox.transactional_publish().await?;
/// tx.publish(&added).await?;
/// tx.commit().await?;
///
/// let published = Published::since(&pool, &mark).await?;
/// published.assert_exactly_for("f-1", &[&added]);
/// let events = published.of::<BatchFileAddedV1>()?;
/// assert_eq!(events[0].data, added);
/// assert_eq!(events[0].topic, "files.batch-file-added.v1");
/// assert_eq!(events[0].key, "f-1");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    events: Vec<RecordedEvent>,
    origin: &'static str,
}

impl Published {
    /// The events added to the outbox after `mark` (in the mark's schema),
    /// committed or not yet, in the order they were added.
    ///
    /// Rows the relay delivered and deleted are gone: read before a relay
    /// runs, or give the relay [`Retention::Keep`](crate::relay::Retention).
    pub async fn since(pool: &PgPool, mark: &Mark) -> Result<Self, TestingError> {
        let table = mark.table();
        ensure_table(pool, table).await?;
        // The table name is a constant or a validated schema name.
        let sql = format!(
            "SELECT seq, topic, event_key, event_data::text FROM {table} WHERE seq > $1 ORDER BY seq"
        );
        let rows: Vec<(i64, String, String, String)> = sqlx::query_as(&sql)
            .bind(mark.seq())
            .fetch_all(pool)
            .await
            .map_err(TestingError::db("reading the outbox"))?;
        let events = rows
            .into_iter()
            .map(|(seq, topic, key, data)| {
                let origin = || format!("the outbox row with seq {seq} in `{table}`");
                RecordedEvent::parse(origin, topic, key, data.as_bytes(), None)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self::new(events, "published since the mark"))
    }

    /// Every event in the outbox of the pool's default schema.
    pub async fn all(pool: &PgPool) -> Result<Self, TestingError> {
        Self::since(pool, &Mark::start()).await
    }

    /// Every event in the outbox of `schema`.
    pub async fn all_in(pool: &PgPool, schema: &SchemaName) -> Result<Self, TestingError> {
        Self::since(pool, &Mark::start_in(schema)).await
    }

    pub(crate) fn new(events: Vec<RecordedEvent>, origin: &'static str) -> Self {
        Self { events, origin }
    }

    /// Every event, untyped, in order.
    pub fn events(&self) -> &[RecordedEvent] {
        &self.events
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The events whose aggregate id is `aggregate_id` (of any aggregate type).
    pub fn for_aggregate(&self, aggregate_id: impl Display) -> Self {
        let id = aggregate_id.to_string();
        Self {
            events: self
                .events
                .iter()
                .filter(|e| e.envelope.aggregate_id == id)
                .cloned()
                .collect(),
            origin: self.origin,
        }
    }

    /// The events of `E`'s type, decoded, with their envelope fields.
    ///
    /// Fails with [`TestingError::NotRegistered`] when `E` is not in the
    /// registry, and with [`TestingError::Undecodable`] or
    /// [`TestingError::VersionMismatch`] when an event of its type does not
    /// decode into `E`.
    pub fn of<E: OutboxEvent + DeserializeOwned>(
        &self,
    ) -> Result<Vec<PublishedEvent<E>>, TestingError> {
        typed::of(&self.events)
    }

    /// The data of the events of `E`'s type, in order: compare it with
    /// `assert_eq!(published.data_of::<E>()?, vec![...])`.
    pub fn data_of<E: OutboxEvent + DeserializeOwned>(&self) -> Result<Vec<E>, TestingError> {
        Ok(self.of::<E>()?.into_iter().map(|e| e.data).collect())
    }

    /// Asserts that nothing was published (e.g. after a rollback or a
    /// rejected request).
    ///
    /// # Panics
    ///
    /// When there are events; the message lists them.
    #[track_caller]
    pub fn assert_nothing(&self) {
        if let Err(message) = check::nothing(&self.events, self.origin, None) {
            panic!("{message}");
        }
    }

    /// Asserts that exactly `expected` were published, in this order: same
    /// event types, aggregates and data (compared as JSON).
    ///
    /// # Panics
    ///
    /// When they differ; the message lists what was expected, what was
    /// published instead and the first difference.
    #[track_caller]
    pub fn assert_exactly(&self, expected: &[&dyn ExpectedEvent]) {
        if let Err(message) = check::exactly(&self.events, expected, self.origin, None) {
            panic!("{message}");
        }
    }

    /// Asserts that the events of aggregate `aggregate_id` are exactly
    /// `expected`, in this order; events of other aggregates are ignored.
    /// An empty `expected` asserts that nothing was published for it.
    ///
    /// # Panics
    ///
    /// When they differ; the message lists what was expected, what was
    /// published for the aggregate instead, the first difference, and the
    /// events of other aggregates.
    #[track_caller]
    pub fn assert_exactly_for(&self, aggregate_id: impl Display, expected: &[&dyn ExpectedEvent]) {
        let id = aggregate_id.to_string();
        if let Err(message) = check::exactly(&self.events, expected, self.origin, Some(&id)) {
            panic!("{message}");
        }
    }
}
