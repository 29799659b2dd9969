//! Runtime of the `outbox` framework. Use it through the `outbox` facade
//! crate, which re-exports everything here.

pub mod admin;
pub mod asyncapi;
pub mod context;
pub mod envelope;
pub mod error;
pub mod event;
pub mod handle;
pub mod identifier;
#[cfg(feature = "json-schema")]
pub mod json_schema;
pub mod migrate;
pub mod publish;
pub mod registry;
pub mod relay;
pub mod topic;
mod wake;

pub use context::PublishContext;
pub use envelope::{Envelope, EnvelopeMetadata};
pub use error::{ConfigError, MigrateError, PublishError, RelayError};
pub use event::{EventRegistration, OutboxEvent};
pub use handle::{Outbox, OutboxBuilder};
pub use identifier::SchemaName;
pub use migrate::{migrate, migrate_in_schema, MIGRATOR};
pub use publish::{EventBatch, TransactionalPublish};
pub use relay::{
    DeadEventPolicy, Relay, RelayConfig, RelayCounters, RelayHandle, RelayStats, Retention,
};
pub use topic::{create_registry_topics, create_topics, validate_topic_name, TopicError};
