//! Event contracts under version control: a snapshot of the registry
//! (`outbox registry snapshot > events.lock.json`) and a check of the
//! compiled registry against it (`outbox registry check --against
//! events.lock.json`) that fails, naming the event and the field, on a
//! change that breaks consumers while keeping the same `version`.
//!
//! Each entry is one event type and version: its topic, aggregate type,
//! aggregate id and key fields, and the payload's JSON schema when the event
//! publishes one (`#[outbox_event(json_schema)]`, feature `json-schema`).
//! Without that feature everything but the payload schema is compared, and
//! the report says so. A new version is a new entry; the entry of an older
//! version stays as long as its type is declared. Payload schemas follow
//! Confluent's FULL compatibility for JSON Schema; see [`compare_schemas`]
//! and `docs/guide/event-contracts.md` for the rules.
//!
//! ```
//! use outbox::registry::snapshot::{self, RegistrySnapshot};
//! use outbox::OutboxEvent;
//! use serde::Serialize;
//!
//! #[derive(Serialize, OutboxEvent)]
//! #[outbox_event(topic = "files.batch-file-added.v1", aggregate = "file_upload")]
//! struct BatchFileAddedV1 {
//!     #[outbox_event(aggregate_id)]
//!     file_upload_id: u64,
//! }
//!
//! // What `outbox registry snapshot` writes...
//! let committed = snapshot::snapshot().to_json()?;
//! // ...and what `outbox registry check --against events.lock.json` does.
//! let report = snapshot::check(&RegistrySnapshot::from_json(&committed)?);
//! assert!(report.is_compatible(), "{report}");
//! # Ok::<(), outbox::registry::snapshot::SnapshotError>(())
//! ```

mod model;
mod report;
mod rules;
mod schema;

pub use model::{EventContract, RegistrySnapshot, SnapshotError, SNAPSHOT_FORMAT};
pub use report::{Change, CheckReport, Finding, SchemaSkip, SCHEMAS_NOT_COMPARED};
pub use schema::{compare_schemas, SchemaChange, SchemaChangeKind};

use crate::event::EventRegistration;

/// Whether this build compares payload schemas (feature `json-schema`).
pub const COMPARES_SCHEMAS: bool = cfg!(feature = "json-schema");

/// The snapshot of every event type linked into this binary.
pub fn snapshot() -> RegistrySnapshot {
    RegistrySnapshot::of(&super::registrations())
}

/// Checks every event type linked into this binary against `against`.
pub fn check(against: &RegistrySnapshot) -> CheckReport {
    check_registrations(against, &super::registrations())
}

/// Checks `registrations` against `against`; payload schemas are compared
/// when the `json-schema` feature is on.
pub fn check_registrations(
    against: &RegistrySnapshot,
    registrations: &[&EventRegistration],
) -> CheckReport {
    rules::compare(
        against,
        &RegistrySnapshot::of(registrations),
        COMPARES_SCHEMAS,
    )
}

/// Compares two snapshots, payload schemas included wherever both have one:
/// `compiled` plays the part of the compiled registry.
///
/// ```
/// use outbox::registry::snapshot::{compare_snapshots, RegistrySnapshot};
///
/// let before = RegistrySnapshot::from_json(r#"{ "snapshot_format": 1, "events": [{
///     "event_type": "BatchClosedV1", "version": 1, "topic": "batches.batch-closed.v1",
///     "aggregate_type": "batch", "aggregate_id_field": "batch_id", "key_field": "batch_id",
///     "rust_type": "batches::BatchClosedV1", "payload_schema": null }] }"#)?;
/// let mut after = before.clone();
/// after.events[0].topic = "batches.closed.v1".into();
///
/// let report = compare_snapshots(&before, &after);
/// assert!(!report.is_compatible());
/// assert!(report.to_string().contains(
///     "breaking: `BatchClosedV1` v1: topic changed from `batches.batch-closed.v1` to `batches.closed.v1`"
/// ));
/// # Ok::<(), outbox::registry::snapshot::SnapshotError>(())
/// ```
pub fn compare_snapshots(against: &RegistrySnapshot, compiled: &RegistrySnapshot) -> CheckReport {
    rules::compare(against, compiled, true)
}

#[cfg(test)]
mod rules_tests;
#[cfg(test)]
mod schema_tests;
