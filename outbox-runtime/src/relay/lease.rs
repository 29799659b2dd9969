//! Shard leases: how relay instances split the work without breaking order.
//!
//! Every row hashes its aggregate to one of [`SHARDS`] shards. A relay only
//! claims rows of shards it holds a lease on; a lease has one owner, so one
//! aggregate is only ever published by one relay at a time. Each live
//! instance takes a fair share (`ceil(SHARDS / live)`), renews its leases
//! every 2 s (a third of the TTL if that is shorter), gives back extras
//! between batches (never with a batch in flight), and stops claiming when
//! its lease is about to expire.
//! A crashed instance's shards become free when its leases expire.
//!
//! **Fencing.** Taking a lease raises its `epoch`. Every claim and every
//! mark carries the epochs this instance holds ([`Fence`]) and touches only
//! rows of shards whose lease still has this owner at that epoch, so an
//! instance paused or stalled past its lease (a claim waiting behind a lock,
//! a process stopped mid-batch) can neither claim nor mark rows of a shard
//! another instance took meanwhile. A claim also requires the lease to stay
//! valid for the batch's whole produce, by the database's clock when the
//! statement runs, not when it was sent. (The lease rows themselves are read
//! in the statement's snapshot, which a `COPY` takes before it waits for
//! locks; a lease changes hands only once it has expired, which the clock
//! check sees. A lease row edited by hand while a claim waits is not seen.)
//! A mark that began just before another instance took the lease may still
//! commit; its rows were delivered, and the new owner only finds them gone.

use crate::identifier::Names;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Number of shards aggregates are hashed into (fixed by the migration).
pub const SHARDS: i64 = 64;

#[derive(Debug)]
pub(crate) struct Leases {
    instance_id: Uuid,
    hostname: String,
    ttl: Duration,
    /// A batch may start only if it can finish this long before expiry.
    safety: Duration,
    owned: Vec<i16>,
    /// The epoch of each lease in `owned`, in the same order.
    epochs: Vec<i64>,
    valid_until: Option<Instant>,
    last_maintained: Option<Instant>,
    fair_share: usize,
    sql: LeaseSql,
}

#[derive(Debug)]
struct LeaseSql {
    heartbeat: String,
    forget_dead: String,
    live: String,
    renew: String,
    release_some: String,
    acquire: String,
    release_all: String,
    unregister: String,
}

impl Leases {
    pub(crate) fn new(
        names: &Names,
        instance_id: Uuid,
        ttl: Duration,
        message_timeout: Duration,
    ) -> Self {
        let (lease, relay) = (&names.lease, &names.relay);
        Self {
            instance_id,
            hostname: std::env::var("HOSTNAME").unwrap_or_default(),
            ttl,
            safety: message_timeout + Duration::from_secs(1),
            owned: Vec::new(),
            epochs: Vec::new(),
            valid_until: None,
            last_maintained: None,
            fair_share: 0,
            sql: LeaseSql {
                heartbeat: format!(
                    "INSERT INTO {relay} (instance_id, hostname) VALUES ($1, $2)
                     ON CONFLICT (instance_id) DO UPDATE SET heartbeat_at = now()"
                ),
                forget_dead: format!(
                    "DELETE FROM {relay} WHERE heartbeat_at < now() - make_interval(secs => $1)"
                ),
                live: format!(
                    "SELECT count(*) FROM {relay} WHERE heartbeat_at >= now() - make_interval(secs => $1)"
                ),
                renew: format!(
                    "UPDATE {lease} SET expires_at = now() + make_interval(secs => $2)
                     WHERE owner = $1 RETURNING shard, epoch"
                ),
                release_some: format!(
                    "UPDATE {lease} SET owner = NULL, expires_at = '-infinity'
                     WHERE owner = $1 AND shard = ANY($2)"
                ),
                acquire: format!(
                    "UPDATE {lease} SET owner = $1, epoch = epoch + 1,
                                        expires_at = now() + make_interval(secs => $2)
                     WHERE shard IN (
                         SELECT shard FROM {lease}
                         WHERE owner IS NULL OR expires_at < now()
                         ORDER BY shard LIMIT $3 FOR UPDATE SKIP LOCKED)
                     RETURNING shard, epoch"
                ),
                release_all: format!(
                    "UPDATE {lease} SET owner = NULL, expires_at = '-infinity' WHERE owner = $1"
                ),
                unregister: format!("DELETE FROM {relay} WHERE instance_id = $1"),
            },
        }
    }

