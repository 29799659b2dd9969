//! Claims above a proven batch: a relay that owns only some of the shards
//! skips its own rows in flight without reading them again.
//!
//! A claim ahead leaves out the rows in flight (the batch being produced,
//! the one whose outcome is being written, the rest of a claim of two). A
//! relay with every shard skips them by range (`claim.rs`), because they
//! are consecutive `seq`s. A relay with only some shards cannot: its rows
//! lie between other relays' rows, and a range over them would also pass
//! over any row of its own shards that was not visible to its claims, or
//! that they passed over, which must still be found (the order of
//! [guarantees](../../../docs/guarantees.md) §3). So each of its claims
//! read all its rows in flight again, and the other relays' rows between
//! them: most of what two relays cost Postgres more than one
//! (docs/benchmarks.md §6).
//!
//! A claim *proves* its range when nothing of its shards can lie there
//! but the rows it returned and the rows in flight it left out:
//!
//! - its last row is at or below the horizon known before it began
//!   (`horizon.rs`): every transaction that could write a row up to there
//!   had ended, so the claim's snapshot saw every such row;
//! - in its own snapshot no row of its shards at or below its last row is
//!   dead or waiting for a retry (the small index of blocking rows): so it
//!   passed over no row held back behind one, or not yet due;
//! - it started at the claim floor (nothing of the shards pending below,
//!   `floor.rs`), or above an earlier proof still standing.
//!
//! Then every pending row of the shards up to its last row is in flight,
//! and the next claim ahead starts above it. The proof stands only while
//! that stays true, so it travels with the claimed rows (`prefetch.rs`)
//! and is dropped with them, and whenever a row of a batch is not
//! delivered (a failure, a hold-back, an outcome not written): such a row
//! stays pending below it. It is not used for other shards, and a chain of
//! proofs ends after [`CHAIN_FOR`], so a claim from the floor regularly
//! finds what an operator set back to `pending` by hand, as the floor's
//! reset does.
//!
//! Not covered, as for the floor: a row inserted by hand with a `seq`
//! below values already handed out, or with a `next_attempt_at` in the
//! future and no retry counted (the framework writes neither); the next
//! chain finds it.

use std::time::{Duration, Instant};

/// How long a chain of proofs lasts before a claim starts from the floor
/// again.
pub(crate) const CHAIN_FOR: Duration = Duration::from_secs(60);

/// Every pending row of the shards in `mask` with a `seq` up to `up_to` is
/// in flight in this relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proof {
    pub up_to: i64,
    pub mask: i64,
    /// When the first claim of the chain proved its range.
    pub chain_started: Instant,
}

impl Proof {
    /// Where a claim of `mask`'s shards may start above, if this proof
    /// covers those shards and its chain has not run out.
    pub(crate) fn bound_for(&self, mask: i64, now: Instant) -> Option<i64> {
        (self.mask == mask && now.duration_since(self.chain_started) < CHAIN_FOR)
            .then_some(self.up_to)
    }
}

/// What a claim of `mask`'s shards leaves standing.
///
/// - `used`: the proof the claim started above, if any (else it started at
///   the floor);
/// - `last`: its last row's `seq`, `None` when it returned nothing;
/// - `final_before`: the horizon's final `seq` when it began;
/// - `first_blocking`: the first dead or retrying row of the shards in its
///   snapshot.
pub(crate) fn after_claim(
    used: Option<Proof>,
    mask: i64,
    last: Option<i64>,
    final_before: Option<i64>,
    first_blocking: Option<i64>,
    now: Instant,
) -> Option<Proof> {
    let Some(last) = last else {
        return used;
    };
    let visible = final_before.is_some_and(|horizon| last <= horizon);
    let passed_nothing = first_blocking.map_or(true, |blocking| blocking > last);
    if visible && passed_nothing {
        Some(Proof {
            up_to: last,
            mask,
            chain_started: used.map_or(now, |proof| proof.chain_started),
        })
    } else {
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: i64 = 0b1010;

    fn proof(up_to: i64, chain_started: Instant) -> Proof {
        Proof {
            up_to,
            mask: MASK,
            chain_started,
        }
    }

    #[test]
    fn a_claim_below_the_horizon_with_nothing_blocking_proves_its_range() {
        let now = Instant::now();
        let proven = after_claim(None, MASK, Some(200), Some(500), None, now);
        assert_eq!(proven, Some(proof(200, now)));
        let blocking_above = after_claim(None, MASK, Some(200), Some(200), Some(201), now);
        assert_eq!(blocking_above, Some(proof(200, now)));
    }

    #[test]
    fn a_row_that_may_still_commit_below_it_proves_nothing() {
        let now = Instant::now();
        assert_eq!(
            after_claim(None, MASK, Some(200), Some(199), None, now),
            None
        );
        assert_eq!(after_claim(None, MASK, Some(200), None, None, now), None);
    }

    #[test]
    fn a_blocking_row_at_or_below_it_proves_nothing() {
        let now = Instant::now();
        assert_eq!(
            after_claim(None, MASK, Some(200), Some(500), Some(200), now),
            None
        );
        assert_eq!(
            after_claim(None, MASK, Some(200), Some(500), Some(3), now),
            None
        );
    }

    #[test]
    fn an_unproven_claim_above_a_proof_leaves_that_proof() {
        let start = Instant::now();
        let used = proof(100, start);
        let later = start + Duration::from_secs(1);
        assert_eq!(
            after_claim(Some(used), MASK, Some(200), Some(150), None, later),
            Some(used)
        );
        assert_eq!(
            after_claim(Some(used), MASK, None, Some(500), None, later),
            Some(used),
            "an empty claim changes nothing"
        );
        assert_eq!(
            after_claim(Some(used), MASK, Some(200), Some(500), None, later),
            Some(proof(200, start)),
            "a chain keeps its start"
        );
    }

    #[test]
    fn a_proof_serves_only_its_shards_and_only_for_a_while() {
        let start = Instant::now();
        let standing = proof(100, start);
        assert_eq!(standing.bound_for(MASK, start), Some(100));
        assert_eq!(standing.bound_for(0b1011, start), None, "other shards");
        assert_eq!(
            standing.bound_for(MASK, start + CHAIN_FOR),
            None,
            "chain ran out"
        );
    }
}
