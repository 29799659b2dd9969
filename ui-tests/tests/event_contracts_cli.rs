//! `outbox registry check` in a service built with the `json-schema`
//! feature: the payload schemas are compared too. The snapshot is edited
//! the opposite way of the code edit it stands for.

use std::path::PathBuf;
use std::process::ExitCode;

use outbox::registry::snapshot;
use outbox::OutboxEvent;
use serde::Serialize;
use serde_json::{json, Value};

/// A file was added to a batch (the File Service example's event, with an
/// optional field).
#[derive(Serialize, schemars::JsonSchema, OutboxEvent)]
#[outbox_event(
    topic = "files.batch-file-added.v1",
    aggregate = "file_upload",
    json_schema
)]
struct BatchFileAddedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: String,
    #[outbox_event(key)]
    batch_id: String,
    file_name: String,
    mime_type: Option<String>,
}

fn snapshot_file(name: &str, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let text = snapshot::snapshot().to_json().expect("encodes");
    let mut value: Value = serde_json::from_str(&text).expect("JSON");
    edit(&mut value["events"][0]["payload_schema"]);
    let path = std::env::temp_dir().join(format!(
        "outbox-contracts-{name}-{}.lock.json",
        std::process::id()
    ));
    std::fs::write(&path, value.to_string()).expect("writes the snapshot");
    path
}

fn check_exit(path: &PathBuf) -> ExitCode {
    let path_text = path.to_string_lossy().into_owned();
    let code = outbox::cli::run_from(["outbox", "registry", "check", "--against", &path_text]);
    let _ = std::fs::remove_file(path);
    code
}

#[test]
fn the_check_passes_against_the_services_own_snapshot() {
    let schema = &snapshot::snapshot().events[0].payload_schema;
    assert!(
        schema.is_some(),
        "built with `json-schema`, the snapshot holds the payload schema"
    );
    assert_eq!(
        check_exit(&snapshot_file("same", |_| {})),
        ExitCode::SUCCESS
    );
}

#[test]
fn a_removed_field_fails_the_check() {
    // The snapshot has `legacy_path`, required: the code removed it.
    let path = snapshot_file("removed", |schema| {
        schema["properties"]["legacy_path"] = json!({ "type": "string" });
        schema["required"]
            .as_array_mut()
            .expect("required")
            .push("legacy_path".into());
    });
    assert_eq!(check_exit(&path), ExitCode::from(4));
}

#[test]
fn a_changed_field_type_fails_the_check() {
    let path = snapshot_file("retyped", |schema| {
        schema["properties"]["file_name"] = json!({ "type": "integer" });
    });
    assert_eq!(check_exit(&path), ExitCode::from(4));
}

#[test]
fn an_added_optional_field_passes_the_check() {
    // The snapshot lacks `mime_type`: the code added it, optional.
    let path = snapshot_file("additive", |schema| {
        let _ = schema["properties"]
            .as_object_mut()
            .expect("properties")
            .remove("mime_type");
    });
    assert_eq!(check_exit(&path), ExitCode::SUCCESS);
}
