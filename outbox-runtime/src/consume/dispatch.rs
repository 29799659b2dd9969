//! Routing decoded events to typed handlers by event type.

use super::decode::{decode_raw, into_typed, RawMessage};
use super::error::{ConsumeError, DispatcherError, HandlerError, MessageLocation};
use crate::event::EventRegistration;
use crate::{Envelope, EnvelopeMetadata, OutboxEvent, PublishContext, TransactionalPublish};
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// The future a handler returns: `Box::pin(async move { ... })`.
pub type HandlerFuture<'a> = BoxFuture<'a, Result<(), HandlerError>>;

/// Handlers keyed by event type, each receiving its own Rust type.
///
/// A handler gets the decoded envelope and the consumer's
/// [`TransactionalPublish`] guard: run business queries through `&mut **tx`,
/// publish follow-up events with `tx.publish(..)`; the consumer loop commits
/// the transaction (with the inbox record) after the handler returns `Ok`.
///
/// ```
/// use outbox::consume::Dispatcher;
/// use outbox::OutboxEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, OutboxEvent)]
/// #[outbox_event(topic = "essay.spellcheck.completed.v1", aggregate = "essay")]
/// struct SpellcheckCompletedV1 {
///     #[outbox_event(aggregate_id)]
///     essay_id: String,
///     errors: i32,
/// }
///
/// let dispatcher = Dispatcher::new().register::<SpellcheckCompletedV1>(|event, tx| {
///     Box::pin(async move {
///         sqlx::query("UPDATE essays SET errors = $2 WHERE id = $1")
///             .bind(&event.data.essay_id)
///             .bind(event.data.errors)
///             .execute(&mut **tx)
///             .await?;
///         Ok(())
///     })
/// });
/// assert_eq!(dispatcher.event_types(), ["SpellcheckCompletedV1"]);
/// assert_eq!(dispatcher.topics(""), ["essay.spellcheck.completed.v1"]);
/// ```
#[derive(Default)]
pub struct Dispatcher {
    handlers: BTreeMap<&'static str, Arc<dyn ErasedHandler>>,
    conflicts: Vec<DispatcherError>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("event_types", &self.event_types())
            .field("conflicts", &self.conflicts)
            .finish()
    }
}

