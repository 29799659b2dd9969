//! `outbox purge --published-older-than DURATION`.

use super::{db, output, CliResult, Global};
use crate::ops::admin;
use clap::Args;
use std::time::Duration;

#[derive(Debug, Args)]
pub(crate) struct PurgeArgs {
    /// Delete published rows whose `published_at` is older than this, e.g.
    /// `7d`, `12h`, `30m`, `1h 30m`.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    published_older_than: Duration,
    /// Rows deleted per statement (each its own short transaction).
    #[arg(long, default_value_t = 5_000, value_name = "ROWS")]
    batch_size: i64,
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value)
        .map_err(|e| format!("{e}; expected a duration such as `7d`, `12h`, `30m` or `1h 30m`"))
}

pub(crate) async fn run(global: &Global, args: PurgeArgs) -> CliResult {
    let pool = db::connect(global, 2).await?;
    let started = std::time::Instant::now();
    let result = admin::purge_published(
        &pool,
        global.schema.as_ref(),
        args.published_older_than,
        args.batch_size,
        |deleted| output::eprint_line(&format!("purge: {deleted} rows deleted so far")),
    )
    .await;
    pool.close().await;
    let deleted = result?;
    let threshold = humantime::format_duration(args.published_older_than).to_string();
    if global.json {
        return output::print_json(&serde_json::json!({
            "deleted": deleted,
            "published_older_than": threshold,
            "published_older_than_seconds": args.published_older_than.as_secs_f64(),
        }));
    }
    output::print(&format!(
        "deleted {deleted} published row(s) older than {threshold} in {}",
        output::age(started.elapsed())
    ))
}
