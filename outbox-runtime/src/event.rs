//! The [`OutboxEvent`] trait and the [`EventRegistration`] the derive records.

use serde::Serialize;

/// An event type routed through the outbox.
///
/// Implemented by `#[derive(OutboxEvent)]`; hand-written impls are possible
/// but then the type is not in the [registry](crate::registry) unless it is
/// submitted there too.
///
/// ```
/// use outbox::OutboxEvent;
/// use serde::Serialize;
///
/// #[derive(Serialize, OutboxEvent)]
/// #[outbox_event(topic = "files.batch-file-added.v1", aggregate = "file_upload")]
/// struct BatchFileAddedV1 {
///     #[outbox_event(aggregate_id)]
///     file_upload_id: u64,
///     batch_id: String,
/// }
///
/// let event = BatchFileAddedV1 { file_upload_id: 7, batch_id: "b-1".into() };
/// assert_eq!(BatchFileAddedV1::REGISTRATION.topic, "files.batch-file-added.v1");
/// assert_eq!(BatchFileAddedV1::REGISTRATION.event_type, "BatchFileAddedV1");
/// assert_eq!(event.aggregate_id(), "7");
/// assert_eq!(event.partition_key(), "7");
/// ```
pub trait OutboxEvent: Serialize + 'static {
    /// Routing and identity of this event type: topic, aggregate type, event
    /// type name and schema version.
    const REGISTRATION: EventRegistration;

    /// The id of the aggregate this event belongs to; events of one aggregate
    /// are delivered in commit order.
    fn aggregate_id(&self) -> String;

    /// The Kafka message key; the aggregate id unless a field is marked
    /// `#[outbox_event(key)]`.
    fn partition_key(&self) -> String {
        self.aggregate_id()
    }
}

/// What the registry knows about one event type.
///
/// The derive builds it as a struct literal in a `const`, so the value can be
/// submitted to the compile-time registry; hand-written impls can do the same
/// or use [`EventRegistration::new`].
#[derive(Debug, Clone, Copy)]
pub struct EventRegistration {
    /// Full Rust path of the type, e.g. `file_service::events::BatchFileAddedV1`.
    pub rust_type: &'static str,
    /// Name written into the envelope's `event_type`; defaults to the type's
    /// identifier.
    pub event_type: &'static str,
    /// Kafka topic the relay sends this event to.
    pub topic: &'static str,
    /// Aggregate type, e.g. `file_upload`.
    pub aggregate_type: &'static str,
    /// Schema version written into the envelope; defaults to 1.
    pub version: u32,
    /// The type's doc comment, used in registry listings and exports.
    pub description: &'static str,
    /// Identifies the Rust type, for look-ups by type.
    pub type_id: fn() -> core::any::TypeId,
    /// The payload's JSON schema, when the type opts in with
    /// `#[outbox_event(json_schema)]`.
    pub payload_schema: Option<fn() -> serde_json::Value>,
    /// The field marked `#[outbox_event(aggregate_id)]`; `None` for a
    /// registration written by hand that does not say.
    pub aggregate_id_field: Option<&'static str>,
    /// The field marked `#[outbox_event(key)]`; `None` when the aggregate id
    /// is the Kafka key.
    pub key_field: Option<&'static str>,
}

impl EventRegistration {
    /// Builds a registration for a hand-written [`OutboxEvent`] impl; `const`
    /// so it can be submitted at compile time. The aggregate id and key
    /// fields are left unnamed: set [`aggregate_id_field`](Self::aggregate_id_field)
    /// and [`key_field`](Self::key_field) with struct update syntax so the
    /// [contract check](crate::registry::snapshot) can compare them.
    ///
    /// ```
    /// use outbox::EventRegistration;
    ///
    /// const REGISTRATION: EventRegistration = EventRegistration {
    ///     aggregate_id_field: Some("batch_id"),
    ///     ..EventRegistration::new(
    ///         "billing::InvoiceIssuedV1",
    ///         "InvoiceIssuedV1",
    ///         "billing.invoice-issued.v1",
    ///         "batch",
    ///         1,
    ///         "An invoice was issued.",
    ///         core::any::TypeId::of::<()>,
    ///         None,
    ///     )
    /// };
    /// assert_eq!(REGISTRATION.key_field, None);
    /// assert_eq!(REGISTRATION.aggregate_id_field, Some("batch_id"));
    /// ```
    #[allow(clippy::too_many_arguments)]
    pub const fn new(
        rust_type: &'static str,
        event_type: &'static str,
        topic: &'static str,
        aggregate_type: &'static str,
        version: u32,
        description: &'static str,
        type_id: fn() -> core::any::TypeId,
        payload_schema: Option<fn() -> serde_json::Value>,
    ) -> Self {
        Self {
            rust_type,
            event_type,
            topic,
            aggregate_type,
            version,
            description,
            type_id,
            payload_schema,
            aggregate_id_field: None,
            key_field: None,
        }
    }
}

inventory::collect!(EventRegistration);
