//! [`ConsumerHarness`]: a consumer's handlers driven without Kafka, with
//! the consumer loop's transaction and inbox.

use super::tables::ensure_table;
use super::TestingError;
use crate::consume::{context_of, Dispatcher};
use crate::error::Chain;
use crate::{Envelope, Inbox, InboxOutcome, Outbox};
use serde::Serialize;

/// Delivers envelopes to a [`Dispatcher`]'s handlers as the consumer loop
/// does, minus Kafka: decode, begin a transaction carrying the event's
/// correlation id and trace context, record the event in the inbox (a
/// duplicate stops here), run the handler, commit.
///
/// ```no_run
/// use outbox::consume::{Dispatcher, InboxOutcome};
/// use outbox::testing::{envelope, ConsumerHarness};
/// use outbox::{Inbox, Outbox, OutboxEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, OutboxEvent)]
/// #[outbox_event(topic = "files.batch-file-added.v1", aggregate = "file_upload")]
/// struct BatchFileAddedV1 {
///     #[outbox_event(aggregate_id)]
///     file_upload_id: String,
///     batch_id: String,
/// }
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let dispatcher = Dispatcher::new().register::<BatchFileAddedV1>(|event, tx| {
///     Box::pin(async move {
///         sqlx::query("UPDATE batches SET files = files + 1 WHERE id = $1")
///             .bind(&event.data.batch_id)
///             .execute(&mut **tx)
///             .await?;
///         Ok(())
///     })
/// });
/// let outbox = Outbox::new(pool, "batch_service");
/// let harness = ConsumerHarness::new(outbox, dispatcher, Inbox::new("batch_service")).await?;
/// let added = envelope(&BatchFileAddedV1 { file_upload_id: "f-1".into(), batch_id: "b-1".into() })?;
/// assert_eq!(harness.deliver(&added).await?, InboxOutcome::New);
/// assert_eq!(harness.deliver(&added).await?, InboxOutcome::AlreadyProcessed);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ConsumerHarness {
    outbox: Outbox,
    dispatcher: Dispatcher,
    inbox: Inbox,
}

impl ConsumerHarness {
    /// Checks the dispatcher and that the inbox table exists.
    pub async fn new(
        outbox: Outbox,
        dispatcher: Dispatcher,
        inbox: Inbox,
    ) -> Result<Self, TestingError> {
        dispatcher.validate()?;
        ensure_table(outbox.pool(), inbox.table()).await?;
        Ok(Self {
            outbox,
            dispatcher,
            inbox,
        })
    }

    /// The inbox events are recorded in.
    pub fn inbox(&self) -> &Inbox {
        &self.inbox
    }

    /// Delivers one envelope (from [`envelope`](super::envelope), or
    /// [`RecordedEvent::envelope`](super::RecordedEvent) of a published
    /// event). Returns [`InboxOutcome::New`] when the handler ran and its
    /// transaction committed, [`InboxOutcome::AlreadyProcessed`] when the
    /// inbox already held the event and nothing ran.
    ///
    /// A handler error rolls its transaction back (inbox record included)
    /// and is returned as [`TestingError::Handler`].
    pub async fn deliver<T: Serialize>(
        &self,
        envelope: &Envelope<T>,
    ) -> Result<InboxOutcome, TestingError> {
        let json = serde_json::to_vec(envelope).map_err(|e| TestingError::MalformedEnvelope {
            origin: format!("the envelope of event {}", envelope.event_id),
            detail: e.to_string(),
        })?;
        let decoded = self.dispatcher.decode(&json[..])?;
        let info = decoded.info();
        let context = context_of(envelope);
        let mut tx = self
            .outbox
            .transactional_publish_with(context.clone())
            .await?;
        let outcome = self
            .inbox
            .record(&mut tx, info.event_id, &info.event_type, None)
            .await?;
        if outcome == InboxOutcome::AlreadyProcessed {
            tx.rollback().await?;
            return Ok(outcome);
        }
        // Dropping the guard on an error rolls back the inbox record too.
        context
            .scope(decoded.handle(&mut tx))
            .await
            .map_err(|source| TestingError::Handler {
                event_id: info.event_id,
                event_type: info.event_type.clone(),
                source,
            })?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Delivers `envelope` twice and asserts that the handler ran once:
    /// the first delivery is new, the second a duplicate the inbox skips.
    /// Assert the handler's effect (e.g. one row) after it.
    ///
    /// # Panics
    ///
    /// When a delivery fails, when the event was in the inbox before, or
    /// when the second delivery is not recognised as a duplicate.
    #[track_caller]
    pub fn assert_deduplicated<'a, T: Serialize>(
        &'a self,
        envelope: &'a Envelope<T>,
    ) -> impl std::future::Future<Output = ()> + 'a {
        let caller = std::panic::Location::caller();
        async move {
            let outcomes = [self.deliver(envelope).await, self.deliver(envelope).await];
            let context = DeliveryContext {
                event_id: envelope.event_id,
                event_type: &envelope.event_type,
                consumer: self.inbox.consumer(),
            };
            if let Err(message) = context.check_once(outcomes) {
                panic!("{message} (asserted at {caller})");
            }
        }
    }
}

/// What the de-duplication message names.
pub(crate) struct DeliveryContext<'a> {
    pub(crate) event_id: uuid::Uuid,
    pub(crate) event_type: &'a str,
    pub(crate) consumer: &'a str,
}

impl DeliveryContext<'_> {
    /// `Ok` when the outcomes are a first delivery and a skipped duplicate.
    pub(crate) fn check_once(
        &self,
        outcomes: [Result<InboxOutcome, TestingError>; 2],
    ) -> Result<(), String> {
        let Self {
            event_id,
            event_type,
            consumer,
        } = self;
        let [first, second] = outcomes;
        let event = format!("event {event_id} (`{event_type}`) for consumer `{consumer}`");
        match first {
            Err(error) => {
                return Err(format!(
                    "the first delivery of {event} failed: {}",
                    Chain(&error)
                ))
            }
            Ok(InboxOutcome::AlreadyProcessed) => {
                return Err(format!(
                    "the first delivery of {event} was skipped: the inbox already held it; \
                     build a new envelope (a new event id) for each test"
                ))
            }
            Ok(InboxOutcome::New) => {}
        }
        match second {
            Ok(InboxOutcome::AlreadyProcessed) => Ok(()),
            Ok(InboxOutcome::New) => Err(format!(
                "the second delivery of {event} ran the handler again: the inbox did not \
                 keep the first delivery's record"
            )),
            Err(error) => Err(format!(
                "the second delivery of {event} failed: {}",
                Chain(&error)
            )),
        }
    }
}
