//! `outbox topics create`.

use super::{output, CliError, CliResult, Global};
use crate::registry;
use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum TopicsCommand {
    /// Create the registry's topics that do not exist yet.
    Create(CreateArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CreateArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", value_name = "HOST:PORT[,...]")]
    bootstrap_servers: String,
    /// Extra librdkafka setting (repeatable), e.g. `security.protocol=SSL`.
    #[arg(long = "kafka-config", short = 'X', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    kafka_config: Vec<(String, String)>,
    /// Prepended to every topic, as the relay does.
    #[arg(long, env = "OUTBOX_TOPIC_PREFIX", default_value = "")]
    topic_prefix: String,
    /// Partitions of each new topic.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(i32).range(1..))]
    partitions: i32,
    /// Replication factor of each new topic (use 3 in production).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    replication: i32,
}

/// `KEY=VALUE` for `--kafka-config`.
pub(crate) fn parse_key_value(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, val)) if !key.trim().is_empty() => Ok((key.trim().to_owned(), val.to_owned())),
        _ => Err(format!(
            "expected KEY=VALUE (a librdkafka setting such as `security.protocol=SSL`), got {value:?}"
        )),
    }
}

pub(crate) fn client_config(bootstrap: &str, extra: &[(String, String)]) -> rdkafka::ClientConfig {
    let mut config = rdkafka::ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    for (key, value) in extra {
        config.set(key, value);
    }
    config
}

pub(crate) async fn run(global: &Global, command: TopicsCommand) -> CliResult {
    let TopicsCommand::Create(args) = command;
    if registry::registrations().is_empty() {
        output::eprint_line(
            "no event types are registered in this binary, so there are no topics to create; \
             embed the CLI in your service (`outbox::cli::run_from`)",
        );
    }
    let config = client_config(&args.bootstrap_servers, &args.kafka_config);
    let mut wanted: Vec<String> = registry::registrations()
        .iter()
        .map(|r| format!("{}{}", args.topic_prefix, r.topic))
        .collect();
    wanted.sort();
    wanted.dedup();
    let created = if wanted.is_empty() {
        Vec::new()
    } else {
        crate::ops::create_registry_topics(
            &config,
            &args.topic_prefix,
            args.partitions,
            args.replication,
        )
        .await
        .map_err(|e| {
            CliError::failure(format!(
                "{}; check --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS and that the broker \
                 allows creating topics",
                super::with_causes(&e)
            ))
        })?
    };
    if global.json {
        let existing: Vec<&String> = wanted.iter().filter(|t| !created.contains(t)).collect();
        return output::print_json(&serde_json::json!({
            "created": created,
            "existing": existing,
        }));
    }
    let width = wanted.iter().map(|t| t.chars().count()).max().unwrap_or(0);
    for topic in &wanted {
        let state = if created.contains(topic) {
            format!(
                "created ({} partitions, replication {})",
                args.partitions, args.replication
            )
        } else {
            "exists".to_owned()
        };
        output::print(&format!("{topic:<width$}  {state}"))?;
    }
    Ok(())
}
