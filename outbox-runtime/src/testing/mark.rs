//! [`Mark`]: a point in the outbox from which a test reads what was
//! published.

use super::tables::{ensure_table, outbox_table};
use super::TestingError;
use crate::SchemaName;
use sqlx::PgPool;

/// A position in the outbox table: [`Published::since`](super::Published::since)
/// reads the events added after it.
///
/// Take one before the code under test runs, read after:
///
/// ```no_run
/// use outbox::testing::{Mark, Published};
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let mark = Mark::take(&pool).await?;
/// // ... run the code under test ...
/// let published = Published::since(&pool, &mark).await?;
/// published.assert_nothing();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark {
    table: String,
    seq: i64,
}

impl Mark {
    /// The current end of the outbox in the pool's default schema.
    ///
    /// Fails with [`TestingError::MissingTable`] when the schema has no
    /// outbox tables.
    pub async fn take(pool: &PgPool) -> Result<Self, TestingError> {
        Self::take_from(pool, outbox_table(None)).await
    }

    /// The current end of the outbox in `schema` (migrated with
    /// [`migrate_schema`](super::migrate_schema) or
    /// [`migrate_in_schema`](crate::migrate_in_schema)).
    pub async fn take_in(pool: &PgPool, schema: &SchemaName) -> Result<Self, TestingError> {
        Self::take_from(pool, outbox_table(Some(schema))).await
    }

    /// The beginning of the outbox in the pool's default schema: every
    /// event still in the table is after it.
    pub fn start() -> Self {
        Self {
            table: outbox_table(None),
            seq: 0,
        }
    }

    /// The beginning of the outbox in `schema`.
    pub fn start_in(schema: &SchemaName) -> Self {
        Self {
            table: outbox_table(Some(schema)),
            seq: 0,
        }
    }

    /// The outbox table this mark is a position in.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Events whose `seq` is above this are after the mark.
    pub fn seq(&self) -> i64 {
        self.seq
    }

    async fn take_from(pool: &PgPool, table: String) -> Result<Self, TestingError> {
        ensure_table(pool, &table).await?;
        // The table name is a constant or a validated schema name.
        let sql = format!("SELECT coalesce(max(seq), 0) FROM {table}");
        let seq = sqlx::query_scalar(&sql)
            .fetch_one(pool)
            .await
            .map_err(TestingError::db("taking a mark in the outbox"))?;
        Ok(Self { table, seq })
    }
}
