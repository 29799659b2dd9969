//! The kit's messages, snapshotted: each helper's failure text in full.

use super::check;
use super::harness::DeliveryContext;
use super::read_back::merge_partitions;
use super::*;
use crate::consume::MessageLocation;
use crate::{Envelope, EnvelopeMetadata, EventRegistration, InboxOutcome, OutboxEvent};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

fn tid<T: 'static>() -> core::any::TypeId {
    core::any::TypeId::of::<T>()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FileAdded {
    file_id: String,
    batch_id: String,
    size: u32,
}

impl OutboxEvent for FileAdded {
    const REGISTRATION: EventRegistration = EventRegistration::new(
        "kit::FileAdded",
        "FileAddedV1",
        "files.added.v1",
        "file",
        1,
        "",
        tid::<FileAdded>,
        None,
    );

    fn aggregate_id(&self) -> String {
        self.file_id.clone()
    }

    fn partition_key(&self) -> String {
        self.batch_id.clone()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct FileRemoved {
    file_id: String,
}

impl OutboxEvent for FileRemoved {
    const REGISTRATION: EventRegistration = EventRegistration::new(
        "kit::FileRemoved",
        "FileRemovedV2",
        "files.removed.v2",
        "file",
        2,
        "",
        tid::<FileRemoved>,
        None,
    );

    fn aggregate_id(&self) -> String {
        self.file_id.clone()
    }
}

/// Implements the trait but was never submitted to the registry.
#[derive(Debug, Serialize, Deserialize)]
struct Unlisted {
    id: String,
}

impl OutboxEvent for Unlisted {
    const REGISTRATION: EventRegistration = EventRegistration::new(
        "kit::Unlisted",
        "UnlistedV1",
        "unlisted.v1",
        "thing",
        1,
        "",
        tid::<Unlisted>,
        None,
    );

    fn aggregate_id(&self) -> String {
        self.id.clone()
    }
}

inventory::submit! { FileAdded::REGISTRATION }
inventory::submit! { FileRemoved::REGISTRATION }

fn added(file: &str, size: u32) -> FileAdded {
    FileAdded {
        file_id: file.into(),
        batch_id: "b-1".into(),
        size,
    }
}

fn removed(file: &str) -> FileRemoved {
    FileRemoved {
        file_id: file.into(),
    }
}

/// `event` as published, with event id `n`.
fn recorded<E: OutboxEvent>(n: u128, event: &E) -> RecordedEvent {
    let r = E::REGISTRATION;
    RecordedEvent {
        topic: r.topic.into(),
        key: event.partition_key(),
        envelope: Envelope {
            event_id: Uuid::from_u128(n),
            event_type: r.event_type.into(),
            version: r.version,
            event_timestamp: chrono::DateTime::UNIX_EPOCH,
            source_service: "file_service".into(),
            correlation_id: Uuid::from_u128(0xc0),
            aggregate_type: r.aggregate_type.into(),
            aggregate_id: event.aggregate_id(),
            data: serde_json::to_value(event).unwrap(),
            metadata: EnvelopeMetadata {
                traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
                ..EnvelopeMetadata::default()
            },
        },
        location: None,
    }
}

fn published(events: Vec<RecordedEvent>) -> Published {
    Published::new(events, "published since the mark")
}

/// The message `assert` panics with.
fn panic_text(assert: impl FnOnce()) -> String {
    let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(assert))
        .expect_err("the assertion passed");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[test]
fn of_decodes_the_events_of_one_type_with_their_envelope_fields() {
    let p = published(vec![
        recorded(1, &added("f-1", 10)),
        recorded(2, &removed("f-9")),
        recorded(3, &added("f-2", 20)),
    ]);
    let events = p.of::<FileAdded>().unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0],
        PublishedEvent {
            event_id: Uuid::from_u128(1),
            event_type: "FileAddedV1".into(),
            version: 1,
            source_service: "file_service".into(),
            aggregate_type: "file".into(),
            aggregate_id: "f-1".into(),
            topic: "files.added.v1".into(),
            key: "b-1".into(),
            correlation_id: Uuid::from_u128(0xc0),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            data: added("f-1", 10),
        }
    );
    assert_eq!(
        p.data_of::<FileAdded>().unwrap(),
        [added("f-1", 10), added("f-2", 20)]
    );
    assert_eq!(p.data_of::<FileRemoved>().unwrap(), [removed("f-9")]);
    assert_eq!(p.for_aggregate("f-2").len(), 1);
}

