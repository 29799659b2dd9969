//! When a claim ahead may skip the head of the outbox.
//!
//! During a backlog every batch after the first is claimed ahead, while the
//! one before it is produced. Such a claim may start after the batch in
//! flight (`seq >` its highest): everything below was delivered, is in
//! flight, or was not claimable when an earlier claim passed it. Starting
//! there skips the head of the pending index, where each row delivered since
//! the last vacuum left an entry that every claim from the start steps over
//! (thousands of index pages per claim near the end of a 1,000,000-row
//! drain).
//!
//! A row below the bound can become claimable later: a transaction that
//! took a lower `seq` commits late. So at least once per
//! [`FULL_CLAIM_EVERY`] a claim reads from the start again, and every claim
//! that is not a claim ahead (the wake-up path, polls, the first batch of a
//! backlog) always does: such rows wait at most about that long while a
//! backlog drains, and not at all otherwise (docs/guarantees.md §6). Rows
//! held back behind a failing or dead row are the other case; for them the
//! worker does not bound a claim at all (see `claim_select` in `claim.rs`).

use std::time::{Duration, Instant};

/// The longest a claimable row below the claims' bound waits for a claim
/// from the start of the outbox while a backlog drains.
pub(crate) const FULL_CLAIM_EVERY: Duration = Duration::from_secs(1);

/// When the last claim from the start of the outbox ran.
#[derive(Debug)]
pub(crate) struct FullClaims {
    every: Duration,
    last: Instant,
}

impl FullClaims {
    pub(crate) fn new(every: Duration, now: Instant) -> Self {
        Self { every, last: now }
    }

    /// A claim from the start ran at `now`.
    pub(crate) fn claimed_from_start(&mut self, now: Instant) {
        self.last = now;
    }

    /// The bound for a claim ahead of a batch whose highest `seq` is
    /// `in_flight_max`: that `seq`, or `None` (claim from the start, noted
    /// as done at `now`) when the last claim from the start is `every` ago.
    pub(crate) fn bound_ahead(&mut self, in_flight_max: Option<i64>, now: Instant) -> Option<i64> {
        let bound = in_flight_max.filter(|_| now.saturating_duration_since(self.last) < self.every);
        if bound.is_none() {
            self.claimed_from_start(now);
        }
        bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn claims_ahead_start_after_the_batch_until_a_full_claim_is_due() {
        let start = Instant::now();
        let mut claims = FullClaims::new(SECOND, start);
        assert_eq!(claims.bound_ahead(Some(10), start), Some(10));
        let later = start + SECOND / 2;
        assert_eq!(claims.bound_ahead(Some(20), later), Some(20));
        let due = start + SECOND;
        assert_eq!(
            claims.bound_ahead(Some(30), due),
            None,
            "a full claim is due"
        );
        assert_eq!(
            claims.bound_ahead(Some(40), due + SECOND / 2),
            Some(40),
            "the full claim just made counts from its own time"
        );
    }

    #[test]
    fn a_fresh_claim_from_the_start_postpones_the_next_full_one() {
        let start = Instant::now();
        let mut claims = FullClaims::new(SECOND, start);
        claims.claimed_from_start(start + SECOND);
        assert_eq!(claims.bound_ahead(Some(5), start + SECOND * 3 / 2), Some(5));
    }

    #[test]
    fn an_empty_batch_gives_no_bound() {
        let start = Instant::now();
        let mut claims = FullClaims::new(SECOND, start);
        assert_eq!(claims.bound_ahead(None, start), None);
    }
}
