//! Decoding relay-produced Kafka messages into typed envelopes.

use super::error::{ConsumeError, MessageLocation};
use crate::envelope::Envelope;
use crate::event::EventRegistration;
use crate::OutboxEvent;
use rdkafka::message::{BorrowedMessage, Headers, Message, OwnedMessage};
use serde::de::DeserializeOwned;
use uuid::Uuid;

/// Something a typed envelope can be decoded from: a Kafka message
/// (`BorrowedMessage`, `OwnedMessage`) or the raw value bytes.
pub trait RawMessage {
    /// The message value: the JSON envelope.
    fn payload(&self) -> Option<&[u8]>;

    /// Topic, partition and offset, for Kafka messages.
    fn location(&self) -> Option<MessageLocation>;

    /// The value of the header `name`, if present.
    fn header(&self, name: &str) -> Option<&[u8]>;
}

impl RawMessage for [u8] {
    fn payload(&self) -> Option<&[u8]> {
        Some(self)
    }

    fn location(&self) -> Option<MessageLocation> {
        None
    }

    fn header(&self, _name: &str) -> Option<&[u8]> {
        None
    }
}

impl RawMessage for Vec<u8> {
    fn payload(&self) -> Option<&[u8]> {
        Some(self)
    }

    fn location(&self) -> Option<MessageLocation> {
        None
    }

    fn header(&self, _name: &str) -> Option<&[u8]> {
        None
    }
}

impl RawMessage for str {
    fn payload(&self) -> Option<&[u8]> {
        Some(self.as_bytes())
    }

    fn location(&self) -> Option<MessageLocation> {
        None
    }

    fn header(&self, _name: &str) -> Option<&[u8]> {
        None
    }
}

fn kafka_location<M: Message>(message: &M) -> MessageLocation {
    MessageLocation {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
    }
}

fn kafka_header<'m, H: Headers>(headers: Option<&'m H>, name: &str) -> Option<&'m [u8]> {
    headers?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

impl RawMessage for BorrowedMessage<'_> {
    fn payload(&self) -> Option<&[u8]> {
        Message::payload(self)
    }

    fn location(&self) -> Option<MessageLocation> {
        Some(kafka_location(self))
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        kafka_header(self.headers(), name)
    }
}

impl RawMessage for OwnedMessage {
    fn payload(&self) -> Option<&[u8]> {
        Message::payload(self)
    }

    fn location(&self) -> Option<MessageLocation> {
        Some(kafka_location(self))
    }

    fn header(&self, name: &str) -> Option<&[u8]> {
        kafka_header(self.headers(), name)
    }
}

/// Decodes a message produced by the outbox relay into the envelope of `T`.
///
/// Checks that the envelope's `event_type` is `T`'s and that its `version`
/// matches the registered one, then deserializes `data`. Every failure is a
/// typed [`ConsumeError`] carrying the event id and location where known.
///
/// ```
/// use outbox::{Envelope, OutboxEvent};
/// use outbox::consume::ConsumeError;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
/// #[outbox_event(topic = "essay.spellcheck.completed.v1", aggregate = "essay")]
/// struct SpellcheckCompletedV1 {
///     #[outbox_event(aggregate_id)]
///     essay_id: String,
///     errors: u32,
/// }
///
/// let value = br#"{"event_id":"0190f5c2-6a3b-7cc4-9b1e-1c2d3e4f5a6b",
///   "event_type":"SpellcheckCompletedV1","version":1,
///   "event_timestamp":"2026-11-23T10:00:00Z","source_service":"spellchecker",
///   "correlation_id":"5b0c1f9e-2a4d-4e8f-9c3b-7d6e5f4a3b2c",
///   "aggregate_type":"essay","aggregate_id":"e-1",
///   "data":{"essay_id":"e-1","errors":3}}"#;
/// let envelope: Envelope<SpellcheckCompletedV1> = outbox::consume::decode(&value[..]).unwrap();
/// assert_eq!(envelope.data.errors, 3);
///
/// let err = outbox::consume::decode::<SpellcheckCompletedV1>(&b"not json"[..]).unwrap_err();
/// assert!(matches!(err, ConsumeError::MalformedEnvelope { .. }));
/// ```
pub fn decode<T>(message: &(impl RawMessage + ?Sized)) -> Result<Envelope<T>, ConsumeError>
where
    T: OutboxEvent + DeserializeOwned,
{
    let raw = decode_raw(message)?;
    let registration = crate::registry::of::<T>();
    if raw.event_type != registration.event_type {
        return Err(ConsumeError::UnexpectedEventType {
            expected: registration.event_type,
            found: raw.event_type,
            event_id: raw.event_id,
            location: message.location(),
        });
    }
    into_typed(raw, registration, message.location())
}

/// Decodes the envelope without interpreting `data`: the first step of
/// every decode, useful to route or log messages of any type.
pub fn decode_raw(
    message: &(impl RawMessage + ?Sized),
) -> Result<Envelope<serde_json::Value>, ConsumeError> {
    let malformed = |detail: String| ConsumeError::MalformedEnvelope {
        detail,
        event_id: header_event_id(message),
        location: message.location(),
    };
    let payload = message
        .payload()
        .ok_or_else(|| malformed("the message has no value".to_owned()))?;
    serde_json::from_slice::<Envelope<serde_json::Value>>(payload)
        .map_err(|e| malformed(e.to_string()))
}

/// The `event_id` header, when present and a UUID.
pub(crate) fn header_event_id(message: &(impl RawMessage + ?Sized)) -> Option<Uuid> {
    message
        .header("event_id")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// Checks the version and deserializes `data` into `T`.
pub(crate) fn into_typed<T: DeserializeOwned>(
    raw: Envelope<serde_json::Value>,
    registration: &EventRegistration,
    location: Option<MessageLocation>,
) -> Result<Envelope<T>, ConsumeError> {
    if raw.version != registration.version {
        return Err(ConsumeError::VersionMismatch {
            event_type: raw.event_type,
            expected: registration.version,
            found: raw.version,
            event_id: raw.event_id,
            location,
        });
    }
    let data = match T::deserialize(raw.data) {
        Ok(data) => data,
        Err(source) => {
            return Err(ConsumeError::MalformedPayload {
                event_type: raw.event_type,
                rust_type: registration.rust_type,
                event_id: raw.event_id,
                location,
                source,
            })
        }
    };
    Ok(Envelope {
        event_id: raw.event_id,
        event_type: raw.event_type,
        version: raw.version,
        event_timestamp: raw.event_timestamp,
        source_service: raw.source_service,
        correlation_id: raw.correlation_id,
        aggregate_type: raw.aggregate_type,
        aggregate_id: raw.aggregate_id,
        data,
        metadata: raw.metadata,
    })
}
