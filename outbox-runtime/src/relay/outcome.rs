//! Recording what happened to a produced batch.

use super::seq_runs::single_run;
use crate::identifier::Names;
use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgPool, Postgres};
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
    /// `$1` the `seq`s, one index lookup each.
    list: String,
    /// `$1`, `$2` the bounds of one run: one walk of the index.
    run: String,
}

impl BySeq {
    /// `statement` (without `WHERE`) over a list of `seq`s or a run.
    fn new(statement: &str) -> Self {
        Self {
            list: format!("{statement} WHERE seq = ANY($1)"),
            run: format!("{statement} WHERE seq BETWEEN $1 AND $2"),
        }
    }

    /// The statement for `seqs`: by range when they are exactly
    /// `first..=last` (`seq` is the primary key, so the range holds exactly
    /// these rows), by list otherwise.
    fn query<'q>(&'q self, seqs: &'q [i64]) -> Query<'q, Postgres, PgArguments> {
        match single_run(seqs) {
            Some((first, last)) => sqlx::query(&self.run).bind(first).bind(last),
            None => sqlx::query(&self.list).bind(seqs),
        }
    }
}

/// Marking statements. Like the claim, they are planned at each execution,
/// never as a cached generic plan (see `claim_select`).
#[derive(Debug)]
pub(crate) struct OutcomeSql {
    delete: BySeq,
    mark_published: BySeq,
    fail: String,
}

impl OutcomeSql {
    pub(crate) fn new(names: &Names) -> Self {
        let outbox = &names.outbox;
        Self {
            delete: BySeq::new(&format!("DELETE FROM {outbox}")),
            mark_published: BySeq::new(&format!(
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

    /// Marks delivered rows (delete or keep) and failed rows atomically:
    /// one statement when only one kind is present (the usual case: a single
    /// round trip, no `BEGIN`/`COMMIT`), one transaction when both are.
    pub(crate) async fn record(
        &self,
        pool: &PgPool,
        delivered: &[i64],
        keep_published: bool,
        failed: &[FailedRow],
    ) -> Result<(), sqlx::Error> {
        match (delivered.is_empty(), failed.is_empty()) {
            (true, true) => Ok(()),
            (false, true) => self.mark_delivered(pool, delivered, keep_published).await,
            (true, false) => self.mark_failed(pool, failed).await,
            (false, false) => {
                let mut tx = pool.begin().await?;
                self.mark_delivered(&mut *tx, delivered, keep_published)
                    .await?;
                self.mark_failed(&mut *tx, failed).await?;
                tx.commit().await
            }
        }
    }

    async fn mark_delivered<'e>(
        &self,
        executor: impl sqlx::PgExecutor<'e>,
        delivered: &[i64],
        keep_published: bool,
    ) -> Result<(), sqlx::Error> {
        let marking = if keep_published {
            &self.mark_published
        } else {
            &self.delete
        };
        marking
            .query(delivered)
            .persistent(false)
            .execute(executor)
            .await?;
        Ok(())
    }

    async fn mark_failed<'e>(
        &self,
        executor: impl sqlx::PgExecutor<'e>,
        failed: &[FailedRow],
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&self.fail)
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
        Ok(())
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
