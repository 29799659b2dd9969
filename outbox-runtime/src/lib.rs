//! Runtime of the `outbox` framework. Use it through the `outbox` facade
//! crate, which re-exports what a service names.

pub mod asyncapi;
mod columns;
pub mod consume;
mod context;
mod envelope;
mod error;
#[doc(hidden)]
pub mod event;
mod identifier;
mod inbox;
#[cfg(feature = "json-schema")]
#[doc(hidden)]
pub mod json_schema;
mod metrics;
mod migrate;
pub mod ops;
mod publish;
pub mod registry;
pub mod relay;
#[cfg(feature = "testing")]
pub mod testing;
mod topic;
mod wake;

pub use consume::{
    decode, ConsumeError, Consumer, ConsumerConfig, ConsumerError, ConsumerHandle, ConsumerStats,
    Dispatcher,
};
pub use context::PublishContext;
pub use envelope::{Envelope, EnvelopeMetadata};
#[doc(hidden)]
pub use error::Chain;
pub use error::{ConfigError, MigrateError, PublishError, RelayError};
pub use event::{EventRegistration, OutboxEvent};
pub use identifier::SchemaName;
pub use inbox::{Inbox, InboxError, InboxOutcome, INBOX_TABLE};
pub use metrics::OutboxMetrics;
pub use migrate::{migrate, migrate_in_schema, MIGRATOR};
/// The `prometheus-client` crate [`OutboxMetrics`] is built on: create the
/// [`Registry`](prometheus_client::registry::Registry) with it to be sure the
/// versions match.
pub use prometheus_client;
pub use publish::{EventBatch, Outbox, OutboxBuilder, TransactionalPublish, DEFAULT_NOTIFY_WINDOW};
/// The `rdkafka` crate the relay and consumers are built on: build their
/// [`ClientConfig`](rdkafka::ClientConfig) with it to be sure the versions
/// match.
pub use rdkafka;
pub use relay::{Relay, RelayConfig, RelayHandle};
pub use topic::{create_registry_topics, create_topics, validate_topic_name, TopicError};
