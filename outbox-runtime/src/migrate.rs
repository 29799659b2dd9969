//! The embedded migrations of the outbox tables.

use crate::error::MigrateError;
use crate::identifier::SchemaName;
use sqlx::migrate::Migrator;
use sqlx::PgPool;

/// The outbox migrations (`migrations/` of this repository), embedded at
/// compile time. Use it directly to run them with your own migrator setup,
/// or to undo them.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Creates or upgrades the outbox tables in the pool's default schema.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), outbox::MigrateError> {
/// outbox::migrate(&pool).await?;
/// # Ok(()) }
/// ```
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await.map_err(MigrateError::new)
}

/// Creates or upgrades the outbox tables in `schema`, creating the schema
/// if needed. The migration bookkeeping table lives in that schema too.
pub async fn migrate_in_schema(pool: &PgPool, schema: &SchemaName) -> Result<(), MigrateError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| MigrateError::new(e.into()))?;
    // `schema` is a validated identifier, so formatting it is safe.
    let setup =
        format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"; SET search_path TO \"{schema}\"");
    sqlx::raw_sql(&setup)
        .execute(&mut *conn)
        .await
        .map_err(|e| MigrateError::new(e.into()))?;
    let result = MIGRATOR.run(&mut *conn).await.map_err(MigrateError::new);
    // Do not hand a connection with a changed search_path back to the pool.
    let _ = sqlx::raw_sql("RESET search_path").execute(&mut *conn).await;
    result
}
