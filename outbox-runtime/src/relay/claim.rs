//! Claiming the next batch of deliverable rows.

use super::envelope_shape::is_envelope;
use crate::identifier::Names;
use sqlx::postgres::types::PgInterval;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A row the relay is about to produce.
///
/// Its text columns share one buffer: one allocation per row instead of one
/// per column (with 1,000-row batches, allocation was a measurable share of
/// the relay's CPU).
#[derive(Debug, Clone)]
pub(crate) struct ClaimedRow {
    pub seq: i64,
    pub id: Uuid,
    pub retry_count: i32,
    /// Whether the payload is a JSON object with `event_id`, `event_type` and
    /// `data` (rows written by hand may not be).
    pub envelope_ok: bool,
    /// Seconds since `created_at` when the row was claimed, by the
    /// database's clock (immune to skew between relay and database hosts).
    pub age_at_claim: f64,
    text: String,
    /// Where each text column lies in `text`, in `Text` order; `None` for
    /// SQL `NULL`.
    spans: [Option<(u32, u32)>; TEXT_COLUMNS],
}

/// The text columns of a claimed row, in `claim_sql`'s order.
#[derive(Clone, Copy)]
enum Text {
    AggregateType,
    AggregateId,
    EventType,
    Topic,
    Key,
    Payload,
    CorrelationId,
    Traceparent,
    Tracestate,
}

const TEXT_COLUMNS: usize = 9;

/// The text columns of one row, as read.
pub(crate) type TextColumns<'a> = [Option<&'a str>; TEXT_COLUMNS];

impl ClaimedRow {
    /// A row from its columns; `texts` in `Text` order (aggregate type, id,
    /// event type, topic, key, payload, correlation id, traceparent,
    /// tracestate).
    pub(crate) fn new(
        seq: i64,
        id: Uuid,
        texts: TextColumns<'_>,
        retry_count: i32,
        age_at_claim: f64,
    ) -> Self {
        let mut text = String::with_capacity(texts.iter().flatten().map(|t| t.len()).sum());
        let mut spans = [None; TEXT_COLUMNS];
        for (span, column) in spans.iter_mut().zip(texts) {
            if let Some(column) = column {
                // A column is at most 1 GB in PostgreSQL, a row's text less
                // than 4 GiB; a longer one would not have been claimed.
                let start = u32::try_from(text.len()).unwrap_or(u32::MAX);
                text.push_str(column);
                *span = Some((start, u32::try_from(text.len()).unwrap_or(u32::MAX)));
            }
        }
        let envelope_ok = is_envelope(texts[Text::Payload as usize].unwrap_or(""));
        Self {
            seq,
            id,
            retry_count,
            envelope_ok,
            age_at_claim,
            text,
            spans,
        }
    }

    fn get(&self, column: Text) -> Option<&str> {
        let (start, end) = self.spans[column as usize]?;
        self.text.get(start as usize..end as usize)
    }

    pub(crate) fn aggregate_type(&self) -> &str {
        self.get(Text::AggregateType).unwrap_or_default()
    }

    pub(crate) fn aggregate_id(&self) -> &str {
        self.get(Text::AggregateId).unwrap_or_default()
    }

    pub(crate) fn event_type(&self) -> &str {
        self.get(Text::EventType).unwrap_or_default()
    }

    pub(crate) fn topic(&self) -> &str {
        self.get(Text::Topic).unwrap_or_default()
    }

    pub(crate) fn key(&self) -> &str {
        self.get(Text::Key).unwrap_or_default()
    }

    /// The envelope exactly as stored (`event_data`, a `json` column).
    pub(crate) fn payload(&self) -> &str {
        self.get(Text::Payload).unwrap_or_default()
    }

    pub(crate) fn correlation_id(&self) -> Option<&str> {
        self.get(Text::CorrelationId)
    }

    pub(crate) fn traceparent(&self) -> Option<&str> {
        self.get(Text::Traceparent)
    }

    pub(crate) fn tracestate(&self) -> Option<&str> {
        self.get(Text::Tracestate)
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

/// Reads one claimed row; columns by position, in `claim_sql`'s order. Text
/// is borrowed from the row and copied once, into the row's buffer.
fn decode(row: &PgRow) -> Result<ClaimedRow, sqlx::Error> {
    let texts: TextColumns<'_> = [
        Some(row.try_get(2)?),
        Some(row.try_get(3)?),
        Some(row.try_get(4)?),
        Some(row.try_get(5)?),
        Some(row.try_get(6)?),
        Some(row.try_get(7)?),
        row.try_get(8)?,
        row.try_get(9)?,
        row.try_get(10)?,
    ];
    Ok(ClaimedRow::new(
        row.try_get(0)?,
        row.try_get(1)?,
        texts,
        row.try_get(11)?,
        seconds(&row.try_get(12)?),
    ))
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
        // Planned at each execution (an unnamed statement), never prepared
        // once per connection. PostgreSQL plans a prepared statement's first
        // five executions for their values, then may keep one generic plan
        // for all values. A relay idle on an empty outbox runs this claim
        // many times against the empty table, and the generic plan chosen
        // there scans the whole table, and again for every row it checks: a
        // backlog committed after that (a bulk import, a broker outage) took
        // minutes per claim until an ANALYZE replaced the plan (over ten
        // minutes for one claim of 100,000 rows; see `tests/relay_backlog.rs`,
        // `a_relay_idle_on_an_empty_table_drains_a_sudden_backlog`). Planning
        // costs a fraction of a millisecond per batch.
        let rows = sqlx::query(&self.sql)
            .persistent(false)
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
pub(crate) mod tests {
    use super::*;

    /// A claimed row of aggregate `(aggregate_type, aggregate_id)`.
    pub(crate) fn row(seq: i64, aggregate_type: &str, aggregate_id: &str) -> ClaimedRow {
        let payload = r#"{"event_id": "x", "event_type": "E", "data": {}}"#;
        let texts = [
            Some(aggregate_type),
            Some(aggregate_id),
            Some("E"),
            Some("t"),
            Some(aggregate_id),
            Some(payload),
            None,
            None,
            None,
        ];
        ClaimedRow::new(seq, Uuid::new_v4(), texts, 0, 0.0)
    }

    #[test]
    fn text_columns_share_one_buffer_and_keep_nulls() {
        let texts = [
            Some("essay"),
            Some("e-1"),
            Some("EssayScoredV1"),
            Some("essays.v1"),
            Some("e-1"),
            Some(r#"{"event_id": 1, "event_type": 2, "data": 3}"#),
            Some("corr"),
            None,
            Some(""),
        ];
        let row = ClaimedRow::new(7, Uuid::nil(), texts, 2, 1.5);
        assert_eq!(row.aggregate_type(), "essay");
        assert_eq!(row.aggregate_id(), "e-1");
        assert_eq!(row.event_type(), "EssayScoredV1");
        assert_eq!(row.topic(), "essays.v1");
        assert_eq!(row.key(), "e-1");
        assert!(row.envelope_ok);
        assert_eq!(row.correlation_id(), Some("corr"));
        assert_eq!(row.traceparent(), None);
        assert_eq!(row.tracestate(), Some(""));
        let bad = ClaimedRow::new(8, Uuid::nil(), [Some("a"); TEXT_COLUMNS], 0, 0.0);
        assert!(!bad.envelope_ok, "\"a\" is not an envelope");
    }

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
