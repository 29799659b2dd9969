//! The claim floor: a `seq` below which this relay has nothing to claim, so
//! its claims start their index scan there.
//!
//! Delivered rows are deleted (or leave the pending index as `published`),
//! but their entries stay in the pending index, marked dead, until vacuum
//! removes them. A claim that reads the index from its start steps over
//! every one: about 5 ns each, so several milliseconds per claim late in a
//! drain of a million rows, where autovacuum (once a minute at most) has
//! not run yet. Starting at the floor skips them.
//!
//! **The invariant.** No row of the floor's shards below the floor is
//! pending, and none can become pending later. It holds because the floor
//! is only ever set to the lowest of
//! - the first row in flight (claimed, outcome not yet written);
//! - the first pending row the database shows between the old floor and
//!   that row (rows left pending by a failure, held back behind one, not
//!   yet due, or committed since the last claim);
//! - the first dead row (an operator may send it again: it becomes pending
//!   with its old `seq`);
//! - one past the highest final `seq` (see `horizon.rs`): no transaction
//!   still open can commit a row at or below it. The pending rows are read
//!   in a statement that starts after the reading that made it final.
//!
//! Rows do not become pending otherwise: a row leaves `pending` only by
//! being delivered, dying or being released. The floor belongs to one set of
//! shards; another set starts from no floor. It is also dropped every
//! [`RESET_EVERY`] (claims get no floor once it is that old, whether or not
//! it moved since), so a claim from the start of the index finds whatever an
//! operator did by hand (an `UPDATE` back to `pending`).
//!
//! **One run of the server.** The horizon holds only while the sequence
//! keeps handing out values above those it was read at. After a crash, an
//! immediate stop, a failover or a restore, the sequence continues from
//! what the server's WAL holds and hands out values read before again
//! (`horizon.rs`), so rows can be committed below the floor. The floor and
//! the horizon are therefore dropped together, and claims read from the
//! start of the index until new readings move the floor again:
//! - when a reading shows another server run (start time, crash recovery,
//!   timeline) or a sequence lower than before (`horizon::discontinuity`);
//!   the statement reads these with the floor, in the same round trip;
//! - when the relay calls [`ClaimFloor::reset`] after a database error: the
//!   claims it makes before its next reading would otherwise still use a
//!   floor from before the error.
//!
//! Without a usable sequence (a cache, a negative increment, no privilege
//! to read it) there is no floor: claims read from the start, as without
//! this module.

use crate::identifier::Names;
use crate::relay::bounds::horizon::{Horizon, Reading, Restart, ServerRun};
use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::{PgPool, Row};
use std::time::{Duration, Instant};

/// The floor is recomputed at most this often while a backlog drains.
const ADVANCE_EVERY: Duration = Duration::from_millis(50);

/// How often the floor is dropped, whatever it is.
const RESET_EVERY: Duration = Duration::from_secs(60);

/// How long after a batch an idle relay keeps moving the floor: long
/// enough for the readings after it to become final (`horizon.rs`: once
/// the transactions open at them have ended) and be used, even behind a
/// transaction that stays open a while; after that nothing new lies below the
/// pending rows, and an idle relay runs no floor statement.
const SETTLE_AFTER_BATCH: Duration = Duration::from_secs(3);

/// Finds the identity sequence of `seq` (`$1` the table), how it hands
/// out values, and whether the role may read the server's timeline
/// (`pg_control_checkpoint()` is open to everyone by default, but can be
/// revoked; the floor statement then does without it).
const LOOKUP_SEQUENCE: &str = "SELECT s.seqrelid::int8 AS oid, s.seqcache, s.seqincrement,
            has_function_privilege('pg_catalog.pg_control_checkpoint()', 'EXECUTE') AS timeline_readable
     FROM pg_sequence s
     WHERE s.seqrelid = pg_get_serial_sequence($1, 'seq')::regclass";

/// No floor: a claim from the start of the index.
pub(crate) const NO_FLOOR: i64 = i64::MIN;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sequence {
    /// Not looked up yet.
    Unknown,
    /// The identity sequence of `seq`, by `oid`, and whether the floor
    /// statement reads the server's timeline.
    Usable { oid: i64, timeline: bool },
    /// No floor for this relay (reason logged once).
    Unusable,
}

