//! The contract check on the File Service example's events
//! (`examples/file_service.rs`), with payload schemas: the events as
//! committed in a snapshot, then edited as a service would edit them.
//! Each edit lives in its own module, so one binary holds every version;
//! the checks name the registrations they compare. (`Uuid` ids are
//! described as strings: this crate builds schemars without its `uuid1`
//! feature.)

use outbox::registry::snapshot::{check_registrations, RegistrySnapshot};
use outbox::{EventRegistration, OutboxEvent};

/// The events as committed in `events.lock.json`.
mod committed {
    use outbox::OutboxEvent;
    use serde::Serialize;
    use uuid::Uuid;

    /// A file's text was extracted and stored.
    #[derive(Serialize, schemars::JsonSchema, OutboxEvent)]
    #[outbox_event(
        topic = "files.essay-content-provisioned.v1",
        aggregate = "file_upload",
        json_schema
    )]
    pub(crate) struct EssayContentProvisionedV1 {
        #[outbox_event(aggregate_id)]
        #[schemars(with = "String")]
        pub(crate) file_upload_id: Uuid,
        #[outbox_event(key)]
        pub(crate) batch_id: String,
        pub(crate) file_name: String,
        pub(crate) content_length: usize,
    }

    /// A file was added to a batch.
    #[derive(Serialize, schemars::JsonSchema, OutboxEvent)]
    #[outbox_event(
        topic = "files.batch-file-added.v1",
        aggregate = "file_upload",
        json_schema
    )]
    pub(crate) struct BatchFileAddedV1 {
        #[outbox_event(aggregate_id)]
        #[schemars(with = "String")]
        pub(crate) file_upload_id: Uuid,
        #[outbox_event(key)]
        pub(crate) batch_id: String,
        pub(crate) file_name: String,
    }
}

/// `file_name` dropped from `BatchFileAddedV1`, same version.
mod field_removed {
    use outbox::OutboxEvent;
    use serde::Serialize;
    use uuid::Uuid;

    #[derive(Serialize, schemars::JsonSchema, OutboxEvent)]
    #[outbox_event(
        topic = "files.batch-file-added.v1",
        aggregate = "file_upload",
        json_schema
    )]
    pub(crate) struct BatchFileAddedV1 {
        #[outbox_event(aggregate_id)]
        #[schemars(with = "String")]
        pub(crate) file_upload_id: Uuid,
        #[outbox_event(key)]
        pub(crate) batch_id: String,
    }
}

/// `content_length` renamed and made signed, same version.
mod field_renamed_and_retyped {
    use outbox::OutboxEvent;
    use serde::Serialize;
    use uuid::Uuid;

    #[derive(Serialize, schemars::JsonSchema, OutboxEvent)]
    #[outbox_event(
        topic = "files.essay-content-provisioned.v1",
        aggregate = "file_upload",
        json_schema
    )]
    pub(crate) struct EssayContentProvisionedV1 {
        #[outbox_event(aggregate_id)]
        #[schemars(with = "String")]
        pub(crate) file_upload_id: Uuid,
        #[outbox_event(key)]
        pub(crate) batch_id: String,
        pub(crate) file_name: String,
        pub(crate) length_bytes: usize,
        pub(crate) checksum: i64,
    }
}

/// An optional `mime_type` added to `BatchFileAddedV1`, same version.
mod optional_field_added {
    use outbox::OutboxEvent;
    use serde::Serialize;
    use uuid::Uuid;

    #[derive(Serialize, schemars::JsonSchema, OutboxEvent)]
    #[outbox_event(
        topic = "files.batch-file-added.v1",
        aggregate = "file_upload",
        json_schema
    )]
    pub(crate) struct BatchFileAddedV1 {
        #[outbox_event(aggregate_id)]
        #[schemars(with = "String")]
        pub(crate) file_upload_id: Uuid,
        #[outbox_event(key)]
        pub(crate) batch_id: String,
        pub(crate) file_name: String,
        pub(crate) mime_type: Option<String>,
    }
}

/// A breaking change declared as version 2 of `BatchFileAdded`, next to v1.
mod new_version {
    use outbox::OutboxEvent;
    use serde::Serialize;
    use uuid::Uuid;

    #[derive(Serialize, schemars::JsonSchema, OutboxEvent)]
    #[outbox_event(
        topic = "files.batch-file-added.v2",
        aggregate = "file_upload",
        event_type = "BatchFileAddedV1",
        version = 2,
        json_schema
    )]
    pub(crate) struct BatchFileAddedV2 {
        #[outbox_event(aggregate_id)]
        #[schemars(with = "String")]
        pub(crate) file_upload_id: Uuid,
        #[outbox_event(key)]
        pub(crate) batch_id: String,
        pub(crate) file_size: u64,
    }
}

