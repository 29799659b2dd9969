use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "batches.batch-registered.v1", aggregate = "batch")]
struct BatchRegisteredV1 {
    #[outbox_event(aggregate_id)]
    batch_id: String,
}

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "batches.batch-closed.v1", aggregate = "batch")]
struct BatchClosedV1 {
    #[outbox_event(aggregate_id)]
    batch_id: String,
    file_count: u32,
}

fn main() {
    assert_eq!(
        BatchRegisteredV1::REGISTRATION.topic,
        "batches.batch-registered.v1"
    );
    assert_eq!(BatchClosedV1::REGISTRATION.topic, "batches.batch-closed.v1");
    assert_eq!(
        outbox::registry::of::<BatchRegisteredV1>().event_type,
        "BatchRegisteredV1"
    );
    assert_eq!(
        outbox::registry::of::<BatchClosedV1>().event_type,
        "BatchClosedV1"
    );
    let closed = BatchClosedV1 {
        batch_id: "b-1".into(),
        file_count: 2,
    };
    assert_eq!(closed.aggregate_id(), "b-1");
    outbox::registry::validate().unwrap();
}