/// The floor, and what it needs to move.
///
/// The floor and the horizon always come from readings of one server run
/// (see the module's documentation): whatever drops one drops the other.
#[derive(Debug)]
pub(crate) struct ClaimFloor {
    /// The floor statement, for the `Usable` sequence.
    advance_sql: String,
    outbox: String,
    sequence: Sequence,
    horizon: Horizon,
    floor: i64,
    /// The shards `floor` is for, as a mask (`claim::shard_mask`).
    mask: i64,
    next_advance: Instant,
    reset_at: Instant,
    /// Until when an idle relay still moves the floor (see
    /// [`SETTLE_AFTER_BATCH`]).
    settle_until: Instant,
}

impl ClaimFloor {
    pub(crate) fn new(names: &Names) -> Self {
        let outbox = names.outbox.as_str();
        Self {
            advance_sql: String::new(),
            outbox: outbox.into(),
            sequence: Sequence::Unknown,
            horizon: Horizon::default(),
            floor: NO_FLOOR,
            mask: 0,
            next_advance: Instant::now(),
            reset_at: Instant::now() + RESET_EVERY,
            settle_until: Instant::now(),
        }
    }

    /// Where a claim of the shards in `mask` may start: no floor for other
    /// shards, or once the floor is due to be dropped ([`RESET_EVERY`]),
    /// even if no [`advance`](Self::advance) ran since.
    pub(crate) fn get(&self, mask: i64) -> i64 {
        if mask == self.mask && Instant::now() < self.reset_at {
            self.floor
        } else {
            NO_FLOOR
        }
    }

    /// Drops the floor and the horizon, so claims read the pending index
    /// from its start until readings move the floor again, and looks the
    /// sequence up again (another server or a restored database may have
    /// another one).
    ///
    /// For the relay to call after a database error (a lost connection
    /// above all): the server may have restarted or failed over, handing
    /// out `seq`s below the floor again, and its claims may run before the
    /// next reading could tell. Logged (once per start-over) when there was
    /// something to drop.
    pub(crate) fn reset(&mut self) {
        let (floor, final_seq) = (self.floor, self.horizon.final_seq());
        self.floor = NO_FLOOR;
        self.reset_at = Instant::now() + RESET_EVERY;
        self.horizon.reset();
        if self.sequence != Sequence::Unusable {
            self.sequence = Sequence::Unknown;
        }
        if floor != NO_FLOOR || final_seq.is_some() {
            tracing::info!(
                dropped_floor = (floor != NO_FLOOR).then_some(floor),
                dropped_final_seq = final_seq,
                "outbox relay dropped its claim floor after a database error; claims read the pending index from its start until it moves again"
            );
        }
    }

    /// Whether [`advance`](Self::advance) would do anything now.
    pub(crate) fn due(&self) -> bool {
        self.sequence != Sequence::Unusable && Instant::now() >= self.next_advance
    }

    /// Notes that a batch was claimed: rows are being delivered, so the
    /// floor has somewhere to move for a while.
    pub(crate) fn saw_batch(&mut self) {
        self.settle_until = Instant::now() + SETTLE_AFTER_BATCH;
    }

    /// Whether an idle relay should move the floor now: it is due, and a
    /// batch was claimed recently enough for it to move.
    pub(crate) fn due_while_idle(&self) -> bool {
        self.due() && Instant::now() < self.settle_until
    }

