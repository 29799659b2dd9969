//! [`envelope`]: the envelope a consumer handler receives for an event.

use super::typed::{decode_data, registered};
use super::TestingError;
use crate::{Envelope, EnvelopeMetadata, OutboxEvent, PublishContext};
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// The `source_service` of envelopes built by [`envelope`].
pub const TEST_SOURCE_SERVICE: &str = "outbox-testing";

/// The envelope a consumer's handler would receive for `event`: built as
/// the publisher builds it (a new UUID v7 event id, the registered event
/// type, version and aggregate; correlation id and trace context from the
/// current [`PublishContext`] or new), then serialized and decoded back, so
/// `data` is what a consumer deserializes. Its fields are public: set the
/// correlation id or trace context a test needs.
///
/// Fails with [`TestingError::NotRegistered`] for a type the registry does
/// not know, and when `event` does not survive the JSON round trip.
///
/// ```
/// use outbox::OutboxEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
/// #[outbox_event(topic = "files.batch-file-added.v1", aggregate = "file_upload")]
/// struct BatchFileAddedV1 {
///     #[outbox_event(aggregate_id)]
///     file_upload_id: String,
///     batch_id: String,
/// }
///
/// let added = BatchFileAddedV1 { file_upload_id: "f-1".into(), batch_id: "b-1".into() };
/// let envelope = outbox::testing::envelope(&added).unwrap();
/// assert_eq!(envelope.event_type, "BatchFileAddedV1");
/// assert_eq!(envelope.aggregate_type, "file_upload");
/// assert_eq!(envelope.aggregate_id, "f-1");
/// assert_eq!(envelope.data, added);
/// ```
pub fn envelope<E: OutboxEvent + DeserializeOwned>(event: &E) -> Result<Envelope<E>, TestingError> {
    let registration = registered::<E>()?;
    let context = PublishContext::current();
    let sent = Envelope {
        event_id: Uuid::now_v7(),
        event_type: registration.event_type.to_owned(),
        version: registration.version,
        event_timestamp: chrono::Utc::now(),
        source_service: TEST_SOURCE_SERVICE.to_owned(),
        correlation_id: context.correlation_id.unwrap_or_else(Uuid::new_v4),
        aggregate_type: registration.aggregate_type.to_owned(),
        aggregate_id: event.aggregate_id(),
        data: event,
        metadata: EnvelopeMetadata {
            traceparent: context.traceparent,
            tracestate: context.tracestate,
            extra: Default::default(),
        },
    };
    let serialize_error = |serde_error| TestingError::Serialize {
        rust_type: registration.rust_type,
        event_type: registration.event_type,
        serde_error,
    };
    let json = serde_json::to_value(&sent).map_err(serialize_error)?;
    let received: Envelope<serde_json::Value> =
        serde_json::from_value(json).map_err(serialize_error)?;
    Ok(Envelope {
        data: decode_data(&received, registration)?,
        event_id: received.event_id,
        event_type: received.event_type,
        version: received.version,
        event_timestamp: received.event_timestamp,
        source_service: received.source_service,
        correlation_id: received.correlation_id,
        aggregate_type: received.aggregate_type,
        aggregate_id: received.aggregate_id,
        metadata: received.metadata,
    })
}
