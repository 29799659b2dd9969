//! The compile-time registry of event types: every `#[derive(OutboxEvent)]`
//! linked into the binary, with its topic, aggregate and key, and its
//! AsyncAPI export.
//!
//! ```
//! use outbox::{registry, OutboxEvent};
//! use serde::Serialize;
//!
//! #[derive(Serialize, OutboxEvent)]
//! #[outbox_event(topic = "batches.batch-registered.v1", aggregate = "batch")]
//! struct BatchRegisteredV1 {
//!     #[outbox_event(aggregate_id)]
//!     batch_id: String,
//! }
//!
//! let by_name = registry::by_event_type("BatchRegisteredV1").unwrap();
//! assert_eq!(by_name.topic, "batches.batch-registered.v1");
//! assert_eq!(registry::of::<BatchRegisteredV1>().aggregate_type, "batch");
//! registry::validate().unwrap();
//! ```

pub use outbox_runtime::registry::*;
pub use outbox_runtime::EventRegistration;

/// The registry as an AsyncAPI 3.0 document.
pub mod asyncapi {
    pub use outbox_runtime::asyncapi::*;
}

/// The JSON schema of an event payload, as the registry stores it
/// (feature `json-schema`).
#[cfg(feature = "json-schema")]
pub use outbox_runtime::json_schema::payload_schema;
