use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "files.essay-provisioned.v1", aggregate = "file_upload")]
struct EssayProvisionedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: u64,
    #[outbox_event(key)]
    batch_id: String,
}

fn main() {
    let event = EssayProvisionedV1 {
        file_upload_id: 7,
        batch_id: "b-1".into(),
    };
    assert_eq!(event.aggregate_id(), "7");
    assert_eq!(event.partition_key(), "b-1");
}
