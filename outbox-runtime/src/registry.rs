//! The process-wide registry of every event type linked into the binary.
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

pub mod snapshot;

use std::collections::BTreeMap;

use crate::event::{EventRegistration, OutboxEvent};

/// Every registration linked into this binary, sorted by event type then
/// Rust type so listings are stable.
pub fn registrations() -> Vec<&'static EventRegistration> {
    let mut all: Vec<_> = inventory::iter::<EventRegistration>.into_iter().collect();
    all.sort_by(|a, b| (a.event_type, a.rust_type).cmp(&(b.event_type, b.rust_type)));
    all
}

/// The registration whose envelope `event_type` is `event_type`.
pub fn by_event_type(event_type: &str) -> Option<&'static EventRegistration> {
    inventory::iter::<EventRegistration>
        .into_iter()
        .find(|r| r.event_type == event_type)
}

/// The registration of the Rust type `E`.
pub fn of<E: OutboxEvent>() -> &'static EventRegistration {
    // A hand-written impl that was never submitted: its constant is the truth.
    submitted::<E>().unwrap_or(&E::REGISTRATION)
}

/// The registration submitted for the Rust type `E`, if any.
pub(crate) fn submitted<E: OutboxEvent>() -> Option<&'static EventRegistration> {
    let wanted = core::any::TypeId::of::<E>();
    inventory::iter::<EventRegistration>
        .into_iter()
        .find(|r| (r.type_id)() == wanted)
}

/// A conflict between registrations that the compiler cannot see because
/// they live in different crates or modules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryConflict {
    /// Two Rust types claim the same envelope `event_type`.
    #[error("event type `{event_type}` is declared by both `{first}` and `{second}`; give one of them another name with `#[outbox_event(event_type = \"...\")]`")]
    DuplicateEventType {
        /// The contested event type name.
        event_type: &'static str,
        /// One Rust type declaring it.
        first: &'static str,
        /// The other Rust type declaring it.
        second: &'static str,
    },
    /// Two Rust types with the same event type and version route to different topics.
    #[error("event type `{event_type}` goes to topic `{first_topic}` from `{first}` but to `{second_topic}` from `{second}`; one event type must have one topic")]
    TopicMismatch {
        /// The event type name.
        event_type: &'static str,
        /// First Rust type.
        first: &'static str,
        /// Its topic.
        first_topic: &'static str,
        /// Second Rust type.
        second: &'static str,
        /// Its topic.
        second_topic: &'static str,
    },
}

/// Every conflict in the registry, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the outbox event registry has {} conflict(s): {}", .conflicts.len(), join(.conflicts))]
pub struct RegistryError {
    /// The conflicts found.
    pub conflicts: Vec<RegistryConflict>,
}

fn join(conflicts: &[RegistryConflict]) -> String {
    conflicts
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks the global registry; the relay calls this at start-up.
pub fn validate() -> Result<(), RegistryError> {
    validate_registrations(&registrations())
}

/// Checks a given set of registrations for duplicate event types and topic
/// mismatches, naming both Rust types of every conflict.
pub fn validate_registrations(all: &[&'static EventRegistration]) -> Result<(), RegistryError> {
    let mut first_by_type: BTreeMap<&str, &EventRegistration> = BTreeMap::new();
    let mut conflicts = Vec::new();
    for registration in all {
        let Some(first) = first_by_type.get(registration.event_type).copied() else {
            first_by_type.insert(registration.event_type, registration);
            continue;
        };
        if first.rust_type == registration.rust_type {
            continue;
        }
        if first.topic != registration.topic {
            conflicts.push(RegistryConflict::TopicMismatch {
                event_type: registration.event_type,
                first: first.rust_type,
                first_topic: first.topic,
                second: registration.rust_type,
                second_topic: registration.topic,
            });
        } else {
            conflicts.push(RegistryConflict::DuplicateEventType {
                event_type: registration.event_type,
                first: first.rust_type,
                second: registration.rust_type,
            });
        }
    }
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(RegistryError { conflicts })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid() -> core::any::TypeId {
        core::any::TypeId::of::<()>()
    }

    const fn reg(
        rust_type: &'static str,
        event_type: &'static str,
        topic: &'static str,
    ) -> EventRegistration {
        EventRegistration {
            rust_type,
            event_type,
            topic,
            aggregate_type: "batch",
            version: 1,
            description: "",
            type_id: tid,
            payload_schema: None,
            aggregate_id_field: Some("batch_id"),
            key_field: None,
        }
    }

    static A: EventRegistration = reg("a::Added", "Added", "t.added");
    static B: EventRegistration = reg("b::Added", "Added", "t.added");
    static C: EventRegistration = reg("c::Added", "Added", "t.other");
    static D: EventRegistration = reg("d::Removed", "Removed", "t.removed");

    #[test]
    fn distinct_event_types_validate() {
        assert_eq!(validate_registrations(&[&A, &D]), Ok(()));
    }

    #[test]
    fn duplicate_event_type_names_both_types() {
        let err = validate_registrations(&[&A, &B, &D]).unwrap_err();
        assert_eq!(
            err.conflicts,
            vec![RegistryConflict::DuplicateEventType {
                event_type: "Added",
                first: "a::Added",
                second: "b::Added"
            }]
        );
        let text = err.to_string();
        assert!(
            text.contains("a::Added") && text.contains("b::Added"),
            "{text}"
        );
    }

    #[test]
    fn topic_mismatch_is_reported_with_both_topics() {
        let err = validate_registrations(&[&A, &C]).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("t.added") && text.contains("t.other"),
            "{text}"
        );
    }

    #[test]
    fn all_conflicts_are_reported_together() {
        let err = validate_registrations(&[&A, &B, &C]).unwrap_err();
        assert_eq!(err.conflicts.len(), 2);
    }
}
