use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(
    topic = "files/uploaded",
    aggregate = "FileUpload",
    version = 0,
    colour = "red"
)]
struct FileUploadedV1 {
    #[outbox_event(key, partition)]
    file_upload_id: u64,
}

fn main() {}
