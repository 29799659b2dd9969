//! A produced batch whose outcome is not written to the table yet.
//!
//! The relay writes a batch's outcome (delivered rows deleted or marked
//! `published`, failed rows counted) while the broker takes the next batch,
//! so that round trip to the database is off the delivery path. Until the
//! write commits, the batch's rows are still `pending` in the table, so:
//!
//! - every claim made meanwhile leaves them out by `seq`, and
//! - the later rows of its unfinished aggregates (see `unfinished`) are
//!   dropped from a batch claimed meanwhile, because the claim statement
//!   cannot see the failure yet.
//!
//! The next batch is produced only after this one's acknowledgements are all
//! in, so its hold-backs are decided as before; what changes is the bound on
//! duplicates after a crash: two batches (this one, acknowledged, and the
//! one produced while it is written), not one.
//!
//! **Order within a batch.** Once a row of an aggregate did not get through
//! (failed, or held behind a failure), no later row of that aggregate in the
//! batch is marked, even when the broker acknowledged it: it stays
//! `pending` and is produced again after the failed row. A later row that
//! the broker did take ahead of an earlier failed one (possible only when
//! the earlier message timed out in the client's queue while the later one
//! got through: `enable.gapless.guarantee` turns every other such failure
//! into a fatal error that fails the later rows too) is logged with both
//! event ids and counted as `reordered`; a consumer then sees the later
//! event, the earlier one, and the later one again.

use crate::metrics::{ErrorKind, OutboxMetrics};
use crate::relay::claim::ClaimedRow;
use crate::relay::lease::Fence;
use crate::relay::produce::RowOutcome;
use crate::relay::record::unfinished::Unfinished;
use crate::relay::record::{FailedRow, Failure};
use crate::relay::stats::RelayCounters;
use std::time::Instant;

/// A produced batch and what happened to each row, waiting to be written.
#[derive(Debug)]
pub(crate) struct Unrecorded {
    rows: Vec<ClaimedRow>,
    /// Indexes into `rows` of the delivered rows.
    delivered: Vec<usize>,
    /// Indexes into `rows` of the failed rows, beside `failed`.
    failed_at: Vec<usize>,
    failed: Vec<FailedRow>,
    unfinished: Unfinished,
    /// Failures not counted as attempts (the broker's fault, not the
    /// event's).
    uncounted: usize,
    /// Rows the broker acknowledged after an earlier row of their aggregate
    /// failed in this batch; left pending, produced again.
    reordered: usize,
    /// The leases the batch was claimed under: its marks carry them.
    fence: Fence,
    claimed_at: Instant,
    /// Seconds from the claim to the last acknowledgement.
    acknowledged_after: f64,
    /// The batch's span: its outcome is logged there, not in the span of
    /// the batch produced meanwhile.
    span: tracing::Span,
}

impl Unrecorded {
    /// Classifies `outcomes` (one per row, in order); `fail` turns a failure
    /// into what to write for its row.
    pub(crate) fn new(
        rows: Vec<ClaimedRow>,
        outcomes: Vec<RowOutcome>,
        claimed_at: Instant,
        fence: Fence,
        span: tracing::Span,
        mut fail: impl FnMut(&ClaimedRow, Failure) -> FailedRow,
    ) -> Self {
        let acknowledged_after = claimed_at.elapsed().as_secs_f64();
        let mut delivered = Vec::with_capacity(rows.len());
        let (mut failed_at, mut failed) = (Vec::new(), Vec::new());
        let mut unfinished = Unfinished::default();
        let (mut uncounted, mut reordered) = (0, 0);
        for (index, (row, outcome)) in rows.iter().zip(outcomes).enumerate() {
            match outcome {
                RowOutcome::Delivered if !unfinished.holds(row) => delivered.push(index),
                RowOutcome::Delivered => {
                    reordered += 1;
                    tracing::warn!(
                        event_id = %row.id,
                        event_type = %row.event_type(),
                        aggregate_type = %row.aggregate_type(),
                        aggregate_id = %row.aggregate_id(),
                        topic = %row.topic(),
                        correlation_id = row.correlation_id().unwrap_or(""),
                        "outbox event reached the broker after an earlier event of its aggregate failed; \
                         it stays pending and is sent again after that event"
                    );
                }
                RowOutcome::Held => unfinished.insert(row),
                RowOutcome::Failed(failure) => {
                    unfinished.insert(row);
                    let f = fail(row, failure);
                    if f.increment == 0 {
                        uncounted += 1;
                    }
                    failed_at.push(index);
                    failed.push(f);
                }
            }
        }
        Self {
            rows,
            delivered,
            failed_at,
            failed,
            unfinished,
            uncounted,
            reordered,
            fence,
            claimed_at,
            acknowledged_after,
            span,
        }
    }

