//! Which `seq`s are final: every row that will ever have one of them has
//! committed (or rolled back) already.
//!
//! A row's `seq` is taken from the table's identity sequence when it is
//! inserted, but the row becomes visible only when its transaction commits,
//! which can be much later. So a claim cannot tell from the rows it sees
//! whether a lower `seq` will still appear. This module can, from the
//! database's own bookkeeping:
//!
//! 1. A reading takes the sequence's last value `S` (every `seq` up to `S`
//!    was handed out before), then the virtual transaction ids of the
//!    database's open transactions (`pg_locks`: every transaction holds the
//!    lock on its own id from its start to its end). A transaction that took
//!    a `seq ≤ S` had started before `S` was read, so it has ended or its id
//!    is in that set. The pair is a *candidate*.
//! 2. Once a later reading finds none of the candidate's transactions still
//!    open, all transactions that could hold a `seq ≤ S` have ended: `S` is
//!    *final*, and a snapshot taken after that reading sees every row up to
//!    `S` that will ever exist.
//!
//! Virtual transaction ids are not reused while the server runs (a
//! per-session counter), need no privilege to read, and involve no clock,
//! so the horizon trails the sequence only by the transactions open at a
//! reading: with short transactions, a reading or two (50 ms each during a
//! backlog). A reading is inconclusive while a prepared (two-phase)
//! transaction waits: it holds no virtual transaction id any more.
//! Candidates then wait for a conclusive reading.
//!
//! This only works for a sequence that hands out values in order: `CACHE 1`
//! (the default) and a positive increment. With a cache, each session takes
//! a block of values and uses it later, so a low `seq` can be taken long
//! after a higher one; `floor.rs` checks and does without a horizon then.

use std::collections::VecDeque;

/// A candidate is recorded at most this often (seconds), to keep the queue
/// short when readings come quickly.
const CANDIDATE_EVERY: f64 = 0.05;

/// At most this many candidates wait; newer ones are not recorded while it
/// is full (the horizon then advances in bigger steps).
const MAX_CANDIDATES: usize = 256;

/// One reading of the database: the sequence, then the transactions open
/// right after it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reading {
    /// The sequence's last handed-out value; `None` before its first.
    pub allocated: Option<i64>,
    /// `clock_timestamp()` of the reading, as Unix seconds; only spaces the
    /// candidates out.
    pub read_at: f64,
    /// The virtual transaction ids of the database's open transactions
    /// (other than the reading's own), read after `allocated`.
    pub open: Vec<String>,
    /// Whether a prepared transaction exists: its start is unknown.
    pub inconclusive: bool,
}

/// A sequence value and the transactions that may still hold a value up to
/// it, sorted.
#[derive(Debug)]
struct Candidate {
    allocated: i64,
    open: Vec<String>,
}

/// The highest final `seq` known, and the candidates that may become final.
#[derive(Debug, Default)]
pub(crate) struct Horizon {
    candidates: VecDeque<Candidate>,
    last_candidate_at: Option<f64>,
    final_seq: Option<i64>,
}

impl Horizon {
    /// Every `seq` at or below this is final; `None` while none is known.
    pub(crate) fn final_seq(&self) -> Option<i64> {
        self.final_seq
    }

    /// Takes in a reading: candidates none of whose transactions is still
    /// open become final, and the reading's own sequence value becomes a
    /// candidate.
    ///
    /// A candidate never becomes final in the reading that recorded it.
    /// Candidates become final in order: a transaction of an older
    /// candidate that is still open was open at every later reading too, so
    /// it is in every later candidate's set.
    pub(crate) fn observe(&mut self, mut reading: Reading) {
        reading.open.sort_unstable();
        reading.open.dedup();
        if !reading.inconclusive {
            while let Some(candidate) = self.candidates.front() {
                let still_open = candidate
                    .open
                    .iter()
                    .any(|id| reading.open.binary_search(id).is_ok());
                if still_open {
                    break;
                }
                let allocated = candidate.allocated;
                self.final_seq = Some(self.final_seq.map_or(allocated, |f| f.max(allocated)));
                self.candidates.pop_front();
            }
        }
        let Some(allocated) = reading.allocated else {
            return;
        };
        let due = self
            .last_candidate_at
            .map_or(true, |last| reading.read_at >= last + CANDIDATE_EVERY);
        if due && self.candidates.len() < MAX_CANDIDATES {
            self.candidates.push_back(Candidate {
                allocated,
                open: reading.open,
            });
            self.last_candidate_at = Some(reading.read_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(allocated: i64, read_at: f64, open: &[&str]) -> Reading {
        Reading {
            allocated: Some(allocated),
            read_at,
            open: open.iter().map(|id| id.to_string()).collect(),
            inconclusive: false,
        }
    }

    #[test]
    fn a_candidate_is_final_once_none_of_its_transactions_is_open() {
        let mut horizon = Horizon::default();
        horizon.observe(reading(100, 10.0, &["3/7", "4/2"]));
        assert_eq!(horizon.final_seq(), None, "never final in its own reading");
        horizon.observe(reading(150, 10.1, &["4/2", "5/1"]));
        assert_eq!(
            horizon.final_seq(),
            None,
            "a transaction open when 100 was read is still open"
        );
        horizon.observe(reading(200, 10.2, &["5/1", "3/8"]));
        assert_eq!(horizon.final_seq(), Some(100));
        horizon.observe(reading(210, 10.3, &[]));
        assert_eq!(horizon.final_seq(), Some(200), "all but the newest");
        horizon.observe(reading(220, 10.4, &[]));
        assert_eq!(horizon.final_seq(), Some(210));
    }

    #[test]
    fn a_reading_without_open_transactions_makes_the_one_before_final() {
        let mut horizon = Horizon::default();
        horizon.observe(reading(100, 10.0, &[]));
        horizon.observe(reading(100, 10.1, &["9/9"]));
        assert_eq!(horizon.final_seq(), Some(100));
    }

    #[test]
    fn an_inconclusive_reading_finalizes_nothing() {
        let mut horizon = Horizon::default();
        horizon.observe(reading(100, 10.0, &["3/7"]));
        horizon.observe(Reading {
            inconclusive: true,
            ..reading(120, 30.0, &[])
        });
        assert_eq!(horizon.final_seq(), None, "a prepared transaction waits");
        horizon.observe(reading(140, 32.0, &["6/6"]));
        assert_eq!(horizon.final_seq(), Some(120));
    }

    #[test]
    fn a_sequence_not_yet_used_gives_no_candidate() {
        let mut horizon = Horizon::default();
        horizon.observe(Reading {
            allocated: None,
            ..reading(0, 10.0, &[])
        });
        horizon.observe(reading(5, 20.0, &[]));
        assert_eq!(horizon.final_seq(), None);
    }

    #[test]
    fn candidates_are_spaced_and_bounded() {
        let mut horizon = Horizon::default();
        for i in 0..1_000 {
            horizon.observe(reading(i, 10.0 + f64::from(i as i32) * 0.01, &["1/1"]));
        }
        assert!(horizon.candidates.len() <= 200, "one per 50 ms at most");
        let mut full = Horizon::default();
        for i in 0..10_000 {
            full.observe(reading(i, f64::from(i as i32), &["1/1"]));
        }
        assert_eq!(full.candidates.len(), MAX_CANDIDATES);
    }
}
