use outbox::OutboxEvent;

mod files {
    pub mod events {
        use outbox::OutboxEvent;
        use serde::Serialize;

        #[derive(Serialize, OutboxEvent)]
        #[outbox_event(topic = "files.file-uploaded.v1", aggregate = "file_upload")]
        pub struct FileUploadedV1 {
            #[outbox_event(aggregate_id)]
            pub file_upload_id: u64,
        }
    }
}

fn main() {
    let registration = files::events::FileUploadedV1::REGISTRATION;
    assert!(
        registration
            .rust_type
            .ends_with("::files::events::FileUploadedV1"),
        "{}",
        registration.rust_type
    );
    // The default event type is the identifier, not the path: moving the type
    // between modules does not rename the event.
    assert_eq!(registration.event_type, "FileUploadedV1");
    let event = files::events::FileUploadedV1 { file_upload_id: 3 };
    assert_eq!(event.aggregate_id(), "3");
}
