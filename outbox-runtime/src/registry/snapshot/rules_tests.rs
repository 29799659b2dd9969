//! The registry-level rules: topic, aggregate, id and key fields, versions
//! added, kept and retired, and what the report says.

use serde_json::json;

use super::model::{EventContract, RegistrySnapshot, SnapshotError, SNAPSHOT_FORMAT};
use super::report::{Change, SchemaSkip, SCHEMAS_NOT_COMPARED};
use super::{compare_snapshots, rules};

fn contract(event_type: &str, version: u32) -> EventContract {
    EventContract {
        event_type: event_type.to_owned(),
        version,
        topic: format!("files.{}.v{version}", event_type.to_lowercase()),
        aggregate_type: "file_upload".to_owned(),
        aggregate_id_field: Some("file_upload_id".to_owned()),
        key_field: Some("batch_id".to_owned()),
        rust_type: format!("file_service::{event_type}"),
        payload_schema: Some(json!({
            "type": "object",
            "required": ["file_upload_id", "batch_id"],
            "properties": {
                "file_upload_id": { "type": "string", "format": "uuid" },
                "batch_id": { "type": "string" }
            }
        })),
    }
}

fn snapshot(events: Vec<EventContract>) -> RegistrySnapshot {
    RegistrySnapshot {
        snapshot_format: SNAPSHOT_FORMAT,
        events,
    }
}

fn changes(before: &RegistrySnapshot, after: &RegistrySnapshot) -> Vec<(String, u32, Change)> {
    compare_snapshots(before, after)
        .findings
        .into_iter()
        .map(|f| (f.event_type, f.version, f.change))
        .collect()
}

#[test]
fn an_unchanged_registry_is_compatible() {
    let before = snapshot(vec![contract("Added", 1), contract("Removed", 1)]);
    let report = compare_snapshots(&before, &before.clone());
    assert!(report.findings.is_empty());
    assert!(report.is_compatible());
    assert_eq!(
        report.to_string(),
        "2 event contracts checked: compatible with the snapshot"
    );
}

#[test]
fn topic_aggregate_id_and_key_changes_break() {
    let before = snapshot(vec![contract("Added", 1)]);
    let mut after = before.clone();
    let event = &mut after.events[0];
    event.topic = "files.added".into();
    event.aggregate_type = "batch".into();
    event.aggregate_id_field = Some("upload_id".into());
    event.key_field = Some("file_upload_id".into());
    let report = compare_snapshots(&before, &after);
    let lines: Vec<String> = report.breaking().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "`Added` v1: topic changed from `files.added.v1` to `files.added`: consumers of `files.added.v1` stop receiving it",
            "`Added` v1: aggregate changed from `file_upload` to `batch`",
            "`Added` v1: aggregate id now read from `upload_id` instead of `file_upload_id`: ids and delivery order change meaning",
            "`Added` v1: Kafka key now read from `file_upload_id` instead of `batch_id`: events move to other partitions and lose their order",
        ]
    );
    assert!(report
        .to_string()
        .contains("1 event contract checked, 4 breaking changes: declare"));
}

#[test]
fn a_field_a_hand_written_registration_does_not_name_is_not_compared() {
    let before = snapshot(vec![contract("Added", 1)]);
    let mut after = before.clone();
    after.events[0].aggregate_id_field = None;
    after.events[0].key_field = None;
    assert!(changes(&before, &after).is_empty());
}

#[test]
fn a_new_version_is_accepted_as_new() {
    let before = snapshot(vec![contract("Added", 1)]);
    let after = snapshot(vec![contract("Added", 1), contract("Added", 2)]);
    let report = compare_snapshots(&before, &after);
    assert!(report.is_compatible());
    assert_eq!(
        changes(&before, &after),
        [(
            "Added".to_owned(),
            2,
            Change::Added {
                rust_type: "file_service::Added".into()
            }
        )]
    );
}

#[test]
fn the_old_version_must_stay_in_the_snapshot_while_its_type_exists() {
    let before = snapshot(vec![contract("Added", 2)]);
    let after = snapshot(vec![contract("Added", 1), contract("Added", 2)]);
    let report = compare_snapshots(&before, &after);
    assert!(!report.is_compatible());
    assert_eq!(
        report.breaking().map(ToString::to_string).collect::<Vec<_>>(),
        ["`Added` v1: still declared by `file_service::Added` but missing from the snapshot, which has v2: keep the entry of every version whose type still exists"]
    );
}

