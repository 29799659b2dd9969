//! A claim ahead that has not landed yet, and what it must drop when it
//! lands.
//!
//! A claim ahead runs in a task of its own while the current batch is
//! produced, and is usually awaited at the end of that round. A relay that
//! owns only some of the shards claims two batches at once
//! (`PARTIAL_OWNER_CLAIM_BATCHES` in `worker.rs`); its rows lie between
//! other relays' rows, so that claim reads twice the rows it returns and
//! takes longer than producing a batch. It starts a round early instead:
//! while the first of the two batches before it is produced, and it lands
//! at the end of the round that produces the second.
//!
//! Order and ownership stay as for any claim ahead (`prefetch.rs`):
//!
//! - The claim leaves out every row in flight when it starts, the batch
//!   still waiting in the prefetch included, or starts above that batch's
//!   proof (`proof.rs`).
//! - It was claimed before the outcomes of every round it spans were known,
//!   so the aggregates that did not get through any of them are held back
//!   from it when it lands, and any such row, or an outcome that could not
//!   be written meanwhile, drops its proof.
//! - Whenever the prefetch it was started beside is not produced as it is
//!   (shards moved, an error, the relay stopping), it is awaited and thrown
//!   away; its rows are still `pending` and a fresh claim finds them.

use super::prefetch::Prefetched;
use super::unfinished::Unfinished;
use tokio::task::JoinHandle;

/// A claim ahead not landed yet (for a relay with some of the shards,
/// possibly across two rounds), and what it must drop when it lands.
#[derive(Debug)]
pub(crate) struct PendingClaim {
    claim: JoinHandle<Result<Prefetched, sqlx::Error>>,
    /// Aggregates that did not get through the rounds it spanned so far.
    held_back: Unfinished,
    /// An outcome below its start could not be written.
    proof_lost: bool,
}

impl PendingClaim {
    pub(crate) fn new(claim: JoinHandle<Result<Prefetched, sqlx::Error>>) -> Self {
        Self {
            claim,
            held_back: Unfinished::default(),
            proof_lost: false,
        }
    }

    /// Adds the aggregates a round it spans did not get through.
    pub(crate) fn hold_back(&mut self, unfinished: &Unfinished) {
        self.held_back.extend(unfinished);
    }

    /// Marks its proof as void (`Prefetched::forget_proof`).
    pub(crate) fn forget_proof(&mut self) {
        self.proof_lost = true;
    }

    /// Waits for the claim and applies what the rounds it spanned left
    /// behind; `None` if the claim's task did not finish.
    pub(crate) async fn land(self) -> Option<Result<Prefetched, sqlx::Error>> {
        let mut landed = self.claim.await.ok()?;
        if let Ok(prefetched) = landed.as_mut() {
            prefetched.hold_back(&self.held_back);
            if self.proof_lost {
                prefetched.forget_proof();
            }
        }
        Some(landed)
    }

    /// Waits for the claim and throws it away, so no claim outlives the
    /// prefetch it was started beside.
    pub(crate) async fn discard(self) {
        let _ = self.claim.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::claim::tests::row;
    use crate::relay::claim::Claimed;
    use crate::relay::proof::Proof;
    use std::time::{Duration, Instant};

    fn claimed() -> Prefetched {
        let rows = vec![row(10, "essay", "a"), row(11, "essay", "b")];
        Prefetched::new(
            Claimed {
                rows,
                started: Instant::now(),
                took: Duration::ZERO,
                proof: Some(Proof {
                    up_to: 11,
                    mask: -1,
                    chain_started: Instant::now(),
                }),
                above_proof: true,
            },
            vec![0, 1],
        )
    }

    fn pending(prefetched: Prefetched) -> PendingClaim {
        PendingClaim::new(tokio::spawn(async move { Ok(prefetched) }))
    }

    fn seqs(prefetched: &Prefetched) -> Vec<i64> {
        prefetched.seqs().collect()
    }

    #[tokio::test]
    async fn lands_whole_when_every_round_got_through() {
        let mut claim = pending(claimed());
        claim.hold_back(&Unfinished::default());
        let landed = claim.land().await.and_then(Result::ok);
        let landed = landed.as_ref().map(|p| (seqs(p), p.proof().is_some()));
        assert_eq!(landed, Some((vec![10, 11], true)));
    }

    #[tokio::test]
    async fn holds_back_what_any_round_it_spanned_did_not_get_through() {
        let mut claim = pending(claimed());
        let mut first_round = Unfinished::default();
        first_round.insert(&row(3, "essay", "a"));
        claim.hold_back(&first_round);
        claim.hold_back(&Unfinished::default());
        let landed = claim.land().await.and_then(Result::ok);
        let landed = landed.as_ref().map(|p| (seqs(p), p.proof().is_some()));
        assert_eq!(
            landed,
            Some((vec![11], false)),
            "the first round's failure holds back its aggregate and voids the proof"
        );
    }

    #[tokio::test]
    async fn an_outcome_not_written_meanwhile_voids_the_proof() {
        let mut claim = pending(claimed());
        claim.forget_proof();
        let landed = claim.land().await.and_then(Result::ok);
        let landed = landed.as_ref().map(|p| (seqs(p), p.proof().is_some()));
        assert_eq!(landed, Some((vec![10, 11], false)));
    }
}