impl Dispatcher {
    /// A dispatcher without handlers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `handler` for the event type of `T`, as the registry knows
    /// it (event type name and version). A second handler for the same event
    /// type is reported by [`validate`](Self::validate) (and so by
    /// [`Consumer::new`](crate::consume::Consumer::new)).
    pub fn register<T>(
        self,
        handler: impl for<'a> Fn(&'a Envelope<T>, &'a mut TransactionalPublish<'static>) -> HandlerFuture<'a>
            + Send
            + Sync
            + 'static,
    ) -> Self
    where
        T: OutboxEvent + DeserializeOwned + Send + Sync,
    {
        self.insert::<T>(Handler::One(Arc::new(handler)))
    }

    /// Registers `handler` for the event type of `T`, called with every new
    /// event of that type in a run of consecutive messages of one
    /// partition (in partition order), for handlers that apply many events
    /// in one statement. The inbox semantics are those of
    /// [`register`](Self::register): redeliveries are left out, and the
    /// events' inbox rows commit with the handler's writes.
    ///
    /// Follow-up events published by the handler carry the first event's
    /// correlation id and trace context; call
    /// [`tx.set_context(context_of(event))`](TransactionalPublish::set_context)
    /// before publishing one event's follow-ups to give them its own. When
    /// a batch fails, each event is handled again on its own, in a slice of
    /// one.
    ///
    /// ```
    /// use outbox::consume::{context_of, Dispatcher};
    /// use outbox::OutboxEvent;
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Serialize, Deserialize, OutboxEvent)]
    /// #[outbox_event(topic = "essay.scored.v1", aggregate = "essay")]
    /// struct EssayScoredV1 {
    ///     #[outbox_event(aggregate_id)]
    ///     essay_id: String,
    ///     score: i32,
    /// }
    ///
    /// let dispatcher = Dispatcher::new().register_batch::<EssayScoredV1>(|events, tx| {
    ///     Box::pin(async move {
    ///         let ids: Vec<&str> = events.iter().map(|e| e.data.essay_id.as_str()).collect();
    ///         let scores: Vec<i32> = events.iter().map(|e| e.data.score).collect();
    ///         sqlx::query("INSERT INTO scores (essay_id, score) SELECT * FROM unnest($1::text[], $2::int4[])")
    ///             .bind(&ids)
    ///             .bind(&scores)
    ///             .execute(&mut **tx)
    ///             .await?;
    ///         for event in events {
    ///             tx.set_context(context_of(event)); // follow-ups keep each event's correlation id
    ///         }
    ///         Ok(())
    ///     })
    /// });
    /// assert_eq!(dispatcher.event_types(), ["EssayScoredV1"]);
    /// ```
    pub fn register_batch<T>(
        self,
        handler: impl for<'a> Fn(
                &'a [Envelope<T>],
                &'a mut TransactionalPublish<'static>,
            ) -> HandlerFuture<'a>
            + Send
            + Sync
            + 'static,
    ) -> Self
    where
        T: OutboxEvent + DeserializeOwned + Send + Sync,
    {
        self.insert::<T>(Handler::Many(Arc::new(handler)))
    }

    fn insert<T>(mut self, handler: Handler<T>) -> Self
    where
        T: OutboxEvent + DeserializeOwned + Send + Sync,
    {
        let registration = crate::registry::of::<T>();
        let erased: Arc<dyn ErasedHandler> = Arc::new(Typed::<T> {
            registration,
            handler,
        });
        if let Some(first) = self.handlers.get(registration.event_type) {
            self.conflicts.push(DispatcherError::DuplicateHandler {
                event_type: registration.event_type,
                first: first.registration().rust_type,
                second: registration.rust_type,
            });
            return self;
        }
        self.handlers.insert(registration.event_type, erased);
        self
    }

    /// Reports duplicate registrations and an empty dispatcher.
    pub fn validate(&self) -> Result<(), DispatcherError> {
        if let Some(conflict) = self.conflicts.first() {
            return Err(conflict.clone());
        }
        if self.handlers.is_empty() {
            return Err(DispatcherError::Empty);
        }
        Ok(())
    }

    /// The event types with a handler, sorted.
    pub fn event_types(&self) -> Vec<&'static str> {
        self.handlers.keys().copied().collect()
    }

    /// The topics of the handled event types with `prefix` prepended (as
    /// the relay's `topic_prefix` does), sorted and without duplicates: what
    /// a consumer subscribes to by default.
    pub fn topics(&self, prefix: &str) -> Vec<String> {
        let mut topics: Vec<String> = self
            .handlers
            .values()
            .map(|h| format!("{prefix}{}", h.registration().topic))
            .collect();
        topics.sort();
        topics.dedup();
        topics
    }

    /// Decodes `message` into the Rust type registered for its event type,
    /// ready to be [handled](DecodedEvent::handle).
    ///
    /// Fails with [`ConsumeError::MalformedEnvelope`],
    /// [`UnknownEventType`](ConsumeError::UnknownEventType),
    /// [`VersionMismatch`](ConsumeError::VersionMismatch) or
    /// [`MalformedPayload`](ConsumeError::MalformedPayload).
    pub fn decode(
        &self,
        message: &(impl RawMessage + ?Sized),
    ) -> Result<DecodedEvent, ConsumeError> {
        let raw = decode_raw(message)?;
        let location = message.location();
        let Some(handler) = self.handlers.get(raw.event_type.as_str()) else {
            return Err(ConsumeError::UnknownEventType {
                known: self.event_types().join(", "),
                event_type: raw.event_type,
                event_id: raw.event_id,
                location,
            });
        };
        let info = EventInfo {
            event_id: raw.event_id,
            event_type: raw.event_type.clone(),
            correlation_id: raw.correlation_id,
            aggregate_type: raw.aggregate_type.clone(),
            aggregate_id: raw.aggregate_id.clone(),
            metadata: raw.metadata.clone(),
            location: location.clone(),
        };
        let typed = handler.decode(raw, location)?;
        Ok(DecodedEvent {
            info,
            typed,
            handler: handler.clone(),
        })
    }
}

