use std::fmt;

use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize)]
struct FileUploadId(uuid::Uuid);

impl fmt::Display for FileUploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upload-{}", self.0)
    }
}

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "files.file-uploaded.v1", aggregate = "file_upload")]
struct FileUploadedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: FileUploadId,
}

fn main() {
    let event = FileUploadedV1 {
        file_upload_id: FileUploadId(uuid::Uuid::nil()),
    };
    assert_eq!(
        event.aggregate_id(),
        "upload-00000000-0000-0000-0000-000000000000"
    );
    assert_eq!(event.partition_key(), event.aggregate_id());
}
