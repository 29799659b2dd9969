//! The CLI embedded in a service binary reads that binary's registry. This
//! test binary is such a service (`harness = false`): it runs itself as a
//! child process with `outbox registry ...` arguments and checks the output.

use outbox::OutboxEvent;
use serde::Serialize;
use serde_json::Value;
use std::process::{Command, ExitCode};

const CHILD: &str = "OUTBOX_REGISTRY_CLI_CHILD";

type Check = fn() -> Result<(), String>;

/// A file was added to a batch.
#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "files.batch-file-added.v1", aggregate = "file_upload")]
struct BatchFileAddedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: String,
}

/// A batch was closed.
#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "batches.batch-closed.v2", aggregate = "batch", version = 2)]
struct BatchClosedV2 {
    #[outbox_event(aggregate_id)]
    batch_id: String,
    #[outbox_event(key)]
    course_id: String,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cli(args: &[&str]) -> Result<Run, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let output = Command::new(exe)
        .args(args)
        .env(CHILD, "1")
        .env_remove("OUTBOX_TOPIC_PREFIX")
        .output()
        .map_err(|e| e.to_string())?;
    Ok(Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

fn json(run: &Run) -> Result<Value, String> {
    serde_json::from_str(&run.stdout).map_err(|e| format!("not JSON ({e}): {}", run.stdout))
}

fn check(condition: bool, what: &str, run: &Run) -> Result<(), String> {
    if condition {
        Ok(())
    } else {
        Err(format!(
            "{what}\nexit {}\n--- stdout\n{}\n--- stderr\n{}",
            run.code, run.stdout, run.stderr
        ))
    }
}

fn registry_list_shows_this_binarys_events() -> Result<(), String> {
    let run = cli(&["outbox", "registry", "list", "--json"])?;
    check(run.code == 0, "exit 0", &run)?;
    let list = json(&run)?;
    let event_types: Vec<&str> = list
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i["event_type"].as_str())
                .collect()
        })
        .unwrap_or_default();
    check(
        event_types == ["BatchClosedV2", "BatchFileAddedV1"],
        "both events, sorted",
        &run,
    )?;
    check(list[0]["version"] == 2, "version", &run)?;
    check(
        list[1]["topic"] == "files.batch-file-added.v1",
        "topic",
        &run,
    )?;
    check(
        list[1]["description"] == "A file was added to a batch.",
        "description",
        &run,
    )?;

    let table = cli(&["outbox", "registry", "list"])?;
    check(table.code == 0, "exit 0", &table)?;
    check(
        table.stdout.lines().count() == 3,
        "header and two rows",
        &table,
    )?;
    check(
        table.stdout.contains("batches.batch-closed.v2"),
        "topic column",
        &table,
    )
}

fn registry_export_writes_asyncapi() -> Result<(), String> {
    let run = cli(&[
        "outbox",
        "registry",
        "export",
        "--format",
        "asyncapi",
        "--title",
        "svc",
        "--topic-prefix",
        "prod.",
    ])?;
    check(run.code == 0, "exit 0", &run)?;
    let doc = json(&run)?;
    check(doc["asyncapi"] == "3.0.0", "AsyncAPI 3.0.0", &run)?;
    check(doc["info"]["title"] == "svc", "title", &run)?;
    check(
        doc["channels"]["batches.batch-closed.v2"]["address"] == "prod.batches.batch-closed.v2",
        "prefixed channel address",
        &run,
    )?;
    check(
        doc["components"]["messages"]["BatchFileAddedV1"].is_object(),
        "message",
        &run,
    )?;

    let path = std::env::temp_dir().join(format!("outbox-asyncapi-{}.json", std::process::id()));
    let path_text = path.to_string_lossy().into_owned();
    let to_file = cli(&["outbox", "registry", "export", "--output", &path_text])?;
    check(
        to_file.code == 0 && to_file.stdout.is_empty(),
        "nothing on stdout",
        &to_file,
    )?;
    let written = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&path);
    let doc: Value = serde_json::from_str(&written).map_err(|e| e.to_string())?;
    check(
        doc["channels"]["files.batch-file-added.v1"].is_object(),
        "file content",
        &to_file,
    )?;

    let unwritable = cli(&[
        "outbox",
        "registry",
        "export",
        "--output",
        "/nonexistent-dir/x.json",
    ])?;
    check(
        unwritable.code == 1,
        "exit 1 on an unwritable path",
        &unwritable,
    )?;
    check(
        unwritable.stderr.contains("/nonexistent-dir/x.json"),
        "names the file",
        &unwritable,
    )
}

