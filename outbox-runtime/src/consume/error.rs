//! Typed errors of the consumer side.

use crate::error::ConfigError;
use crate::registry::RegistryError;
use std::fmt;
use uuid::Uuid;

/// The error a handler returns: any error type, boxed.
///
/// `?` converts `sqlx::Error`, [`PublishError`](crate::PublishError),
/// [`InboxError`](crate::InboxError) and your own error types into it.
/// Wrap an error in [`Permanent`] to skip the remaining retries and send the
/// message to the dead-letter topic at once.
pub type HandlerError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where a consumed message came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageLocation {
    /// The topic the message was read from (with any prefix).
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
}

impl fmt::Display for MessageLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "topic `{}` partition {} offset {}",
            self.topic, self.partition, self.offset
        )
    }
}

fn at(location: &Option<MessageLocation>) -> String {
    match location {
        Some(l) => format!(" (at {l})"),
        None => String::new(),
    }
}

fn id(event_id: &Option<Uuid>) -> String {
    match event_id {
        Some(id) => format!(" {id}"),
        None => String::new(),
    }
}

/// Why one consumed message could not be decoded or handled.
///
/// Every variant carries what is known about the message (event id, topic,
/// partition, offset). Decode errors ([`is_decode_error`](Self::is_decode_error))
/// can never succeed on a retry, so the consumer loop sends them to the
/// dead-letter topic at once; [`Handler`](Self::Handler) errors are sent
/// there after the retries are exhausted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumeError {
    /// The message value is not an outbox envelope (not JSON, not an
    /// object, or lacking required fields such as `event_id` or `data`).
    #[error(
        "message{}{} is not a valid outbox envelope: {detail}; the value must be the JSON \
         envelope described in docs/reference/envelope.md, as the outbox relay produces it",
        id(.event_id), at(.location)
    )]
    MalformedEnvelope {
        /// What is wrong with it.
        detail: String,
        /// The event id from the `event_id` header, when present.
        event_id: Option<Uuid>,
        /// Where the message came from.
        location: Option<MessageLocation>,
    },
    /// No handler (or no Rust type) is registered for the envelope's
    /// `event_type`.
    #[error(
        "no handler is registered for event type `{event_type}` (event {event_id}{}); known: \
         [{known}]; register one with `Dispatcher::register::<{event_type}>(..)`, or stop \
         subscribing to the topic that carries it",
        at(.location)
    )]
    UnknownEventType {
        /// The envelope's event type.
        event_type: String,
        /// Event types this dispatcher handles, comma separated.
        known: String,
        /// The event id.
        event_id: Uuid,
        /// Where the message came from.
        location: Option<MessageLocation>,
    },
    /// [`decode`](crate::consume::decode) was asked for one type but the
    /// envelope holds another.
    #[error(
        "event {event_id}{} has type `{found}`, not the requested `{expected}`; decode it as \
         its own type or dispatch on the event type with `Dispatcher`",
        at(.location)
    )]
    UnexpectedEventType {
        /// The type that was asked for.
        expected: &'static str,
        /// The envelope's event type.
        found: String,
        /// The event id.
        event_id: Uuid,
        /// Where the message came from.
        location: Option<MessageLocation>,
    },
    /// The envelope's schema `version` differs from the registered version
    /// of the Rust type.
    #[error(
        "event {event_id}{} of type `{event_type}` has version {found}, but this consumer's \
         type has version {expected}; deploy a consumer that knows version {found}, or \
         publish the new version under a new event type",
        at(.location)
    )]
    VersionMismatch {
        /// The event type.
        event_type: String,
        /// The version the registered Rust type declares.
        expected: u32,
        /// The version in the envelope.
        found: u32,
        /// The event id.
        event_id: Uuid,
        /// Where the message came from.
        location: Option<MessageLocation>,
    },
    /// The envelope is fine but its `data` does not deserialize into the
    /// registered Rust type.
    #[error(
        "the data of event {event_id}{} (type `{event_type}`) does not deserialize into \
         `{rust_type}`; the producer and this consumer disagree on the schema",
        at(.location)
    )]
    MalformedPayload {
        /// The event type.
        event_type: String,
        /// The Rust type it was decoded into.
        rust_type: &'static str,
        /// The event id.
        event_id: Uuid,
        /// Where the message came from.
        location: Option<MessageLocation>,
        /// serde_json's error.
        #[source]
        source: serde_json::Error,
    },
    /// The handler failed on every attempt (or returned a [`Permanent`] error).
    #[error(
        "the handler of event {event_id}{} (type `{event_type}`) failed after {attempts} \
         attempt(s)",
        at(.location)
    )]
    Handler {
        /// The event type.
        event_type: String,
        /// The event id.
        event_id: Uuid,
        /// Where the message came from.
        location: Option<MessageLocation>,
        /// How many times the handler ran.
        attempts: u32,
        /// The last error the handler returned.
        #[source]
        source: HandlerError,
    },
}

