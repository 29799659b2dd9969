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
//!
//! **Only within one run of the server.** A reading holds only for the
//! server state it was taken from. PostgreSQL writes a sequence's WAL record
//! 32 values ahead, and it reaches disk only with the next commit of any
//! transaction (or when the WAL writer writes out its page), so after a
//! crash or an immediate stop the sequence continues from the last record on
//! disk: values already handed out to transactions that never committed (and
//! already read here) are handed out again. Committed `seq`s are never
//! handed out again: their commit wrote the record that covers them. A failover to a replica, or a
//! restore, does the same with everything the new server had not received.
//! The open transactions of a reading are gone after such a change, so its
//! candidate would become final at once, while new transactions take the
//! same values. Each reading therefore also carries the server run it came
//! from ([`ServerRun`]), and [`Horizon::observe`] starts over, knowing no
//! final `seq` and no candidate, when it differs from the previous reading's
//! or when the sequence reads lower than before ([`discontinuity`]).

use chrono::{DateTime, Utc};
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
    /// The server run the reading came from.
    pub run: ServerRun,
}

/// What tells one run of the server from another: each value changes when
/// the server's state may have gone back (sequences included). All are
/// readable without privileges, except `timeline`, which is read only where
/// the role may.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ServerRun {
    /// `pg_postmaster_start_time()`: a new value after every start, and on
    /// another server (a promoted replica).
    pub started: Option<DateTime<Utc>>,
    /// `pg_stat_bgwriter.stats_reset`: crash recovery discards the
    /// statistics and sets it again, also when the postmaster recovers from
    /// a crashed backend without starting again (`restart_after_crash`), which
    /// keeps `started`. `pg_stat_reset_shared('bgwriter')` sets it too (a
    /// harmless extra start-over).
    pub stats_reset: Option<DateTime<Utc>>,
    /// The timeline of the latest checkpoint (`pg_control_checkpoint()`),
    /// `None` where the role may not read it: a promotion moves to a new one
    /// (shown from the first checkpoint after it).
    pub timeline: Option<i64>,
}

/// Why readings taken before say nothing about what the sequence hands out
/// now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Discontinuity {
    /// The server started again, or another server answers.
    Restarted,
    /// The server recovered from a crash without starting again.
    CrashRecovered,
    /// The server moved to another timeline.
    TimelineChanged,
    /// The sequence reads lower than it read before (or as never used).
    SequenceWentBack,
}

impl Discontinuity {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Discontinuity::Restarted => "server restarted",
            Discontinuity::CrashRecovered => "server recovered from a crash",
            Discontinuity::TimelineChanged => "server timeline changed",
            Discontinuity::SequenceWentBack => "sequence went back",
        }
    }
}

/// What earlier readings showed: the latest one's server run and the highest
/// sequence value read since the horizon last started over.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Seen {
    pub run: ServerRun,
    pub highest: Option<i64>,
}

/// Whether `reading` cannot be combined with what was `seen` before it.
///
/// A `CACHE 1` sequence with a positive increment never reads lower within
/// one run of the server, so a lower value (or none, after values were read)
/// means values will be handed out again. A `timeline` that one of the two
/// readings could not read is no change.
pub(crate) fn discontinuity(seen: &Seen, reading: &Reading) -> Option<Discontinuity> {
    let (before, now) = (&seen.run, &reading.run);
    if before.started != now.started {
        return Some(Discontinuity::Restarted);
    }
    if before.stats_reset != now.stats_reset {
        return Some(Discontinuity::CrashRecovered);
    }
    if let (Some(before), Some(now)) = (before.timeline, now.timeline) {
        if before != now {
            return Some(Discontinuity::TimelineChanged);
        }
    }
    let went_back = seen
        .highest
        .is_some_and(|highest| reading.allocated.map_or(true, |now| now < highest));
    went_back.then_some(Discontinuity::SequenceWentBack)
}

/// A start-over of the horizon, as [`Horizon::observe`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Restart {
    pub cause: Discontinuity,
    /// What the readings before showed.
    pub seen: Seen,
    /// The final `seq` dropped.
    pub dropped_final: Option<i64>,
}

/// A sequence value and the transactions that may still hold a value up to
/// it, sorted.
#[derive(Debug)]
struct Candidate {
    allocated: i64,
    open: Vec<String>,
}

