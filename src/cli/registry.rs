//! `outbox registry list`, `export`, `snapshot` and `check`: the event types
//! compiled into the running binary, and their contracts against a
//! committed snapshot.

use super::{output, CliError, CliResult, Exit, Global};
use crate::registry;
use crate::registry::asyncapi::{asyncapi_document, AsyncApiInfo};
use crate::registry::snapshot::{self, CheckReport, RegistrySnapshot};
use clap::{Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Subcommand)]
pub(crate) enum RegistryCommand {
    /// Every event type registered in this binary.
    List,
    /// A machine-readable catalogue of the registered events.
    Export(ExportArgs),
    /// The event contracts (type, version, topic, aggregate, id and key
    /// fields, payload schema) as JSON on stdout, to commit as
    /// `events.lock.json`.
    Snapshot,
    /// Fails (exit 4) when a contract changed incompatibly against a
    /// committed snapshot while keeping its version.
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct CheckArgs {
    /// The committed snapshot, e.g. `events.lock.json`.
    #[arg(long, value_name = "FILE")]
    against: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// AsyncAPI 3.0.0 (JSON).
    Asyncapi,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ExportArgs {
    /// Document format.
    #[arg(long, value_enum, default_value = "asyncapi")]
    format: Format,
    /// Write to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// `info.title` (default: the program name).
    #[arg(long)]
    title: Option<String>,
    /// `info.version`: the version of the service's event API.
    #[arg(long, default_value = "1.0.0")]
    api_version: String,
    /// `info.description`.
    #[arg(long)]
    description: Option<String>,
    /// Prepended to every topic in channel addresses, as the relay does.
    #[arg(long, env = "OUTBOX_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// A Kafka bootstrap address (`HOST:PORT`) to list under `servers`.
    #[arg(long, value_name = "HOST:PORT")]
    kafka_server: Option<String>,
}

const EMPTY_REGISTRY: &str = "no event types are registered in this binary: the plain `outbox` \
     binary has none; embed the CLI in your service (`outbox::cli::run_from`) to list its events";

pub(crate) fn run(global: &Global, command: RegistryCommand) -> CliResult {
    match command {
        RegistryCommand::List => list(global),
        RegistryCommand::Export(args) => export(args),
        RegistryCommand::Snapshot => write_snapshot(),
        RegistryCommand::Check(args) => check(global, &args),
    }
}

fn valid_registry(what: &str) -> CliResult {
    registry::validate().map_err(|error| {
        CliError::new(
            Exit::Conflict,
            format!("{error}; fix the registry before {what}"),
        )
    })?;
    if registry::registrations().is_empty() {
        output::eprint_line(EMPTY_REGISTRY);
    }
    Ok(())
}

fn write_snapshot() -> CliResult {
    valid_registry("taking a snapshot")?;
    let text = snapshot::snapshot()
        .to_json()
        .map_err(|e| CliError::failure(super::with_causes(&e)))?;
    output::print(text.trim_end())
}

fn check(global: &Global, args: &CheckArgs) -> CliResult {
    valid_registry("checking it")?;
    let path = args.against.display();
    let text = std::fs::read_to_string(&args.against).map_err(|e| {
        CliError::failure(format!(
            "could not read the snapshot {path}: {e}; write one with `outbox registry snapshot > {path}`"
        ))
    })?;
    let committed = RegistrySnapshot::from_json(&text)
        .map_err(|e| CliError::failure(format!("{path}: {}", super::with_causes(&e))))?;
    let report = snapshot::check(&committed);
    if global.json {
        output::print_json(&report_json(&report))?;
    } else {
        output::print(&report.to_string())?;
    }
    if report.is_compatible() {
        return Ok(());
    }
    let breaking = report.breaking().count();
    let changes = if breaking == 1 { "change" } else { "changes" };
    Err(CliError::new(
        Exit::Conflict,
        format!("{breaking} breaking {changes} against the snapshot {path}"),
    ))
}

fn report_json(report: &CheckReport) -> serde_json::Value {
    let findings: Vec<_> = report
        .findings
        .iter()
        .map(|finding| {
            serde_json::json!({
                "event_type": finding.event_type,
                "version": finding.version,
                "breaking": finding.change.is_breaking(),
                "field": finding.change.field(),
                "message": finding.change.to_string(),
            })
        })
        .collect();
    serde_json::json!({
        "compatible": report.is_compatible(),
        "compiled": report.compiled,
        "schemas_compared": report.schemas_compared,
        "notes": if report.schemas_compared {
            Vec::new()
        } else {
            vec![snapshot::SCHEMAS_NOT_COMPARED]
        },
        "findings": findings,
    })
}

fn list(global: &Global) -> CliResult {
    let registrations = registry::registrations();
    if registrations.is_empty() {
        output::eprint_line(EMPTY_REGISTRY);
    }
    if global.json {
        let items: Vec<_> = registrations
            .iter()
            .map(|r| {
                serde_json::json!({
                    "event_type": r.event_type,
                    "version": r.version,
                    "topic": r.topic,
                    "aggregate_type": r.aggregate_type,
                    "rust_type": r.rust_type,
                    "description": r.description,
                    "json_schema": r.payload_schema.is_some(),
                })
            })
            .collect();
        return output::print_json(&items);
    }
    if registrations.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = registrations
        .iter()
        .map(|r| {
            vec![
                r.event_type.to_owned(),
                r.version.to_string(),
                r.topic.to_owned(),
                r.aggregate_type.to_owned(),
                if r.payload_schema.is_some() {
                    "yes"
                } else {
                    "no"
                }
                .to_owned(),
                r.rust_type.to_owned(),
            ]
        })
        .collect();
    output::print(&output::table(
        &[
            "EVENT TYPE",
            "VERSION",
            "TOPIC",
            "AGGREGATE",
            "SCHEMA",
            "RUST TYPE",
        ],
        &rows,
    ))?;
    if let Err(error) = registry::validate() {
        output::eprint_line(&format!("warning: {error}"));
    }
    Ok(())
}

fn export(args: ExportArgs) -> CliResult {
    valid_registry("exporting it")?;
    let Format::Asyncapi = args.format;
    let info = AsyncApiInfo {
        title: args.title.unwrap_or_else(program_name),
        version: args.api_version,
        description: args.description,
        topic_prefix: args.topic_prefix,
        kafka_server: args.kafka_server,
    };
    let document = asyncapi_document(&info);
    let text = serde_json::to_string_pretty(&document)
        .map_err(|e| CliError::failure(format!("could not encode the document: {e}")))?;
    match args.output {
        None => output::print(&text),
        Some(path) => std::fs::write(&path, format!("{text}\n")).map_err(|e| {
            CliError::failure(format!(
                "could not write {}: {e}; check the directory exists and is writable",
                path.display()
            ))
        }),
    }
}

fn program_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| path.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "outbox".to_owned())
}
