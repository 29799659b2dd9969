//! Claiming the next batch of deliverable rows, and the batch claimed
//! ahead while the current one is produced.

pub(crate) mod copy_binary;
mod envelope_shape;
pub(crate) mod prefetch;

use crate::identifier::Names;
use crate::relay::bounds::NO_FLOOR;
use crate::relay::claim::copy_binary::{interval_seconds, CopyFormatError, CopyReader, Tuple};
use crate::relay::claim::envelope_shape::is_envelope;
use crate::relay::lease::Fence;
use crate::relay::seq_runs;
use futures::TryStreamExt;
use sqlx::postgres::types::PgInterval;
use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};
use std::fmt::Write as _;
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

/// The text columns of a claimed row, in `claim_select`'s order.
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

/// Fields per claimed row, in `claim_select`'s order.
const CLAIM_FIELDS: usize = 13;

/// The claim: pending, due rows of owned shards in commit order, skipping
/// every row that has an earlier row of its aggregate being retried (or
/// dead, when dead events block their aggregate). A retried row is thus
/// always the head of its aggregate, and nothing after it is produced until
/// it is delivered.
///
/// The arguments are SQL fragments: bind parameters for the `SELECT` of a
/// fresh claim (`select_statement`), numbers written into the statement for
/// the `COPY` of a claim ahead (`copy_statement`, COPY takes no parameters).
///
/// `shard_mask` is the set of shards the claim may take rows of, as a bit
/// mask (bit `n` for shard `n`): one integer operation per row, where
/// `shard = ANY(array)` compared each row against up to 64 elements. It is
/// the lease fence's mask (`lease.rs`, `Fence::mask_sql`), evaluated once per
/// statement: the shards this relay still holds at the epochs it knows.
///
/// `seq_filter` leaves out the rows of the batches still in flight or not
/// yet marked: they are still `pending`. It is either a hashed lookup
/// (`o.seq NOT IN (…)`) or, for a claim ahead, the exact ranges between the
/// runs in flight (see `copy_statement`). Either way the index scan stays in
/// `seq` order and nothing else is skipped (no high-water mark: a row
/// committed late with a lower `seq` is still found).
///
/// Both forms are planned at each execution, never kept as a prepared
/// statement. PostgreSQL plans a prepared statement's first five executions
/// for their values, then may keep one generic plan for all values. A relay
/// idle on an empty outbox runs its claim many times against the empty
/// table, and the generic plan chosen there scans the whole table, and
/// again for every row it checks: a backlog committed after that (a bulk
/// import, a broker outage) took minutes per claim until an ANALYZE
/// replaced the plan (over ten minutes for one claim of 100,000 rows; see
/// `tests/relay_backlog.rs`,
/// `a_relay_idle_on_an_empty_table_drains_a_sudden_backlog`). Planning costs
/// a fraction of a millisecond per batch.
fn claim_select(
    outbox: &str,
    shard_mask: &str,
    dead_blocks: &str,
    limit: &str,
    seq_filter: &str,
) -> String {
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
           AND ((1::int8 << o.shard) & {shard_mask}) <> 0
           AND o.next_attempt_at <= now()
           AND {seq_filter}
           AND NOT EXISTS (
               SELECT 1 FROM {outbox} b
               WHERE b.aggregate_type = o.aggregate_type
                 AND b.aggregate_id = o.aggregate_id
                 AND b.seq < o.seq
                 AND ((b.state = 'pending' AND b.retry_count > 0) OR (b.state = 'dead' AND {dead_blocks})))
         ORDER BY o.seq
         LIMIT {limit}"
    )
}

/// The claim as a statement with bind parameters: `$1` whether dead rows
/// block, `$2` the limit, `$3` the excluded `seq`s, `$4` the claim floor
/// (`floor.rs`; `i64::MIN` for none); `fence_mask` the lease fence's SQL.
fn select_statement(outbox: &str, fence_mask: &str) -> String {
    claim_select(
        outbox,
        fence_mask,
        "$1",
        "$2",
        "o.seq >= $4 AND o.seq NOT IN (SELECT unnest($3::int8[]))",
    )
}

/// Runs in flight a claim ahead skips by range; with more it falls back to
/// the hashed lookup. Each run adds a branch to the statement, and each
/// branch about 0.25 ms of planning.
const MAX_SKIPPED_RUNS: usize = 2;

