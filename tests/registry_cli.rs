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
#[outbox_event(topic = "batches.batch-closed.v1", aggregate = "batch", version = 2)]
struct BatchClosedV2 {
    #[outbox_event(aggregate_id)]
    batch_id: String,
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
        table.stdout.contains("batches.batch-closed.v1"),
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
        doc["channels"]["batches.batch-closed.v1"]["address"] == "prod.batches.batch-closed.v1",
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

fn main() -> ExitCode {
    if std::env::var_os(CHILD).is_some() {
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        return outbox::cli::run_from(args);
    }
    let tests: [(&str, Check); 2] = [
        (
            "registry_list_shows_this_binarys_events",
            registry_list_shows_this_binarys_events,
        ),
        (
            "registry_export_writes_asyncapi",
            registry_export_writes_asyncapi,
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
