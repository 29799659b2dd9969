//! Prints outbox events as a Kafka consumer receives them: topic, partition,
//! offset, key, event type, and the envelope. Used by `scripts/demo.sh`.
//!
//! ```text
//! cargo run --example tail_events -- --bootstrap 127.0.0.1:9092 --count 6
//! ```

use clap::Parser;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::ClientConfig;
use std::process::ExitCode;
use std::time::Duration;

/// Tail outbox topics.
#[derive(Parser)]
struct Args {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS")]
    bootstrap: String,
    /// Topics to read (repeatable); default: the File Service's four topics.
    #[arg(long = "topic")]
    topics: Vec<String>,
    /// Stop after this many messages.
    #[arg(long)]
    count: Option<usize>,
    /// Give up (exit 1) when `--count` messages did not arrive in this time.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Consumer group id (default: a fresh one, reading from the beginning).
    #[arg(long)]
    group: Option<String>,
}

const FILE_SERVICE_TOPICS: [&str; 4] = [
    "files.essay-content-provisioned.v1",
    "files.essay-validation-failed.v1",
    "files.batch-file-added.v1",
    "files.batch-file-removed.v1",
];

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let topics: Vec<String> = if args.topics.is_empty() {
        FILE_SERVICE_TOPICS.iter().map(|t| t.to_string()).collect()
    } else {
        args.topics
    };
    let group = args
        .group
        .unwrap_or_else(|| format!("tail-events-{}", uuid::Uuid::new_v4()));
    let consumer: StreamConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &args.bootstrap)
        .set("group.id", &group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("topic.metadata.refresh.interval.ms", "1000")
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot create a Kafka consumer for {}: {e}", args.bootstrap);
            return ExitCode::FAILURE;
        }
    };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(e) = consumer.subscribe(&names) {
        eprintln!("cannot subscribe to {names:?}: {e}");
        return ExitCode::FAILURE;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut seen = 0usize;
    loop {
        if args.count.is_some_and(|n| seen >= n) {
            return ExitCode::SUCCESS;
        }
        let message = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Err(_) if args.count.is_some() => {
                eprintln!(
                    "timed out after {}s: {seen} of {} events arrived",
                    args.timeout_secs,
                    args.count.unwrap_or(0)
                );
                return ExitCode::FAILURE;
            }
            Err(_) => return ExitCode::SUCCESS,
            Ok(Err(e)) => {
                // Topics may not exist yet; keep consuming.
                eprintln!("(consumer: {e})");
                continue;
            }
            Ok(Ok(m)) => m,
        };
        seen += 1;
        let event_type = message
            .headers()
            .and_then(|h| {
                h.iter()
                    .find(|h| h.key == "event_type")
                    .and_then(|h| h.value)
            })
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let key = message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default();
        println!(
            "#{seen} {event_type} topic={} partition={} offset={} key={key}",
            message.topic(),
            message.partition(),
            message.offset()
        );
        let body = message
            .payload()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_else(|| "<not JSON>".into());
        println!("{body}\n");
    }
}
