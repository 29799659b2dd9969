//! Decoding recorded events into their Rust types: [`PublishedEvent`].

use super::{RecordedEvent, TestingError};
use crate::{Envelope, EventRegistration, OutboxEvent};
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// A published event decoded into its Rust type `E`, with the envelope
/// fields a test asserts on. Compare it with `assert_eq!` (when `E:
/// PartialEq`), or compare its fields.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedEvent<E> {
    /// The event id (consumers de-duplicate on it).
    pub event_id: Uuid,
    /// The event type name.
    pub event_type: String,
    /// The schema version.
    pub version: u32,
    /// The publishing service.
    pub source_service: String,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The topic.
    pub topic: String,
    /// The Kafka message key.
    pub key: String,
    /// The correlation id.
    pub correlation_id: Uuid,
    /// The W3C `traceparent` captured at publish time.
    pub traceparent: Option<String>,
    /// The event itself.
    pub data: E,
}

/// The registration of `E`, if the registry holds it.
pub(crate) fn registered<E: OutboxEvent>() -> Result<&'static EventRegistration, TestingError> {
    if let Some(found) = crate::registry::submitted::<E>() {
        return Ok(found);
    }
    let mut names: Vec<&str> = crate::registry::registrations()
        .iter()
        .map(|r| r.event_type)
        .collect();
    names.dedup();
    Err(TestingError::NotRegistered {
        rust_type: E::REGISTRATION.rust_type,
        event_type: E::REGISTRATION.event_type,
        registered: names.join(", "),
    })
}

/// `envelope.data` as `E`, after checking the version.
pub(crate) fn decode_data<E: DeserializeOwned>(
    envelope: &Envelope<serde_json::Value>,
    registration: &EventRegistration,
) -> Result<E, TestingError> {
    if envelope.version != registration.version {
        return Err(TestingError::VersionMismatch {
            event_id: envelope.event_id,
            event_type: envelope.event_type.clone(),
            rust_type: registration.rust_type,
            expected: registration.version,
            found: envelope.version,
        });
    }
    E::deserialize(&envelope.data).map_err(|serde_error| TestingError::Undecodable {
        event_id: envelope.event_id,
        event_type: envelope.event_type.clone(),
        rust_type: registration.rust_type,
        serde_error,
    })
}

/// The events of `E`'s type among `events`, decoded, in order.
pub(crate) fn of<E: OutboxEvent + DeserializeOwned>(
    events: &[RecordedEvent],
) -> Result<Vec<PublishedEvent<E>>, TestingError> {
    let registration = registered::<E>()?;
    events
        .iter()
        .filter(|e| e.envelope.event_type == registration.event_type)
        .map(|e| {
            let envelope = &e.envelope;
            Ok(PublishedEvent {
                data: decode_data(envelope, registration)?,
                event_id: envelope.event_id,
                event_type: envelope.event_type.clone(),
                version: envelope.version,
                source_service: envelope.source_service.clone(),
                aggregate_type: envelope.aggregate_type.clone(),
                aggregate_id: envelope.aggregate_id.clone(),
                topic: e.topic.clone(),
                key: e.key.clone(),
                correlation_id: envelope.correlation_id,
                traceparent: envelope.metadata.traceparent.clone(),
            })
        })
        .collect()
}
