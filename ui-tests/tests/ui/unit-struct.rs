use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "files.all-deleted.v1", aggregate = "file_upload")]
struct AllFilesDeletedV1;

fn main() {}