    /// Moves the floor of the shards in `mask` up as far as the database
    /// allows, below `first_in_flight` (the lowest `seq` claimed and not
    /// yet recorded, if any). The rows in flight must be the only rows of
    /// these shards whose outcome is not written yet.
    ///
    /// Errors leave the floor where it was; a missing privilege or a
    /// sequence that hands out values out of order disables it for good
    /// (logged once). A reading from another server run than the one before,
    /// or of a sequence lower than before, drops the floor and the horizon
    /// instead of moving them (logged once).
    pub(crate) async fn advance(
        &mut self,
        pool: &PgPool,
        mask: i64,
        first_in_flight: Option<i64>,
    ) -> Result<i64, sqlx::Error> {
        let now = Instant::now();
        self.next_advance = now + ADVANCE_EVERY;
        if mask != self.mask || now >= self.reset_at {
            self.mask = mask;
            self.floor = NO_FLOOR;
            self.reset_at = now + RESET_EVERY;
        }
        let (oid, timeline) = match self.sequence {
            Sequence::Usable { oid, timeline } => (oid, timeline),
            Sequence::Unusable => return Ok(self.floor),
            Sequence::Unknown => match self.look_up(pool).await? {
                Some(found) => found,
                None => return Ok(self.floor),
            },
        };
        // Up to, not including, the first row in flight and the first `seq`
        // not known to be final; nothing while no `seq` is known final.
        let below = match self.horizon.final_seq() {
            None => NO_FLOOR,
            Some(last_final) => {
                let past_final = last_final.saturating_add(1);
                first_in_flight.map_or(past_final, |first| first.min(past_final))
            }
        };
        let row = match sqlx::query(&self.advance_sql)
            .persistent(false)
            .bind(mask)
            .bind(self.floor)
            .bind(below)
            .bind(oid)
            .fetch_one(pool)
            .await
        {
            Ok(row) => row,
            Err(sqlx::Error::Database(error))
                if error.code().as_deref() == Some("42501") && timeline =>
            {
                // The timeline's function was revoked since the look-up:
                // the next statement does without it.
                tracing::debug!(%error, "outbox relay reads its claim floor without the server's timeline");
                self.sequence = Sequence::Usable {
                    oid,
                    timeline: false,
                };
                self.advance_sql = advance_statement(&self.outbox, false);
                return Ok(self.floor);
            }
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42501") => {
                tracing::warn!(%error, "outbox relay cannot read the outbox sequence; claims will read the pending index from its start (grant SELECT on the sequence of `seq` to the relay's role to let them skip delivered rows)");
                self.sequence = Sequence::Unusable;
                return Ok(self.floor);
            }
            Err(error) => return Err(error),
        };
        let pending: Option<i64> = row.try_get("pending_min")?;
        let dead: Option<i64> = row.try_get("dead_min")?;
        let moved = [Some(below), pending, dead]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(below);
        let reading = Reading {
            allocated: row.try_get("allocated")?,
            read_at: row.try_get("read_at")?,
            open: row.try_get("open")?,
            inconclusive: row.try_get::<i64, _>("prepared")? > 0,
            run: ServerRun {
                started: row.try_get("started")?,
                stats_reset: row.try_get("stats_reset")?,
                timeline: row.try_get("timeline")?,
            },
        };
        Ok(self.take_reading(moved, reading))
    }

    /// Takes in a reading whose statement found the floor could move to
    /// `moved`: moves it there, unless the reading cannot be combined with
    /// the ones before (another server run, a sequence that went back):
    /// then `moved`, found with bounds from those readings, means nothing,
    /// and the floor is dropped with the horizon.
    fn take_reading(&mut self, moved: i64, reading: Reading) -> i64 {
        let (allocated, run) = (reading.allocated, reading.run.clone());
        match self.horizon.observe(reading) {
            None => self.floor = moved,
            Some(restart) => {
                log_restart(&restart, self.floor, allocated, &run);
                self.floor = NO_FLOOR;
                self.reset_at = Instant::now() + RESET_EVERY;
                // A restored database may have its sequence under another
                // oid: looked up again before the next reading.
                self.sequence = Sequence::Unknown;
            }
        }
        self.floor
    }

    /// Finds the sequence behind `seq` and checks it hands out values in
    /// order; `None` (and a log line) when it does not. Builds the floor
    /// statement for it.
    async fn look_up(&mut self, pool: &PgPool) -> Result<Option<(i64, bool)>, sqlx::Error> {
        let found = sqlx::query(LOOKUP_SEQUENCE)
            .bind(self.outbox.as_str())
            .fetch_optional(pool)
            .await?;
        let usable = match found {
            None => {
                tracing::info!(table = %self.outbox, "the outbox's `seq` has no sequence; claims read the pending index from its start");
                None
            }
            Some(row) => {
                let oid: i64 = row.try_get("oid")?;
                let cache: i64 = row.try_get("seqcache")?;
                let increment: i64 = row.try_get("seqincrement")?;
                let timeline: Option<bool> = row.try_get("timeline_readable")?;
                if cache == 1 && increment > 0 {
                    Some((oid, timeline.unwrap_or(false)))
                } else {
                    tracing::info!(table = %self.outbox, cache, increment, "the outbox sequence hands out values out of order (CACHE above 1 or a negative INCREMENT); claims read the pending index from its start");
                    None
                }
            }
        };
        self.sequence = match usable {
            Some((oid, timeline)) => {
                self.advance_sql = advance_statement(&self.outbox, timeline);
                Sequence::Usable { oid, timeline }
            }
            None => Sequence::Unusable,
        };
        Ok(usable)
    }
}

