//! `outbox retry` and `outbox release`.

use super::{db, output, CliError, CliResult, Exit, Global};
use crate::ops::admin;
use clap::Args;
use uuid::Uuid;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["id", "all"])))]
pub(crate) struct RetryArgs {
    /// The dead event to send again.
    id: Option<Uuid>,
    /// Send every dead event again.
    #[arg(long, conflicts_with = "id")]
    all: bool,
    /// With --all: only dead events of this registry topic (without any
    /// relay topic prefix).
    #[arg(long, requires = "all", value_name = "TOPIC")]
    topic: Option<String>,
}

pub(crate) async fn retry(global: &Global, args: RetryArgs) -> CliResult {
    let pool = db::connect(global, 2).await?;
    let schema = global.schema.as_ref();
    let result = match args.id {
        Some(id) => admin::retry(&pool, schema, id).await.map(|()| 1),
        None => admin::retry_all(&pool, schema, args.topic.as_deref()).await,
    };
    pool.close().await;
    let retried = result?;
    if global.json {
        return output::print_json(&serde_json::json!({ "retried": retried, "id": args.id }));
    }
    let text = match (args.id, &args.topic) {
        (Some(id), _) => format!(
            "event {id} is pending again with a fresh retry budget; running relays were woken"
        ),
        (None, Some(topic)) => {
            format!("{retried} dead event(s) of topic `{topic}` are pending again")
        }
        (None, None) => format!("{retried} dead event(s) are pending again"),
    };
    output::print(&text)
}

#[derive(Debug, Args)]
pub(crate) struct ReleaseArgs {
    /// The aggregate type, e.g. `file_upload`.
    aggregate_type: String,
    /// The aggregate id (any text; two arguments, so ids may contain `/`).
    aggregate_id: String,
}

pub(crate) async fn release(global: &Global, args: ReleaseArgs) -> CliResult {
    let pool = db::connect(global, 2).await?;
    let result = admin::release(
        &pool,
        global.schema.as_ref(),
        &args.aggregate_type,
        &args.aggregate_id,
    )
    .await;
    pool.close().await;
    let released = result?;
    let aggregate = format!("{}/{}", args.aggregate_type, args.aggregate_id);
    if released == 0 {
        return Err(CliError::new(
            Exit::NotFound,
            format!(
                "aggregate {aggregate} has no dead events in {}; nothing to release \
                 (`outbox failed list` shows the dead events and their aggregates)",
                db::schema_label(global)
            ),
        ));
    }
    if global.json {
        return output::print_json(&serde_json::json!({
            "released": released,
            "aggregate_type": args.aggregate_type,
            "aggregate_id": args.aggregate_id,
        }));
    }
    output::print(&format!(
        "released {released} dead event(s) of aggregate {aggregate}; its later events continue"
    ))
}
