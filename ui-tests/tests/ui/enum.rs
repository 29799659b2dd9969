use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "files.events.v1", aggregate = "file_upload")]
enum FileEvent {
    Uploaded { file_upload_id: u64 },
    Deleted { file_upload_id: u64 },
}

fn main() {}
