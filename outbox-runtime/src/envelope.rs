//! The JSON envelope every event is stored and sent as.
//!
//! The format is stable; fields are only ever added. See `docs/reference/envelope.md`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The envelope around an event's data: the Kafka message value.
///
/// ```
/// use outbox::Envelope;
///
/// let json = r#"{
///   "event_id": "0190f5c2-6a3b-7cc4-9b1e-1c2d3e4f5a6b",
///   "event_type": "BatchFileAddedV1",
///   "version": 1,
///   "event_timestamp": "2026-11-23T10:00:00Z",
///   "source_service": "file_service",
///   "correlation_id": "5b0c1f9e-2a4d-4e8f-9c3b-7d6e5f4a3b2c",
///   "aggregate_type": "file_upload",
///   "aggregate_id": "batch-42",
///   "data": {"batch_id": "batch-42"},
///   "metadata": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
/// }"#;
/// let envelope: Envelope<serde_json::Value> = serde_json::from_str(json).unwrap();
/// assert_eq!(envelope.event_type, "BatchFileAddedV1");
/// assert_eq!(envelope.data["batch_id"], "batch-42");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Unique, stable id of this event (UUID v7, time-ordered). Consumers
    /// de-duplicate on it.
    pub event_id: Uuid,
    /// Event type name from the registry, e.g. `EssayContentProvisionedV1`.
    pub event_type: String,
    /// Schema version of `data`.
    pub version: u32,
    /// When the event was added to the outbox (publishing transaction's clock).
    pub event_timestamp: DateTime<Utc>,
    /// The service that published the event.
    pub source_service: String,
    /// Correlates all events caused by one request or message.
    pub correlation_id: Uuid,
    /// Aggregate type, e.g. `file_upload`.
    pub aggregate_type: String,
    /// Aggregate id; events of one aggregate are delivered in order.
    pub aggregate_id: String,
    /// The event itself, as its `Serialize` impl writes it.
    pub data: T,
    /// Trace context and other metadata.
    #[serde(default)]
    pub metadata: EnvelopeMetadata,
}

/// Metadata carried next to the data: W3C trace context and free-form entries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EnvelopeMetadata {
    /// W3C `traceparent` captured when the event was published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// W3C `tracestate`, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// Any other metadata entries.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_omits_absent_trace_context() {
        let envelope = Envelope {
            event_id: Uuid::now_v7(),
            event_type: "X".into(),
            version: 2,
            event_timestamp: Utc::now(),
            source_service: "svc".into(),
            correlation_id: Uuid::new_v4(),
            aggregate_type: "a".into(),
            aggregate_id: "1".into(),
            data: serde_json::json!({"k": 1}),
            metadata: EnvelopeMetadata::default(),
        };
        let json = serde_json::to_value(&envelope).unwrap();
        assert_eq!(json["metadata"], serde_json::json!({}));
        let back: Envelope<serde_json::Value> = serde_json::from_value(json).unwrap();
        assert_eq!(back, envelope);
    }
}
