//! The test kit's typed errors; every message names the fix.

use crate::consume::{ConsumeError, DispatcherError, HandlerError};
use crate::{ConfigError, InboxError, MigrateError, PublishError, RelayError};
use std::time::Duration;
use uuid::Uuid;

/// Why a test-kit call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestingError {
    /// The Rust type is not in the event registry: its `OutboxEvent` impl
    /// was written by hand and never submitted.
    #[error(
        "`{rust_type}` (event type `{event_type}`) is not in the outbox event registry; \
         derive `OutboxEvent` for it, or submit its `EventRegistration` with \
         `inventory::submit!`; registered event types: [{registered}]"
    )]
    NotRegistered {
        /// The Rust type asked for.
        rust_type: &'static str,
        /// The event type its `OutboxEvent` impl declares.
        event_type: &'static str,
        /// The registered event types, comma separated.
        registered: String,
    },
    /// A table the kit reads does not exist: the schema was not migrated.
    #[error(
        "the table `{table}` does not exist; migrate the test database first: \
         `#[sqlx::test(migrator = \"outbox::MIGRATOR\")]` or `outbox::migrate(&pool)`, or for \
         a custom schema `outbox::testing::migrate_schema(&pool, \"...\")` and then \
         `Mark::take_in`, `Published::all_in` or `Inbox::schema` with that schema"
    )]
    MissingTable {
        /// The (possibly schema-qualified) table name.
        table: String,
    },
    /// A stored or produced value is not an outbox envelope.
    #[error(
        "{origin} is not a valid outbox envelope: {detail}; the outbox stores and the relay \
         produces the JSON envelope of docs/envelope.md"
    )]
    MalformedEnvelope {
        /// Where the value was found, e.g. `outbox row seq 12`.
        origin: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The event's data no longer deserializes into the Rust type asked for.
    #[error(
        "event {event_id} of type `{event_type}` does not decode into `{rust_type}`: \
         {serde_error}; the type changed since the event was published, or the test asked \
         for the wrong type"
    )]
    Undecodable {
        /// The event id.
        event_id: Uuid,
        /// The event type.
        event_type: String,
        /// The Rust type asked for.
        rust_type: &'static str,
        /// serde's error.
        serde_error: serde_json::Error,
    },
    /// The event's schema version differs from the Rust type's.
    #[error(
        "event {event_id} of type `{event_type}` has version {found}, but `{rust_type}` is \
         version {expected}; ask for the type of that version"
    )]
    VersionMismatch {
        /// The event id.
        event_id: Uuid,
        /// The event type.
        event_type: String,
        /// The Rust type asked for.
        rust_type: &'static str,
        /// The version the Rust type declares.
        expected: u32,
        /// The version the event carries.
        found: u32,
    },
    /// An event could not be serialized into its envelope.
    #[error(
        "could not serialize `{rust_type}` (event type `{event_type}`) into its envelope: \
         {serde_error}; fix the type's `Serialize` implementation"
    )]
    Serialize {
        /// The Rust type.
        rust_type: &'static str,
        /// Its event type.
        event_type: &'static str,
        /// serde's error.
        serde_error: serde_json::Error,
    },
    /// Fewer messages than awaited reached the mock broker in time.
    #[error(
        "{arrived} of the {expected} awaited messages reached the mock broker within \
         {within:?}; is a relay running against it (`MockBroker::spawn_relay`), and were \
         the events committed?{listing}"
    )]
    NotProduced {
        /// Messages awaited.
        expected: usize,
        /// Messages that arrived.
        arrived: usize,
        /// How long the kit waited.
        within: Duration,
        /// The messages that arrived, one per line.
        listing: String,
    },
    /// A consumer handler returned an error.
    #[error("the handler of `{event_type}` failed on event {event_id}")]
    Handler {
        /// The event id.
        event_id: Uuid,
        /// The event type.
        event_type: String,
        /// The handler's error.
        #[source]
        source: HandlerError,
    },
    /// A database statement of the kit failed.
    #[error("test kit database error while {action}")]
    Database {
        /// What the kit was doing.
        action: &'static str,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
    /// The mock cluster or a client of it failed.
    #[error("mock Kafka cluster error while {action}")]
    Kafka {
        /// What the kit was doing.
        action: &'static str,
        /// rdkafka's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// An invalid schema name.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Migrating a test schema failed.
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    /// Starting the relay failed.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// Beginning or committing a handler's transaction failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Recording an event in the inbox failed.
    #[error(transparent)]
    Inbox(#[from] InboxError),
    /// The dispatcher is empty or has two handlers for one event type.
    #[error(transparent)]
    Dispatcher(#[from] DispatcherError),
    /// The dispatcher could not decode an envelope.
    #[error(transparent)]
    Consume(#[from] ConsumeError),
}

impl TestingError {
    pub(crate) fn db(action: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database { action, source }
    }

    pub(crate) fn kafka(action: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        move |source| Self::Kafka { action, source }
    }
}