/// The context follow-up events of `envelope` are published with: its
/// correlation id and trace context. The consumer loop sets it before each
/// handler; a [batch handler](Dispatcher::register_batch) sets it per
/// event with [`TransactionalPublish::set_context`].
///
/// ```
/// use outbox::consume::context_of;
/// use outbox::{Envelope, EnvelopeMetadata};
/// use uuid::Uuid;
///
/// let envelope = Envelope {
///     event_id: Uuid::now_v7(),
///     event_type: "EssayScoredV1".into(),
///     version: 1,
///     event_timestamp: chrono::Utc::now(),
///     source_service: "grader".into(),
///     correlation_id: Uuid::new_v4(),
///     aggregate_type: "essay".into(),
///     aggregate_id: "e-1".into(),
///     data: (),
///     metadata: EnvelopeMetadata::default(),
/// };
/// assert_eq!(context_of(&envelope).correlation_id, Some(envelope.correlation_id));
/// ```
pub fn context_of<T>(envelope: &Envelope<T>) -> PublishContext {
    publish_context(envelope.correlation_id, &envelope.metadata)
}

fn publish_context(correlation_id: Uuid, metadata: &EnvelopeMetadata) -> PublishContext {
    PublishContext {
        correlation_id: Some(correlation_id),
        traceparent: metadata.traceparent.clone(),
        tracestate: metadata.tracestate.clone(),
    }
}

/// What is known about a decoded event, whatever its type.
#[derive(Debug, Clone, PartialEq)]
pub struct EventInfo {
    /// The event id (inbox key).
    pub event_id: Uuid,
    /// The event type.
    pub event_type: String,
    /// The correlation id; follow-up events published by the handler carry it.
    pub correlation_id: Uuid,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Trace context and other metadata.
    pub metadata: EnvelopeMetadata,
    /// Where the message came from, for Kafka messages.
    pub location: Option<MessageLocation>,
}

/// An event decoded into its registered Rust type, with its handler.
pub struct DecodedEvent {
    info: EventInfo,
    typed: Box<dyn TypedEvent>,
    handler: Arc<dyn ErasedHandler>,
}

impl std::fmt::Debug for DecodedEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedEvent")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl DecodedEvent {
    /// Event id, type, correlation id and location.
    pub fn info(&self) -> &EventInfo {
        &self.info
    }

    /// Runs the registered handler inside `tx`. It may be called again
    /// (with a new transaction) after a failure.
    pub fn handle<'a>(&'a self, tx: &'a mut TransactionalPublish<'static>) -> HandlerFuture<'a> {
        self.typed.handle(tx)
    }

    /// The context its handler publishes follow-up events with.
    pub(crate) fn context(&self) -> PublishContext {
        publish_context(self.info.correlation_id, &self.info.metadata)
    }

    /// Whether its handler takes many events at once.
    pub(crate) fn takes_batches(&self) -> bool {
        self.typed.takes_batches()
    }
}

/// Runs the batch handler of `events` (all of one event type with a
/// batch handler) once for all of them; consumes them.
pub(crate) fn handle_run<'a>(
    events: Vec<DecodedEvent>,
    tx: &'a mut TransactionalPublish<'static>,
) -> HandlerFuture<'a> {
    let Some(first) = events.first() else {
        return Box::pin(async { Ok(()) });
    };
    let handler = first.handler.clone();
    let envelopes: Vec<Box<dyn Any + Send>> =
        events.into_iter().map(|e| e.typed.into_any()).collect();
    handler.handle_many(envelopes, tx)
}