#[test]
fn a_retired_version_is_reported_but_compatible() {
    let before = snapshot(vec![contract("Added", 1), contract("Added", 2)]);
    let after = snapshot(vec![contract("Added", 2)]);
    let report = compare_snapshots(&before, &after);
    assert!(report.is_compatible());
    assert_eq!(
        changes(&before, &after),
        [(
            "Added".to_owned(),
            1,
            Change::Retired {
                rust_type: "file_service::Added".into()
            }
        )]
    );
}

#[test]
fn a_breaking_payload_change_names_the_event_and_the_field() {
    let before = snapshot(vec![contract("Added", 1)]);
    let mut after = before.clone();
    after.events[0].payload_schema = Some(json!({
        "type": "object",
        "required": ["file_upload_id"],
        "properties": { "file_upload_id": { "type": "string", "format": "uuid" } }
    }));
    let report = compare_snapshots(&before, &after);
    assert_eq!(
        report.to_string().lines().next(),
        Some("breaking: `Added` v1: field `batch_id` removed")
    );
    let finding = report.breaking().next().unwrap();
    assert_eq!(finding.change.field(), Some("batch_id"));
}

#[test]
fn without_schema_comparison_everything_else_is_compared_and_the_report_says_so() {
    let before = snapshot(vec![contract("Added", 1)]);
    let mut after = before.clone();
    after.events[0].payload_schema = None;
    after.events[0].topic = "files.added".into();
    let report = rules::compare(&before, &after, false);
    assert_eq!(report.findings.len(), 1, "{report}");
    assert!(matches!(
        report.findings[0].change,
        Change::TopicChanged { .. }
    ));
    assert!(
        report
            .to_string()
            .contains(&format!("note: {SCHEMAS_NOT_COMPARED}")),
        "{report}"
    );
}

#[test]
fn a_schema_on_one_side_only_is_noted() {
    let with = snapshot(vec![contract("Added", 1)]);
    let mut without = with.clone();
    without.events[0].payload_schema = None;
    let skip = |before: &RegistrySnapshot, after: &RegistrySnapshot| match &changes(before, after)[..]
    {
        [(_, _, Change::SchemaNotCompared { reason })] => Some(*reason),
        _ => None,
    };
    assert_eq!(skip(&with, &without), Some(SchemaSkip::NotPublished));
    assert_eq!(skip(&without, &with), Some(SchemaSkip::NotInSnapshot));
    assert!(compare_snapshots(&with, &without).is_compatible());
}

#[test]
fn snapshots_round_trip_and_bad_files_are_named() {
    let before = snapshot(vec![contract("Removed", 1), contract("Added", 1)]);
    let text = before.to_json().unwrap();
    assert_eq!(RegistrySnapshot::from_json(&text).unwrap(), before);
    assert!(text.ends_with("}\n"));

    let err = RegistrySnapshot::from_json("{").unwrap_err();
    assert!(matches!(err, SnapshotError::Parse { .. }), "{err}");
    let other_format = text.replace("\"snapshot_format\": 1", "\"snapshot_format\": 9");
    let err = RegistrySnapshot::from_json(&other_format).unwrap_err();
    assert_eq!(
        err.to_string(),
        "snapshot format 9 is not supported (this build reads format 1); regenerate it with `outbox registry snapshot`"
    );
    let twice = snapshot(vec![contract("Added", 1), contract("Added", 1)]);
    let err = RegistrySnapshot::from_json(&twice.to_json().unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the snapshot lists `Added` version 1 twice; keep one entry"
    );
}

#[test]
fn entries_are_sorted_by_event_type_and_version() {
    use crate::event::EventRegistration;
    fn tid() -> core::any::TypeId {
        core::any::TypeId::of::<()>()
    }
    let registration = |event_type, version| EventRegistration {
        version,
        aggregate_id_field: Some("id"),
        ..EventRegistration::new("m::E", event_type, "t", "a", 1, "", tid, None)
    };
    let (b1, a2, a1) = (
        registration("B", 1),
        registration("A", 2),
        registration("A", 1),
    );
    let snapshot = RegistrySnapshot::of(&[&b1, &a2, &a1]);
    let order: Vec<(&str, u32)> = snapshot
        .events
        .iter()
        .map(|e| (e.event_type.as_str(), e.version))
        .collect();
    assert_eq!(order, [("A", 1), ("A", 2), ("B", 1)]);
    assert_eq!(snapshot.events[0].key_field.as_deref(), Some("id"));
}
