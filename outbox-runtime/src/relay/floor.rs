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
//! [`RESET_EVERY`], so a claim from the start of the index finds whatever an
//! operator did by hand (an `UPDATE` back to `pending`).
//!
//! Without a usable sequence (a cache, a negative increment, no privilege
//! to read it) there is no floor: claims read from the start, as without
//! this module.

use super::horizon::{Horizon, Reading};
use crate::identifier::Names;
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

/// Finds the identity sequence of `seq` (`$1` the table) and how it hands
/// out values.
const LOOKUP_SEQUENCE: &str = "SELECT s.seqrelid::int8 AS oid, s.seqcache, s.seqincrement
     FROM pg_sequence s
     WHERE s.seqrelid = pg_get_serial_sequence($1, 'seq')::regclass";

/// No floor: a claim from the start of the index.
pub(crate) const NO_FLOOR: i64 = i64::MIN;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sequence {
    /// Not looked up yet.
    Unknown,
    /// The identity sequence of `seq`, by `oid`.
    Usable(i64),
    /// No floor for this relay (reason logged once).
    Unusable,
}

/// The floor, and what it needs to move.
#[derive(Debug)]
pub(crate) struct ClaimFloor {
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
            advance_sql: advance_statement(outbox),
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

    /// Where a claim of the shards in `mask` may start.
    pub(crate) fn get(&self, mask: i64) -> i64 {
        if mask == self.mask {
            self.floor
        } else {
            NO_FLOOR
        }
    }

    /// The highest `seq` known final (`horizon.rs`), if any.
    pub(crate) fn final_seq(&self) -> Option<i64> {
        self.horizon.final_seq()
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
    /// (logged once).
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
        let oid = match self.sequence {
            Sequence::Usable(oid) => oid,
            Sequence::Unusable => return Ok(self.floor),
            Sequence::Unknown => match self.look_up(pool).await? {
                Some(oid) => oid,
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
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("42501") => {
                tracing::warn!(%error, "outbox relay cannot read the outbox sequence; claims will read the pending index from its start (grant SELECT on the sequence of `seq` to the relay's role to let them skip delivered rows)");
                self.sequence = Sequence::Unusable;
                return Ok(self.floor);
            }
            Err(error) => return Err(error),
        };
        let pending: Option<i64> = row.try_get("pending_min")?;
        let dead: Option<i64> = row.try_get("dead_min")?;
        self.floor = [Some(below), pending, dead]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(below);
        self.horizon.observe(Reading {
            allocated: row.try_get("allocated")?,
            read_at: row.try_get("read_at")?,
            open: row.try_get("open")?,
            inconclusive: row.try_get::<i64, _>("prepared")? > 0,
        });
        Ok(self.floor)
    }

    /// Finds the sequence behind `seq` and checks it hands out values in
    /// order; `None` (and a log line) when it does not.
    async fn look_up(&mut self, pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
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
                if cache == 1 && increment > 0 {
                    Some(oid)
                } else {
                    tracing::info!(table = %self.outbox, cache, increment, "the outbox sequence hands out values out of order (CACHE above 1 or a negative INCREMENT); claims read the pending index from its start");
                    None
                }
            }
        };
        self.sequence = usable.map_or(Sequence::Unusable, Sequence::Usable);
        Ok(usable)
    }
}

/// One statement per advance: `$1` the shard mask, `$2` the current floor,
/// `$3` the bound below which pending rows are looked for, `$4` the
/// sequence's `oid`.
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
fn advance_statement(outbox: &str) -> String {
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
              WHERE x.database = current_database()) AS prepared
         FROM (SELECT pg_sequence_last_value($4::int8::oid::regclass) AS allocated OFFSET 0) h"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_advance_reads_the_open_transactions_after_the_sequence() {
        let sql = advance_statement("event_outbox");
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
    fn a_floor_belongs_to_its_shards() {
        let mut floor = ClaimFloor::new(&Names::new(None));
        floor.mask = 0b11;
        floor.floor = 40;
        assert_eq!(floor.get(0b11), 40);
        assert_eq!(floor.get(0b01), NO_FLOOR);
    }
}