/// Logs a start-over of the floor and the horizon at info level, with what
/// the readings before showed and what the new one shows.
fn log_restart(restart: &Restart, floor: i64, allocated: Option<i64>, run: &ServerRun) {
    let before = &restart.seen.run;
    tracing::info!(
        cause = restart.cause.as_str(),
        old_start_time = %shown(before.started),
        new_start_time = %shown(run.started),
        old_stats_reset = %shown(before.stats_reset),
        new_stats_reset = %shown(run.stats_reset),
        old_timeline = before.timeline,
        new_timeline = run.timeline,
        old_sequence = restart.seen.highest,
        new_sequence = allocated,
        dropped_floor = (floor != NO_FLOOR).then_some(floor),
        dropped_final_seq = restart.dropped_final,
        "outbox relay dropped its claim floor: the outbox sequence may hand out values it handed out before; claims read the pending index from its start until it moves again"
    );
}

/// A time for the log: RFC 3339, or `none`.
fn shown(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "none".to_owned(),
        |at| at.to_rfc3339_opts(SecondsFormat::Micros, true),
    )
}

/// One statement per advance: `$1` the shard mask, `$2` the current floor,
/// `$3` the bound below which pending rows are looked for, `$4` the
/// sequence's `oid`; `timeline`: whether the role may read the server's
/// timeline.
///
/// - `pending_min`, `dead_min`: the first pending row in `[$2, $3)` and the
///   first dead row, of the shards (the pending index from the floor on;
///   the small index of blocking rows).
/// - `allocated`: the sequence's last value, read in a subquery the outer
///   query reads from.
/// - `open`: the virtual transaction ids of the database's other open
///   transactions (autovacuum inserts no rows), in a subquery that refers
///   to `allocated`, so it runs after the sequence was read.
/// - `read_at`: the clock; `prepared`: how many prepared transactions wait.
/// - `started`, `stats_reset`, `timeline` (`NULL` without `timeline`): the
///   server run (`horizon::ServerRun`), read in the same statement, so the
///   floor costs one round trip still.
fn advance_statement(outbox: &str, timeline: bool) -> String {
    let timeline = if timeline {
        "(SELECT c.timeline_id::int8 FROM pg_control_checkpoint() c)"
    } else {
        "NULL::int8"
    };
    format!(
        "SELECT
             (SELECT min(o.seq) FROM {outbox} o
              WHERE o.state = 'pending' AND ((1::int8 << o.shard) & $1::int8) <> 0
                AND o.seq >= $2::int8 AND o.seq < $3::int8) AS pending_min,
             (SELECT min(d.seq) FROM {outbox} d
              WHERE d.state = 'dead' AND ((1::int8 << d.shard) & $1::int8) <> 0) AS dead_min,
             h.allocated,
             ARRAY(SELECT l.virtualxid::text
                   FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid
                   WHERE l.locktype = 'virtualxid' AND l.mode = 'ExclusiveLock' AND l.granted
                     AND l.pid <> pg_backend_pid()
                     AND s.datname = current_database()
                     AND s.backend_type IS DISTINCT FROM 'autovacuum worker'
                     AND h.allocated IS NOT DISTINCT FROM h.allocated) AS open,
             extract(epoch FROM clock_timestamp())::float8 AS read_at,
             (SELECT count(*) FROM pg_prepared_xacts x
              WHERE x.database = current_database()) AS prepared,
             pg_postmaster_start_time() AS started,
             (SELECT b.stats_reset FROM pg_stat_bgwriter b) AS stats_reset,
             {timeline} AS timeline
         FROM (SELECT pg_sequence_last_value($4::int8::oid::regclass) AS allocated OFFSET 0) h"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::bounds::horizon::tests::{reading, run};

    #[test]
    fn the_advance_reads_the_open_transactions_after_the_sequence() {
        let sql = advance_statement("event_outbox", true);
        let sequence = sql.find("pg_sequence_last_value").unwrap_or(usize::MAX);
        let from = sql.find("FROM (SELECT pg_sequence_last_value").unwrap_or(0);
        assert!(sequence >= from, "the sequence is read in the FROM list");
        assert!(sql.contains("OFFSET 0) h"), "kept a subquery of its own");
        assert!(
            sql.contains("h.allocated IS NOT DISTINCT FROM h.allocated) AS open"),
            "the lock subquery refers to the sequence's value"
        );
        assert!(sql.contains("o.seq >= $2::int8 AND o.seq < $3::int8"));
    }

    #[test]
    fn the_advance_reads_the_server_run_in_the_same_statement() {
        let sql = advance_statement("event_outbox", true);
        assert!(sql.contains("pg_postmaster_start_time() AS started"));
        assert!(sql.contains("FROM pg_stat_bgwriter b) AS stats_reset"));
        assert!(sql.contains("FROM pg_control_checkpoint() c) AS timeline"));
        let without = advance_statement("event_outbox", false);
        assert!(without.contains("NULL::int8 AS timeline"));
        assert!(
            !without.contains("pg_control_checkpoint"),
            "needs no privilege"
        );
    }

    /// A floor over every shard that took in readings of 100, 120 and 130
    /// (100 and 120 final) and stands at 101.
    fn moved_floor() -> ClaimFloor {
        let mut floor = ClaimFloor::new(&Names::new(None));
        floor.mask = -1;
        floor.sequence = Sequence::Usable {
            oid: 1,
            timeline: true,
        };
        assert_eq!(
            floor.take_reading(NO_FLOOR, reading(100, 10.0, &[])),
            NO_FLOOR
        );
        assert_eq!(
            floor.take_reading(NO_FLOOR, reading(120, 10.1, &[])),
            NO_FLOOR
        );
        assert_eq!(floor.horizon.final_seq(), Some(100));
        assert_eq!(floor.take_reading(101, reading(130, 10.2, &[])), 101);
        assert_eq!(floor.get(-1), 101);
        floor
    }

    #[test]
    fn a_reading_of_another_server_run_drops_the_floor_and_the_horizon() {
        let mut floor = moved_floor();
        let restarted = Reading {
            run: run(2),
            ..reading(110, 10.3, &[])
        };
        assert_eq!(floor.take_reading(131, restarted), NO_FLOOR);
        assert_eq!(floor.get(-1), NO_FLOOR);
        assert_eq!(floor.horizon.final_seq(), None);
        assert_eq!(floor.sequence, Sequence::Unknown, "looked up again");
        let mut floor = moved_floor();
        assert_eq!(
            floor.take_reading(131, reading(125, 10.3, &[])),
            NO_FLOOR,
            "the sequence went back below 130"
        );
        assert_eq!(floor.horizon.final_seq(), None);
    }

    #[test]
    fn readings_of_one_run_keep_moving_the_floor() {
        let mut floor = moved_floor();
        assert_eq!(floor.take_reading(131, reading(140, 10.3, &[])), 131);
        assert_eq!(floor.horizon.final_seq(), Some(130));
        assert_eq!(
            floor.sequence,
            Sequence::Usable {
                oid: 1,
                timeline: true
            }
        );
    }

    #[test]
    fn a_reset_drops_the_floor_and_the_horizon() {
        let mut floor = moved_floor();
        floor.reset();
        assert_eq!(floor.get(-1), NO_FLOOR);
        assert_eq!(floor.horizon.final_seq(), None);
        assert_eq!(floor.sequence, Sequence::Unknown, "looked up again");
        assert_eq!(
            floor.take_reading(NO_FLOOR, reading(140, 10.3, &[])),
            NO_FLOOR,
            "nothing final yet"
        );
        floor.take_reading(NO_FLOOR, reading(150, 10.4, &[]));
        assert_eq!(
            floor.horizon.final_seq(),
            Some(140),
            "rebuilt from new readings"
        );
        let mut disabled = ClaimFloor::new(&Names::new(None));
        disabled.sequence = Sequence::Unusable;
        disabled.reset();
        assert_eq!(disabled.sequence, Sequence::Unusable, "stays disabled");
    }

    #[test]
    fn a_floor_is_not_used_once_it_is_due_to_be_dropped() {
        let mut floor = moved_floor();
        floor.reset_at = Instant::now() - Duration::from_millis(1);
        assert_eq!(floor.get(-1), NO_FLOOR, "even without an advance since");
    }

    #[test]
    fn a_floor_belongs_to_its_shards() {
        let mut floor = ClaimFloor::new(&Names::new(None));
        floor.mask = 0b11;
        floor.floor = 40;
        assert_eq!(floor.get(0b11), 40);
        assert_eq!(floor.get(0b01), NO_FLOOR);
    }
}