    /// The span of the batch.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Every row of the batch: still `pending` until the outcome is written.
    pub(crate) fn seqs(&self) -> impl Iterator<Item = i64> + '_ {
        self.rows.iter().map(|r| r.seq)
    }

    /// The leases the batch was claimed under.
    pub(crate) fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Rows acknowledged ahead of an earlier failed row of their aggregate.
    pub(crate) fn reordered(&self) -> usize {
        self.reordered
    }

    /// `seq`s of the delivered rows.
    pub(crate) fn delivered_seqs(&self) -> Vec<i64> {
        self.delivered.iter().map(|&i| self.rows[i].seq).collect()
    }

    pub(crate) fn failed(&self) -> &[FailedRow] {
        &self.failed
    }

    pub(crate) fn unfinished(&self) -> &Unfinished {
        &self.unfinished
    }

    pub(crate) fn claimed(&self) -> usize {
        self.rows.len()
    }

    pub(crate) fn delivered(&self) -> usize {
        self.delivered.len()
    }

    /// No message got through and some failed for the broker's fault: the
    /// broker is down or the producer broken, not the events at fault.
    pub(crate) fn broker_unreachable(&self) -> bool {
        self.delivered.is_empty() && self.uncounted > 0
    }

    /// (retried, dead, uncounted) failures.
    pub(crate) fn failure_counts(&self) -> (u64, u64, usize) {
        let dead = self.failed.iter().filter(|f| f.dead).count();
        let retried = self
            .failed
            .iter()
            .filter(|f| !f.dead && f.increment > 0)
            .count();
        (retried as u64, dead as u64, self.uncounted)
    }

    /// Counts, logs and measures the batch once its outcome is written.
    pub(crate) fn report(&self, counters: &RelayCounters, metrics: Option<&OutboxMetrics>) {
        let (retried, dead, _) = self.failure_counts();
        counters.batch(self.delivered.len() as u64, retried, dead);
        for row in self.delivered.iter().map(|&i| &self.rows[i]) {
            tracing::trace!(
                event_id = %row.id,
                event_type = %row.event_type(),
                topic = %row.topic(),
                aggregate_type = %row.aggregate_type(),
                aggregate_id = %row.aggregate_id(),
                correlation_id = row.correlation_id().unwrap_or(""),
                "outbox event delivered"
            );
        }
        let Some(metrics) = metrics else {
            return;
        };
        for row in self.delivered.iter().map(|&i| &self.rows[i]) {
            metrics.event_published(
                row.topic(),
                row.event_type(),
                row.age_at_claim + self.acknowledged_after,
            );
        }
        for _ in 0..self.reordered {
            metrics.relay_error(ErrorKind::Reordered);
        }
        for (&index, failed) in self.failed_at.iter().zip(&self.failed) {
            let row = &self.rows[index];
            if failed.dead {
                metrics.event_failed(row.topic(), row.event_type());
            } else if failed.increment > 0 {
                metrics.relay_error(ErrorKind::Delivery);
            }
        }
        metrics.batch_processed(self.claimed_at.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::claim::tests::row;
    use std::time::Duration;
    use uuid::Uuid;

    fn fence() -> Fence {
        Fence {
            owner: Uuid::nil(),
            shards: vec![0],
            epochs: vec![1],
            valid_for: Duration::ZERO,
        }
    }

    fn fail(row: &ClaimedRow, failure: Failure) -> FailedRow {
        let (increment, error) = match failure {
            Failure::Permanent(e) | Failure::Counted(e) => (1, e),
            Failure::Uncounted(e) => (0, e),
        };
        FailedRow {
            seq: row.seq,
            increment,
            error,
            delay: Duration::ZERO,
            dead: false,
        }
    }

    /// The outcome of `rows` produced with `outcomes`.
    fn settled(rows: Vec<ClaimedRow>, outcomes: Vec<RowOutcome>) -> Unrecorded {
        Unrecorded::new(
            rows,
            outcomes,
            Instant::now(),
            fence(),
            tracing::Span::none(),
            fail,
        )
    }

    #[test]
    fn a_failure_makes_its_aggregate_unfinished_and_every_row_stays_excluded() {
        let rows = vec![
            row(1, "essay", "a"),
            row(2, "essay", "b"),
            row(3, "essay", "a"),
        ];
        let outcomes = vec![
            RowOutcome::Failed(Failure::Counted("refused".into())),
            RowOutcome::Delivered,
            RowOutcome::Held,
        ];
        let batch = settled(rows, outcomes);
        assert_eq!(batch.seqs().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(batch.delivered_seqs(), [2]);
        assert_eq!(batch.failed().len(), 1);
        assert!(batch.unfinished().holds(&row(9, "essay", "a")));
        assert!(!batch.unfinished().holds(&row(9, "essay", "b")));
        assert_eq!(batch.failure_counts(), (1, 0, 0));
        assert!(!batch.broker_unreachable());
    }

    #[test]
    fn a_broker_fault_never_counts_and_stops_the_relay_only_when_nothing_got_through() {
        let timeout = || RowOutcome::Failed(Failure::Uncounted("timed out".into()));
        let rows = vec![row(1, "essay", "a"), row(2, "essay", "b")];
        let down = settled(rows.clone(), vec![timeout(), timeout()]);
        assert!(down.broker_unreachable());
        assert_eq!(down.failure_counts(), (0, 0, 2));
        let partly = settled(rows, vec![timeout(), RowOutcome::Delivered]);
        assert!(!partly.broker_unreachable());
        assert_eq!(
            partly.failure_counts(),
            (0, 0, 1),
            "not counted next to a success either"
        );
    }

    #[test]
    fn a_later_row_acknowledged_after_its_aggregates_failure_is_not_marked() {
        let rows = vec![
            row(1, "essay", "a"),
            row(2, "essay", "b"),
            row(3, "essay", "a"),
            row(4, "essay", "a"),
        ];
        let outcomes = vec![
            RowOutcome::Failed(Failure::Uncounted("timed out".into())),
            RowOutcome::Delivered,
            RowOutcome::Delivered,
            RowOutcome::Failed(Failure::Uncounted("timed out".into())),
        ];
        let batch = settled(rows, outcomes);
        assert_eq!(batch.delivered_seqs(), [2], "3 stays pending behind 1");
        assert_eq!(batch.reordered(), 1);
        assert!(batch.unfinished().holds(&row(9, "essay", "a")));
    }
}
