//! [`RecordedEvent`]: one event as the outbox stored it or the relay
//! produced it, before it is decoded into a Rust type.

use super::TestingError;
use crate::consume::MessageLocation;
use crate::Envelope;

/// One published event, untyped: its envelope, the topic and the Kafka key.
///
/// Deliver it to a consumer with
/// [`ConsumerHarness::deliver`](super::ConsumerHarness::deliver)`(&event.envelope)`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// The topic (the registry's; with the relay's prefix for produced
    /// messages).
    pub topic: String,
    /// The Kafka message key.
    pub key: String,
    /// The envelope, with the event's data as JSON.
    pub envelope: Envelope<serde_json::Value>,
    /// Topic, partition and offset, for messages read from the mock broker.
    pub location: Option<MessageLocation>,
}

impl RecordedEvent {
    /// Parses the envelope text of an event found at `origin`.
    pub(crate) fn parse(
        origin: impl FnOnce() -> String,
        topic: String,
        key: String,
        envelope: &[u8],
        location: Option<MessageLocation>,
    ) -> Result<Self, TestingError> {
        let envelope =
            serde_json::from_slice(envelope).map_err(|e| TestingError::MalformedEnvelope {
                origin: origin(),
                detail: e.to_string(),
            })?;
        Ok(Self {
            topic,
            key,
            envelope,
            location,
        })
    }
}
