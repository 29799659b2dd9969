//! The next batch, claimed while the broker acknowledges the current one.
//!
//! Claiming is a read, so it can overlap producing: the claim leaves out
//! the rows in flight (see `claim_select` in `claim.rs`). Two rules
//! keep the guarantees:
//!
//! - **Order.** The prefetch was claimed before the current batch's outcome
//!   was known. Every row of an aggregate that did not get through the
//!   current batch (failed, or held behind a failure) is dropped from it; it
//!   stays `pending` and a later claim finds it behind its failed head.
//! - **Ownership.** A prefetch is used only under the lease fence it was
//!   claimed under (the same shards at the same epochs, `lease.rs`); a
//!   rebalance or a lapsed lease in between throws it away.
//!
//! Nothing of the prefetch is produced before every acknowledgement of the
//! current batch is in, so its hold-backs are decided on the current batch's
//! outcome. The outcome itself is written while the prefetch is produced
//! (see `unrecorded`).

use crate::relay::claim::Claimed;
use crate::relay::lease::Fence;
use crate::relay::record::unfinished::Unfinished;

/// A batch claimed ahead.
#[derive(Debug)]
pub(crate) struct Prefetched {
    batch: Claimed,
}

impl Prefetched {
    pub(crate) fn new(batch: Claimed) -> Self {
        Self { batch }
    }

    /// How long its claim took, in milliseconds.
    pub(crate) fn claim_ms(&self) -> f64 {
        self.batch.took.as_secs_f64() * 1e3
    }

    /// Drops the rows of `unfinished` aggregates, keeping the rest in order.
    pub(crate) fn hold_back(&mut self, unfinished: &Unfinished) {
        if !unfinished.is_empty() {
            self.batch.rows.retain(|row| !unfinished.holds(row));
        }
    }

    /// The batch, if it was claimed under `fence`; `None`, dropping it,
    /// otherwise.
    pub(crate) fn into_batch(self, fence: &Fence) -> Option<Claimed> {
        (self.batch.fence == *fence).then_some(self.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::claim::{tests::row as typed_row, ClaimedRow};
    use std::time::{Duration, Instant};
    use uuid::Uuid;

    fn row(seq: i64, aggregate: &str) -> ClaimedRow {
        typed_row(seq, "essay", aggregate)
    }

    fn unfinished(aggregate_type: &str, aggregate_id: &str) -> Unfinished {
        let mut set = Unfinished::default();
        set.insert(&typed_row(0, aggregate_type, aggregate_id));
        set
    }

    fn fence(shards: &[i16], epoch: i64) -> Fence {
        Fence {
            owner: Uuid::from_u128(1),
            shards: shards.to_vec(),
            epochs: vec![epoch; shards.len()],
            valid_for: Duration::from_secs(1),
        }
    }

    fn prefetched(rows: Vec<ClaimedRow>, fence: Fence) -> Prefetched {
        Prefetched::new(Claimed {
            rows,
            started: Instant::now(),
            took: Duration::ZERO,
            fence,
        })
    }

    fn seqs(batch: &Claimed) -> Vec<i64> {
        batch.rows.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn rows_of_unfinished_aggregates_are_held_back_in_order() {
        let rows = vec![row(5, "a"), row(6, "b"), row(7, "a"), row(8, "c")];
        let mut prefetched = prefetched(rows, fence(&[0, 1], 1));
        prefetched.hold_back(&unfinished("essay", "a"));
        let kept = prefetched.into_batch(&fence(&[0, 1], 1)).unwrap();
        assert_eq!(seqs(&kept), [6, 8]);
    }

    #[test]
    fn an_aggregate_of_another_type_is_not_held_back() {
        let mut prefetched = prefetched(vec![row(1, "a")], fence(&[0], 1));
        prefetched.hold_back(&unfinished("file_upload", "a"));
        assert_eq!(
            prefetched.into_batch(&fence(&[0], 1)).unwrap().rows.len(),
            1
        );
    }

    #[test]
    fn a_rebalance_or_a_new_epoch_discards_the_prefetch() {
        let claimed_under = fence(&[0, 1], 1);
        let p = || prefetched(vec![row(1, "a")], claimed_under.clone());
        assert!(p().into_batch(&fence(&[0], 1)).is_none(), "fewer shards");
        assert!(
            p().into_batch(&fence(&[0, 1], 2)).is_none(),
            "lease taken again"
        );
        assert!(p().into_batch(&claimed_under).is_some());
    }
}