/// The claim as `COPY (SELECT …) TO STDOUT (FORMAT binary)`, its values
/// written into the statement: every one is a number, a boolean or the
/// fence (`Fence::mask_sql`) formatted here, never text from elsewhere (the
/// table names are validated identifiers, see `Names`).
///
/// The rows in flight are the first pending rows, so a hashed exclusion
/// made the index scan fetch and discard each of them before the first row
/// it returned: with 2,000 in flight (the batch being produced and the one
/// being marked) that was most of the claim's execution time. When they form
/// at most [`MAX_SKIPPED_RUNS`] runs of consecutive `seq`s (a backlog does),
/// the claim is instead a `UNION ALL` of one branch per range around them
/// (below the first run, between runs, above the last), each an ordered
/// index scan between its bounds, merged in `seq` order. The ranges hold
/// exactly the `seq`s not in flight, so it returns the same rows as the
/// hashed form (`tests/relay_claim.rs` compares the two on a real
/// Postgres).
///
/// `floor` (see `floor.rs`) bounds the branch below the first run, or the
/// whole claim without runs; nothing when it is `NO_FLOOR`.
fn copy_statement(
    outbox: &str,
    fence_mask: &str,
    dead_blocks: bool,
    limit: usize,
    in_flight: &[i64],
    floor: i64,
) -> String {
    let limit = limit.to_string();
    let dead_blocks = if dead_blocks { "true" } else { "false" };
    let branch =
        |seq_filter: &str| claim_select(outbox, fence_mask, dead_blocks, &limit, seq_filter);
    let from_floor = (floor != NO_FLOOR).then(|| format!("o.seq >= {floor}"));
    let runs = seq_runs::runs(in_flight);
    let select = if runs.is_empty() {
        branch(from_floor.as_deref().unwrap_or("true"))
    } else if runs.len() <= MAX_SKIPPED_RUNS {
        let branches: Vec<String> = ranges_around(&runs, from_floor.as_deref())
            .iter()
            .map(|range| format!("({})", branch(range)))
            .collect();
        format!(
            "SELECT * FROM ({}) AS claim ORDER BY seq LIMIT {limit}",
            branches.join(" UNION ALL ")
        )
    } else {
        branch(&from_floor_and(
            from_floor.as_deref(),
            not_in_list(in_flight),
        ))
    };
    format!("COPY ({select}) TO STDOUT (FORMAT binary)")
}

/// The `seq` ranges around `runs` (ascending, as `seq_runs::runs` gives
/// them): below the first (from `from_floor` when given), between each two,
/// above the last.
fn ranges_around(runs: &[(i64, i64)], from_floor: Option<&str>) -> Vec<String> {
    let below = runs
        .first()
        .map(|&(first, _)| from_floor_and(from_floor, format!("o.seq < {first}")));
    let between = runs
        .windows(2)
        .map(|pair| format!("o.seq > {} AND o.seq < {}", pair[0].1, pair[1].0));
    let above = runs.last().map(|&(_, last)| format!("o.seq > {last}"));
    below.into_iter().chain(between).chain(above).collect()
}

/// `filter`, bounded below by `from_floor` (`o.seq >= …`) when given.
fn from_floor_and(from_floor: Option<&str>, filter: String) -> String {
    match from_floor {
        Some(from_floor) => format!("{from_floor} AND {filter}"),
        None => filter,
    }
}

/// `o.seq NOT IN (…)` over a literal array of `seqs`.
fn not_in_list(seqs: &[i64]) -> String {
    let mut list = String::with_capacity(seqs.len() * 8 + 48);
    list.push_str("o.seq NOT IN (SELECT unnest('{");
    for (i, seq) in seqs.iter().enumerate() {
        if i > 0 {
            list.push(',');
        }
        // Writing to a String cannot fail.
        let _ = write!(list, "{seq}");
    }
    list.push_str("}'::int8[]))");
    list
}

/// The fields of one claimed row by position, in `claim_select`'s order,
/// from either claim form: a fresh claim's result row or a claim ahead's
/// COPY tuple. One `decode` reads both, so the column positions are written
/// once.
trait ClaimFields<'a> {
    type Error;
    fn int8(&self, field: usize) -> Result<i64, Self::Error>;
    fn int4(&self, field: usize) -> Result<i32, Self::Error>;
    fn uuid(&self, field: usize) -> Result<Uuid, Self::Error>;
    /// An `interval` as seconds (see `interval_seconds`).
    fn seconds(&self, field: usize) -> Result<f64, Self::Error>;
    fn text(&self, field: usize) -> Result<Option<&'a str>, Self::Error>;
    fn required_text(&self, field: usize) -> Result<&'a str, Self::Error>;
}

