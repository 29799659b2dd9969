//! Where the outbox tables of a test database live, and the check that
//! they are there.

use super::TestingError;
use crate::SchemaName;
use sqlx::PgPool;

/// The outbox table in `schema`, or in the pool's search path.
pub(crate) fn outbox_table(schema: Option<&SchemaName>) -> String {
    match schema {
        // A validated identifier: formatting it into SQL is safe.
        Some(schema) => format!("\"{schema}\".event_outbox"),
        None => "event_outbox".to_owned(),
    }
}

/// Fails with [`TestingError::MissingTable`] unless `table` exists.
pub(crate) async fn ensure_table(pool: &PgPool, table: &str) -> Result<(), TestingError> {
    let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(table)
        .fetch_one(pool)
        .await
        .map_err(TestingError::db("checking that the outbox tables exist"))?;
    match found {
        Some(_) => Ok(()),
        None => Err(TestingError::MissingTable {
            table: table.to_owned(),
        }),
    }
}
