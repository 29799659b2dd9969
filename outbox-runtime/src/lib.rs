//! Runtime of the `outbox` framework. Use it through the `outbox` facade
//! crate, which re-exports everything here.

pub mod admin;
pub mod asyncapi;
mod columns;
pub mod consume;
pub mod context;
pub mod envelope;
pub mod error;
pub mod event;
pub mod handle;
pub mod health;
pub mod identifier;
pub mod inbox;
#[cfg(feature = "json-schema")]
pub mod json_schema;
pub mod metrics;
pub mod migrate;
pub mod ops_http;
pub mod publish;
pub mod registry;
pub mod relay;
pub mod stats_query;
pub mod topic;
mod wake;

pub use consume::{
    decode, ConsumeError, Consumer, ConsumerConfig, ConsumerError, ConsumerHandle, ConsumerStats,
    Dispatcher,
};
pub use context::PublishContext;
pub use envelope::{Envelope, EnvelopeMetadata};
pub use error::{ConfigError, MigrateError, PublishError, RelayError};
pub use event::{EventRegistration, OutboxEvent};
pub use handle::{Outbox, OutboxBuilder};
pub use health::{HealthConfig, HealthProbe, HealthReport};
pub use identifier::SchemaName;
pub use inbox::{Inbox, InboxError, InboxOutcome};
pub use metrics::OutboxMetrics;
pub use migrate::{migrate, migrate_in_schema, MIGRATOR};
pub use ops_http::ops_router;
/// The `prometheus-client` crate [`OutboxMetrics`] is built on: create the
/// [`Registry`](prometheus_client::registry::Registry) with it to be sure the
/// versions match.
pub use prometheus_client;
pub use publish::{EventBatch, TransactionalPublish};
pub use relay::{
    DeadEventPolicy, Relay, RelayConfig, RelayCounters, RelayHandle, RelayStats, Retention,
};
pub use stats_query::{
    queue_stats, queue_summary, QueueStats, QueueSummary, StatsError, TopicStats,
};
pub use topic::{create_registry_topics, create_topics, validate_topic_name, TopicError};
