//! [`ExpectedEvent`]: what an assertion compares published events with.

use crate::OutboxEvent;

/// An event a test expects to have been published: any
/// [`OutboxEvent`](crate::OutboxEvent) value, so one list can mix types.
///
/// ```
/// use outbox::testing::ExpectedEvent;
/// use outbox::OutboxEvent;
/// use serde::Serialize;
///
/// #[derive(Serialize, OutboxEvent)]
/// #[outbox_event(topic = "files.batch-file-added.v1", aggregate = "file_upload")]
/// struct BatchFileAddedV1 {
///     #[outbox_event(aggregate_id)]
///     file_upload_id: String,
///     batch_id: String,
/// }
///
/// let added = BatchFileAddedV1 { file_upload_id: "f-1".into(), batch_id: "b-1".into() };
/// let expected = added.expectation();
/// assert_eq!(expected.event_type, "BatchFileAddedV1");
/// assert_eq!(expected.aggregate_id, "f-1");
/// assert_eq!(expected.data.unwrap()["batch_id"], "b-1");
/// ```
pub trait ExpectedEvent: sealed::Sealed {
    /// Event type, aggregate and data as a published event would carry them.
    fn expectation(&self) -> Expectation;
}

/// What a published event must carry to match an [`ExpectedEvent`].
#[derive(Debug)]
pub struct Expectation {
    /// The event type name.
    pub event_type: &'static str,
    /// The aggregate type.
    pub aggregate_type: &'static str,
    /// The aggregate id.
    pub aggregate_id: String,
    /// The data as JSON, or why it could not be serialized.
    pub data: Result<serde_json::Value, serde_json::Error>,
}

impl<E: OutboxEvent> ExpectedEvent for E {
    fn expectation(&self) -> Expectation {
        Expectation {
            event_type: E::REGISTRATION.event_type,
            aggregate_type: E::REGISTRATION.aggregate_type,
            aggregate_id: self.aggregate_id(),
            data: serde_json::to_value(self),
        }
    }
}

mod sealed {
    pub trait Sealed {}

    impl<E: crate::OutboxEvent> Sealed for E {}
}
