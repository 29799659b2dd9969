//! The contract rules between a snapshot entry and the compiled one of the
//! same event type and version, and between the two sets of entries.

use std::collections::BTreeMap;

use super::model::{EventContract, RegistrySnapshot};
use super::report::{Change, CheckReport, Finding, SchemaSkip};
use super::schema::compare_schemas;

type Key<'a> = (&'a str, u32);

fn by_key(snapshot: &RegistrySnapshot) -> BTreeMap<Key<'_>, &EventContract> {
    let mut map = BTreeMap::new();
    for event in &snapshot.events {
        map.entry((event.event_type.as_str(), event.version))
            .or_insert(event);
    }
    map
}

/// Compares `compiled` with `against`; payload schemas only when
/// `schemas_compared`.
pub(super) fn compare(
    against: &RegistrySnapshot,
    compiled: &RegistrySnapshot,
    schemas_compared: bool,
) -> CheckReport {
    let old = by_key(against);
    let new = by_key(compiled);
    let mut findings = Vec::new();
    for (&(event_type, version), &event) in &new {
        let mut push = |change| {
            findings.push(Finding {
                event_type: event_type.to_owned(),
                version,
                change,
            });
        };
        if let Some(&before) = old.get(&(event_type, version)) {
            for change in compare_entry(before, event, schemas_compared) {
                push(change);
            }
            continue;
        }
        let later_version = old
            .keys()
            .filter(|(t, v)| *t == event_type && *v > version)
            .map(|(_, v)| *v)
            .max();
        let rust_type = event.rust_type.clone();
        push(match later_version {
            Some(later_version) => Change::MissingFromSnapshot {
                rust_type,
                later_version,
            },
            None => Change::Added { rust_type },
        });
    }
    for (&(event_type, version), &event) in &old {
        if !new.contains_key(&(event_type, version)) {
            findings.push(Finding {
                event_type: event_type.to_owned(),
                version,
                change: Change::Retired {
                    rust_type: event.rust_type.clone(),
                },
            });
        }
    }
    findings.sort_by(|a, b| (&a.event_type, a.version).cmp(&(&b.event_type, b.version)));
    CheckReport {
        findings,
        compiled: new.len(),
        schemas_compared,
    }
}

/// The differences of one event type and version. A field the snapshot or
/// the registration does not name (a hand-written registration) is not
/// compared.
fn compare_entry(old: &EventContract, new: &EventContract, schemas_compared: bool) -> Vec<Change> {
    let mut changes = Vec::new();
    if old.topic != new.topic {
        changes.push(Change::TopicChanged {
            from: old.topic.clone(),
            to: new.topic.clone(),
        });
    }
    if old.aggregate_type != new.aggregate_type {
        changes.push(Change::AggregateTypeChanged {
            from: old.aggregate_type.clone(),
            to: new.aggregate_type.clone(),
        });
    }
    if differs(&old.aggregate_id_field, &new.aggregate_id_field) {
        changes.push(Change::AggregateIdFieldChanged {
            from: old.aggregate_id_field.clone(),
            to: new.aggregate_id_field.clone(),
        });
    }
    if differs(&old.key_field, &new.key_field) {
        changes.push(Change::KeyFieldChanged {
            from: old.key_field.clone(),
            to: new.key_field.clone(),
        });
    }
    if schemas_compared {
        match (&old.payload_schema, &new.payload_schema) {
            (Some(old_schema), Some(new_schema)) => changes.extend(
                compare_schemas(old_schema, new_schema)
                    .into_iter()
                    .map(Change::Schema),
            ),
            (Some(_), None) => changes.push(Change::SchemaNotCompared {
                reason: SchemaSkip::NotPublished,
            }),
            (None, Some(_)) => changes.push(Change::SchemaNotCompared {
                reason: SchemaSkip::NotInSnapshot,
            }),
            (None, None) => {}
        }
    }
    changes
}

fn differs(old: &Option<String>, new: &Option<String>) -> bool {
    matches!((old, new), (Some(old), Some(new)) if old != new)
}
