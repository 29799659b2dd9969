#![doc = include_str!("../docs/crate.md")]
#![deny(missing_docs)]

extern crate self as outbox;

// Declaring and publishing events.
pub use outbox_macros::OutboxEvent;
pub use outbox_runtime::{
    EventBatch, EventRegistration, Outbox, OutboxBuilder, OutboxEvent, PublishContext, SchemaName,
    TransactionalPublish,
};
// What consumers receive.
pub use outbox_runtime::{Envelope, EnvelopeMetadata};
// Schema.
pub use outbox_runtime::{migrate, migrate_in_schema, MIGRATOR};
// Delivering.
pub use outbox_runtime::{Relay, RelayConfig, RelayHandle};
// Consuming.
pub use outbox_runtime::{Consumer, ConsumerConfig, Inbox};
// Errors.
pub use outbox_runtime::{
    ConfigError, ConsumeError, ConsumerError, InboxError, MigrateError, PublishError, RelayError,
};
// Metrics, shared by publishers, the relay and consumers.
pub use outbox_runtime::{prometheus_client, OutboxMetrics};
// The Kafka client the relay and consumers take their settings from.
pub use outbox_runtime::rdkafka;

pub mod consume;
pub mod ops;
pub mod registry;
pub mod relay;

#[cfg(feature = "cli")]
pub mod cli;

#[cfg(feature = "testing")]
pub use outbox_runtime::testing;

#[doc(hidden)]
pub mod __private;

/// The README's Rust blocks, compiled as doctests so they cannot go stale.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
