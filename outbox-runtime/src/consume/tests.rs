use super::*;
use crate::event::EventRegistration;
use crate::OutboxEvent;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Scored {
    essay_id: String,
    score: i32,
}

fn tid() -> core::any::TypeId {
    core::any::TypeId::of::<Scored>()
}

impl OutboxEvent for Scored {
    const REGISTRATION: EventRegistration = EventRegistration::new(
        "tests::Scored",
        "ScoredV1",
        "essay.scored.v1",
        "essay",
        2,
        "",
        tid,
        None,
    );

    fn aggregate_id(&self) -> String {
        self.essay_id.clone()
    }
}

fn envelope(event_type: &str, version: u32, data: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "event_id": Uuid::nil(),
        "event_type": event_type,
        "version": version,
        "event_timestamp": "2026-11-23T10:00:00Z",
        "source_service": "svc",
        "correlation_id": Uuid::nil(),
        "aggregate_type": "essay",
        "aggregate_id": "e-1",
        "data": data,
    }))
    .unwrap()
}

fn dispatcher() -> Dispatcher {
    Dispatcher::new().register::<Scored>(|_, _| Box::pin(async { Ok(()) }))
}

#[test]
fn decodes_the_registered_type() {
    let bytes = envelope("ScoredV1", 2, json!({"essay_id": "e-1", "score": 7}));
    let e = decode::<Scored>(&bytes[..]).unwrap();
    assert_eq!(
        e.data,
        Scored {
            essay_id: "e-1".into(),
            score: 7
        }
    );
    assert_eq!(e.version, 2);
    let d = dispatcher().decode(&bytes[..]).unwrap();
    assert_eq!(d.info().event_type, "ScoredV1");
    assert_eq!(d.info().aggregate_id, "e-1");
}

#[test]
fn every_failure_is_typed() {
    let d = dispatcher();
    let not_json = d.decode(&b"{oops"[..]).unwrap_err();
    assert!(
        matches!(not_json, ConsumeError::MalformedEnvelope { .. }),
        "{not_json}"
    );
    let no_data = d
        .decode(&br#"{"event_id":"00000000-0000-0000-0000-000000000000"}"#[..])
        .unwrap_err();
    assert!(
        matches!(no_data, ConsumeError::MalformedEnvelope { .. }),
        "{no_data}"
    );

    let unknown = d
        .decode(&envelope("NoSuchEventV1", 1, json!({}))[..])
        .unwrap_err();
    match &unknown {
        ConsumeError::UnknownEventType {
            event_type, known, ..
        } => {
            assert_eq!(event_type, "NoSuchEventV1");
            assert_eq!(known, "ScoredV1");
        }
        other => panic!("{other}"),
    }

    let old = d
        .decode(&envelope("ScoredV1", 1, json!({"essay_id": "e", "score": 1}))[..])
        .unwrap_err();
    assert!(
        matches!(
            old,
            ConsumeError::VersionMismatch {
                expected: 2,
                found: 1,
                ..
            }
        ),
        "{old}"
    );

    let bad = d
        .decode(&envelope("ScoredV1", 2, json!({"essay_id": "e"}))[..])
        .unwrap_err();
    assert!(
        matches!(
            bad,
            ConsumeError::MalformedPayload {
                rust_type: "tests::Scored",
                ..
            }
        ),
        "{bad}"
    );
    // serde's message, naming the missing field, is the cause.
    let cause = std::error::Error::source(&bad).map(ToString::to_string);
    assert!(
        cause.as_deref().is_some_and(|c| c.contains("score")),
        "{bad}: {cause:?}"
    );
    assert_eq!(bad.event_id(), Some(Uuid::nil()));

    let other = decode::<Scored>(&envelope("OtherV1", 2, json!({}))[..]).unwrap_err();
    assert!(matches!(
        other,
        ConsumeError::UnexpectedEventType {
            expected: "ScoredV1",
            ..
        }
    ));
}

#[test]
fn duplicate_and_missing_handlers_are_reported() {
    assert_eq!(Dispatcher::new().validate(), Err(DispatcherError::Empty));
    let twice = dispatcher().register::<Scored>(|_, _| Box::pin(async { Ok(()) }));
    let err = twice.validate().unwrap_err();
    assert!(matches!(
        err,
        DispatcherError::DuplicateHandler {
            event_type: "ScoredV1",
            ..
        }
    ));
    assert_eq!(dispatcher().validate(), Ok(()));
    assert_eq!(dispatcher().topics("staging."), ["staging.essay.scored.v1"]);
}
