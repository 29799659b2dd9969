//! `outbox migrate`.

use super::{db, output, CliError, CliResult, Global};

pub(crate) async fn run(global: &Global) -> CliResult {
    let pool = db::connect(global, 2).await?;
    let result = match &global.schema {
        Some(schema) => crate::migrate_in_schema(&pool, schema).await,
        None => crate::migrate(&pool).await,
    };
    pool.close().await;
    result.map_err(|e| CliError::failure(super::with_causes(&e)))?;
    let latest = crate::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    if global.json {
        output::print_json(&serde_json::json!({
            "migrated": true,
            "schema": global.schema.as_ref().map(|s| s.as_str()),
            "version": latest,
        }))
    } else {
        output::print(&format!(
            "outbox tables are up to date in {} (migration {latest})",
            db::schema_label(global)
        ))
    }
}
