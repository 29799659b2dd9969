use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "files.file-uploaded.v2", aggregate = "file_upload")]
#[outbox_event(event_type = "files.FileUploaded", version = 2)]
struct FileUploaded {
    #[outbox_event(aggregate_id)]
    file_upload_id: u64,
}

fn main() {
    let registration = outbox::registry::by_event_type("files.FileUploaded").unwrap();
    assert_eq!(registration.version, 2);
    assert_eq!(registration.topic, "files.file-uploaded.v2");
    assert!(registration.rust_type.ends_with("::FileUploaded"));
    assert_eq!(FileUploaded::REGISTRATION.event_type, "files.FileUploaded");
    assert!(outbox::registry::by_event_type("FileUploaded").is_none());
}
