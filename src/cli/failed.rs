//! `outbox failed list` and `outbox failed show ID`.

use super::{db, output, CliError, CliResult, Exit, Global};
use crate::ops::admin::{self, EventDetail};
use clap::Subcommand;
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub(crate) enum FailedCommand {
    /// Dead events, oldest first.
    List {
        /// Show at most this many (1 to 10000).
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Everything stored about one event (any state), with its envelope.
    Show {
        /// The event id (the envelope's `event_id`).
        id: Uuid,
    },
}

pub(crate) async fn run(global: &Global, command: FailedCommand) -> CliResult {
    let pool = db::connect(global, 2).await?;
    let result = match command {
        FailedCommand::List { limit } => list(global, &pool, limit).await,
        FailedCommand::Show { id } => show(global, &pool, id).await,
    };
    pool.close().await;
    result
}

async fn list(global: &Global, pool: &sqlx::PgPool, limit: i64) -> CliResult {
    let events = admin::list_failed(pool, global.schema.as_ref(), limit).await?;
    if global.json {
        return output::print_json(&events);
    }
    if events.is_empty() {
        return output::print(&format!("no dead events in {}", db::schema_label(global)));
    }
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.id.to_string(),
                e.event_type.clone(),
                e.topic.clone(),
                format!("{}/{}", e.aggregate_type, output::clip(&e.aggregate_id, 40)),
                e.retry_count.to_string(),
                e.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                output::clip(e.last_error.as_deref().unwrap_or(""), 60),
            ]
        })
        .collect();
    output::print(&output::table(
        &[
            "ID",
            "EVENT TYPE",
            "TOPIC",
            "AGGREGATE",
            "RETRIES",
            "CREATED (UTC)",
            "LAST ERROR",
        ],
        &rows,
    ))?;
    if i64::try_from(events.len()).is_ok_and(|n| n == limit) {
        output::eprint_line(&format!(
            "showing the first {limit} dead events; pass --limit to see more"
        ));
    }
    Ok(())
}

async fn show(global: &Global, pool: &sqlx::PgPool, id: Uuid) -> CliResult {
    let Some(detail) = admin::show(pool, global.schema.as_ref(), id).await? else {
        return Err(CliError::new(
            Exit::NotFound,
            format!(
                "no outbox event has id {id} in {}; it may have been delivered and deleted \
                 (`outbox failed list` shows the dead events)",
                db::schema_label(global)
            ),
        ));
    };
    if global.json {
        return output::print_json(&detail);
    }
    output::print(&describe(&detail))
}

fn describe(d: &EventDetail) -> String {
    let time =
        |t: &chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string();
    let fields = [
        ("id", d.id.to_string()),
        ("state", d.state.to_string()),
        (
            "event type",
            format!("{} (version {})", d.event_type, d.event_version),
        ),
        ("topic", d.topic.clone()),
        ("key", d.event_key.clone()),
        (
            "aggregate",
            format!("{}/{}", d.aggregate_type, d.aggregate_id),
        ),
        ("seq / shard", format!("{} / {}", d.seq, d.shard)),
        ("retries", d.retry_count.to_string()),
        ("created", time(&d.created_at)),
        ("next attempt", time(&d.next_attempt_at)),
        (
            "published",
            d.published_at
                .as_ref()
                .map(time)
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "last error",
            d.last_error.clone().unwrap_or_else(|| "-".into()),
        ),
        ("headers", d.headers.to_string()),
    ];
    let mut out: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("{:<13} {value}", format!("{name}:")))
        .collect();
    out.push("envelope:".to_owned());
    out.push(serde_json::to_string_pretty(&d.envelope).unwrap_or_else(|_| d.envelope.to_string()));
    out.join("\n")
}