/// A snapshot file of this binary's registry, edited by `edit`: an edit to
/// the committed snapshot stands for the opposite edit to the code.
fn snapshot_file(name: &str, edit: impl FnOnce(&mut Value)) -> Result<String, String> {
    let run = cli(&["outbox", "registry", "snapshot"])?;
    check(run.code == 0, "snapshot exits 0", &run)?;
    let mut snapshot = json(&run)?;
    edit(&mut snapshot);
    let path = std::env::temp_dir().join(format!(
        "outbox-events-{name}-{}.lock.json",
        std::process::id()
    ));
    let text = serde_json::to_string_pretty(&snapshot).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    Ok(path.to_string_lossy().into_owned())
}

fn registry_snapshot_prints_the_contracts() -> Result<(), String> {
    let run = cli(&["outbox", "registry", "snapshot"])?;
    check(run.code == 0, "exit 0", &run)?;
    let snapshot = json(&run)?;
    check(snapshot["snapshot_format"] == 1, "format", &run)?;
    let closed = &snapshot["events"][0];
    check(
        closed["event_type"] == "BatchClosedV2"
            && closed["version"] == 2
            && closed["topic"] == "batches.batch-closed.v2"
            && closed["aggregate_type"] == "batch"
            && closed["aggregate_id_field"] == "batch_id"
            && closed["key_field"] == "course_id"
            && closed["payload_schema"].is_null(),
        "the contract of BatchClosedV2",
        &run,
    )?;
    check(
        snapshot["events"][1]["key_field"] == "file_upload_id",
        "the aggregate id is the default key",
        &run,
    )
}

fn registry_check_passes_against_its_own_snapshot() -> Result<(), String> {
    let path = snapshot_file("same", |_| {})?;
    let run = cli(&["outbox", "registry", "check", "--against", &path])?;
    let _ = std::fs::remove_file(&path);
    check(run.code == 0, "exit 0", &run)?;
    check(
        run.stdout
            .contains("2 event contracts checked: compatible with the snapshot"),
        "summary",
        &run,
    )?;
    check(
        outbox::registry::snapshot::COMPARES_SCHEMAS
            || run.stdout.contains(
                "note: payload schemas not compared: this binary was built without the `json-schema` feature",
            ),
        "says the payload schemas were not compared",
        &run,
    )
}

fn registry_check_fails_on_a_breaking_change_naming_event_and_field() -> Result<(), String> {
    // The committed snapshot had another key field and topic: the code changed both.
    let path = snapshot_file("breaking", |snapshot| {
        snapshot["events"][0]["key_field"] = "batch_id".into();
        snapshot["events"][1]["topic"] = "files.file-added.v1".into();
    })?;
    let run = cli(&["outbox", "registry", "check", "--against", &path])?;
    check(run.code == 4, "exit 4", &run)?;
    check(
        run.stdout.contains("breaking: `BatchClosedV2` v2: Kafka key now read from `course_id` instead of `batch_id`"),
        "names the event and the key field",
        &run,
    )?;
    check(
        run.stdout.contains("breaking: `BatchFileAddedV1` v1: topic changed from `files.file-added.v1` to `files.batch-file-added.v1`"),
        "names the topic change",
        &run,
    )?;
    check(
        run.stderr.contains(&format!(
            "error: 2 breaking changes against the snapshot {path}"
        )),
        "summary on stderr",
        &run,
    )?;
    let as_json = cli(&["outbox", "--json", "registry", "check", "--against", &path])?;
    let _ = std::fs::remove_file(&path);
    check(as_json.code == 4, "exit 4", &as_json)?;
    let report = json(&as_json)?;
    check(
        report["compatible"] == false
            && report["findings"][0]["event_type"] == "BatchClosedV2"
            && report["findings"][0]["breaking"] == true,
        "JSON report",
        &as_json,
    )
}

