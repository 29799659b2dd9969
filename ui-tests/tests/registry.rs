//! Derived events are visible through `outbox::registry` at run time.

use outbox::registry::{by_event_type, of, registrations, validate};
use outbox::OutboxEvent;
use serde::Serialize;

/// A batch was registered.
#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "batches.batch-registered.v1", aggregate = "batch")]
struct BatchRegisteredV1 {
    #[outbox_event(aggregate_id)]
    batch_id: String,
}

mod files {
    use outbox::OutboxEvent;
    use serde::Serialize;

    #[derive(Serialize, OutboxEvent)]
    #[outbox_event(
        topic = "files.file-uploaded.v2",
        aggregate = "file_upload",
        event_type = "files.FileUploaded",
        version = 2
    )]
    pub(crate) struct FileUploaded {
        #[outbox_event(aggregate_id)]
        pub(crate) file_upload_id: u64,
    }
}

#[test]
fn registrations_lists_every_derived_event_sorted() {
    let event_types: Vec<_> = registrations().iter().map(|r| r.event_type).collect();
    assert_eq!(event_types, ["BatchRegisteredV1", "files.FileUploaded"]);
}

#[test]
fn by_event_type_finds_the_registration() {
    let registration = by_event_type("BatchRegisteredV1").expect("registered");
    assert_eq!(registration.topic, "batches.batch-registered.v1");
    assert_eq!(registration.aggregate_type, "batch");
    assert_eq!(registration.version, 1);
    assert_eq!(registration.description, "A batch was registered.");
    assert_eq!(
        registration.rust_type,
        concat!(module_path!(), "::BatchRegisteredV1")
    );

    let renamed = by_event_type("files.FileUploaded").expect("registered");
    assert_eq!(renamed.version, 2);
    assert!(by_event_type("FileUploaded").is_none());
}

#[test]
fn of_finds_the_registration_by_type() {
    let registration = of::<files::FileUploaded>();
    assert_eq!(
        registration.rust_type,
        concat!(module_path!(), "::files::FileUploaded")
    );
    assert_eq!(registration.topic, "files.file-uploaded.v2");
    assert_eq!(
        (registration.type_id)(),
        std::any::TypeId::of::<files::FileUploaded>()
    );
    assert_eq!(
        of::<BatchRegisteredV1>().event_type,
        BatchRegisteredV1::REGISTRATION.event_type
    );
}

#[test]
fn distinct_event_types_validate() {
    validate().expect("no conflicts");
}

#[test]
fn derived_methods_read_the_marked_fields() {
    let batch = BatchRegisteredV1 {
        batch_id: "b-1".into(),
    };
    assert_eq!(batch.aggregate_id(), "b-1");
    assert_eq!(batch.partition_key(), "b-1");
    let file = files::FileUploaded { file_upload_id: 9 };
    assert_eq!(file.aggregate_id(), "9");
}