impl<'a> ClaimFields<'a> for &'a PgRow {
    type Error = sqlx::Error;
    fn int8(&self, field: usize) -> Result<i64, sqlx::Error> {
        self.try_get(field)
    }
    fn int4(&self, field: usize) -> Result<i32, sqlx::Error> {
        self.try_get(field)
    }
    fn uuid(&self, field: usize) -> Result<Uuid, sqlx::Error> {
        self.try_get(field)
    }
    fn seconds(&self, field: usize) -> Result<f64, sqlx::Error> {
        let age: PgInterval = self.try_get(field)?;
        Ok(interval_seconds(age.months, age.days, age.microseconds))
    }
    fn text(&self, field: usize) -> Result<Option<&'a str>, sqlx::Error> {
        let row: &'a PgRow = self;
        row.try_get(field)
    }
    fn required_text(&self, field: usize) -> Result<&'a str, sqlx::Error> {
        let row: &'a PgRow = self;
        row.try_get(field)
    }
}

impl<'a, const N: usize> ClaimFields<'a> for Tuple<'a, N> {
    type Error = CopyFormatError;
    fn int8(&self, field: usize) -> Result<i64, CopyFormatError> {
        Tuple::int8(self, field)
    }
    fn int4(&self, field: usize) -> Result<i32, CopyFormatError> {
        Tuple::int4(self, field)
    }
    fn uuid(&self, field: usize) -> Result<Uuid, CopyFormatError> {
        Tuple::uuid(self, field)
    }
    fn seconds(&self, field: usize) -> Result<f64, CopyFormatError> {
        Tuple::interval_seconds(self, field)
    }
    fn text(&self, field: usize) -> Result<Option<&'a str>, CopyFormatError> {
        Tuple::text(self, field)
    }
    fn required_text(&self, field: usize) -> Result<&'a str, CopyFormatError> {
        Tuple::required_text(self, field)
    }
}

/// Reads one claimed row. Text is borrowed from the row or the COPY data
/// and copied once, into the row's buffer.
fn decode<'a, F: ClaimFields<'a>>(fields: &F) -> Result<ClaimedRow, F::Error> {
    let texts: TextColumns<'a> = [
        Some(fields.required_text(2)?),
        Some(fields.required_text(3)?),
        Some(fields.required_text(4)?),
        Some(fields.required_text(5)?),
        Some(fields.required_text(6)?),
        Some(fields.required_text(7)?),
        fields.text(8)?,
        fields.text(9)?,
        fields.text(10)?,
    ];
    Ok(ClaimedRow::new(
        fields.int8(0)?,
        fields.uuid(1)?,
        texts,
        fields.int4(11)?,
        fields.seconds(12)?,
    ))
}

/// Reads a whole claim's binary COPY output.
fn decode_all(data: &[u8]) -> Result<Vec<ClaimedRow>, CopyFormatError> {
    let mut reader = CopyReader::new(data)?;
    let mut rows = Vec::new();
    while let Some(tuple) = reader.next_tuple::<CLAIM_FIELDS>()? {
        rows.push(decode(&tuple)?);
    }
    Ok(rows)
}

/// Shards `0..64` as the bits of an `i64` (shard 63 is the sign bit).
pub(crate) fn shard_mask(shards: &[i16]) -> i64 {
    shards
        .iter()
        .filter(|&&shard| (0..64).contains(&shard))
        .fold(0u64, |mask, &shard| mask | (1u64 << shard)) as i64
}

/// A claimed batch, when and how long its claim ran, and the fence it was
/// claimed under.
#[derive(Debug)]
pub(crate) struct Claimed {
    pub rows: Vec<ClaimedRow>,
    pub started: Instant,
    pub took: Duration,
    pub fence: Fence,
}

/// How this relay claims: the statement and the settings that stay the
/// same from claim to claim. Cheap to clone into a task of its own.
#[derive(Debug, Clone)]
pub(crate) struct Claimer {
    pool: PgPool,
    outbox: Arc<str>,
    lease: Arc<str>,
    dead_blocks: bool,
    limit: usize,
}

impl Claimer {
    /// `dead_blocks`: dead rows hold back their aggregate; `limit`: the
    /// batch size.
    pub(crate) fn new(pool: PgPool, names: &Names, dead_blocks: bool, limit: usize) -> Self {
        Self {
            pool,
            outbox: names.outbox.as_str().into(),
            lease: names.lease.as_str().into(),
            dead_blocks,
            limit,
        }
    }

    /// The batch size: a claim that returns this many rows left more behind.
    pub(crate) fn limit(&self) -> usize {
        self.limit
    }

