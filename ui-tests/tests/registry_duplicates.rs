//! Event types declared twice cannot be seen by the compiler (they may live
//! in different crates); `outbox::registry::validate()` reports them at
//! start-up, naming both Rust types. A separate test binary, so its
//! conflicts do not leak into the other registry tests.

use outbox::registry::{validate, RegistryConflict};

mod billing {
    use outbox::OutboxEvent;
    use serde::Serialize;

    #[derive(Serialize, OutboxEvent)]
    #[outbox_event(topic = "batches.batch-closed.v1", aggregate = "batch")]
    pub(crate) struct BatchClosedV1 {
        #[outbox_event(aggregate_id)]
        pub(crate) batch_id: String,
    }
}

mod grading {
    use outbox::OutboxEvent;
    use serde::Serialize;

    #[derive(Serialize, OutboxEvent)]
    #[outbox_event(topic = "batches.batch-closed.v1", aggregate = "batch")]
    pub(crate) struct BatchClosedV1 {
        #[outbox_event(aggregate_id)]
        pub(crate) batch_id: String,
    }
}

mod reporting {
    use outbox::OutboxEvent;
    use serde::Serialize;

    #[derive(Serialize, OutboxEvent)]
    #[outbox_event(topic = "reports.batch-closed.v1", aggregate = "batch")]
    pub(crate) struct BatchClosedV1 {
        #[outbox_event(aggregate_id)]
        pub(crate) batch_id: String,
    }
}

const BILLING: &str = concat!(module_path!(), "::billing::BatchClosedV1");
const GRADING: &str = concat!(module_path!(), "::grading::BatchClosedV1");
const REPORTING: &str = concat!(module_path!(), "::reporting::BatchClosedV1");

#[test]
fn validate_reports_duplicates_and_topic_mismatches_naming_both_types() {
    let err = validate().expect_err("three types share one event type");
    assert_eq!(
        err.conflicts,
        [
            RegistryConflict::DuplicateEventType {
                event_type: "BatchClosedV1",
                first: BILLING,
                second: GRADING,
            },
            RegistryConflict::TopicMismatch {
                event_type: "BatchClosedV1",
                first: BILLING,
                first_topic: "batches.batch-closed.v1",
                second: REPORTING,
                second_topic: "reports.batch-closed.v1",
            },
        ]
    );
    let message = err.to_string();
    for rust_type in [BILLING, GRADING, REPORTING] {
        assert!(message.contains(rust_type), "{message}");
    }
}