/// The highest final `seq` known, and the candidates that may become final.
///
/// Every candidate and the final `seq` come from readings of one server run
/// in which the sequence never read lower (see [`discontinuity`]).
#[derive(Debug, Default)]
pub(crate) struct Horizon {
    candidates: VecDeque<Candidate>,
    last_candidate_at: Option<f64>,
    final_seq: Option<i64>,
    /// What the readings so far showed; kept across [`reset`](Self::reset),
    /// so the next reading is still compared with them.
    seen: Option<Seen>,
}

impl Horizon {
    /// Every `seq` at or below this is final; `None` while none is known.
    pub(crate) fn final_seq(&self) -> Option<i64> {
        self.final_seq
    }

    /// Forgets the final `seq` and the candidates: nothing is final until
    /// readings taken from now on make it so.
    pub(crate) fn reset(&mut self) {
        self.candidates.clear();
        self.last_candidate_at = None;
        self.final_seq = None;
    }

    /// Takes in a reading: candidates none of whose transactions is still
    /// open become final, and the reading's own sequence value becomes a
    /// candidate.
    ///
    /// A candidate never becomes final in the reading that recorded it.
    /// Candidates become final in order: a transaction of an older
    /// candidate that is still open was open at every later reading too, so
    /// it is in every later candidate's set.
    ///
    /// A reading that cannot be combined with the ones before it (another
    /// server run, a sequence that went back: [`discontinuity`]) first drops
    /// everything they gave, and becomes the first candidate of a new
    /// horizon; the start-over is returned.
    pub(crate) fn observe(&mut self, mut reading: Reading) -> Option<Restart> {
        let restart = self.seen.as_ref().and_then(|seen| {
            discontinuity(seen, &reading).map(|cause| Restart {
                cause,
                seen: seen.clone(),
                dropped_final: self.final_seq,
            })
        });
        let highest = match (&restart, &self.seen) {
            (None, Some(seen)) => seen.highest.max(reading.allocated),
            _ => reading.allocated,
        };
        self.seen = Some(Seen {
            run: reading.run.clone(),
            highest,
        });
        if restart.is_some() {
            self.reset();
        }
        self.take_in(&mut reading);
        restart
    }

