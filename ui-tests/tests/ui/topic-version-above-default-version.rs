use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "files.file-uploaded.v2", aggregate = "file_upload")]
struct FileUploadedV2 {
    #[outbox_event(aggregate_id)]
    file_upload_id: u64,
}

fn main() {}