    /// Shards this instance may claim from now.
    pub(crate) fn owned(&self) -> &[i16] {
        &self.owned
    }

    /// The fencing token of the leases held now.
    pub(crate) fn fence(&self) -> Fence {
        Fence {
            owner: self.instance_id,
            shards: self.owned.clone(),
            epochs: self.epochs.clone(),
            valid_for: self.safety,
        }
    }

    /// Whether a batch started now is sure to finish while the leases hold.
    pub(crate) fn usable(&self) -> bool {
        !self.owned.is_empty()
            && self
                .valid_until
                .is_some_and(|until| Instant::now() + self.safety < until)
    }

    /// Whether maintenance is due now.
    pub(crate) fn maintenance_due(&self) -> bool {
        self.last_maintained.is_none() || Instant::now() >= self.next_maintenance()
    }

    /// When maintenance is due next: every second while below the fair
    /// share (looking for free shards), otherwise every 2 s, so a new
    /// instance gets its share within seconds; never less often than a
    /// third of the TTL. The maintenance transaction is tiny.
    pub(crate) fn next_maintenance(&self) -> Instant {
        let every = if self.owned.len() < self.fair_share {
            Duration::from_secs(1).min(self.ttl / 3)
        } else {
            Duration::from_secs(2).min(self.ttl / 3)
        };
        match self.last_maintained {
            Some(at) => at + every,
            None => Instant::now(),
        }
    }

    /// Heartbeat, renew, and rebalance towards the fair share. Must only run
    /// between batches. Says whether a shard held before is gone (taken by
    /// another instance after this one's lease lapsed).
    pub(crate) async fn maintain(&mut self, pool: &PgPool) -> Result<Maintained, sqlx::Error> {
        let started = Instant::now();
        let ttl = self.ttl.as_secs_f64();
        let mut tx = pool.begin().await?;
        sqlx::query(&self.sql.heartbeat)
            .bind(self.instance_id)
            .bind(&self.hostname)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&self.sql.forget_dead)
            .bind(ttl * 2.0)
            .execute(&mut *tx)
            .await?;
        let live: i64 = sqlx::query_scalar(&self.sql.live)
            .bind(ttl)
            .fetch_one(&mut *tx)
            .await?;
        let live = live.max(1);
        let fair = usize::try_from((SHARDS + live - 1) / live).unwrap_or(1);
        let mut owned: Vec<(i16, i64)> = sqlx::query_as(&self.sql.renew)
            .bind(self.instance_id)
            .bind(ttl)
            .fetch_all(&mut *tx)
            .await?;
        owned.sort_unstable();
        let lost = self
            .owned
            .iter()
            .any(|shard| !owned.iter().any(|(renewed, _)| renewed == shard));
        if owned.len() > fair {
            let extra: Vec<i16> = owned.split_off(fair).into_iter().map(|(s, _)| s).collect();
            sqlx::query(&self.sql.release_some)
                .bind(self.instance_id)
                .bind(&extra)
                .execute(&mut *tx)
                .await?;
            tracing::info!(
                released = extra.len(),
                kept = owned.len(),
                live_relays = live,
                "outbox relay gave shards back for rebalancing"
            );
        } else if owned.len() < fair {
            let want = i64::try_from(fair - owned.len()).unwrap_or(0);
            let got: Vec<(i16, i64)> = sqlx::query_as(&self.sql.acquire)
                .bind(self.instance_id)
                .bind(ttl)
                .bind(want)
                .fetch_all(&mut *tx)
                .await?;
            if !got.is_empty() {
                tracing::info!(
                    acquired = got.len(),
                    live_relays = live,
                    "outbox relay took shard leases"
                );
            }
            owned.extend(got);
            owned.sort_unstable();
        }
        tx.commit().await?;
        (self.owned, self.epochs) = owned.into_iter().unzip();
        self.fair_share = fair;
        // Every expiry written above is at least `started + ttl` in real time.
        self.valid_until = Some(started + self.ttl);
        self.last_maintained = Some(Instant::now());
        Ok(if lost {
            Maintained::LostShards
        } else {
            Maintained::Kept
        })
    }

    /// Forget local leases (e.g. after a failed renewal), so nothing is
    /// claimed until the next successful maintenance.
    pub(crate) fn invalidate(&mut self) {
        self.valid_until = None;
        self.last_maintained = None;
    }

    /// Releases all leases and unregisters the instance (graceful shutdown).
    pub(crate) async fn release_all(&mut self, pool: &PgPool) -> Result<(), sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query(&self.sql.release_all)
            .bind(self.instance_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(&self.sql.unregister)
            .bind(self.instance_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.owned.clear();
        self.epochs.clear();
        self.valid_until = None;
        Ok(())
    }
}

