//! The consumer inbox: exactly-once effects on top of at-least-once delivery.
//!
//! A consumer records each event id in `event_inbox` inside the same
//! transaction as the handler's writes. If the event was recorded before
//! (a redelivery), [`Inbox::record`] says [`InboxOutcome::AlreadyProcessed`]
//! and the consumer skips its effects. Because the record and the effects
//! commit together, a crash anywhere leaves either both or neither.
//!
//! The [consumer loop](crate::consume::Consumer) does this for you, for a
//! whole batch of messages at once ([`Inbox::record_many`]); use [`Inbox`]
//! directly when you consume with your own loop.

use crate::consume::MessageLocation;
use crate::identifier::SchemaName;
use sqlx::{PgConnection, PgPool};
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

/// Whether an event was new to this consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InboxOutcome {
    /// First time: the event is now recorded (when the transaction commits);
    /// run its effects.
    New,
    /// Recorded before: skip the effects.
    AlreadyProcessed,
}

/// Why an inbox statement failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InboxError {
    /// A database statement failed.
    #[error(
        "inbox database error while {action}; check that the `event_inbox` table \
         exists (run `outbox::migrate`) and that the role may read and write it"
    )]
    Database {
        /// What the inbox was doing.
        action: &'static str,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
}

fn db(action: &'static str) -> impl FnOnce(sqlx::Error) -> InboxError {
    move |source| InboxError::Database { action, source }
}

/// One event to record with [`Inbox::record_many`].
#[derive(Debug, Clone, Copy)]
pub struct InboxEntry<'a> {
    /// The event id (the inbox key).
    pub event_id: Uuid,
    /// The event type, kept for operators.
    pub event_type: &'a str,
    /// Where the message was read, kept for operators.
    pub location: Option<&'a MessageLocation>,
}

/// One consumer's view of the `event_inbox` table.
///
/// ```no_run
/// use outbox::consume::{Inbox, InboxOutcome};
/// use outbox::Outbox;
/// use uuid::Uuid;
///
/// # async fn run(outbox: Outbox, event_id: Uuid) -> Result<(), Box<dyn std::error::Error>> {
/// let inbox = Inbox::new("cj_assessment_service");
/// let mut tx = outbox.transactional_publish().await?;
/// if inbox.record(&mut tx, event_id, "SpellcheckCompletedV1", None).await? == InboxOutcome::New {
///     sqlx::query("UPDATE cj_batches SET received = received + 1 WHERE id = $1")
///         .bind("b-1")
///         .execute(&mut *tx)
///         .await?;
///     // tx.publish(&FollowUp { .. }).await?;
/// }
/// tx.commit().await?; // inbox row, state change and follow-up events together
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbox {
    consumer: String,
    table: String,
}

/// Unqualified name of the inbox table.
pub const INBOX_TABLE: &str = "event_inbox";

impl Inbox {
    /// The inbox of `consumer` (e.g. the Kafka consumer group id) in the
    /// pool's default schema.
    pub fn new(consumer: impl Into<String>) -> Self {
        Self {
            consumer: consumer.into(),
            table: INBOX_TABLE.to_owned(),
        }
    }

    /// Uses the inbox table in `schema` (where
    /// [`migrate_in_schema`](crate::migrate_in_schema) created it).
    pub fn schema(mut self, schema: &SchemaName) -> Self {
        // A validated identifier: formatting it into SQL is safe.
        self.table = format!("\"{schema}\".{INBOX_TABLE}");
        self
    }

    /// The consumer name rows are recorded under.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The (possibly schema-qualified) table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Records `event_id` for this consumer inside the caller's transaction
    /// (`&mut *tx` of a guard or a `sqlx::Transaction`).
    ///
    /// Returns [`InboxOutcome::New`] when the row was inserted and
    /// [`InboxOutcome::AlreadyProcessed`] when it existed. A concurrent
    /// transaction recording the same event waits for the first one and
    /// then sees `AlreadyProcessed` (if it committed) or `New` (if it rolled
    /// back).
    pub async fn record(
        &self,
        conn: &mut PgConnection,
        event_id: Uuid,
        event_type: &str,
        location: Option<&MessageLocation>,
    ) -> Result<InboxOutcome, InboxError> {
        let sql = format!(
            "INSERT INTO {} (consumer, event_id, event_type, topic, kafka_partition, kafka_offset)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (consumer, event_id) DO NOTHING",
            self.table
        );
        let done = sqlx::query(&sql)
            .bind(&self.consumer)
            .bind(event_id)
            .bind(event_type)
            .bind(location.map(|l| l.topic.as_str()))
            .bind(location.map(|l| l.partition))
            .bind(location.map(|l| l.offset))
            .execute(conn)
            .await
            .map_err(db("recording an event in the inbox"))?;
        let outcome = if done.rows_affected() == 1 {
            InboxOutcome::New
        } else {
            InboxOutcome::AlreadyProcessed
        };
        tracing::trace!(consumer = %self.consumer, event_id = %event_id, event_type, ?outcome, "inbox record");
        Ok(outcome)
    }

