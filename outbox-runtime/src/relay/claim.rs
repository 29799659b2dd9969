//! Claiming the next batch of deliverable rows.

use crate::envelope::is_envelope;
use crate::identifier::Names;
use sqlx::postgres::types::PgInterval;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use std::sync::Arc;
use std::time::{Duration, Instant};
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
    /// The envelope exactly as stored (`event_data`, a `json` column).
    pub payload: String,
    pub correlation_id: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
    pub retry_count: i32,
    /// Whether `payload` is a JSON object with `event_id`, `event_type` and
    /// `data` (rows written by hand may not be).
    pub envelope_ok: bool,
    /// Seconds since `created_at` when the row was claimed, by the
    /// database's clock (immune to skew between relay and database hosts).
    pub age_at_claim: f64,
}

impl ClaimedRow {
    /// The aggregate, as ordering sees it.
    pub(crate) fn aggregate(&self) -> (&str, &str) {
        (&self.aggregate_type, &self.aggregate_id)
    }
}

/// The claim statement: pending, due rows of owned shards in commit order,
/// skipping every row that has an earlier row of its aggregate being retried
/// (or dead, when dead events block their aggregate). A retried row is thus
/// always the head of its aggregate, and nothing after it is produced until
/// it is delivered.
///
/// `$1` is the set of owned shards as a bit mask (bit `n` for shard `n`):
/// one integer operation per row, where `shard = ANY(array)` compared each
/// row against up to 64 elements.
///
/// `$4` lists the rows of the batch still in flight (empty when there is
/// none): the relay claims the next batch while the broker acknowledges the
/// current one, and those rows are still `pending`. The exclusion is a hashed
/// lookup, so the index scan stays in `seq` order and nothing else is
/// skipped (no high-water mark: a row committed late with a lower `seq` is
/// still found).
fn claim_sql(names: &Names) -> String {
    let outbox = &names.outbox;
    format!(
        "SELECT o.seq, o.id, o.aggregate_type, o.aggregate_id, o.event_type, o.topic, o.event_key,
                o.event_data::text AS payload,
                o.headers->>'correlation_id' AS correlation_id,
                o.headers->>'traceparent' AS traceparent,
                o.headers->>'tracestate' AS tracestate,
                o.retry_count,
                now() - o.created_at AS age_at_claim
         FROM {outbox} o
         WHERE o.state = 'pending'
           AND ((1::int8 << o.shard) & $1) <> 0
           AND o.next_attempt_at <= now()
           AND o.seq NOT IN (SELECT unnest($4::int8[]))
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

/// Reads one claimed row; columns by position, in `claim_sql`'s order.
fn decode(row: &PgRow) -> Result<ClaimedRow, sqlx::Error> {
    let payload: String = row.try_get(7)?;
    Ok(ClaimedRow {
        seq: row.try_get(0)?,
        id: row.try_get(1)?,
        aggregate_type: row.try_get(2)?,
        aggregate_id: row.try_get(3)?,
        event_type: row.try_get(4)?,
        topic: row.try_get(5)?,
        key: row.try_get(6)?,
        envelope_ok: is_envelope(&payload),
        payload,
        correlation_id: row.try_get(8)?,
        traceparent: row.try_get(9)?,
        tracestate: row.try_get(10)?,
        retry_count: row.try_get(11)?,
        age_at_claim: seconds(&row.try_get(12)?),
    })
}

/// An age as seconds (`now() - created_at` has no months; a day is 86,400 s
/// here, as `EXTRACT(EPOCH …)` counts it). Read as an interval because
/// `EXTRACT` goes through `numeric`, a measurable share of the claim.
fn seconds(interval: &PgInterval) -> f64 {
    f64::from(interval.months) * 30.0 * 86_400.0
        + f64::from(interval.days) * 86_400.0
        + interval.microseconds as f64 / 1e6
}

/// Shards `0..64` as the bits of an `i64` (shard 63 is the sign bit).
pub(crate) fn shard_mask(shards: &[i16]) -> i64 {
    shards
        .iter()
        .filter(|&&shard| (0..64).contains(&shard))
        .fold(0u64, |mask, &shard| mask | (1u64 << shard)) as i64
}

/// A claimed batch, and when and how long its claim ran.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub rows: Vec<ClaimedRow>,
    pub started: Instant,
    pub took: Duration,
}

/// How this relay claims: the statement and the settings that stay the
/// same from claim to claim. Cheap to clone into a task of its own.
#[derive(Debug, Clone)]
pub(crate) struct Claimer {
    pool: PgPool,
    sql: Arc<str>,
    dead_blocks: bool,
    limit: usize,
}

impl Claimer {
    /// `dead_blocks`: dead rows hold back their aggregate; `limit`: the
    /// batch size.
    pub(crate) fn new(pool: PgPool, names: &Names, dead_blocks: bool, limit: usize) -> Self {
        Self {
            pool,
            sql: claim_sql(names).into(),
            dead_blocks,
            limit,
        }
    }

    /// The batch size: a claim that returns this many rows left more behind.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The next batch of `shards`, leaving out `in_flight` (the `seq`s of
    /// the batch being produced, if any).
    pub(crate) async fn claim(
        &self,
        shards: &[i16],
        in_flight: &[i64],
    ) -> Result<Claimed, sqlx::Error> {
        let started = Instant::now();
        let rows = sqlx::query(&self.sql)
            .bind(shard_mask(shards))
            .bind(self.dead_blocks)
            .bind(i64::try_from(self.limit).unwrap_or(i64::MAX))
            .bind(in_flight)
            .fetch_all(&self.pool)
            .await?;
        let rows = rows.iter().map(decode).collect::<Result<_, _>>()?;
        Ok(Claimed {
            rows,
            started,
            took: started.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_masks_set_one_bit_per_shard() {
        assert_eq!(shard_mask(&[]), 0);
        assert_eq!(shard_mask(&[0, 2]), 0b101);
        assert_eq!(shard_mask(&[63]), i64::MIN);
        let all: Vec<i16> = (0..64).collect();
        assert_eq!(shard_mask(&all), -1);
    }

    #[test]
    fn interval_ages_are_seconds() {
        let age = PgInterval {
            months: 0,
            days: 1,
            microseconds: 1_500_000,
        };
        assert!((seconds(&age) - 86_401.5).abs() < 1e-9);
    }
}
