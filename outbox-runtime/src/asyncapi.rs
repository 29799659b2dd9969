//! A machine-readable catalogue of the events a binary publishes: an
//! [AsyncAPI 3.0.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0)
//! document built from the compile-time registry.
//!
//! - one **channel** per topic (`address` = the topic, with the configured
//!   prefix), listing the messages sent on it;
//! - one **message** per event type: the JSON envelope as payload (with
//!   `event_type`, `version` and `aggregate_type` fixed to the event's
//!   values), the Kafka headers the relay sets, the correlation id location
//!   and the Kafka key;
//! - one **send operation** per channel;
//! - the payload's own JSON schema as the envelope's `data` when the event
//!   type opts in with `#[outbox_event(json_schema)]` (feature `json-schema`,
//!   the type derives `schemars::JsonSchema`); otherwise `data` is any JSON.
//!
//! ```
//! use outbox::registry::asyncapi::{asyncapi_document, AsyncApiInfo};
//! use outbox::OutboxEvent;
//! use serde::Serialize;
//!
//! /// A file was added to a batch.
//! #[derive(Serialize, OutboxEvent)]
//! #[outbox_event(topic = "files.batch-file-added.v1", aggregate = "file_upload")]
//! struct BatchFileAddedV1 {
//!     #[outbox_event(aggregate_id)]
//!     file_upload_id: u64,
//! }
//!
//! let doc = asyncapi_document(&AsyncApiInfo::new("file_service", "1.4.0"));
//! assert_eq!(doc["asyncapi"], "3.0.0");
//! let channel = &doc["channels"]["files.batch-file-added.v1"];
//! assert_eq!(channel["address"], "files.batch-file-added.v1");
//! let message = &doc["components"]["messages"]["BatchFileAddedV1"];
//! assert_eq!(message["summary"], "A file was added to a batch.");
//! ```

use crate::event::EventRegistration;
use crate::registry;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The AsyncAPI version of the generated documents.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// Name of the shared headers schema in `components.schemas`.
const HEADERS_SCHEMA: &str = "OutboxKafkaHeaders";

/// What the document says about the application itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AsyncApiInfo {
    /// `info.title`, e.g. the service name.
    pub title: String,
    /// `info.version`: the version of the service's event API.
    pub version: String,
    /// `info.description`.
    pub description: Option<String>,
    /// Prepended to every topic in channel addresses, as the relay's
    /// `topic_prefix` does (e.g. `staging.`).
    pub topic_prefix: String,
    /// A Kafka bootstrap address (`HOST:PORT`) listed under `servers`.
    pub kafka_server: Option<String>,
}

impl AsyncApiInfo {
    /// Info with a title and version, no description, prefix or server.
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            version: version.into(),
            ..Self::default()
        }
    }
}

/// The AsyncAPI 3.0.0 document of every event in this binary's registry.
///
/// When two Rust types declare the same event type (a registry conflict,
/// see [`registry::validate`]), the first one in registry order is
/// described.
pub fn asyncapi_document(info: &AsyncApiInfo) -> Value {
    asyncapi_document_for(info, &registry::registrations())
}

/// The AsyncAPI 3.0.0 document of the given registrations.
pub fn asyncapi_document_for(info: &AsyncApiInfo, registrations: &[&EventRegistration]) -> Value {
    let mut by_event_type: BTreeMap<&str, &EventRegistration> = BTreeMap::new();
    for registration in registrations {
        by_event_type
            .entry(registration.event_type)
            .or_insert(registration);
    }

    let mut channels: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    let mut messages = Map::new();
    let mut schemas = Map::new();
    schemas.insert(HEADERS_SCHEMA.to_owned(), headers_schema());

    for registration in by_event_type.values() {
        let event_type = registration.event_type;
        let data = match registration.payload_schema {
            Some(schema_fn) => {
                let name = format!("{event_type}.data");
                schemas.insert(name.clone(), embed_schema(schema_fn(), &name));
                json!({ "$ref": format!("#/components/schemas/{name}") })
            }
            None => json!({
                "description": "The event's data as its `Serialize` impl writes it; its schema is \
                                published when the type derives `schemars::JsonSchema` and sets \
                                `#[outbox_event(json_schema)]`."
            }),
        };
        messages.insert(event_type.to_owned(), message(registration, data));
        channels.entry(registration.topic).or_default().insert(
            event_type.to_owned(),
            json!({ "$ref": format!("#/components/messages/{}", pointer_escape(event_type)) }),
        );
    }

    let mut channel_objects = Map::new();
    let mut operations = Map::new();
    for (topic, channel_messages) in channels {
        let channel_ref = format!("#/channels/{}", pointer_escape(topic));
        let operation_messages: Vec<Value> = channel_messages
            .keys()
            .map(|m| json!({ "$ref": format!("{channel_ref}/messages/{}", pointer_escape(m)) }))
            .collect();
        let event_types: Vec<&str> = channel_messages.keys().map(String::as_str).collect();
        channel_objects.insert(
            topic.to_owned(),
            json!({
                "address": format!("{}{topic}", info.topic_prefix),
                "title": topic,
                "description": format!("Kafka topic carrying {}.", event_types.join(", ")),
                "messages": channel_messages,
            }),
        );
        operations.insert(
            format!("send.{topic}"),
            json!({
                "action": "send",
                "channel": { "$ref": channel_ref },
                "summary": format!("The outbox relay delivers committed events to `{}{topic}`.", info.topic_prefix),
                "messages": operation_messages,
            }),
        );
    }

    let mut info_object = Map::new();
    info_object.insert("title".into(), info.title.clone().into());
    info_object.insert("version".into(), info.version.clone().into());
    if let Some(description) = &info.description {
        info_object.insert("description".into(), description.clone().into());
    }
    let mut doc = Map::new();
    doc.insert("asyncapi".into(), ASYNCAPI_VERSION.into());
    doc.insert("info".into(), Value::Object(info_object));
    if let Some(server) = &info.kafka_server {
        doc.insert(
            "servers".into(),
            json!({ "kafka": { "host": server, "protocol": "kafka" } }),
        );
    }
    doc.insert("defaultContentType".into(), "application/json".into());
    doc.insert("channels".into(), Value::Object(channel_objects));
    doc.insert("operations".into(), Value::Object(operations));
    doc.insert(
        "components".into(),
        json!({ "messages": messages, "schemas": schemas }),
    );
    Value::Object(doc)
}

