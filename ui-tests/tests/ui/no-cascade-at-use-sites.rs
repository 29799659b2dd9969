use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "files/uploaded", aggregate = "file_upload")]
struct FileUploadedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: u64,
}

fn route(event: &FileUploadedV1) -> (&'static str, String) {
    (FileUploadedV1::REGISTRATION.topic, event.partition_key())
}

fn registered() -> &'static outbox::EventRegistration {
    outbox::registry::of::<FileUploadedV1>()
}

fn main() {}