impl ConsumeError {
    /// A short, stable name of the variant, e.g. `unknown_event_type`; the
    /// consumer loop writes it into the `dlq_error_kind` header.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::MalformedEnvelope { .. } => "malformed_envelope",
            Self::UnknownEventType { .. } => "unknown_event_type",
            Self::UnexpectedEventType { .. } => "unexpected_event_type",
            Self::VersionMismatch { .. } => "version_mismatch",
            Self::MalformedPayload { .. } => "malformed_payload",
            Self::Handler { .. } => "handler_failed",
        }
    }

    /// Whether the message itself is at fault (retrying cannot help).
    pub fn is_decode_error(&self) -> bool {
        !matches!(self, Self::Handler { .. })
    }

    /// The event id, when it is known.
    pub fn event_id(&self) -> Option<Uuid> {
        match self {
            Self::MalformedEnvelope { event_id, .. } => *event_id,
            Self::UnknownEventType { event_id, .. }
            | Self::UnexpectedEventType { event_id, .. }
            | Self::VersionMismatch { event_id, .. }
            | Self::MalformedPayload { event_id, .. }
            | Self::Handler { event_id, .. } => Some(*event_id),
        }
    }

    /// Where the message came from, when it came from Kafka.
    pub fn location(&self) -> Option<&MessageLocation> {
        match self {
            Self::MalformedEnvelope { location, .. }
            | Self::UnknownEventType { location, .. }
            | Self::UnexpectedEventType { location, .. }
            | Self::VersionMismatch { location, .. }
            | Self::MalformedPayload { location, .. }
            | Self::Handler { location, .. } => location.as_ref(),
        }
    }
}

/// Marks a handler error as permanent: the consumer loop does not retry it
/// and sends the message to the dead-letter topic at once.
///
/// ```
/// use outbox::consume::{HandlerError, Permanent};
///
/// fn check(score: i32) -> Result<(), HandlerError> {
///     if score < 0 {
///         return Err(Permanent::new(format!("negative score {score}")).into());
///     }
///     Ok(())
/// }
/// let err = check(-1).unwrap_err();
/// assert!(Permanent::is_permanent(&err));
/// ```
#[derive(Debug, thiserror::Error)]
#[error("the handler failed permanently (not retried)")]
pub struct Permanent(#[source] pub HandlerError);

impl Permanent {
    /// Wraps any error.
    pub fn new(error: impl Into<HandlerError>) -> Self {
        Self(error.into())
    }

    /// Whether `error` is a [`Permanent`] error.
    pub fn is_permanent(error: &HandlerError) -> bool {
        error.downcast_ref::<Permanent>().is_some()
    }
}

/// Why a [`Dispatcher`](crate::consume::Dispatcher) is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DispatcherError {
    /// Two handlers were registered for one event type.
    #[error(
        "event type `{event_type}` has two handlers (Rust types `{first}` and `{second}`); \
         register exactly one handler per event type"
    )]
    DuplicateHandler {
        /// The event type.
        event_type: &'static str,
        /// Rust type of the first registration.
        first: &'static str,
        /// Rust type of the second registration.
        second: &'static str,
    },
    /// The dispatcher has no handlers, so it could only dead-letter.
    #[error("the dispatcher has no handlers; register at least one with `Dispatcher::register::<T>(..)`")]
    Empty,
}

