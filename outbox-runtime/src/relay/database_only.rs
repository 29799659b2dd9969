//! The relay's database work without a broker: claim a batch with the
//! relay's own claim (the `COPY` it uses for batches claimed ahead, as in a
//! backlog), delete it with the relay's own marking statement.
//! `outbox-bench` measures it as the Postgres-only baseline of
//! `relay_vs_raw_produce`. Not a public API: it changes without notice.

use crate::identifier::Names;
use crate::relay::bounds::ClaimFloor;
use crate::relay::claim::{shard_mask, Claimer};
use crate::relay::lease::{Fence, SHARDS};
use crate::relay::record::OutcomeSql;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// One claimed and deleted batch.
#[derive(Debug, Clone, Copy)]
pub struct DrainedBatch {
    /// Rows claimed and deleted.
    pub rows: usize,
    /// Time spent claiming (statement and decoding).
    pub claim: Duration,
    /// Time spent deleting.
    pub delete: Duration,
}

/// Drains `event_outbox` (default schema) in batches, as a relay holding
/// every shard would, without producing anything. It takes every shard's
/// lease for itself at its first claim (for an hour), so its claims and
/// marks carry the relay's lease fence; run it while no relay runs. Its claims start at the
/// relay's claim floor (see [`advance_floor`](Self::advance_floor)), moved
/// after each batch at most every 50 ms, as the relay moves it.
///
/// ```no_run
/// # async fn drain(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// use outbox_runtime::relay::database_only::DatabaseOnlyDrain;
///
/// let mut drain = DatabaseOnlyDrain::new(pool, 1_000);
/// while let Some(batch) = drain.next_batch().await? {
///     println!("{} rows: claim {:?}, delete {:?}", batch.rows, batch.claim, batch.delete);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct DatabaseOnlyDrain {
    pool: PgPool,
    claimer: Claimer,
    outcome: OutcomeSql,
    shards: Vec<i16>,
    floor: ClaimFloor,
    lease_table: String,
    fence: Option<Fence>,
}

impl DatabaseOnlyDrain {
    /// A drain of batches of `batch_size` rows, dead events blocking their
    /// aggregate (the default policy).
    pub fn new(pool: PgPool, batch_size: usize) -> Self {
        let names = Names::new(None);
        Self {
            floor: ClaimFloor::new(&names),
            claimer: Claimer::new(pool.clone(), &names, true, batch_size),
            outcome: OutcomeSql::new(&names),
            shards: (0..SHARDS).filter_map(|s| i16::try_from(s).ok()).collect(),
            lease_table: names.lease.clone(),
            fence: None,
            pool,
        }
    }

    /// The fence of every shard's lease, taken on first use.
    async fn fence(&mut self) -> Result<Fence, sqlx::Error> {
        if let Some(fence) = &self.fence {
            return Ok(fence.clone());
        }
        let owner = Uuid::new_v4();
        let taken: Vec<(i16, i64)> = sqlx::query_as(&format!(
            "UPDATE {} SET owner = $1, epoch = epoch + 1, expires_at = now() + interval '1 hour'
             RETURNING shard, epoch",
            self.lease_table
        ))
        .bind(owner)
        .fetch_all(&self.pool)
        .await?;
        let (shards, epochs) = taken.into_iter().unzip();
        let fence = Fence {
            owner,
            shards,
            epochs,
            valid_for: Duration::ZERO,
        };
        self.fence = Some(fence.clone());
        Ok(fence)
    }

    /// The `seq`s the relay's two claim forms return for the next batch
    /// while `in_flight` are in flight, without claiming anything: the fresh
    /// claim's (a `SELECT`, the in-flight rows left out by a hashed lookup)
    /// and the claim ahead's (a `COPY`, which skips runs of in-flight rows by
    /// range). A test compares them: both forms must return the same rows.
    pub async fn both_claim_forms(
        &mut self,
        in_flight: &[i64],
    ) -> Result<(Vec<i64>, Vec<i64>), sqlx::Error> {
        let seqs = |claimed: crate::relay::claim::Claimed| -> Vec<i64> {
            claimed.rows.iter().map(|row| row.seq).collect()
        };
        let floor = self.floor();
        let fence = self.fence().await?;
        let fresh = self.claimer.claim(&fence, in_flight, floor).await?;
        let ahead = self.claimer.claim_ahead(&fence, in_flight, floor).await?;
        Ok((seqs(fresh), seqs(ahead)))
    }

    /// Where the next claim starts: no row below it is pending, or can
    /// become pending (`i64::MIN` for the start of the index).
    pub fn floor(&self) -> i64 {
        self.floor.get(shard_mask(&self.shards))
    }

    /// Moves the claim floor up as far as the database allows now, as the
    /// relay does between batches; returns it.
    pub async fn advance_floor(&mut self) -> Result<i64, sqlx::Error> {
        let mask = shard_mask(&self.shards);
        self.floor.advance(&self.pool, mask, None).await
    }

    /// Claims and deletes the next batch; `None` once nothing is pending.
    pub async fn next_batch(&mut self) -> Result<Option<DrainedBatch>, sqlx::Error> {
        let fence = self.fence().await?;
        let claimed = self.claimer.claim_ahead(&fence, &[], self.floor()).await?;
        if claimed.rows.is_empty() {
            return Ok(None);
        }
        let seqs: Vec<i64> = claimed.rows.iter().map(|row| row.seq).collect();
        let started = Instant::now();
        self.outcome
            .record(&self.pool, &fence, &seqs, false, &[])
            .await?;
        if self.floor.due() {
            self.advance_floor().await?;
        }
        Ok(Some(DrainedBatch {
            rows: seqs.len(),
            claim: claimed.took,
            delete: started.elapsed(),
        }))
    }
}
