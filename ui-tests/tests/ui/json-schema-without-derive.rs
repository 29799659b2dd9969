use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(
    topic = "files.file-uploaded.v1",
    aggregate = "file_upload",
    json_schema
)]
struct FileUploadedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: u64,
}

fn main() {}
