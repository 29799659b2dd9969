//! The snapshot file: one [`EventContract`] per event type and version, as
//! JSON with a stable order so it diffs well under version control.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::EventRegistration;

/// The snapshot format this build writes and reads.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// The registry's event contracts at one point in time, e.g. the committed
/// `events.lock.json`.
///
/// ```
/// use outbox::registry::snapshot::RegistrySnapshot;
///
/// let snapshot = RegistrySnapshot::from_json(
///     r#"{ "snapshot_format": 1, "events": [{
///         "event_type": "BatchClosedV1", "version": 1,
///         "topic": "batches.batch-closed.v1", "aggregate_type": "batch",
///         "aggregate_id_field": "batch_id", "key_field": "batch_id",
///         "rust_type": "batches::BatchClosedV1", "payload_schema": null
///     }] }"#,
/// )?;
/// assert_eq!(snapshot.events[0].topic, "batches.batch-closed.v1");
/// assert!(RegistrySnapshot::from_json(&snapshot.to_json()?)? == snapshot);
/// # Ok::<(), outbox::registry::snapshot::SnapshotError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySnapshot {
    /// [`SNAPSHOT_FORMAT`] of the writer.
    pub snapshot_format: u32,
    /// Sorted by event type, then version.
    pub events: Vec<EventContract>,
}

/// What consumers of one event type and version rely on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventContract {
    /// The envelope's `event_type`.
    pub event_type: String,
    /// The envelope's schema version.
    pub version: u32,
    /// The Kafka topic.
    pub topic: String,
    /// The aggregate type.
    pub aggregate_type: String,
    /// The field holding the aggregate id; `None` for a hand-written
    /// registration that does not name it.
    #[serde(default)]
    pub aggregate_id_field: Option<String>,
    /// The field sent as the Kafka key: the `#[outbox_event(key)]` field, or
    /// else the aggregate id field.
    #[serde(default)]
    pub key_field: Option<String>,
    /// The Rust type, for people reading the file; not part of the contract.
    pub rust_type: String,
    /// The payload's JSON schema, when the event publishes one and the
    /// `json-schema` feature is on.
    #[serde(default)]
    pub payload_schema: Option<Value>,
}

impl EventContract {
    /// The contract of one registration; calls its schema function.
    pub fn of(registration: &EventRegistration) -> Self {
        let aggregate_id_field = registration.aggregate_id_field.map(str::to_owned);
        let key_field = registration
            .key_field
            .map(str::to_owned)
            .or_else(|| aggregate_id_field.clone());
        Self {
            event_type: registration.event_type.to_owned(),
            version: registration.version,
            topic: registration.topic.to_owned(),
            aggregate_type: registration.aggregate_type.to_owned(),
            aggregate_id_field,
            key_field,
            rust_type: registration.rust_type.to_owned(),
            payload_schema: registration.payload_schema.map(|schema| schema()),
        }
    }

    /// `EventType v2`, as reports name it.
    pub fn label(&self) -> String {
        format!("`{}` v{}", self.event_type, self.version)
    }
}

/// A snapshot file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Not JSON, or not shaped like a snapshot.
    #[error("not a registry snapshot; write one with `outbox registry snapshot`")]
    Parse {
        /// What serde_json found.
        #[source]
        source: serde_json::Error,
    },
    /// Written by a build with another snapshot format.
    #[error("snapshot format {found} is not supported (this build reads format {SNAPSHOT_FORMAT}); regenerate it with `outbox registry snapshot`")]
    UnsupportedFormat {
        /// The file's `snapshot_format`.
        found: u32,
    },
    /// The snapshot could not be written as JSON.
    #[error("could not encode the registry snapshot as JSON")]
    Encode {
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },
    /// Two entries for one event type and version.
    #[error("the snapshot lists `{event_type}` version {version} twice; keep one entry")]
    DuplicateEntry {
        /// The repeated event type.
        event_type: String,
        /// The repeated version.
        version: u32,
    },
}

impl RegistrySnapshot {
    /// The contracts of `registrations`, sorted by event type and version.
    pub fn of(registrations: &[&EventRegistration]) -> Self {
        let mut events: Vec<EventContract> =
            registrations.iter().map(|r| EventContract::of(r)).collect();
        events.sort_by(|a, b| {
            (&a.event_type, a.version, &a.rust_type).cmp(&(&b.event_type, b.version, &b.rust_type))
        });
        Self {
            snapshot_format: SNAPSHOT_FORMAT,
            events,
        }
    }

    /// Pretty-printed JSON with a trailing newline, as committed.
    pub fn to_json(&self) -> Result<String, SnapshotError> {
        let mut text = serde_json::to_string_pretty(self)
            .map_err(|source| SnapshotError::Encode { source })?;
        text.push('\n');
        Ok(text)
    }

    /// Reads a snapshot written by [`to_json`](Self::to_json).
    pub fn from_json(text: &str) -> Result<Self, SnapshotError> {
        let snapshot: Self =
            serde_json::from_str(text).map_err(|source| SnapshotError::Parse { source })?;
        if snapshot.snapshot_format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::UnsupportedFormat {
                found: snapshot.snapshot_format,
            });
        }
        let mut seen = BTreeSet::new();
        for event in &snapshot.events {
            if !seen.insert((event.event_type.as_str(), event.version)) {
                return Err(SnapshotError::DuplicateEntry {
                    event_type: event.event_type.clone(),
                    version: event.version,
                });
            }
        }
        Ok(snapshot)
    }
}
