//! Which `seq`s are final: every row that will ever have one of them has
//! committed (or rolled back) already.
//!
//! A row's `seq` is taken from the table's identity sequence when it is
//! inserted, but the row becomes visible only when its transaction commits,
//! which can be much later. So a claim cannot tell from the rows it sees
//! whether a lower `seq` will still appear. This module can, from the
//! database's own bookkeeping:
//!
//! 1. At instant `a` the relay reads the sequence's last value `S` (every
//!    `seq` up to `S` was handed out before `a`) and then the clock, `t ≥ a`.
//!    That pair is a *candidate*.
//! 2. A transaction that took a `seq ≤ S` started before `a`, so its
//!    `pg_stat_activity.xact_start` is at most `t`. Once a later reading
//!    finds every open transaction of the database started after `t`, all
//!    transactions that could hold a `seq ≤ S` have ended: `S` is *final*,
//!    and a snapshot taken after that reading sees every row up to `S` that
//!    will ever exist.
//!
//! A reading is inconclusive when it cannot see every session of the
//! database (a role without `pg_read_all_stats` sees `<insufficient
//! privilege>` for other roles' sessions, and a session with
//! `track_activities = off` reports no transaction start) or when a prepared
//! (two-phase) transaction is waiting: its start is unknown. Candidates then
//! wait for a conclusive reading. A candidate is also kept for
//! [`CLOCK_MARGIN`] beyond what the comparison needs, so a step of the
//! database server's clock smaller than that cannot make a transaction look
//! younger than it is.
//!
//! This only works for a sequence that hands out values in order: `CACHE 1`
//! (the default) and a positive increment. With a cache, each session takes
//! a block of values and uses it later, so a low `seq` can be taken long
//! after a higher one; `floor.rs` checks and does without a horizon then.

use std::collections::VecDeque;

/// How much older than the oldest open transaction a candidate must be
/// before it is final, in seconds of the database server's clock.
pub(crate) const CLOCK_MARGIN: f64 = 1.0;

/// A candidate is recorded at most this often (seconds): the horizon lags
/// by about [`CLOCK_MARGIN`] anyway, and fewer candidates keep the queue
/// short.
const CANDIDATE_EVERY: f64 = 0.05;

/// At most this many candidates wait; newer ones are not recorded while it
/// is full (the horizon then advances in bigger steps).
const MAX_CANDIDATES: usize = 256;

/// One reading of the database: the sequence, the clock right after it, and
/// what the sessions of the database were doing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Reading {
    /// The sequence's last handed-out value; `None` before its first.
    pub allocated: Option<i64>,
    /// `clock_timestamp()` after `allocated` was read, as Unix seconds.
    pub read_at: f64,
    /// The earliest `xact_start` of the database's sessions (Unix seconds);
    /// `None` when none reported one.
    pub oldest_transaction: Option<f64>,
    /// Whether some session's transaction start could not be seen, or a
    /// prepared transaction exists.
    pub inconclusive: bool,
}

/// The highest final `seq` known, and the candidates that may become final.
#[derive(Debug, Default)]
pub(crate) struct Horizon {
    candidates: VecDeque<(i64, f64)>,
    last_candidate_at: Option<f64>,
    final_seq: Option<i64>,
}

impl Horizon {
    /// Every `seq` at or below this is final; `None` while none is known.
    pub(crate) fn final_seq(&self) -> Option<i64> {
        self.final_seq
    }

    /// Takes in a reading: candidates older (by more than the margin) than
    /// every open transaction become final, and the reading's own sequence
    /// value becomes a candidate.
    ///
    /// A candidate never becomes final in the reading that recorded it: that
    /// reading's own transaction started before its clock was read.
    pub(crate) fn observe(&mut self, reading: Reading) {
        if !reading.inconclusive {
            if let Some(oldest) = reading.oldest_transaction {
                while let Some(&(allocated, read_at)) = self.candidates.front() {
                    if read_at + CLOCK_MARGIN >= oldest {
                        break;
                    }
                    self.final_seq = Some(self.final_seq.map_or(allocated, |f| f.max(allocated)));
                    self.candidates.pop_front();
                }
            }
        }
        let Some(allocated) = reading.allocated else {
            return;
        };
        let due = self
            .last_candidate_at
            .map_or(true, |last| reading.read_at >= last + CANDIDATE_EVERY);
        if due && self.candidates.len() < MAX_CANDIDATES {
            self.candidates.push_back((allocated, reading.read_at));
            self.last_candidate_at = Some(reading.read_at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(allocated: i64, read_at: f64, oldest: f64) -> Reading {
        Reading {
            allocated: Some(allocated),
            read_at,
            oldest_transaction: Some(oldest),
            inconclusive: false,
        }
    }

    #[test]
    fn a_candidate_is_final_once_every_open_transaction_started_after_it_and_the_margin() {
        let mut horizon = Horizon::default();
        horizon.observe(reading(100, 10.0, 9.9));
        assert_eq!(horizon.final_seq(), None, "never final in its own reading");
        horizon.observe(reading(150, 10.5, 10.9));
        assert_eq!(horizon.final_seq(), None, "within the clock margin");
        horizon.observe(reading(200, 11.2, 10.0));
        assert_eq!(
            horizon.final_seq(),
            None,
            "a transaction that began before the candidate's reading is still open"
        );
        horizon.observe(reading(210, 11.3, 11.05));
        assert_eq!(horizon.final_seq(), Some(100));
        horizon.observe(reading(220, 20.0, 19.0));
        assert_eq!(horizon.final_seq(), Some(210), "all but the newest");
    }

    #[test]
    fn an_inconclusive_reading_finalizes_nothing() {
        let mut horizon = Horizon::default();
        horizon.observe(reading(100, 10.0, 9.9));
        horizon.observe(Reading {
            inconclusive: true,
            ..reading(120, 30.0, 29.0)
        });
        assert_eq!(horizon.final_seq(), None);
        horizon.observe(Reading {
            oldest_transaction: None,
            ..reading(130, 31.0, 0.0)
        });
        assert_eq!(horizon.final_seq(), None, "no transaction start seen");
        horizon.observe(reading(140, 32.0, 31.5));
        assert_eq!(horizon.final_seq(), Some(120));
    }

    #[test]
    fn a_sequence_not_yet_used_gives_no_candidate() {
        let mut horizon = Horizon::default();
        horizon.observe(Reading {
            allocated: None,
            ..reading(0, 10.0, 9.0)
        });
        horizon.observe(reading(5, 20.0, 19.0));
        assert_eq!(horizon.final_seq(), None);
    }

    #[test]
    fn candidates_are_spaced_and_bounded() {
        let mut horizon = Horizon::default();
        for i in 0..1_000 {
            horizon.observe(reading(i, 10.0 + f64::from(i as i32) * 0.01, 0.0));
        }
        assert!(horizon.candidates.len() <= 200, "one per 50 ms at most");
        let mut full = Horizon::default();
        for i in 0..10_000 {
            full.observe(reading(i, f64::from(i as i32), 0.0));
        }
        assert_eq!(full.candidates.len(), MAX_CANDIDATES);
    }
}
