use outbox::OutboxEvent;

#[derive(OutboxEvent)]
#[outbox_event(topic = "files.file-uploaded.v1", aggregate = "file_upload")]
union FileUploadedV1 {
    file_upload_id: u64,
    legacy_id: u32,
}

fn main() {}