    /// Records many events in one statement inside the caller's
    /// transaction; the outcomes are in the order of `entries`.
    ///
    /// An event id given twice is [`New`](InboxOutcome::New) the first
    /// time and [`AlreadyProcessed`](InboxOutcome::AlreadyProcessed) after,
    /// as if recorded one by one. Concurrent transactions recording the same
    /// events behave as with [`record`](Self::record).
    ///
    /// ```no_run
    /// use outbox::consume::{Inbox, InboxEntry, InboxOutcome};
    /// use uuid::Uuid;
    ///
    /// # async fn run(outbox: outbox::Outbox, ids: Vec<Uuid>) -> Result<(), Box<dyn std::error::Error>> {
    /// let inbox = Inbox::new("cj_assessment_service");
    /// let mut tx = outbox.transactional_publish().await?;
    /// let entries: Vec<InboxEntry<'_>> = ids
    ///     .iter()
    ///     .map(|id| InboxEntry { event_id: *id, event_type: "SpellcheckCompletedV1", location: None })
    ///     .collect();
    /// let outcomes = inbox.record_many(&mut tx, &entries).await?;
    /// let new = outcomes.iter().filter(|o| **o == InboxOutcome::New).count();
    /// // ... apply the effects of the new ones, then:
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn record_many(
        &self,
        conn: &mut PgConnection,
        entries: &[InboxEntry<'_>],
    ) -> Result<Vec<InboxOutcome>, InboxError> {
        let mut first: HashSet<Uuid> = HashSet::with_capacity(entries.len());
        let unique: Vec<&InboxEntry<'_>> = entries
            .iter()
            .filter(|e| first.insert(e.event_id))
            .collect();
        let sql = format!(
            "INSERT INTO {} (consumer, event_id, event_type, topic, kafka_partition, kafka_offset)
             SELECT $1, * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::int4[], $6::int8[])
             ON CONFLICT (consumer, event_id) DO NOTHING
             RETURNING event_id",
            self.table
        );
        let inserted: Vec<Uuid> = sqlx::query_scalar(&sql)
            .bind(&self.consumer)
            .bind(unique.iter().map(|e| e.event_id).collect::<Vec<_>>())
            .bind(unique.iter().map(|e| e.event_type).collect::<Vec<_>>())
            .bind(
                unique
                    .iter()
                    .map(|e| e.location.map(|l| l.topic.as_str()))
                    .collect::<Vec<_>>(),
            )
            .bind(
                unique
                    .iter()
                    .map(|e| e.location.map(|l| l.partition))
                    .collect::<Vec<_>>(),
            )
            .bind(
                unique
                    .iter()
                    .map(|e| e.location.map(|l| l.offset))
                    .collect::<Vec<_>>(),
            )
            .fetch_all(conn)
            .await
            .map_err(db("recording a batch of events in the inbox"))?;
        let mut new: HashSet<Uuid> = inserted.into_iter().collect();
        let outcomes: Vec<InboxOutcome> = entries
            .iter()
            .map(|e| {
                if new.remove(&e.event_id) {
                    InboxOutcome::New
                } else {
                    InboxOutcome::AlreadyProcessed
                }
            })
            .collect();
        tracing::trace!(consumer = %self.consumer, events = entries.len(), new = outcomes.iter().filter(|o| **o == InboxOutcome::New).count(), "inbox batch record");
        Ok(outcomes)
    }

    /// Whether `event_id` is recorded for this consumer (committed rows, or
    /// rows of the caller's own transaction).
    pub async fn contains(
        &self,
        conn: &mut PgConnection,
        event_id: Uuid,
    ) -> Result<bool, InboxError> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE consumer = $1 AND event_id = $2)",
            self.table
        );
        sqlx::query_scalar(&sql)
            .bind(&self.consumer)
            .bind(event_id)
            .fetch_one(conn)
            .await
            .map_err(db("looking up an event in the inbox"))
    }

    /// Deletes this consumer's rows processed more than `older_than` ago,
    /// `batch_size` rows per statement (each its own short transaction) so
    /// a large purge never holds long locks. Returns the number deleted.
    ///
    /// The retention period is the de-duplication window: an event
    /// redelivered after its row was purged is handled again. Keep it well
    /// above the longest time a message can be redelivered (consumer lag,
    /// offset resets).
    ///
    /// ```no_run
    /// # async fn run(pool: sqlx::PgPool) -> Result<(), outbox::consume::InboxError> {
    /// use std::time::Duration;
    /// let inbox = outbox::consume::Inbox::new("cj_assessment_service");
    /// let deleted = inbox.purge_older_than(&pool, Duration::from_secs(7 * 86_400), 1_000).await?;
    /// # Ok(()) }
    /// ```
    pub async fn purge_older_than(
        &self,
        pool: &PgPool,
        older_than: Duration,
        batch_size: u32,
    ) -> Result<u64, InboxError> {
        let sql = format!(
            "DELETE FROM {table} WHERE ctid IN (
                 SELECT ctid FROM {table}
                 WHERE consumer = $1 AND processed_at < now() - make_interval(secs => $2)
                 LIMIT $3)",
            table = self.table
        );
        let batch = i64::from(batch_size.max(1));
        let mut total = 0;
        loop {
            let deleted = sqlx::query(&sql)
                .bind(&self.consumer)
                .bind(older_than.as_secs_f64())
                .bind(batch)
                .execute(pool)
                .await
                .map_err(db("purging old inbox rows"))?
                .rows_affected();
            total += deleted;
            if deleted < u64::from(batch_size.max(1)) {
                break;
            }
        }
        if total > 0 {
            tracing::debug!(consumer = %self.consumer, deleted = total, "purged old inbox rows");
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_qualifies_the_table() {
        let inbox = Inbox::new("c").schema(&SchemaName::new("svc").unwrap());
        assert_eq!(inbox.table(), "\"svc\".event_inbox");
        assert_eq!(Inbox::new("c").table(), "event_inbox");
        assert_eq!(inbox.consumer(), "c");
    }
}
