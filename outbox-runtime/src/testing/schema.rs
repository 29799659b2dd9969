//! A migrated custom schema in a test database, in one line.

use super::TestingError;
use crate::SchemaName;
use sqlx::PgPool;

/// Validates `schema`, creates it if needed and runs the outbox migrations
/// in it; returns the validated name for
/// [`Outbox::builder(..).schema(..)`](crate::OutboxBuilder::schema),
/// [`Mark::take_in`](super::Mark::take_in), [`Inbox::schema`](crate::Inbox::schema)
/// and [`RelayConfig::schema`](crate::RelayConfig).
///
/// With `#[sqlx::test(migrations = false)]` the test database starts
/// empty; `#[sqlx::test(migrator = "outbox::MIGRATOR")]` migrates the
/// default schema instead.
///
/// ```no_run
/// use outbox::testing::{migrate_schema, Mark};
/// use outbox::Outbox;
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let schema = migrate_schema(&pool, "billing").await?;
/// let outbox = Outbox::builder(pool.clone(), "billing_service").schema(schema.clone()).build();
/// let mark = Mark::take_in(&pool, &schema).await?;
/// # Ok(()) }
/// ```
pub async fn migrate_schema(pool: &PgPool, schema: &str) -> Result<SchemaName, TestingError> {
    let schema = SchemaName::new(schema)?;
    crate::migrate_in_schema(pool, &schema).await?;
    Ok(schema)
}
