use outbox::OutboxEvent;
use serde::Serialize;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "matches.match-scored.v1", aggregate = "match")]
struct r#MatchScored {
    #[outbox_event(aggregate_id)]
    r#match: u64,
    #[outbox_event(key)]
    r#type: String,
}

fn main() {
    assert_eq!(r#MatchScored::REGISTRATION.event_type, "MatchScored");
    assert!(r#MatchScored::REGISTRATION
        .rust_type
        .ends_with("::MatchScored"));
    let event = r#MatchScored {
        r#match: 9,
        r#type: "final".into(),
    };
    assert_eq!(event.aggregate_id(), "9");
    assert_eq!(event.partition_key(), "final");
}
