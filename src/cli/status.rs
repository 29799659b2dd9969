//! `outbox status`: queue depth, oldest pending event, counts per state and
//! per topic.

use super::{db, output, CliError, CliResult, Global};
use crate::ops::{queue_stats, QueueStats};
use std::time::Duration;

pub(crate) async fn run(global: &Global) -> CliResult {
    let pool = db::connect(global, 2).await?;
    let stats = queue_stats(&pool, global.schema.as_ref()).await;
    pool.close().await;
    let stats = stats.map_err(|e| CliError::failure(super::with_causes(&e)))?;
    if global.json {
        return output::print_json(&stats);
    }
    output::print(&describe(&stats, &db::schema_label(global)))
}

fn age(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) => output::age(Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)),
        None => "-".to_owned(),
    }
}

fn describe(stats: &QueueStats, schema: &str) -> String {
    let mut out = vec![
        format!("outbox in {schema}"),
        format!("  queue depth (pending):  {}", stats.pending),
        format!(
            "  oldest pending event:   {}",
            age(stats.oldest_pending_age_seconds)
        ),
        format!("  dead:                   {}", stats.dead),
        format!("  released:               {}", stats.released),
        format!("  published (retained):   {}", stats.published),
    ];
    if !stats.topics.is_empty() {
        let rows: Vec<Vec<String>> = stats
            .topics
            .iter()
            .map(|t| {
                vec![
                    t.topic.clone(),
                    t.pending.to_string(),
                    age(t.oldest_pending_age_seconds),
                    t.dead.to_string(),
                    t.released.to_string(),
                    t.published.to_string(),
                ]
            })
            .collect();
        out.push(String::new());
        out.push(output::table(
            &[
                "TOPIC",
                "PENDING",
                "OLDEST PENDING",
                "DEAD",
                "RELEASED",
                "PUBLISHED",
            ],
            &rows,
        ));
    }
    if stats.dead > 0 {
        out.push(String::new());
        out.push(
            "dead events wait for an operator: `outbox failed list`, then `outbox retry ID` or \
             `outbox release AGGREGATE_TYPE AGGREGATE_ID`"
                .to_owned(),
        );
    }
    out.join("\n")
}
