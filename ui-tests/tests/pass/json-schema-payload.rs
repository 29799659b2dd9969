use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, schemars::JsonSchema)]
struct FileRef {
    name: String,
    size_bytes: u64,
}

/// A file was added to a batch.
#[derive(Serialize, schemars::JsonSchema, OutboxEvent)]
#[outbox_event(
    topic = "files.batch-file-added.v1",
    aggregate = "file_upload",
    json_schema
)]
struct BatchFileAddedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: u64,
    file: FileRef,
}

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "files.file-deleted.v1", aggregate = "file_upload")]
struct FileDeletedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: u64,
}

fn main() {
    let schema_fn = BatchFileAddedV1::REGISTRATION
        .payload_schema
        .expect("json_schema fills the payload schema");
    let schema = schema_fn();
    assert_eq!(schema["properties"]["file_upload_id"]["type"], "integer");
    assert!(schema["definitions"]["FileRef"].is_object());
    assert!(FileDeletedV1::REGISTRATION.payload_schema.is_none());
}
