//! Recording what happened to a produced batch.

pub(crate) mod unfinished;
pub(crate) mod unrecorded;

use crate::identifier::Names;
use crate::relay::claim::ClaimedRow;
use crate::relay::config::RelayConfig;
use crate::relay::lease::Fence;
use crate::relay::seq_runs::single_run;
use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::PgPool;
use std::time::Duration;

/// How one row's attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Failure {
    /// The row itself is unusable (bad topic, malformed envelope): dead now.
    Permanent(String),
    /// The broker or client rejected this message: counts as an attempt.
    Counted(String),
    /// The broker was unreachable for the whole batch: not the event's
    /// fault, not counted; the relay backs off as a whole.
    Uncounted(String),
}

/// One failed row and what to write for it.
#[derive(Debug, Clone)]
pub(crate) struct FailedRow {
    pub seq: i64,
    pub increment: i32,
    pub error: String,
    pub delay: Duration,
    pub dead: bool,
}

/// Retry timing: exponential from `base`, doubling, capped at `max`, with
/// jitter (backon's schedule); the delay is stored on the row.
pub(crate) fn retry_delay(base: Duration, max: Duration, attempt: u32) -> Duration {
    let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
    ExponentialBuilder::default()
        .with_min_delay(base)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .nth(index)
        .unwrap_or(max)
        .min(max + max / 2)
}

/// One marking statement over a set of `seq`s, in its two forms.
#[derive(Debug)]
struct BySeq {
    /// The statement without its `WHERE`.
    statement: String,
}

impl BySeq {
    fn new(statement: String) -> Self {
        Self { statement }
    }

    /// Marks `seqs` under `fence_mask`: by range when they are exactly
    /// `first..=last` (`seq` is the primary key, so the range holds exactly
    /// these rows: one walk of the index), by list otherwise (one index
    /// lookup each). Returns the rows touched.
    async fn execute<'e>(
        &self,
        executor: impl sqlx::PgExecutor<'e>,
        seqs: &[i64],
        fence_mask: &str,
    ) -> Result<u64, sqlx::Error> {
        let fenced = format!("((1::int8 << shard) & {fence_mask}) <> 0");
        let done = match single_run(seqs) {
            Some((first, last)) => {
                let sql = format!(
                    "{} WHERE seq BETWEEN $1 AND $2 AND {fenced}",
                    self.statement
                );
                sqlx::query(&sql)
                    .persistent(false)
                    .bind(first)
                    .bind(last)
                    .execute(executor)
                    .await?
            }
            None => {
                let sql = format!("{} WHERE seq = ANY($1) AND {fenced}", self.statement);
                sqlx::query(&sql)
                    .persistent(false)
                    .bind(seqs)
                    .execute(executor)
                    .await?
            }
        };
        Ok(done.rows_affected())
    }
}

/// Marking statements. Like the claim, they are planned at each execution,
/// never as a cached generic plan (see `claim_select`), and fenced: they
/// touch only rows of shards whose lease this relay still holds at the
/// epoch it knows (`lease.rs`).
#[derive(Debug)]
pub(crate) struct OutcomeSql {
    lease: String,
    delete: BySeq,
    mark_published: BySeq,
    fail: String,
}

/// What a recording wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Recorded {
    /// Rows the marks did not touch: rows of shards whose lease this relay
    /// no longer holds at the epoch it was issued under (or rows an
    /// operator changed meanwhile).
    pub refused: u64,
}

impl OutcomeSql {
    pub(crate) fn new(names: &Names) -> Self {
        let outbox = &names.outbox;
        Self {
            lease: names.lease.clone(),
            delete: BySeq::new(format!("DELETE FROM {outbox}")),
            mark_published: BySeq::new(format!(
                "UPDATE {outbox} SET state = 'published', published_at = now(), last_error = NULL"
            )),
            fail: format!(
                "UPDATE {outbox} AS o
                 SET retry_count = o.retry_count + f.inc,
                     last_error = f.err,
                     next_attempt_at = now() + make_interval(secs => f.delay),
                     state = CASE WHEN f.dead THEN 'dead' ELSE o.state END
                 FROM unnest($1::int8[], $2::int4[], $3::text[], $4::float8[], $5::bool[])
                      AS f(seq, inc, err, delay, dead)
                 WHERE o.seq = f.seq AND o.state = 'pending'"
            ),
        }
    }

