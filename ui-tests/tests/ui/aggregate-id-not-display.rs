use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize)]
struct FileUploadId(u64);

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "files.file-uploaded.v1", aggregate = "file_upload")]
struct FileUploadedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: FileUploadId,
}

fn main() {}
