//! A topic named for the first schema keeps its name when the event moves to
//! version 2, with the mismatch allowed explicitly.

use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(
    topic = "files.file-uploaded.v1",
    aggregate = "file_upload",
    version = 2,
    allow_topic_version_mismatch
)]
struct FileUploadedV2 {
    #[outbox_event(aggregate_id)]
    file_upload_id: u64,
    size_bytes: u64,
}

fn main() {
    assert_eq!(FileUploadedV2::REGISTRATION.topic, "files.file-uploaded.v1");
    assert_eq!(FileUploadedV2::REGISTRATION.version, 2);
    let event = FileUploadedV2 {
        file_upload_id: 7,
        size_bytes: 1024,
    };
    assert_eq!(event.aggregate_id(), "7");
}