    /// Marks delivered rows (delete or keep) and failed rows atomically,
    /// under `fence`: one statement when only one kind is present (the
    /// usual case: a single round trip, no `BEGIN`/`COMMIT`), one
    /// transaction when both are.
    pub(crate) async fn record(
        &self,
        pool: &PgPool,
        fence: &Fence,
        delivered: &[i64],
        keep_published: bool,
        failed: &[FailedRow],
    ) -> Result<Recorded, sqlx::Error> {
        let mask = fence.mask_sql(&self.lease, false);
        let touched = match (delivered.is_empty(), failed.is_empty()) {
            (true, true) => 0,
            (false, true) => {
                self.mark_delivered(pool, &mask, delivered, keep_published)
                    .await?
            }
            (true, false) => self.mark_failed(pool, &mask, failed).await?,
            (false, false) => {
                let mut tx = pool.begin().await?;
                let touched = self
                    .mark_delivered(&mut *tx, &mask, delivered, keep_published)
                    .await?
                    + self.mark_failed(&mut *tx, &mask, failed).await?;
                tx.commit().await?;
                touched
            }
        };
        let expected = (delivered.len() + failed.len()) as u64;
        Ok(Recorded {
            refused: expected.saturating_sub(touched),
        })
    }

    async fn mark_delivered<'e>(
        &self,
        executor: impl sqlx::PgExecutor<'e>,
        fence_mask: &str,
        delivered: &[i64],
        keep_published: bool,
    ) -> Result<u64, sqlx::Error> {
        let marking = if keep_published {
            &self.mark_published
        } else {
            &self.delete
        };
        marking.execute(executor, delivered, fence_mask).await
    }

    async fn mark_failed<'e>(
        &self,
        executor: impl sqlx::PgExecutor<'e>,
        fence_mask: &str,
        failed: &[FailedRow],
    ) -> Result<u64, sqlx::Error> {
        let statement = format!(
            "{} AND ((1::int8 << o.shard) & {fence_mask}) <> 0",
            self.fail
        );
        let done = sqlx::query(&statement)
            .persistent(false)
            .bind(failed.iter().map(|f| f.seq).collect::<Vec<_>>())
            .bind(failed.iter().map(|f| f.increment).collect::<Vec<_>>())
            .bind(failed.iter().map(|f| f.error.clone()).collect::<Vec<_>>())
            .bind(
                failed
                    .iter()
                    .map(|f| f.delay.as_secs_f64())
                    .collect::<Vec<_>>(),
            )
            .bind(failed.iter().map(|f| f.dead).collect::<Vec<_>>())
            .execute(executor)
            .await?;
        Ok(done.rows_affected())
    }
}

/// What to write for `row`'s failed attempt under `config`: counted or not,
/// when to retry, dead or not. Logs the failure with the event's fields.
pub(crate) fn failed_row(config: &RelayConfig, row: &ClaimedRow, failure: Failure) -> FailedRow {
    let attempts = u32::try_from(row.retry_count).unwrap_or(0) + 1;
    let (increment, error, dead, delay) = match failure {
        Failure::Permanent(error) => (1, error, true, Duration::ZERO),
        Failure::Counted(error) => {
            let dead = attempts > config.max_retries;
            let delay = retry_delay(config.retry_backoff, config.max_retry_backoff, attempts);
            (1, error, dead, delay)
        }
        Failure::Uncounted(error) => (0, error, false, Duration::ZERO),
    };
    if dead {
        tracing::error!(
            event_id = %row.id,
            event_type = %row.event_type(),
            aggregate_type = %row.aggregate_type(),
            aggregate_id = %row.aggregate_id(),
            topic = %row.topic(),
            correlation_id = row.correlation_id().unwrap_or(""),
            attempts,
            %error,
            "outbox event is dead: it will not be retried automatically (see `outbox failed list`)"
        );
    } else if increment > 0 {
        tracing::warn!(
            event_id = %row.id,
            event_type = %row.event_type(),
            aggregate_type = %row.aggregate_type(),
            aggregate_id = %row.aggregate_id(),
            topic = %row.topic(),
            attempts,
            retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            %error,
            "outbox event delivery failed; will retry"
        );
    }
    FailedRow {
        seq: row.seq,
        increment,
        error,
        delay,
        dead,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_bounded() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        let first = retry_delay(base, max, 1);
        assert!(first >= base && first <= base * 2, "{first:?}");
        let fourth = retry_delay(base, max, 4);
        assert!(fourth >= base * 8, "{fourth:?}");
        for attempt in 1..40 {
            assert!(retry_delay(base, max, attempt) <= max + max / 2);
        }
    }
}
