//! The next batch, claimed while the broker acknowledges the current one.
//!
//! Claiming is a read, so it can overlap producing: the claim leaves out
//! the rows in flight (see `claim_select` in `claim.rs`). Two rules
//! keep the guarantees:
//!
//! - **Order.** The prefetch was claimed before the outcome of the batch in
//!   flight was known. It is kept only when that batch got through whole;
//!   otherwise the relay writes the outcome at once and drops it, and a
//!   fresh claim finds its rows again behind their failed heads. Nothing of
//!   it is produced before every result of the batch in flight is in.
//! - **Ownership.** A prefetch is used only under the lease fence it was
//!   claimed under (the same shards at the same epochs, `lease.rs`); a
//!   rebalance or a lapsed lease in between throws it away.
//!

use crate::relay::claim::Claimed;
use crate::relay::lease::Fence;

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

    /// How many rows it holds and the `seq`s of the first and the last,
    /// for the relay's log.
    pub(crate) fn seq_range(&self) -> (usize, Option<i64>, Option<i64>) {
        let rows = &self.batch.rows;
        (
            rows.len(),
            rows.first().map(|r| r.seq),
            rows.last().map(|r| r.seq),
        )
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