fn registry_check_accepts_a_new_event_and_reports_a_retired_one() -> Result<(), String> {
    // The committed snapshot lacked BatchClosedV2 and had a version since removed.
    let path = snapshot_file("versions", |snapshot| {
        let events = snapshot["events"].as_array_mut().expect("events");
        let mut retired = events.remove(0);
        retired["event_type"] = "BatchOpenedV1".into();
        retired["version"] = 1.into();
        events.push(retired);
    })?;
    let run = cli(&["outbox", "registry", "check", "--against", &path])?;
    let _ = std::fs::remove_file(&path);
    check(run.code == 0, "exit 0", &run)?;
    check(
        run.stdout
            .contains("compatible: `BatchClosedV2` v2: new, declared by")
            && run
                .stdout
                .contains("compatible: `BatchOpenedV1` v1: no longer declared"),
        "new and retired entries",
        &run,
    )
}

fn registry_check_names_an_unreadable_snapshot() -> Result<(), String> {
    let run = cli(&[
        "outbox",
        "registry",
        "check",
        "--against",
        "/nonexistent-dir/events.lock.json",
    ])?;
    check(run.code == 1, "exit 1", &run)?;
    check(
        run.stderr
            .contains("could not read the snapshot /nonexistent-dir/events.lock.json"),
        "names the file",
        &run,
    )?;
    let path = std::env::temp_dir().join(format!("outbox-not-json-{}.json", std::process::id()));
    std::fs::write(&path, "[1, 2]").map_err(|e| e.to_string())?;
    let path_text = path.to_string_lossy().into_owned();
    let run = cli(&["outbox", "registry", "check", "--against", &path_text])?;
    let _ = std::fs::remove_file(&path);
    check(run.code == 1, "exit 1", &run)?;
    check(
        run.stderr.contains(&format!(
            "{path_text}: not a registry snapshot; write one with `outbox registry snapshot`: invalid type"
        )),
        "names the file and the cause",
        &run,
    )
}

fn main() -> ExitCode {
    if std::env::var_os(CHILD).is_some() {
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        return outbox::cli::run_from(args);
    }
    let tests: [(&str, Check); 7] = [
        (
            "registry_list_shows_this_binarys_events",
            registry_list_shows_this_binarys_events,
        ),
        (
            "registry_export_writes_asyncapi",
            registry_export_writes_asyncapi,
        ),
        (
            "registry_snapshot_prints_the_contracts",
            registry_snapshot_prints_the_contracts,
        ),
        (
            "registry_check_passes_against_its_own_snapshot",
            registry_check_passes_against_its_own_snapshot,
        ),
        (
            "registry_check_fails_on_a_breaking_change_naming_event_and_field",
            registry_check_fails_on_a_breaking_change_naming_event_and_field,
        ),
        (
            "registry_check_accepts_a_new_event_and_reports_a_retired_one",
            registry_check_accepts_a_new_event_and_reports_a_retired_one,
        ),
        (
            "registry_check_names_an_unreadable_snapshot",
            registry_check_names_an_unreadable_snapshot,
        ),
    ];
    let mut failed = 0;
    for (name, test) in tests {
        match test() {
            Ok(()) => println!("test {name} ... ok"),
            Err(why) => {
                failed += 1;
                println!("test {name} ... FAILED\n{why}");
            }
        }
    }
    println!(
        "registry_cli: {} passed, {failed} failed",
        tests.len() - failed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