    /// [`observe`](Self::observe) for a reading of the same server run.
    fn take_in(&mut self, reading: &mut Reading) {
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
                open: std::mem::take(&mut reading.open),
            });
            self.last_candidate_at = Some(reading.read_at);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn reading(allocated: i64, read_at: f64, open: &[&str]) -> Reading {
        Reading {
            allocated: Some(allocated),
            read_at,
            open: open.iter().map(|id| id.to_string()).collect(),
            inconclusive: false,
            run: run(1),
        }
    }

    /// The run of a server started at Unix second `started`, on timeline 1.
    pub(crate) fn run(started: i64) -> ServerRun {
        let at = |seconds| DateTime::from_timestamp(seconds, 0);
        ServerRun {
            started: at(started),
            stats_reset: at(started),
            timeline: Some(1),
        }
    }

    fn seen(run: ServerRun, highest: Option<i64>) -> Seen {
        Seen { run, highest }
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

    #[test]
    fn readings_of_one_run_with_a_rising_sequence_go_together() {
        let before = seen(run(1), Some(100));
        assert_eq!(discontinuity(&before, &reading(100, 10.0, &[])), None);
        assert_eq!(discontinuity(&before, &reading(250, 10.0, &[])), None);
        let first = seen(run(1), None);
        assert_eq!(
            discontinuity(&first, &reading(5, 10.0, &[])),
            None,
            "nothing read before"
        );
        let unused = Reading {
            allocated: None,
            ..reading(0, 10.0, &[])
        };
        assert_eq!(discontinuity(&first, &unused), None);
    }

    #[test]
    fn another_start_time_is_another_run() {
        let before = seen(run(1), Some(100));
        let restarted = Reading {
            run: ServerRun {
                started: run(2).started,
                ..run(1)
            },
            ..reading(300, 10.0, &[])
        };
        assert_eq!(
            discontinuity(&before, &restarted),
            Some(Discontinuity::Restarted),
            "even with the sequence above every value read before"
        );
    }

    #[test]
    fn statistics_reset_by_crash_recovery_are_another_run() {
        let before = seen(run(1), Some(100));
        let recovered = Reading {
            run: ServerRun {
                stats_reset: run(2).stats_reset,
                ..run(1)
            },
            ..reading(300, 10.0, &[])
        };
        assert_eq!(
            discontinuity(&before, &recovered),
            Some(Discontinuity::CrashRecovered)
        );
    }

    #[test]
    fn a_new_timeline_is_another_run_and_an_unreadable_one_no_change() {
        let before = seen(run(1), Some(100));
        let promoted = Reading {
            run: ServerRun {
                timeline: Some(2),
                ..run(1)
            },
            ..reading(300, 10.0, &[])
        };
        assert_eq!(
            discontinuity(&before, &promoted),
            Some(Discontinuity::TimelineChanged)
        );
        let unreadable = Reading {
            run: ServerRun {
                timeline: None,
                ..run(1)
            },
            ..reading(300, 10.0, &[])
        };
        assert_eq!(discontinuity(&before, &unreadable), None);
        let readable_again = seen(unreadable.run.clone(), Some(300));
        assert_eq!(discontinuity(&readable_again, &promoted), None);
    }

    #[test]
    fn a_sequence_below_the_highest_value_read_went_back() {
        let before = seen(run(1), Some(100));
        assert_eq!(
            discontinuity(&before, &reading(99, 10.0, &[])),
            Some(Discontinuity::SequenceWentBack)
        );
        let reset = Reading {
            allocated: None,
            ..reading(0, 10.0, &[])
        };
        assert_eq!(
            discontinuity(&before, &reset),
            Some(Discontinuity::SequenceWentBack),
            "as never used (`ALTER SEQUENCE … RESTART`, a restore)"
        );
    }

    #[test]
    fn the_highest_value_is_compared_not_the_last_one() {
        let mut horizon = Horizon::default();
        assert_eq!(horizon.observe(reading(100, 10.0, &[])), None);
        assert_eq!(horizon.observe(reading(100, 10.1, &[])), None);
        let restart = horizon.observe(reading(90, 10.2, &[]));
        assert_eq!(
            restart.map(|r| (r.cause, r.seen.highest, r.dropped_final)),
            Some((Discontinuity::SequenceWentBack, Some(100), Some(100)))
        );
    }

    #[test]
    fn a_candidate_of_an_earlier_run_never_becomes_final() {
        let mut horizon = Horizon::default();
        horizon.observe(reading(100, 10.0, &[]));
        horizon.observe(reading(140, 10.1, &["3/7"]));
        assert_eq!(horizon.final_seq(), Some(100));
        // The server stops at once: the transaction holding values up to
        // 140 is gone, and the sequence continues from 120.
        let restarted = Reading {
            run: run(2),
            ..reading(125, 10.2, &["3/1"])
        };
        let restart = horizon.observe(restarted);
        assert_eq!(
            restart,
            Some(Restart {
                cause: Discontinuity::Restarted,
                seen: seen(run(1), Some(140)),
                dropped_final: Some(100),
            })
        );
        assert_eq!(horizon.final_seq(), None, "140 was not made final");
        horizon.observe(Reading {
            run: run(2),
            ..reading(130, 10.3, &["3/1"])
        });
        assert_eq!(horizon.final_seq(), None, "3/1 is still open");
        horizon.observe(Reading {
            run: run(2),
            ..reading(135, 10.4, &[])
        });
        assert_eq!(
            horizon.final_seq(),
            Some(130),
            "the new run's own candidates"
        );
    }

    #[test]
    fn a_start_over_takes_candidates_again_whatever_the_new_clock_says() {
        let mut horizon = Horizon::default();
        horizon.observe(reading(100, 1_000.0, &[]));
        // Another server, whose clock is behind.
        let failed_over = Reading {
            run: run(2),
            ..reading(90, 500.0, &[])
        };
        assert!(horizon.observe(failed_over).is_some());
        horizon.observe(Reading {
            run: run(2),
            ..reading(95, 500.1, &[])
        });
        assert_eq!(horizon.final_seq(), Some(90));
    }

    #[test]
    fn a_reset_forgets_the_horizon_but_not_what_was_read() {
        let mut horizon = Horizon::default();
        horizon.observe(reading(100, 10.0, &[]));
        horizon.observe(reading(110, 10.1, &[]));
        assert_eq!(horizon.final_seq(), Some(100));
        horizon.reset();
        assert_eq!(horizon.final_seq(), None);
        assert_eq!(horizon.observe(reading(120, 10.2, &[])), None);
        assert_eq!(horizon.final_seq(), None, "no candidate survived");
        let restart = horizon.observe(reading(50, 10.3, &[]));
        assert_eq!(
            restart.map(|r| r.cause),
            Some(Discontinuity::SequenceWentBack),
            "still compared with the values read before the reset"
        );
    }
}