fn message(registration: &EventRegistration, data: Value) -> Value {
    let mut message = Map::new();
    message.insert("name".into(), registration.event_type.into());
    message.insert("title".into(), registration.event_type.into());
    let description = registration.description.trim();
    if !description.is_empty() {
        let summary = description.lines().next().unwrap_or(description);
        message.insert("summary".into(), summary.into());
        message.insert("description".into(), description.into());
    }
    message.insert("contentType".into(), "application/json".into());
    message.insert(
        "headers".into(),
        json!({ "$ref": format!("#/components/schemas/{HEADERS_SCHEMA}") }),
    );
    message.insert("payload".into(), envelope_schema(registration, data));
    message.insert(
        "correlationId".into(),
        json!({
            "description": "Correlates all events caused by one request or message.",
            "location": "$message.header#/correlation_id",
        }),
    );
    message.insert(
        "bindings".into(),
        json!({
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "The aggregate id, or the field marked `#[outbox_event(key)]`.",
                },
                "bindingVersion": "0.5.0",
            }
        }),
    );
    message.insert(
        "x-outbox".into(),
        json!({
            "rust_type": registration.rust_type,
            "topic": registration.topic,
            "aggregate_type": registration.aggregate_type,
            "version": registration.version,
        }),
    );
    Value::Object(message)
}

/// The envelope (see `docs/reference/envelope.md`) with this event's fixed values.
fn envelope_schema(registration: &EventRegistration, data: Value) -> Value {
    json!({
        "type": "object",
        "description": "The outbox envelope: the Kafka message value.",
        "required": [
            "event_id", "event_type", "version", "event_timestamp", "source_service",
            "correlation_id", "aggregate_type", "aggregate_id", "data",
        ],
        "properties": {
            "event_id": {
                "type": "string", "format": "uuid",
                "description": "Unique, stable id of this event (UUID v7); consumers de-duplicate on it.",
            },
            "event_type": { "type": "string", "const": registration.event_type },
            "version": {
                "type": "integer", "const": registration.version,
                "description": "Schema version of `data`.",
            },
            "event_timestamp": {
                "type": "string", "format": "date-time",
                "description": "When the event was added to the outbox.",
            },
            "source_service": { "type": "string", "description": "The publishing service." },
            "correlation_id": { "type": "string", "format": "uuid" },
            "aggregate_type": { "type": "string", "const": registration.aggregate_type },
            "aggregate_id": {
                "type": "string",
                "description": "Events of one aggregate are delivered in commit order.",
            },
            "data": data,
            "metadata": {
                "type": "object",
                "description": "W3C trace context and other metadata.",
                "properties": {
                    "traceparent": { "type": "string" },
                    "tracestate": { "type": "string" },
                },
                "additionalProperties": true,
            },
        },
    })
}

fn headers_schema() -> Value {
    let text = |description: &str| json!({ "type": "string", "description": description });
    json!({
        "type": "object",
        "description": "Kafka headers set by the outbox relay (UTF-8 strings).",
        "required": ["event_id", "event_type", "aggregate_type", "aggregate_id"],
        "properties": {
            "event_id": { "type": "string", "format": "uuid", "description": "The envelope's `event_id`." },
            "event_type": text("The envelope's `event_type`."),
            "aggregate_type": text("The envelope's `aggregate_type`."),
            "aggregate_id": text("The envelope's `aggregate_id`."),
            "correlation_id": { "type": "string", "format": "uuid", "description": "The envelope's `correlation_id`." },
            "traceparent": text("W3C trace context captured when the event was published."),
            "tracestate": text("W3C trace state, when present."),
        },
    })
}