    /// The next batch of the shards under `fence`, leaving out
    /// `in_flight` (the `seq`s of the batches produced but not yet marked,
    /// if any), as a `SELECT`. Used for fresh claims, the wake-up path: with
    /// small batches it gives lower end-to-end latency than the `COPY` of
    /// `claim_ahead`.
    pub(crate) async fn claim(
        &self,
        fence: &Fence,
        in_flight: &[i64],
        floor: i64,
    ) -> Result<Claimed, sqlx::Error> {
        let started = Instant::now();
        let statement = select_statement(&self.outbox, &fence.mask_sql(&self.lease, true));
        let rows = sqlx::query(&statement)
            .persistent(false)
            .bind(self.dead_blocks)
            .bind(i64::try_from(self.limit).unwrap_or(i64::MAX))
            .bind(in_flight)
            .bind(floor)
            .fetch_all(&self.pool)
            .await?;
        let rows = rows
            .iter()
            .map(|row| decode(&row))
            .collect::<Result<_, _>>()?;
        Ok(Claimed {
            rows,
            started,
            took: started.elapsed(),
            fence: fence.clone(),
        })
    }

    /// Like [`claim`](Self::claim), as a binary `COPY`: used for the batch
    /// claimed ahead while a full one is produced (backlogs), where reading
    /// binary COPY data costs the relay about 1 ms less CPU per 1,000 rows
    /// than sqlx's row-by-row decoding.
    pub(crate) async fn claim_ahead(
        &self,
        fence: &Fence,
        in_flight: &[i64],
        floor: i64,
    ) -> Result<Claimed, sqlx::Error> {
        let started = Instant::now();
        let statement = copy_statement(
            &self.outbox,
            &fence.mask_sql(&self.lease, true),
            self.dead_blocks,
            self.limit,
            in_flight,
            floor,
        );
        // A `COPY` that fails before its data (a statement timeout while it
        // waits for a lock) leaves a reply unread on its connection (sqlx
        // 0.8's `pg_begin_copy_out`): such a connection is closed, never
        // handed back to the pool out of step with the server.
        let mut conn = self.pool.acquire().await?;
        let copied = async {
            // The data arrives in many CopyData messages; they are joined
            // once, at their exact total size, instead of growing a buffer
            // through repeated reallocation.
            let chunks: Vec<_> = conn.copy_out_raw(&statement).await?.try_collect().await?;
            Ok::<_, sqlx::Error>(chunks.concat())
        }
        .await;
        let data = match copied {
            Ok(data) => data,
            Err(error) => {
                conn.close_on_drop();
                return Err(error);
            }
        };
        let rows = decode_all(&data).map_err(|error| sqlx::Error::Decode(Box::new(error)))?;
        Ok(Claimed {
            rows,
            started,
            took: started.elapsed(),
            fence: fence.clone(),
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

    const FENCE: &str = "(FENCE)";

    #[test]
    fn the_fresh_claim_binds_its_values() {
        let sql = select_statement("event_outbox", FENCE);
        assert!(sql.starts_with("SELECT o.seq"), "{sql}");
        assert!(
            sql.contains("(1::int8 << o.shard) & (FENCE)) <> 0"),
            "{sql}"
        );
        assert!(sql.contains("b.state = 'dead' AND $1"), "{sql}");
        assert!(sql.contains("LIMIT $2"), "{sql}");
        assert!(sql.contains("unnest($3::int8[])"), "{sql}");
        assert!(sql.contains("o.seq >= $4 AND"), "{sql}");
    }

    #[test]
    fn a_floor_bounds_only_what_lies_below_the_runs_in_flight() {
        let none = copy_statement("event_outbox", FENCE, true, 100, &[], 40);
        assert!(none.contains("AND o.seq >= 40\n"), "{none}");
        let ranges = copy_statement("event_outbox", FENCE, true, 100, &[50, 51], 40);
        assert!(ranges.contains("o.seq >= 40 AND o.seq < 50\n"), "{ranges}");
        assert!(ranges.contains("AND o.seq > 51\n"), "{ranges}");
        let hashed = copy_statement("event_outbox", FENCE, true, 100, &[50, 52, 54], 40);
        assert!(hashed.contains("o.seq >= 40 AND o.seq NOT IN"), "{hashed}");
    }

    #[test]
    fn the_claim_ahead_writes_only_numbers_and_the_fence_into_the_copy() {
        let sql = copy_statement(
            "\"s\".event_outbox",
            FENCE,
            true,
            500,
            &[3, -4, 5],
            NO_FLOOR,
        );
        assert!(sql.starts_with("COPY (SELECT o.seq"), "{sql}");
        assert!(sql.ends_with(") TO STDOUT (FORMAT binary)"), "{sql}");
        assert!(sql.contains("FROM \"s\".event_outbox o"), "{sql}");
        assert!(
            sql.contains("(1::int8 << o.shard) & (FENCE)) <> 0"),
            "{sql}"
        );
        assert!(sql.contains("b.state = 'dead' AND true"), "{sql}");
        assert!(sql.contains("LIMIT 500"), "{sql}");
        let none = copy_statement("event_outbox", FENCE, false, 1, &[], NO_FLOOR);
        assert!(none.contains("AND true\n"), "{none}");
        assert!(!none.contains("UNION ALL"), "{none}");
        assert!(none.contains("b.state = 'dead' AND false"), "{none}");
    }

    #[test]
    fn the_claim_ahead_skips_up_to_two_runs_in_flight_by_range() {
        let one = copy_statement("event_outbox", FENCE, true, 100, &[12, 10, 11], NO_FLOOR);
        assert!(one.contains("AND o.seq < 10\n"), "{one}");
        assert!(one.contains("AND o.seq > 12\n"), "{one}");
        assert_eq!(one.matches("UNION ALL").count(), 1, "{one}");
        assert!(one.contains(") AS claim ORDER BY seq LIMIT 100)"), "{one}");
        assert!(!one.contains("NOT IN"), "{one}");

        let two = copy_statement("event_outbox", FENCE, true, 100, &[3, 4, 8, 9], NO_FLOOR);
        assert!(two.contains("o.seq < 3\n"), "{two}");
        assert!(two.contains("o.seq > 4 AND o.seq < 8\n"), "{two}");
        assert!(two.contains("o.seq > 9\n"), "{two}");
        assert_eq!(two.matches("UNION ALL").count(), 2, "{two}");
    }

    #[test]
    fn more_runs_in_flight_fall_back_to_the_hashed_exclusion() {
        let sql = copy_statement("event_outbox", FENCE, true, 100, &[3, -4, 5], NO_FLOOR);
        assert!(
            sql.contains("o.seq NOT IN (SELECT unnest('{3,-4,5}'::int8[]))"),
            "{sql}"
        );
        assert!(!sql.contains("UNION ALL"), "{sql}");
    }

    /// Binary COPY data of one claimed row with the given topic.
    fn copied_row(topic: Option<&str>) -> Vec<u8> {
        use crate::relay::claim::copy_binary::tests::{encode, interval};
        let text = |t: &str| Some(t.as_bytes().to_vec());
        encode(&[vec![
            Some(42i64.to_be_bytes().to_vec()),
            Some(Uuid::from_u128(1).as_bytes().to_vec()),
            text("essay"),
            text("e-1"),
            text("EssayScoredV1"),
            topic.and_then(text),
            text("e-1"),
            text(PAYLOAD),
            text("corr"),
            None,
            None,
            Some(2i32.to_be_bytes().to_vec()),
            Some(interval(250_000, 0, 0)),
        ]])
    }

    const PAYLOAD: &str = r#"{"event_id": "x", "event_type": "E", "data": {}}"#;

    #[test]
    fn claimed_rows_decode_from_binary_copy() {
        let rows = decode_all(&copied_row(Some("essays.v1"))).unwrap();
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert_eq!(
            (row.seq, row.id, row.retry_count),
            (42, Uuid::from_u128(1), 2)
        );
        assert_eq!(row.aggregate_type(), "essay");
        assert_eq!(row.aggregate_id(), "e-1");
        assert_eq!(row.event_type(), "EssayScoredV1");
        assert_eq!(row.topic(), "essays.v1");
        assert_eq!(row.key(), "e-1");
        assert_eq!(row.payload(), PAYLOAD);
        assert!(row.envelope_ok);
        assert_eq!(row.correlation_id(), Some("corr"));
        assert_eq!(row.traceparent(), None);
        assert!((row.age_at_claim - 0.25).abs() < 1e-9);
        assert_eq!(
            decode_all(&copied_row(None)).err(),
            Some(CopyFormatError::UnexpectedNull { field: 5 }),
            "a NULL topic is an error naming its field"
        );
    }

    #[test]
    fn shard_masks_set_one_bit_per_shard() {
        assert_eq!(shard_mask(&[]), 0);
        assert_eq!(shard_mask(&[0, 2]), 0b101);
        assert_eq!(shard_mask(&[63]), i64::MIN);
        let all: Vec<i16> = (0..64).collect();
        assert_eq!(shard_mask(&all), -1);
    }
}