/// Why a [`Consumer`](crate::consume::Consumer) could not start or ended
/// abnormally.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConsumerError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The dispatcher is invalid.
    #[error(transparent)]
    Dispatcher(#[from] DispatcherError),
    /// The compile-time registry has conflicting registrations.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The inbox table does not exist.
    #[error(
        "the inbox table `{table}` does not exist in this database; run the migrations first \
         (`outbox::migrate(&pool)` in code or `outbox migrate` from the CLI), or disable the \
         inbox with `ConsumerConfig::inbox = None`"
    )]
    MissingInboxTable {
        /// Qualified table name that was looked up.
        table: String,
    },
    /// A database statement failed at start-up.
    #[error("consumer database error while {action}")]
    Database {
        /// What the consumer was doing.
        action: &'static str,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// A Kafka client could not be created or subscribed.
    #[error("could not {action}; check the rdkafka ClientConfig and the topic names")]
    Kafka {
        /// What failed.
        action: &'static str,
        /// rdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Another live member of the group joined with this consumer's
    /// `group.instance.id`; the broker fenced this one out.
    #[error(
        "another member of consumer group `{group_id}` uses group instance id \
         `{group_instance_id}`, so the broker fenced this consumer; give each live member its \
         own `ConsumerConfig::group_instance_id` (e.g. the pod name), or none for dynamic \
         membership"
    )]
    FencedInstance {
        /// The consumer group.
        group_id: String,
        /// The instance id two members used.
        group_instance_id: String,
    },
    /// librdkafka declared the consumer unusable.
    #[error(
        "the Kafka consumer of group `{group_id}` failed fatally: {reason}; restart the \
         service (uncommitted messages are redelivered and skipped by the inbox)"
    )]
    Fatal {
        /// The consumer group.
        group_id: String,
        /// librdkafka's reason.
        reason: String,
    },
    /// The consumer task panicked or was aborted.
    #[error("the consumer task ended abnormally: {0}")]
    Task(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_location_and_the_fix() {
        let err = ConsumeError::UnknownEventType {
            event_type: "NoSuchEventV1".into(),
            known: "A, B".into(),
            event_id: Uuid::nil(),
            location: Some(MessageLocation {
                topic: "t".into(),
                partition: 2,
                offset: 41,
            }),
        };
        let text = err.to_string();
        assert!(text.contains("topic `t` partition 2 offset 41"), "{text}");
        assert!(text.contains("Dispatcher::register"), "{text}");
        assert_eq!(err.kind(), "unknown_event_type");
        assert!(err.is_decode_error());
        let err = ConsumeError::MalformedEnvelope {
            detail: "expected value at line 1 column 1".into(),
            event_id: None,
            location: None,
        };
        assert!(
            err.to_string().starts_with("message is not a valid"),
            "{err}"
        );
    }

    #[test]
    fn a_fenced_instance_names_the_id_and_the_fix() {
        let err = ConsumerError::FencedInstance {
            group_id: "scorer".into(),
            group_instance_id: "pod-0".into(),
        };
        let text = err.to_string();
        assert!(
            text.contains("`pod-0`") && text.contains("`scorer`"),
            "{text}"
        );
        assert!(text.contains("group_instance_id"), "{text}");
    }

    #[test]
    fn permanent_is_detected_through_the_box() {
        let err: HandlerError = Permanent::new("bad input").into();
        assert!(Permanent::is_permanent(&err));
        let other: HandlerError = "transient".into();
        assert!(!Permanent::is_permanent(&other));
    }
}