#[test]
fn matching_assertions_pass() {
    let p = published(vec![
        recorded(1, &added("f-1", 10)),
        recorded(2, &removed("f-2")),
        recorded(3, &removed("f-1")),
    ]);
    p.assert_exactly(&[&added("f-1", 10), &removed("f-2"), &removed("f-1")]);
    p.assert_exactly_for("f-1", &[&added("f-1", 10), &removed("f-1")]);
    p.assert_exactly_for("f-3", &[]);
    published(vec![]).assert_nothing();
}

#[test]
fn assert_nothing_lists_what_was_published() {
    let p = published(vec![
        recorded(1, &added("f-1", 10)),
        recorded(2, &removed("f-1")),
    ]);
    assert_eq!(
        panic_text(|| p.assert_nothing()),
        "expected nothing published since the mark, but 2 events were:
  1. FileAddedV1 of file `f-1`: {\"batch_id\":\"b-1\",\"file_id\":\"f-1\",\"size\":10} (event 00000000-0000-0000-0000-000000000001)
  2. FileRemovedV2 of file `f-1`: {\"file_id\":\"f-1\"} (event 00000000-0000-0000-0000-000000000002)"
    );
}

#[test]
fn assert_exactly_names_the_first_difference_in_the_data() {
    let p = published(vec![recorded(1, &added("f-1", 10))]);
    assert_eq!(
        check::exactly(p.events(), &[&added("f-1", 12)], "published since the mark", None)
            .unwrap_err(),
        "expected exactly this event published since the mark, in this order:
  1. FileAddedV1 of file `f-1`: {\"batch_id\":\"b-1\",\"file_id\":\"f-1\",\"size\":12}
but 1 event was:
  1. FileAddedV1 of file `f-1`: {\"batch_id\":\"b-1\",\"file_id\":\"f-1\",\"size\":10} (event 00000000-0000-0000-0000-000000000001)
first difference: event 1 (`FileAddedV1`) differs in data: `size` is 10, expected 12"
    );
}

#[test]
fn assert_exactly_names_a_wrong_type_a_missing_and_an_extra_event() {
    let p = published(vec![
        recorded(1, &removed("f-1")),
        recorded(2, &added("f-1", 1)),
    ]);
    let origin = "published since the mark";
    let wrong_type = check::exactly(p.events(), &[&added("f-1", 1)], origin, None).unwrap_err();
    assert!(
        wrong_type
            .ends_with("first difference: event 1 is `FileRemovedV2`, expected `FileAddedV1`"),
        "{wrong_type}"
    );
    let extra = check::exactly(&p.events()[..1], &[], origin, None).unwrap_err();
    assert_eq!(
        extra,
        "expected nothing published since the mark, but 1 event was:
  1. FileRemovedV2 of file `f-1`: {\"file_id\":\"f-1\"} (event 00000000-0000-0000-0000-000000000001)"
    );
    let missing =
        check::exactly(&[], &[&removed("f-1"), &added("f-1", 1)], origin, None).unwrap_err();
    assert_eq!(
        missing,
        "expected exactly these 2 events published since the mark, in this order:
  1. FileRemovedV2 of file `f-1`: {\"file_id\":\"f-1\"}
  2. FileAddedV1 of file `f-1`: {\"batch_id\":\"b-1\",\"file_id\":\"f-1\",\"size\":1}
but none was
first difference: event 1 (`FileRemovedV2`) was expected but not published"
    );
    let unexpected = check::exactly(p.events(), &[&removed("f-1")], origin, None).unwrap_err();
    assert!(
        unexpected
            .ends_with("first difference: event 2 (`FileAddedV1`) was published but not expected"),
        "{unexpected}"
    );
}

#[test]
fn assert_exactly_for_lists_the_aggregate_and_the_others() {
    let p = published(vec![
        recorded(1, &added("f-2", 5)),
        recorded(2, &removed("f-1")),
        recorded(3, &added("f-1", 7)),
    ]);
    assert_eq!(
        panic_text(|| p.assert_exactly_for("f-1", &[&added("f-1", 7), &removed("f-1")])),
        "expected exactly these 2 events for aggregate `f-1` published since the mark, in this order:
  1. FileAddedV1 of file `f-1`: {\"batch_id\":\"b-1\",\"file_id\":\"f-1\",\"size\":7}
  2. FileRemovedV2 of file `f-1`: {\"file_id\":\"f-1\"}
but 2 events were:
  1. FileRemovedV2 of file `f-1`: {\"file_id\":\"f-1\"} (event 00000000-0000-0000-0000-000000000002)
  2. FileAddedV1 of file `f-1`: {\"batch_id\":\"b-1\",\"file_id\":\"f-1\",\"size\":7} (event 00000000-0000-0000-0000-000000000003)
first difference: event 1 is `FileRemovedV2`, expected `FileAddedV1`
for other aggregates, 1 event was:
  1. FileAddedV1 of file `f-2`: {\"batch_id\":\"b-1\",\"file_id\":\"f-2\",\"size\":5} (event 00000000-0000-0000-0000-000000000001)"
    );
    assert_eq!(
        panic_text(|| p.assert_exactly_for("f-2", &[])),
        "expected nothing for aggregate `f-2` published since the mark, but 1 event was:
  1. FileAddedV1 of file `f-2`: {\"batch_id\":\"b-1\",\"file_id\":\"f-2\",\"size\":5} (event 00000000-0000-0000-0000-000000000001)
for other aggregates, 2 events were:
  1. FileRemovedV2 of file `f-1`: {\"file_id\":\"f-1\"} (event 00000000-0000-0000-0000-000000000002)
  2. FileAddedV1 of file `f-1`: {\"batch_id\":\"b-1\",\"file_id\":\"f-1\",\"size\":7} (event 00000000-0000-0000-0000-000000000003)"
    );
}

#[test]
fn an_aggregate_of_another_type_is_named() {
    let mut other = recorded(1, &removed("f-1"));
    other.envelope.aggregate_type = "folder".into();
    let text = check::exactly(
        &[other],
        &[&removed("f-1")],
        "published since the mark",
        None,
    )
    .unwrap_err();
    assert!(
        text.ends_with("first difference: event 1 is of folder `f-1`, expected file `f-1`"),
        "{text}"
    );
}

#[test]
fn a_type_not_in_the_registry_is_refused() {
    let p = published(vec![]);
    assert_eq!(
        p.of::<Unlisted>().unwrap_err().to_string(),
        "`kit::Unlisted` (event type `UnlistedV1`) is not in the outbox event registry; derive \
         `OutboxEvent` for it, or submit its `EventRegistration` with `inventory::submit!`; \
         registered event types: [FileAddedV1, FileRemovedV2]"
    );
    let err = envelope(&Unlisted { id: "x".into() }).unwrap_err();
    assert!(matches!(err, TestingError::NotRegistered { .. }), "{err}");
}

#[test]
fn a_payload_that_no_longer_decodes_names_the_event_the_type_and_serde() {
    let mut old = recorded(7, &added("f-1", 1));
    old.envelope.data = json!({"file_id": "f-1", "batch_id": "b-1", "size": "large"});
    let err = published(vec![old]).of::<FileAdded>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "event 00000000-0000-0000-0000-000000000007 of type `FileAddedV1` does not decode into \
         `kit::FileAdded`: invalid type: string \"large\", expected u32; the type changed since \
         the event was published, or the test asked for the wrong type"
    );
}

#[test]
fn another_version_is_named() {
    let mut v1 = recorded(8, &removed("f-1"));
    v1.envelope.version = 1;
    let err = published(vec![v1]).of::<FileRemoved>().unwrap_err();
    assert_eq!(
        err.to_string(),
        "event 00000000-0000-0000-0000-000000000008 of type `FileRemovedV2` has version 1, but \
         `kit::FileRemoved` is version 2; ask for the type of that version"
    );
}

#[test]
fn a_missing_table_names_the_table_and_the_migration() {
    let err = TestingError::MissingTable {
        table: "\"billing\".event_outbox".into(),
    };
    assert_eq!(
        err.to_string(),
        "the table `\"billing\".event_outbox` does not exist; migrate the test database first: \
         `#[sqlx::test(migrator = \"outbox::MIGRATOR\")]` or `outbox::migrate(&pool)`, or for a \
         custom schema `outbox::testing::migrate_schema(&pool, \"...\")` and then \
         `Mark::take_in`, `Published::all_in` or `Inbox::schema` with that schema"
    );
}

#[test]
fn too_few_messages_lists_those_that_arrived() {
    let arrived = recorded(1, &added("f-1", 3));
    let err = TestingError::NotProduced {
        expected: 2,
        arrived: 1,
        within: Duration::from_secs(10),
        listing: super::listing::published(&[&arrived]),
    };
    assert_eq!(
        err.to_string(),
        "1 of the 2 awaited messages reached the mock broker within 10s; is a relay running \
         against it (`MockBroker::spawn_relay`), and were the events committed?
  1. FileAddedV1 of file `f-1`: {\"batch_id\":\"b-1\",\"file_id\":\"f-1\",\"size\":3} (event 00000000-0000-0000-0000-000000000001)"
    );
}

#[test]
fn de_duplication_failures_name_the_event_and_the_consumer() {
    let context = DeliveryContext {
        event_id: Uuid::from_u128(5),
        event_type: "FileAddedV1",
        consumer: "batch_service",
    };
    let new = || Ok(InboxOutcome::New);
    let dup = || Ok(InboxOutcome::AlreadyProcessed);
    assert_eq!(context.check_once([new(), dup()]), Ok(()));
    assert_eq!(
        context.check_once([new(), new()]).unwrap_err(),
        "the second delivery of event 00000000-0000-0000-0000-000000000005 (`FileAddedV1`) for \
         consumer `batch_service` ran the handler again: the inbox did not keep the first \
         delivery's record"
    );
    assert_eq!(
        context.check_once([dup(), dup()]).unwrap_err(),
        "the first delivery of event 00000000-0000-0000-0000-000000000005 (`FileAddedV1`) for \
         consumer `batch_service` was skipped: the inbox already held it; build a new envelope \
         (a new event id) for each test"
    );
    let failed = TestingError::Handler {
        event_id: Uuid::from_u128(5),
        event_type: "FileAddedV1".into(),
        source: "batch b-1 does not exist".into(),
    };
    assert_eq!(
        context.check_once([Err(failed), dup()]).unwrap_err(),
        "the first delivery of event 00000000-0000-0000-0000-000000000005 (`FileAddedV1`) for \
         consumer `batch_service` failed: the handler of `FileAddedV1` failed on event \
         00000000-0000-0000-0000-000000000005: batch b-1 does not exist"
    );
}

#[test]
fn envelope_is_the_one_a_consumer_decodes() {
    let event = added("f-1", 4);
    let built = envelope(&event).unwrap();
    assert_eq!(built.event_type, "FileAddedV1");
    assert_eq!(built.version, 1);
    assert_eq!(built.aggregate_type, "file");
    assert_eq!(built.aggregate_id, "f-1");
    assert_eq!(built.source_service, TEST_SOURCE_SERVICE);
    assert_eq!(built.data, event);
    let bytes = serde_json::to_vec(&built).unwrap();
    let decoded: Envelope<FileAdded> = crate::decode(&bytes[..]).unwrap();
    assert_eq!(decoded, built);
    assert_ne!(envelope(&event).unwrap().event_id, built.event_id);
}

#[test]
fn produced_messages_keep_partition_order_and_interleave_by_event_id() {
    let at = |partition: i32, n: u128| {
        let mut e = recorded(n, &added(&format!("f-{n}"), 1));
        e.location = Some(MessageLocation {
            topic: "files.added.v1".into(),
            partition,
            offset: 0,
        });
        e
    };
    // Partition 0 holds 4 before 1 (as delivered); partition 1 holds 2, 3.
    let merged = merge_partitions(vec![at(1, 2), at(0, 4), at(0, 1), at(1, 3)]);
    let ids: Vec<u128> = merged
        .iter()
        .map(|e| e.envelope.event_id.as_u128())
        .collect();
    assert_eq!(ids, [2, 3, 4, 1]);
}