/// Prepares a payload's root schema for `components.schemas.<name>`: drops
/// the `$schema` keyword and rewrites its local references
/// (`#/definitions/X`, `#/$defs/X`, `#`) to absolute pointers into the
/// document, so its definitions stay nested under it and never collide with
/// another payload's.
fn embed_schema(mut schema: Value, name: &str) -> Value {
    if let Value::Object(map) = &mut schema {
        map.remove("$schema");
    }
    let base = format!("#/components/schemas/{}", pointer_escape(name));
    rewrite_refs(&mut schema, &base);
    schema
}

fn rewrite_refs(value: &mut Value, base: &str) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    Value::String(target) if key == "$ref" => {
                        if let Some(pointer) = target.strip_prefix('#') {
                            *target = format!("{base}{pointer}");
                        }
                    }
                    _ => rewrite_refs(child, base),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rewrite_refs(item, base)),
        _ => {}
    }
}

/// Escapes a key for use in a JSON pointer (RFC 6901).
fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tid() -> core::any::TypeId {
        core::any::TypeId::of::<()>()
    }

    fn payload() -> Value {
        json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "title": "Added",
            "type": "object",
            "properties": { "file": { "$ref": "#/definitions/File" } },
            "definitions": { "File": { "type": "object", "properties": { "name": { "type": "string" } } } },
        })
    }

    static ADDED: EventRegistration = EventRegistration::new(
        "svc::Added",
        "files.Added",
        "files.added.v1",
        "file_upload",
        2,
        "A file was added.\n\nMore words.",
        tid,
        Some(payload),
    );
    static REMOVED: EventRegistration = EventRegistration::new(
        "svc::Removed",
        "Removed",
        "files.added.v1",
        "file_upload",
        1,
        "",
        tid,
        None,
    );
    static OTHER: EventRegistration = EventRegistration::new(
        "svc::Closed",
        "Closed",
        "batches.closed.v1",
        "batch",
        1,
        "",
        tid,
        None,
    );

    fn doc() -> Value {
        let mut info = AsyncApiInfo::new("svc", "2.0.0");
        info.topic_prefix = "staging.".into();
        info.kafka_server = Some("127.0.0.1:9092".into());
        asyncapi_document_for(&info, &[&ADDED, &REMOVED, &OTHER])
    }

    #[test]
    fn channels_group_event_types_by_topic() {
        let doc = doc();
        let channel = &doc["channels"]["files.added.v1"];
        assert_eq!(channel["address"], "staging.files.added.v1");
        assert_eq!(
            channel["messages"]["files.Added"]["$ref"],
            "#/components/messages/files.Added"
        );
        assert_eq!(
            channel["messages"]["Removed"]["$ref"],
            "#/components/messages/Removed"
        );
        let operation = &doc["operations"]["send.files.added.v1"];
        assert_eq!(operation["action"], "send");
        assert_eq!(operation["channel"]["$ref"], "#/channels/files.added.v1");
        assert_eq!(
            operation["messages"][0]["$ref"],
            "#/channels/files.added.v1/messages/Removed"
        );
        assert_eq!(doc["servers"]["kafka"]["host"], "127.0.0.1:9092");
        assert_eq!(doc["channels"].as_object().map(Map::len), Some(2));
    }

    #[test]
    fn messages_carry_envelope_headers_and_payload_schema() {
        let doc = doc();
        let message = &doc["components"]["messages"]["files.Added"];
        assert_eq!(message["summary"], "A file was added.");
        let envelope = &message["payload"];
        assert_eq!(envelope["properties"]["event_type"]["const"], "files.Added");
        assert_eq!(envelope["properties"]["version"]["const"], 2);
        assert_eq!(
            envelope["properties"]["data"]["$ref"],
            "#/components/schemas/files.Added.data"
        );
        let data = &doc["components"]["schemas"]["files.Added.data"];
        assert!(data.get("$schema").is_none());
        assert_eq!(
            data["properties"]["file"]["$ref"],
            "#/components/schemas/files.Added.data/definitions/File"
        );
        let removed = &doc["components"]["messages"]["Removed"];
        assert!(removed.get("summary").is_none());
        assert!(removed["payload"]["properties"]["data"]
            .get("$ref")
            .is_none());
    }

    #[test]
    fn every_reference_resolves_inside_the_document() {
        fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
            match value {
                Value::Object(map) => {
                    for (key, child) in map {
                        match child {
                            Value::String(target) if key == "$ref" => out.push(target),
                            _ => refs(child, out),
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|item| refs(item, out)),
                _ => {}
            }
        }
        let doc = doc();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(all.len() > 8, "{all:?}");
        for target in all {
            let pointer = target.strip_prefix('#').unwrap_or(target);
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {target}");
        }
    }

    #[test]
    fn pointer_escaping() {
        assert_eq!(pointer_escape("a/b~c"), "a~1b~0c");
    }
}
