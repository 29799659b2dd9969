use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "files.file-uploaded.v1", aggregate = "file_upload")]
struct FileUploadedV1(u64);

fn main() {}