type HandlerFn<T> = dyn for<'a> Fn(&'a Envelope<T>, &'a mut TransactionalPublish<'static>) -> HandlerFuture<'a>
    + Send
    + Sync;

type BatchHandlerFn<T> = dyn for<'a> Fn(&'a [Envelope<T>], &'a mut TransactionalPublish<'static>) -> HandlerFuture<'a>
    + Send
    + Sync;

enum Handler<T: 'static> {
    One(Arc<HandlerFn<T>>),
    Many(Arc<BatchHandlerFn<T>>),
}

impl<T> Clone for Handler<T> {
    fn clone(&self) -> Self {
        match self {
            Self::One(f) => Self::One(f.clone()),
            Self::Many(f) => Self::Many(f.clone()),
        }
    }
}

trait ErasedHandler: Send + Sync {
    fn registration(&self) -> &'static EventRegistration;
    fn decode(
        &self,
        raw: Envelope<serde_json::Value>,
        location: Option<MessageLocation>,
    ) -> Result<Box<dyn TypedEvent>, ConsumeError>;
    /// `envelopes` are the `Envelope<T>`s of [`TypedEvent::into_any`].
    fn handle_many<'a>(
        &self,
        envelopes: Vec<Box<dyn Any + Send>>,
        tx: &'a mut TransactionalPublish<'static>,
    ) -> HandlerFuture<'a>;
}

trait TypedEvent: Send + Sync {
    fn handle<'a>(&'a self, tx: &'a mut TransactionalPublish<'static>) -> HandlerFuture<'a>;
    fn takes_batches(&self) -> bool;
    fn into_any(self: Box<Self>) -> Box<dyn Any + Send>;
}

struct Typed<T: 'static> {
    registration: &'static EventRegistration,
    handler: Handler<T>,
}

impl<T> ErasedHandler for Typed<T>
where
    T: DeserializeOwned + Send + Sync + 'static,
{
    fn registration(&self) -> &'static EventRegistration {
        self.registration
    }

    fn decode(
        &self,
        raw: Envelope<serde_json::Value>,
        location: Option<MessageLocation>,
    ) -> Result<Box<dyn TypedEvent>, ConsumeError> {
        let envelope = into_typed::<T>(raw, self.registration, location)?;
        Ok(Box::new(Ready {
            envelope,
            handler: self.handler.clone(),
        }))
    }

    fn handle_many<'a>(
        &self,
        envelopes: Vec<Box<dyn Any + Send>>,
        tx: &'a mut TransactionalPublish<'static>,
    ) -> HandlerFuture<'a> {
        let mut typed: Vec<Envelope<T>> = Vec::with_capacity(envelopes.len());
        for envelope in envelopes {
            match envelope.downcast::<Envelope<T>>() {
                Ok(envelope) => typed.push(*envelope),
                Err(_) => {
                    let rust_type = self.registration.rust_type;
                    return Box::pin(async move {
                        Err(
                            format!("a batch for `{rust_type}` held an event of another type")
                                .into(),
                        )
                    });
                }
            }
        }
        match &self.handler {
            Handler::Many(handler) => {
                let handler = handler.clone();
                Box::pin(async move { handler(&typed, tx).await })
            }
            Handler::One(handler) => {
                let handler = handler.clone();
                Box::pin(async move {
                    for envelope in &typed {
                        handler(envelope, tx).await?;
                    }
                    Ok(())
                })
            }
        }
    }
}

struct Ready<T: 'static> {
    envelope: Envelope<T>,
    handler: Handler<T>,
}

impl<T: Send + Sync + 'static> TypedEvent for Ready<T> {
    fn handle<'a>(&'a self, tx: &'a mut TransactionalPublish<'static>) -> HandlerFuture<'a> {
        match &self.handler {
            Handler::One(handler) => handler(&self.envelope, tx),
            Handler::Many(handler) => handler(std::slice::from_ref(&self.envelope), tx),
        }
    }

    fn takes_batches(&self) -> bool {
        matches!(self.handler, Handler::Many(_))
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any + Send> {
        Box::new(self.envelope)
    }
}
