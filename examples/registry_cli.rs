//! A service binary that embeds the `outbox` CLI, so `registry list` and
//! `registry export` describe *its* events (the plain `outbox` binary has
//! none):
//!
//! ```text
//! cargo run --features cli --example registry_cli -- outbox registry list
//! cargo run --features cli --example registry_cli -- outbox registry export --format asyncapi --output events.json
//! DATABASE_URL=postgres://... cargo run --features cli --example registry_cli -- outbox status
//! ```
//!
//! Without the `outbox` argument the binary would run the service itself.

use outbox::OutboxEvent;
use serde::Serialize;
use std::process::ExitCode;

/// A file was added to a batch.
#[allow(dead_code)] // declared for the registry; this example publishes nothing
#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "files.batch-file-added.v1", aggregate = "file_upload")]
struct BatchFileAddedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: String,
    #[outbox_event(key)]
    batch_id: String,
    file_name: String,
}

/// A file was removed from its batch.
#[allow(dead_code)]
#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "files.batch-file-removed.v1", aggregate = "file_upload")]
struct BatchFileRemovedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: String,
    #[outbox_event(key)]
    batch_id: String,
}

fn main() -> ExitCode {
    let args: Vec<_> = std::env::args_os().collect();
    if args.get(1).is_some_and(|arg| arg == "outbox") {
        // `registry_cli outbox ...`: the program name becomes `outbox`.
        return outbox::cli::run_from(args.into_iter().skip(1));
    }
    eprintln!("this example only embeds the CLI: run it as `registry_cli outbox --help`");
    ExitCode::from(2)
}