/// What a lease maintenance found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Maintained {
    /// Every shard held before is still held (some may have been added or
    /// given back on purpose).
    Kept,
    /// A shard held before is no longer this instance's: its lease lapsed
    /// and another instance took it.
    LostShards,
}

/// The leases a statement is issued under: this instance's id and the
/// epoch of each shard it holds (see the module's **Fencing**).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fence {
    pub owner: Uuid,
    pub shards: Vec<i16>,
    pub epochs: Vec<i64>,
    /// How long a claim requires the leases to stay valid.
    pub valid_for: Duration,
}

impl Fence {
    /// The shards still held under this fence, as a mask (bit `n` for
    /// shard `n`), as a SQL expression over `lease`. Its values are written
    /// into the statement: a UUID and numbers formatted here, never text
    /// from elsewhere (the table name is a validated identifier). With
    /// `claim`, leases that do not stay valid for [`valid_for`](Self::valid_for)
    /// from the moment the statement runs (`clock_timestamp()`, not the
    /// start of a wait for a lock) are left out.
    ///
    /// The epochs are one array indexed by shard (`NULL` where no lease is
    /// held), so each of the 64 lease rows is checked by one array lookup:
    /// a join against the held (shard, epoch) pairs cost more to plan than
    /// the rest of a small claim.
    pub(crate) fn mask_sql(&self, lease: &str, claim: bool) -> String {
        let mut by_shard = [None; SHARDS as usize];
        for (&shard, &epoch) in self.shards.iter().zip(&self.epochs) {
            if let Some(slot) = usize::try_from(shard)
                .ok()
                .and_then(|i| by_shard.get_mut(i))
            {
                *slot = Some(epoch);
            }
        }
        let epochs = by_shard
            .iter()
            .map(|epoch| epoch.map_or_else(|| "NULL".to_owned(), |e| e.to_string()))
            .collect::<Vec<_>>()
            .join(",");
        let valid = if claim {
            format!(
                " AND l.expires_at > clock_timestamp() + make_interval(secs => {})",
                self.valid_for.as_secs_f64()
            )
        } else {
            String::new()
        };
        format!(
            "(SELECT coalesce(bit_or(1::int8 << l.shard), 0) FROM {lease} l
              WHERE l.owner = '{owner}'
                AND l.epoch = ('{{{epochs}}}'::int8[])[l.shard + 1]{valid})",
            owner = self.owner
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fence_names_owner_shards_and_epochs_and_a_claim_needs_time_left() {
        let fence = Fence {
            owner: Uuid::from_u128(7),
            shards: vec![1, 5],
            epochs: vec![3, 9],
            valid_for: Duration::from_millis(11_500),
        };
        let mark = fence.mask_sql("\"s\".event_outbox_lease", false);
        assert!(mark.contains("FROM \"s\".event_outbox_lease l"), "{mark}");
        let epochs: Vec<&str> = mark
            .split("('{")
            .nth(1)
            .and_then(|rest| rest.split("}'").next())
            .map(|list| list.split(',').collect())
            .unwrap_or_default();
        assert_eq!(epochs.len(), 64, "{mark}");
        assert_eq!((epochs[1], epochs[5]), ("3", "9"), "{mark}");
        assert!(
            epochs
                .iter()
                .enumerate()
                .all(|(shard, e)| shard == 1 || shard == 5 || *e == "NULL"),
            "{mark}"
        );
        assert!(mark.contains("::int8[])[l.shard + 1]"), "{mark}");
        assert!(
            mark.contains("l.owner = '00000000-0000-0000-0000-000000000007'"),
            "{mark}"
        );
        assert!(!mark.contains("clock_timestamp"), "{mark}");
        let claim = fence.mask_sql("event_outbox_lease", true);
        assert!(
            claim.contains("l.expires_at > clock_timestamp() + make_interval(secs => 11.5)"),
            "{claim}"
        );
        let none = Fence {
            shards: vec![],
            epochs: vec![],
            ..fence
        };
        let no_epochs = format!("'{{{}}}'::int8[]", vec!["NULL"; 64].join(","));
        assert!(none.mask_sql("l", false).contains(&no_epochs));
    }
}