fn reg<E: OutboxEvent>() -> &'static EventRegistration {
    outbox::registry::of::<E>()
}

/// The snapshot as `outbox registry snapshot` writes it, read back.
fn committed() -> RegistrySnapshot {
    let snapshot = RegistrySnapshot::of(&[
        reg::<committed::EssayContentProvisionedV1>(),
        reg::<committed::BatchFileAddedV1>(),
    ]);
    let text = snapshot.to_json().expect("encodes");
    RegistrySnapshot::from_json(&text).expect("reads back")
}

fn breaking(registrations: &[&EventRegistration]) -> Vec<String> {
    check_registrations(&committed(), registrations)
        .breaking()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn the_committed_events_pass_against_their_snapshot() {
    let report = check_registrations(
        &committed(),
        &[
            reg::<committed::EssayContentProvisionedV1>(),
            reg::<committed::BatchFileAddedV1>(),
        ],
    );
    assert!(report.findings.is_empty(), "{report}");
    assert!(report.schemas_compared);
    assert!(committed().events[0].payload_schema.is_some());
}

#[test]
fn a_removed_field_fails_naming_the_event_and_the_field() {
    let report = check_registrations(
        &committed(),
        &[
            reg::<committed::EssayContentProvisionedV1>(),
            reg::<field_removed::BatchFileAddedV1>(),
        ],
    );
    assert!(!report.is_compatible());
    assert_eq!(
        report.to_string().lines().next(),
        Some("breaking: `BatchFileAddedV1` v1: field `file_name` removed")
    );
}

#[test]
fn a_renamed_and_a_required_new_field_fail_each_named() {
    assert_eq!(
        breaking(&[
            reg::<field_renamed_and_retyped::EssayContentProvisionedV1>(),
            reg::<committed::BatchFileAddedV1>(),
        ]),
        [
            "`EssayContentProvisionedV1` v1: field `content_length` removed",
            "`EssayContentProvisionedV1` v1: field `checksum` added as required: events already on the topic lack it",
            "`EssayContentProvisionedV1` v1: field `length_bytes` added as required: events already on the topic lack it",
        ]
    );
}

#[test]
fn an_additive_optional_field_passes() {
    let report = check_registrations(
        &committed(),
        &[
            reg::<committed::EssayContentProvisionedV1>(),
            reg::<optional_field_added::BatchFileAddedV1>(),
        ],
    );
    assert!(report.is_compatible(), "{report}");
    assert_eq!(
        report.to_string().lines().next(),
        Some("compatible: `BatchFileAddedV1` v1: optional field `mime_type` added")
    );
}

#[test]
fn a_new_version_passes_while_the_old_one_is_unchanged() {
    let report = check_registrations(
        &committed(),
        &[
            reg::<committed::EssayContentProvisionedV1>(),
            reg::<committed::BatchFileAddedV1>(),
            reg::<new_version::BatchFileAddedV2>(),
        ],
    );
    assert!(report.is_compatible(), "{report}");
    assert!(
        report
            .to_string()
            .contains("compatible: `BatchFileAddedV1` v2: new, declared by"),
        "{report}"
    );
}

#[test]
fn the_old_version_stays_in_the_snapshot_while_its_type_exists() {
    let mut with_v2 = RegistrySnapshot::of(&[
        reg::<committed::EssayContentProvisionedV1>(),
        reg::<committed::BatchFileAddedV1>(),
        reg::<new_version::BatchFileAddedV2>(),
    ]);
    with_v2
        .events
        .retain(|e| !(e.event_type == "BatchFileAddedV1" && e.version == 1));
    let report = check_registrations(
        &with_v2,
        &[
            reg::<committed::EssayContentProvisionedV1>(),
            reg::<committed::BatchFileAddedV1>(),
            reg::<new_version::BatchFileAddedV2>(),
        ],
    );
    assert!(!report.is_compatible());
    assert!(
        report.to_string().contains(
            "breaking: `BatchFileAddedV1` v1: still declared by `event_contracts::committed::BatchFileAddedV1` but missing from the snapshot, which has v2"
        ),
        "{report}"
    );
}

#[test]
fn a_topic_change_at_the_same_version_fails() {
    let mut moved = committed();
    moved.events[0].topic = "files.batch-file-added".into();
    let report = check_registrations(
        &moved,
        &[
            reg::<committed::EssayContentProvisionedV1>(),
            reg::<committed::BatchFileAddedV1>(),
        ],
    );
    assert_eq!(
        report.breaking().map(ToString::to_string).collect::<Vec<_>>(),
        ["`BatchFileAddedV1` v1: topic changed from `files.batch-file-added` to `files.batch-file-added.v1`: consumers of `files.batch-file-added` stop receiving it"]
    );
}
