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
//! - **Ownership.** A prefetch is used only while the relay owns exactly the
//!   shards it was claimed under; a rebalance in between throws it away.
//!
//! A prefetch may hold more than one batch (a relay that owns only some of
//! the shards claims two at once): each round takes the next batch from it
//! and the rest stays, held back again after every round, like a fresh
//! prefetch.
//!
//! What the claim proved (`proof.rs`) stays with its last rows: it is
//! handed on with the batch that takes them, and dropped with any row held
//! back.
//!
//! Nothing of the prefetch is produced before every acknowledgement of the
//! current batch is in, so its hold-backs are decided on the current batch's
//! outcome. The outcome itself is written while the prefetch is produced
//! (see `unrecorded`).

use super::claim::Claimed;
use super::proof::Proof;
use super::unfinished::Unfinished;
use std::time::Duration;

/// A batch claimed ahead, and the shards it was claimed under.
#[derive(Debug)]
pub(crate) struct Prefetched {
    batch: Claimed,
    shards: Vec<i16>,
}

impl Prefetched {
    pub(crate) fn new(batch: Claimed, shards: Vec<i16>) -> Self {
        Self { batch, shards }
    }

    /// How long its claim took.
    pub(crate) fn claim_took(&self) -> Duration {
        self.batch.took
    }

    /// Whether its claim started above a proof (`proof.rs`).
    pub(crate) fn claimed_above_proof(&self) -> bool {
        self.batch.above_proof
    }

    /// How many rows it holds.
    pub(crate) fn len(&self) -> usize {
        self.batch.rows.len()
    }

    /// The `seq`s of its rows, in order.
    pub(crate) fn seqs(&self) -> impl Iterator<Item = i64> + '_ {
        self.batch.rows.iter().map(|row| row.seq)
    }

    /// What its claim proved, while that stands.
    pub(crate) fn proof(&self) -> Option<Proof> {
        self.batch.proof
    }

    /// Drops the rows of `unfinished` aggregates, keeping the rest in order.
    /// Any row not delivered means a pending row outside the flight, so
    /// the claim's proof goes too, whether or not a row here was dropped.
    pub(crate) fn hold_back(&mut self, unfinished: &Unfinished) {
        if !unfinished.is_empty() {
            self.batch.rows.retain(|row| !unfinished.holds(row));
            self.forget_proof();
        }
    }

    /// Drops what the claim proved: a row below it is pending and not in
    /// flight (an outcome that could not be written).
    pub(crate) fn forget_proof(&mut self) {
        self.batch.proof = None;
    }

    /// The next batch of at most `limit` rows and the rows left for the
    /// rounds after it (a relay that owns only some of the shards claims
    /// two batches at once), if the relay still owns exactly the shards
    /// they were claimed under; `None`, dropping them all, otherwise.
    pub(crate) fn into_next_batch(
        self,
        owned: &[i16],
        limit: usize,
    ) -> Option<(Claimed, Option<Self>)> {
        if self.shards != owned {
            return None;
        }
        let Self { mut batch, shards } = self;
        let rest = (batch.rows.len() > limit).then(|| Self {
            batch: Claimed {
                rows: batch.rows.split_off(limit),
                started: batch.started,
                took: batch.took,
                proof: batch.proof.take(),
                above_proof: batch.above_proof,
            },
            shards,
        });
        Some((batch, rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::claim::{tests::row as typed_row, ClaimedRow};
    use std::time::Instant;

    fn row(seq: i64, aggregate: &str) -> ClaimedRow {
        typed_row(seq, "essay", aggregate)
    }

    fn unfinished(aggregate_type: &str, aggregate_id: &str) -> Unfinished {
        let mut set = Unfinished::default();
        set.insert(&typed_row(0, aggregate_type, aggregate_id));
        set
    }

    fn prefetched(rows: Vec<ClaimedRow>, shards: &[i16]) -> Prefetched {
        let batch = Claimed {
            rows,
            started: Instant::now(),
            took: Duration::ZERO,
            proof: Some(Proof {
                up_to: 99,
                mask: 0b11,
                chain_started: Instant::now(),
            }),
            above_proof: false,
        };
        Prefetched::new(batch, shards.to_vec())
    }

    /// The whole prefetch as one batch, if `owned` are its shards.
    fn owned_batch(prefetched: Prefetched, owned: &[i16]) -> Option<Claimed> {
        prefetched
            .into_next_batch(owned, usize::MAX)
            .map(|(batch, _)| batch)
    }

    /// The first batch of a claim of rows 1..=5 taken three at a time
    /// under shards 0 and 1, and the rest.
    fn five_rows_in_batches_of_three() -> (Claimed, Option<Prefetched>) {
        let rows = (1..=5).map(|seq| row(seq, "a")).collect();
        prefetched(rows, &[0, 1])
            .into_next_batch(&[0, 1], 3)
            .unwrap()
    }

    fn seqs(batch: &Claimed) -> Vec<i64> {
        batch.rows.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn rows_of_unfinished_aggregates_are_held_back_in_order() {
        let rows = vec![row(5, "a"), row(6, "b"), row(7, "a"), row(8, "c")];
        let mut prefetched = prefetched(rows, &[0, 1]);
        prefetched.hold_back(&unfinished("essay", "a"));
        let kept = owned_batch(prefetched, &[0, 1]).unwrap();
        assert_eq!(seqs(&kept), [6, 8]);
    }

    #[test]
    fn the_proof_goes_with_the_last_rows_and_with_any_hold_back() {
        let (first, second) = five_rows_in_batches_of_three();
        assert!(first.proof.is_none(), "the first batch leaves rows behind");
        let mut second = second.unwrap();
        assert!(second.batch.proof.is_some());
        second.hold_back(&unfinished("essay", "elsewhere"));
        assert_eq!(second.batch.rows.len(), 2, "no row of that aggregate here");
        assert!(
            second.batch.proof.is_none(),
            "but a row is pending elsewhere"
        );

        let whole = prefetched(vec![row(1, "a")], &[0]);
        assert!(owned_batch(whole, &[0]).unwrap().proof.is_some());
    }

    #[test]
    fn an_aggregate_of_another_type_is_not_held_back() {
        let mut prefetched = prefetched(vec![row(1, "a")], &[0]);
        prefetched.hold_back(&unfinished("file_upload", "a"));
        assert_eq!(owned_batch(prefetched, &[0]).unwrap().rows.len(), 1);
    }

    #[test]
    fn a_claim_of_two_batches_splits_in_order_under_the_same_shards() {
        let (first, second) = five_rows_in_batches_of_three();
        let (second, after) = second.unwrap().into_next_batch(&[0, 1], 3).unwrap();
        assert!(after.is_none(), "nothing after the first three");
        assert_eq!(seqs(&first), [1, 2, 3]);
        assert_eq!(seqs(&second), [4, 5]);
    }

    #[test]
    fn a_rebalance_discards_the_prefetch() {
        let prefetched = prefetched(vec![row(1, "a")], &[0, 1]);
        assert!(owned_batch(prefetched, &[0]).is_none());
    }
}
