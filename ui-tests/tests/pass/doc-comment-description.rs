use outbox::OutboxEvent;
use serde::Serialize;

/// Essay content was stored and is ready for processing.
///
/// Sent once per file.
#[derive(Serialize, OutboxEvent)]
#[outbox_event(
    topic = "files.essay-content-provisioned.v1",
    aggregate = "file_upload"
)]
struct EssayContentProvisionedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: u64,
}

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "files.file-deleted.v1", aggregate = "file_upload")]
struct FileDeletedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: u64,
}

fn main() {
    assert_eq!(
        EssayContentProvisionedV1::REGISTRATION.description,
        "Essay content was stored and is ready for processing.\n\nSent once per file."
    );
    assert_eq!(FileDeletedV1::REGISTRATION.description, "");
}
