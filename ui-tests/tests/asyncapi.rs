//! The AsyncAPI export of a registry validates against the official
//! AsyncAPI 3.0.0 JSON schema (`tests/schemas/asyncapi-3.0.0.json`), every
//! `$ref` in it resolves, and a real envelope validates against its
//! message's payload schema.

use outbox::registry::asyncapi::{asyncapi_document, AsyncApiInfo};
use outbox::{Envelope, EnvelopeMetadata, OutboxEvent};
use serde::Serialize;
use serde_json::{json, Value};

const ASYNCAPI_SCHEMA: &str = include_str!("../../tests/schemas/asyncapi-3.0.0.json");

#[derive(Serialize, schemars::JsonSchema)]
struct FileRef {
    name: String,
    size_bytes: u64,
}

#[derive(Serialize, schemars::JsonSchema)]
#[allow(dead_code)]
enum Origin {
    Upload,
    Import { source: String },
}

/// A file was added to a batch.
///
/// Sent once per file.
#[derive(Serialize, schemars::JsonSchema, OutboxEvent)]
#[outbox_event(
    topic = "files.batch-file-added.v1",
    aggregate = "file_upload",
    json_schema
)]
struct BatchFileAddedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: u64,
    #[outbox_event(key)]
    batch_id: String,
    file: FileRef,
    origin: Origin,
    tags: Vec<String>,
}

/// A file was removed from its batch.
#[derive(Serialize, OutboxEvent)]
#[outbox_event(
    topic = "files.batch-file-added.v1",
    aggregate = "file_upload",
    event_type = "files.BatchFileRemoved",
    version = 2,
    allow_topic_version_mismatch
)]
struct BatchFileRemoved {
    #[outbox_event(aggregate_id)]
    file_upload_id: u64,
}

/// A batch was closed.
#[derive(Serialize, schemars::JsonSchema, OutboxEvent)]
#[outbox_event(topic = "batches.batch-closed.v1", aggregate = "batch", json_schema)]
struct BatchClosedV1 {
    #[outbox_event(aggregate_id)]
    batch_id: String,
    /// Reuses a type another payload also defines.
    last_file: Option<FileRef>,
}

fn document() -> Value {
    let mut info = AsyncApiInfo::new("file_service", "1.4.0");
    info.description = Some("Events of the file service.".into());
    info.topic_prefix = "staging.".into();
    info.kafka_server = Some("kafka.internal:9092".into());
    asyncapi_document(&info)
}

