//! Running an outbox in production: queue depth and age, the relay's health,
//! metrics, topics, and handling dead events.
//!
//! See `docs/guide/operations.md`.

pub use outbox_runtime::ops::health::{
    check as health_check, HealthConfig, HealthProbe, HealthReport,
};
pub use outbox_runtime::ops::queue_stats::{
    queue_stats, queue_summary, QueueStats, QueueSummary, StatsError, TopicStats,
};
pub use outbox_runtime::{
    create_registry_topics, create_topics, prometheus_client, validate_topic_name, OutboxMetrics,
    TopicError,
};

/// Listing, inspecting, retrying, releasing and purging events by hand.
pub mod admin {
    pub use outbox_runtime::ops::admin::*;
}

/// `GET /metrics` and `GET /health` as an axum router (feature `http`).
#[cfg(feature = "http")]
pub mod http {
    pub use outbox_runtime::ops::http::*;
}
