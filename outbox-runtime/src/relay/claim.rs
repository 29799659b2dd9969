//! Claiming the next batch of deliverable rows.

use crate::identifier::Names;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// A row the relay is about to produce.
#[derive(Debug, Clone)]
pub(crate) struct ClaimedRow {
    pub seq: i64,
    pub id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    pub topic: String,
    pub key: String,
    pub payload: String,
    pub headers: serde_json::Value,
    pub retry_count: i32,
    pub envelope_ok: bool,
    /// Seconds since `created_at` when the row was claimed, by the
    /// database's clock (immune to skew between relay and database hosts).
    pub age_at_claim: f64,
}

/// The claim statement: pending, due rows of owned shards in commit order,
/// skipping every row that has an earlier row of its aggregate being retried
/// (or dead, when dead events block their aggregate). A retried row is thus
/// always the head of its aggregate, and nothing after it is produced until
/// it is delivered.
pub(crate) fn claim_sql(names: &Names) -> String {
    let outbox = &names.outbox;
    format!(
        "SELECT o.seq, o.id, o.aggregate_type, o.aggregate_id, o.event_type, o.topic, o.event_key,
                o.event_data::text AS payload, o.headers, o.retry_count,
                (jsonb_typeof(o.event_data) = 'object' AND o.event_data ? 'event_id'
                 AND o.event_data ? 'event_type' AND o.event_data ? 'data') AS envelope_ok,
                EXTRACT(EPOCH FROM (now() - o.created_at))::float8 AS age_at_claim
         FROM {outbox} o
         WHERE o.state = 'pending'
           AND o.shard = ANY($1)
           AND o.next_attempt_at <= now()
           AND NOT EXISTS (
               SELECT 1 FROM {outbox} b
               WHERE b.aggregate_type = o.aggregate_type
                 AND b.aggregate_id = o.aggregate_id
                 AND b.seq < o.seq
                 AND ((b.state = 'pending' AND b.retry_count > 0) OR (b.state = 'dead' AND $2)))
         ORDER BY o.seq
         LIMIT $3"
    )
}

fn decode(row: &PgRow) -> Result<ClaimedRow, sqlx::Error> {
    Ok(ClaimedRow {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: row.try_get("event_type")?,
        topic: row.try_get("topic")?,
        key: row.try_get("event_key")?,
        payload: row.try_get("payload")?,
        headers: row.try_get("headers")?,
        retry_count: row.try_get("retry_count")?,
        envelope_ok: row
            .try_get::<Option<bool>, _>("envelope_ok")?
            .unwrap_or(false),
        age_at_claim: row.try_get("age_at_claim")?,
    })
}

pub(crate) async fn claim(
    pool: &PgPool,
    sql: &str,
    shards: &[i16],
    dead_blocks: bool,
    limit: usize,
) -> Result<Vec<ClaimedRow>, sqlx::Error> {
    let rows = sqlx::query(sql)
        .bind(shards)
        .bind(dead_blocks)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await?;
    rows.iter().map(decode).collect()
}