fn errors(schema: &Value, instance: &Value) -> Vec<String> {
    let validator = jsonschema::draft7::new(schema).expect("the schema compiles");
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn export_validates_against_the_asyncapi_3_0_0_schema() {
    let schema: Value = serde_json::from_str(ASYNCAPI_SCHEMA).expect("the shipped schema parses");
    let doc = document();
    let problems = errors(&schema, &doc);
    assert!(
        problems.is_empty(),
        "{problems:#?}\n{}",
        serde_json::to_string_pretty(&doc).unwrap()
    );

    // The validator does catch mistakes: a document without `info`, one
    // with an unknown operation action, one with a malformed message.
    let mut broken = doc.clone();
    broken.as_object_mut().unwrap().remove("info");
    assert!(!errors(&schema, &broken).is_empty());
    let mut broken = doc.clone();
    broken["components"]["messages"]["BatchFileAddedV1"]["contentType"] = json!(5);
    assert!(!errors(&schema, &broken).is_empty());
    let mut broken = doc;
    broken["operations"]["send.files.batch-file-added.v1"]["action"] = json!("publish");
    assert!(!errors(&schema, &broken).is_empty());
}

#[test]
fn channels_messages_and_operations_match_the_registry() {
    let doc = document();
    assert_eq!(doc["asyncapi"], "3.0.0");
    assert_eq!(doc["info"]["title"], "file_service");
    let channels = doc["channels"].as_object().unwrap();
    assert_eq!(
        channels.keys().collect::<Vec<_>>(),
        ["batches.batch-closed.v1", "files.batch-file-added.v1"]
    );
    let files = &channels["files.batch-file-added.v1"];
    assert_eq!(files["address"], "staging.files.batch-file-added.v1");
    let mut in_channel: Vec<_> = files["messages"].as_object().unwrap().keys().collect();
    in_channel.sort();
    assert_eq!(in_channel, ["BatchFileAddedV1", "files.BatchFileRemoved"]);
    assert_eq!(doc["operations"].as_object().unwrap().len(), 2);

    let added = &doc["components"]["messages"]["BatchFileAddedV1"];
    assert_eq!(added["summary"], "A file was added to a batch.");
    assert_eq!(
        added["headers"]["$ref"],
        "#/components/schemas/OutboxKafkaHeaders"
    );
    let envelope = &added["payload"]["properties"];
    assert_eq!(envelope["event_id"]["format"], "uuid");
    assert_eq!(envelope["event_timestamp"]["format"], "date-time");
    assert_eq!(envelope["aggregate_type"]["const"], "file_upload");
    assert!(envelope["metadata"]["properties"]["traceparent"].is_object());
    let data = &doc["components"]["schemas"]["BatchFileAddedV1.data"];
    assert_eq!(data["properties"]["file_upload_id"]["type"], "integer");

    let removed = &doc["components"]["messages"]["files.BatchFileRemoved"];
    assert_eq!(removed["payload"]["properties"]["version"]["const"], 2);
    assert!(removed["payload"]["properties"]["data"]
        .get("$ref")
        .is_none());

    let headers = &doc["components"]["schemas"]["OutboxKafkaHeaders"]["properties"];
    for name in [
        "event_id",
        "event_type",
        "aggregate_type",
        "aggregate_id",
        "correlation_id",
        "traceparent",
    ] {
        assert!(headers[name].is_object(), "header {name}");
    }
}

fn collect_refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match child {
                    Value::String(target) if key == "$ref" => out.push(target),
                    _ => collect_refs(child, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, out)),
        _ => {}
    }
}

#[test]
fn every_reference_resolves_inside_the_document() {
    let doc = document();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(
        refs.iter().any(|r| r.contains("/definitions/FileRef")),
        "{refs:?}"
    );
    for target in refs {
        let pointer = target.strip_prefix('#').expect("local reference");
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {target}");
    }
}

/// The document as a JSON schema whose root is one message's payload, so
/// its `#/components/...` references resolve.
fn payload_validator_errors(doc: &Value, message: &str, instance: &Value) -> Vec<String> {
    let mut schema = doc.clone();
    schema["$ref"] = json!(format!("#/components/messages/{message}/payload"));
    errors(&schema, instance)
}

#[test]
fn a_real_envelope_validates_against_its_message_payload() {
    let doc = document();
    let event = BatchFileAddedV1 {
        file_upload_id: 7,
        batch_id: "b-1".into(),
        file: FileRef {
            name: "essay.txt".into(),
            size_bytes: 12,
        },
        origin: Origin::Import {
            source: "lms".into(),
        },
        tags: vec!["draft".into()],
    };
    let envelope = Envelope {
        event_id: uuid::Uuid::now_v7(),
        event_type: "BatchFileAddedV1".into(),
        version: 1,
        event_timestamp: chrono::Utc::now(),
        source_service: "file_service".into(),
        correlation_id: uuid::Uuid::new_v4(),
        aggregate_type: "file_upload".into(),
        aggregate_id: event.aggregate_id(),
        data: serde_json::to_value(&event).unwrap(),
        metadata: EnvelopeMetadata {
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            ..EnvelopeMetadata::default()
        },
    };
    let instance = serde_json::to_value(&envelope).unwrap();
    let problems = payload_validator_errors(&doc, "BatchFileAddedV1", &instance);
    assert!(problems.is_empty(), "{problems:#?}");

    let mut wrong_type = instance.clone();
    wrong_type["event_type"] = json!("SomethingElse");
    assert!(!payload_validator_errors(&doc, "BatchFileAddedV1", &wrong_type).is_empty());
    let mut wrong_data = instance;
    wrong_data["data"]["file"]["size_bytes"] = json!("twelve");
    assert!(!payload_validator_errors(&doc, "BatchFileAddedV1", &wrong_data).is_empty());
}
