//! The relay loop: keep the leases, claim, produce, record, wait.
//!
//! One round: take the next batch (claimed ahead last round, or claimed
//! now), check the leases still cover it, then produce it while the
//! previous batch's outcome is written and, for a full batch, the next one
//! is claimed. See `docs/design/relay.md` for why each step is there.

use super::chores::Chores;
use super::wakeup::Wakeups;
use super::{Relay, RelayConfig};
use crate::metrics::ErrorKind;
use crate::relay::bounds::ClaimFloor;
use crate::relay::claim::prefetch::Prefetched;
use crate::relay::claim::{shard_mask, Claimed, ClaimedRow, Claimer};
use crate::relay::config::{DeadEventPolicy, Retention};
use crate::relay::lease::{Leases, Maintained};
use crate::relay::produce::{Broker, KafkaBroker};
use crate::relay::record::unrecorded::Unrecorded;
use crate::relay::record::{failed_row, OutcomeSql, Recorded};
use crate::relay::stats::RelayCounters;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;
use uuid::Uuid;

/// Batches in a row the broker took none of before the producer is replaced.
const PRODUCER_RENEWAL_AFTER: u32 = 3;

/// Why a batch claimed ahead was dropped unused, as logged (`reason`): the
/// leases no longer cover a whole produce, a renewal failed, or the leases
/// changed (other shards or epochs) since it was claimed.
const DROPPED_LEASE_LAPSED: &str = "lease_lapsed";
const DROPPED_RENEWAL_FAILED: &str = "lease_renewal_failed";
const DROPPED_FENCE_CHANGED: &str = "fence_changed";

pub(crate) struct Worker<B: Broker = KafkaBroker> {
    pool: PgPool,
    config: RelayConfig,
    instance_id: Uuid,
    shutdown: watch::Receiver<bool>,
    counters: Arc<RelayCounters>,
    // The stages of a round, in order.
    leases: Leases,
    claimer: Claimer,
    broker: B,
    outcome_sql: OutcomeSql,
    /// Batches in a row that reached nothing of the broker.
    unreachable_batches: u32,
    backoff: ExponentialBackoff,
    wakeups: Wakeups,
    chores: Chores,
    /// The batch claimed while the previous one was produced.
    prefetched: Option<Prefetched>,
    /// The batch produced last, whose outcome is written while the next
    /// one is produced.
    unrecorded: Option<Unrecorded>,
    /// Where claims start in the pending index; `None` only while it is
    /// being advanced.
    floor: Option<ClaimFloor>,
}

struct BatchResult {
    /// Rows claimed and produced this round.
    claimed: usize,
    /// Nothing got through for the broker's fault: back off.
    broker_unreachable: bool,
}

impl BatchResult {
    const IDLE: Self = Self {
        claimed: 0,
        broker_unreachable: false,
    };
}

/// Doubling delays from `min` to `max`, with jitter, without end.
fn doubling(min: Duration, max: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Retries of writing a batch's outcome: quick, since the broker already
/// has the messages and every retry shortens the window for duplicates.
fn record_backoff() -> ExponentialBackoff {
    doubling(Duration::from_millis(50), Duration::from_secs(2))
}

fn infra_backoff() -> ExponentialBackoff {
    doubling(Duration::from_millis(200), Duration::from_secs(30))
}

impl Worker<KafkaBroker> {
    pub(crate) fn new(relay: Relay, shutdown: watch::Receiver<bool>) -> Self {
        let Relay {
            pool,
            broker,
            config,
            names,
            instance_id,
            counters,
            metrics,
        } = relay;
        let leases = Leases::new(
            &names,
            instance_id,
            config.lease_ttl,
            config.message_timeout,
        );
        Self {
            claimer: Claimer::new(
                pool.clone(),
                &names,
                config.dead_event_policy == DeadEventPolicy::BlockAggregate,
                config.batch_size,
            ),
            outcome_sql: OutcomeSql::new(&names),
            floor: config
                .mechanisms
                .claim_floor
                .then(|| ClaimFloor::new(&names)),
            wakeups: Wakeups::new(
                config.listen,
                &names.channel,
                config.poll_interval,
                config.trailing_poll,
            ),
            chores: Chores::new(&names, config.retention, metrics),
            leases,
            pool,
            broker,
            unreachable_batches: 0,
            config,
            instance_id,
            counters,
            shutdown,
            backoff: infra_backoff(),
            prefetched: None,
            unrecorded: None,
        }
    }
}

impl<B: Broker> Worker<B> {
    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub(crate) async fn run(mut self) {
        tracing::info!(instance_id = %self.instance_id, batch_size = self.config.batch_size, "outbox relay started");
        while !self.stopping() {
            self.counters.tick();
            self.chores.refresh_gauges(&self.pool).await;
            if self.leases.maintenance_due() && !self.maintain_leases().await {
                continue;
            }
            if !self.leases.usable() {
                // A lapsed lease: what was claimed under it is not used. (A
                // batch claimed ahead under other shards or epochs is also
                // refused where it is taken, `Prefetched::into_batch`.)
                self.drop_prefetched(DROPPED_LEASE_LAPSED);
            }
            self.wakeups.connect(&self.pool).await;
            let mut drained = true;
            if self.leases.usable() {
                match self.run_batch().await {
                    Ok(result) if result.broker_unreachable => {
                        self.metric_error(ErrorKind::BrokerUnreachable);
                        self.counters.error();
                        tracing::warn!(
                            events = result.claimed,
                            "outbox relay could not reach the broker; events stay pending, backing off"
                        );
                        self.unreachable_batches += 1;
                        if self.unreachable_batches >= PRODUCER_RENEWAL_AFTER {
                            self.rebuild_producer("no batch reached the broker");
                        }
                        self.pause().await;
                        continue;
                    }
                    Ok(result) => {
                        self.backoff = infra_backoff();
                        self.unreachable_batches = 0;
                        drained = result.claimed == 0;
                    }
                    Err(error) => {
                        self.transient("claiming or recording a batch", &error)
                            .await;
                        continue;
                    }
                }
            } else {
                self.flush_unrecorded().await;
            }
            if !drained {
                continue;
            }
            self.chores.sweep_retention(&self.pool).await;
            self.advance_floor_while_idle().await;
            let next_chore = self
                .chores
                .next_due()
                .unwrap_or(Instant::now() + Duration::from_secs(3600));
            let deadline = self.leases.next_maintenance().min(next_chore);
            self.wakeups.wait(deadline, &self.shutdown).await;
        }
        self.finish().await;
    }

    /// Renews the leases and rebalances; says whether the loop goes on to a
    /// batch. Shards may move, so no outcome is left unwritten first; what
    /// was claimed ahead under a lease that did not hold is dropped (after a
    /// failed renewal here, otherwise by its fence).
    async fn maintain_leases(&mut self) -> bool {
        self.flush_unrecorded().await;
        match self.leases.maintain(&self.pool).await {
            Ok(Maintained::Kept) => true,
            Ok(Maintained::LostShards) => {
                tracing::warn!(
                    instance_id = %self.instance_id,
                    "outbox relay's lease lapsed and another instance took some of its shards"
                );
                true
            }
            Err(error) => {
                self.leases.invalidate();
                self.drop_prefetched(DROPPED_RENEWAL_FAILED);
                self.transient("renewing shard leases", &error).await;
                false
            }
        }
    }

    /// Drops the batch claimed ahead, if any, logging why (`reason`).
    fn drop_prefetched(&mut self, reason: &str) {
        if let Some(prefetched) = self.prefetched.take() {
            log_dropped(prefetched.seq_range(), reason);
        }
    }

    /// Replaces the producer: a fatal error (librdkafka's idempotent
    /// producer stops for good after one, e.g. an out-of-order sequence), or
    /// batch after batch timing out although the broker may be back. Between
    /// batches nothing is in flight, so a fresh producer (new producer id,
    /// fresh metadata) is safe: unacknowledged rows are produced again, in
    /// order.
    fn rebuild_producer(&mut self, reason: &str) {
        match self.broker.rebuild() {
            Ok(()) => {
                tracing::warn!(
                    reason,
                    failed_batches = self.unreachable_batches,
                    "outbox relay replaced its Kafka producer"
                );
                self.metric_error(ErrorKind::Producer);
                self.unreachable_batches = 0;
            }
            Err(error) => {
                tracing::warn!(%error, "outbox relay could not create a new Kafka producer; keeping the old one")
            }
        }
    }

    async fn finish(&mut self) {
        // Nothing is in flight here: batches are awaited before the loop
        // checks for shutdown, and the last outcome is written now.
        self.flush_unrecorded().await;
        if let Err(error) = self.leases.release_all(&self.pool).await {
            tracing::warn!(%error, "outbox relay could not give its leases back; they expire after the TTL");
        }
        self.broker.flush(Duration::from_secs(5)).await;
        tracing::info!(instance_id = %self.instance_id, "outbox relay stopped");
    }

    fn metric_error(&self, kind: ErrorKind) {
        if let Some(metrics) = self.chores.metrics() {
            metrics.relay_error(kind);
        }
    }

    /// A database error: back off. The server may have restarted or failed
    /// over meanwhile (handing out `seq`s below the claim floor again), so
    /// the floor starts over.
    async fn transient(&mut self, action: &str, error: &(dyn std::fmt::Display + Sync)) {
        self.counters.error();
        self.metric_error(ErrorKind::Database);
        tracing::warn!(action, %error, "outbox relay error; backing off and retrying");
        if let Some(floor) = self.floor.as_mut() {
            floor.reset();
        }
        self.pause().await;
    }

    /// Sleeps for the next back-off delay, or until shutdown.
    async fn pause(&mut self) {
        let delay = self.backoff.next().unwrap_or(Duration::from_secs(30));
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => {}
        }
    }

    /// Between wake-ups nothing is in flight (the last outcome is written
    /// once a claim comes back empty), so the floor can move up to the
    /// pending rows: the claims of a steady trickle of events then skip the
    /// rows delivered since the last vacuum as a backlog's claims do.
    async fn advance_floor_while_idle(&mut self) {
        if self.unrecorded.is_some() || self.prefetched.is_some() || !self.leases.usable() {
            return;
        }
        let mask = shard_mask(self.leases.owned());
        if let Some(floor) = self.floor.as_mut().filter(|floor| floor.due_while_idle()) {
            move_floor(floor, &self.pool, mask, None).await;
        }
    }

    /// One round: take the next batch (claimed ahead last round, or claimed
    /// now), enqueue it, and await its results while the outcome of the
    /// batch before it is written and, for a full batch, the next one is
    /// claimed.
    async fn run_batch(&mut self) -> Result<BatchResult, sqlx::Error> {
        let fence = self.leases.fence();
        let prefetched = self.prefetched.take().and_then(|p| {
            let seqs = p.seq_range();
            let batch = p.into_batch(&fence);
            if batch.is_none() {
                log_dropped(seqs, DROPPED_FENCE_CHANGED);
            }
            batch
        });
        let batch = match prefetched {
            Some(batch) => batch,
            None => {
                // No outcome waiting to be written holds a failure (`deliver`
                // writes those at once), so the claim cannot pass over a row
                // that must hold its aggregate back.
                let excluded = self.unrecorded_seqs(&[]);
                self.claimer
                    .claim(&fence, &excluded, self.claim_floor())
                    .await?
            }
        };
        if batch.rows.is_empty() {
            self.flush_unrecorded().await;
            return Ok(BatchResult::IDLE);
        }
        // The claim may have waited (behind a lock, or in a paused process)
        // until the leases no longer cover a whole produce: nothing of it is
        // enqueued then; its rows stay pending for whoever holds the shards.
        if !self.leases.usable() {
            tracing::warn!(
                events = batch.rows.len(),
                "outbox relay's leases ran short while it claimed; the batch is left pending"
            );
            self.flush_unrecorded().await;
            return Ok(BatchResult::IDLE);
        }
        let span = tracing::info_span!(
            "outbox.relay.batch",
            events = batch.rows.len(),
            instance_id = %self.instance_id,
            first_seq = batch.rows.first().map(|r| r.seq),
            last_seq = batch.rows.last().map(|r| r.seq),
        );
        self.deliver(batch).instrument(span).await
    }

    /// Where a claim of the owned shards starts (see `bounds/`).
    fn claim_floor(&self) -> i64 {
        let mask = shard_mask(self.leases.owned());
        self.floor
            .as_ref()
            .map_or(crate::relay::bounds::NO_FLOOR, |floor| floor.get(mask))
    }

    /// `rows` and the rows of the batch whose outcome is not written yet:
    /// both are still `pending`, and no claim may return them.
    fn unrecorded_seqs(&self, rows: &[ClaimedRow]) -> Vec<i64> {
        let unrecorded = self.unrecorded.iter().flat_map(|u| u.seqs());
        rows.iter().map(|r| r.seq).chain(unrecorded).collect()
    }

    /// Produces the batch while writing the outcome of the previous one and,
    /// when this one is full, claiming the next; keeps this batch's outcome
    /// to write during the next round. A batch that did not all get
    /// through has its outcome written at once and drops what was claimed
    /// ahead, so the next claim sees every failure.
    async fn deliver(&mut self, batch: Claimed) -> Result<BatchResult, sqlx::Error> {
        let Claimed {
            rows,
            started: claimed_at,
            took: claim_took,
            fence,
        } = batch;
        let claimed = rows.len();
        if !self.config.mechanisms.record_while_producing {
            self.flush_unrecorded().await;
        }
        let started = Instant::now();
        let acks = self.broker.enqueue(&self.config.topic_prefix, &rows).await;
        let enqueue_took = started.elapsed();
        // A full batch means a backlog: claim the next one meanwhile. A
        // partial batch took everything there was; what commits meanwhile
        // is better claimed fresh after this batch, in one round, than
        // split across a claim ahead and the round after it.
        let full = claimed >= self.claimer.limit()
            && !self.stopping()
            && self.config.mechanisms.claim_ahead;
        let claiming = full.then(|| self.claim_ahead(&rows));
        let previous = self.unrecorded.take();
        if let Some(floor) = self.floor.as_mut() {
            floor.saw_batch();
        }
        // Once the previous outcome is written, the floor moves up to this
        // batch (the only rows in flight then, besides the claim ahead's,
        // which are still pending).
        let mut moving = self.floor.take_if(|floor| floor.due());
        let mask = shard_mask(&fence.shards);
        let first_in_flight = rows.iter().map(|row| row.seq).min();
        let (outcomes, recorded) = tokio::join!(acks, async {
            let recorded = match previous {
                Some(previous) => self.record(previous).await.map(Some),
                None => Ok(None),
            };
            if let (Ok(_), Some(floor)) = (&recorded, moving.as_mut()) {
                move_floor(floor, &self.pool, mask, first_in_flight).await;
            }
            recorded
        });
        let acknowledged_ms = started.elapsed().as_secs_f64() * 1e3;
        if moving.is_some() {
            self.floor = moving;
        }
        let config = &self.config;
        let current = Unrecorded::new(
            rows,
            outcomes,
            claimed_at,
            fence,
            tracing::Span::current(),
            |row, failure| failed_row(config, row, failure),
        );
        let (retried, dead, uncounted) = current.failure_counts();
        let delivered = current.delivered();
        let reordered = current.reordered();
        let unfinished = !current.unfinished().is_empty();
        let broker_unreachable = current.broker_unreachable();
        self.unrecorded = Some(current);
        // Awaited even when it is not used, so no claim outlives its batch.
        let next = match claiming {
            Some(claiming) => Some(claiming.await),
            None => None,
        };
        let previous_record_ms = match recorded {
            Ok(recorded) => recorded.map(|(took, recorded)| {
                self.refused_marks(recorded);
                took.as_secs_f64() * 1e3
            }),
            Err(error) => return Err(error),
        };
        let fatal = self.broker.fatal_error();
        let mut next_claim_ms = None;
        if unfinished || fatal.is_some() || self.stopping() {
            // The next claim must see this batch's failures, and a broken
            // producer is replaced with nothing in flight.
            self.flush_unrecorded().await;
            if let Some(fatal) = &fatal {
                self.rebuild_producer(fatal);
            }
        } else {
            match next {
                Some(Ok(Ok(prefetched))) => {
                    next_claim_ms = Some(prefetched.claim_ms());
                    let (events, first_seq, last_seq) = prefetched.seq_range();
                    tracing::debug!(
                        events,
                        first_seq,
                        last_seq,
                        "outbox relay holds the batch it claimed ahead"
                    );
                    self.prefetched = Some(prefetched);
                }
                None => {}
                Some(Ok(Err(error))) => {
                    // The next round claims afresh and reports a lasting error.
                    tracing::debug!(%error, "outbox relay could not claim ahead");
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "outbox relay's claim ahead ended abnormally");
                }
            }
        }
        tracing::debug!(
            claimed,
            delivered,
            retried,
            dead,
            uncounted,
            reordered,
            claim_ms = claim_took.as_secs_f64() * 1e3,
            enqueue_ms = enqueue_took.as_secs_f64() * 1e3,
            acknowledged_ms,
            next_claim_ms,
            previous_record_ms,
            "outbox batch produced"
        );
        Ok(BatchResult {
            claimed,
            broker_unreachable: broker_unreachable || fatal.is_some(),
        })
    }

    /// Claims the batch after `rows` in a task of its own, while `rows` are
    /// produced: decoding a claimed batch is CPU work that would otherwise
    /// hold up this task while it enqueues and collects acknowledgements.
    fn claim_ahead(&self, rows: &[ClaimedRow]) -> JoinHandle<Result<Prefetched, sqlx::Error>> {
        let claimer = self.claimer.clone();
        let fence = self.leases.fence();
        let in_flight = self.unrecorded_seqs(rows);
        let floor = self.claim_floor();
        tokio::spawn(async move {
            let batch = claimer.claim_ahead(&fence, &in_flight, floor).await?;
            Ok(Prefetched::new(batch))
        })
    }

    /// Marks that touched fewer rows than they named: the shards' leases are
    /// no longer this instance's at the epoch the batch was claimed under
    /// (another instance took them after this one's lease lapsed). The
    /// leases are checked again before the next batch, which drops anything
    /// claimed ahead under the old ones.
    fn refused_marks(&mut self, recorded: Recorded) {
        if recorded.refused == 0 {
            return;
        }
        tracing::warn!(
            instance_id = %self.instance_id,
            refused = recorded.refused,
            "outbox relay's marks were refused: it no longer holds the lease of these rows' shards; their new owner delivers them"
        );
        self.leases.invalidate();
    }

    /// Writes the outcome of the batch produced last, if it is not written
    /// yet. A write that fails for good leaves its rows `pending`: they are
    /// delivered again (duplicates, never loss); `record` logged why.
    async fn flush_unrecorded(&mut self) {
        if let Some(batch) = self.unrecorded.take() {
            match self.record(batch).await {
                Ok((_, recorded)) => self.refused_marks(recorded),
                Err(_) => {
                    self.counters.error();
                    self.metric_error(ErrorKind::Database);
                    if let Some(floor) = self.floor.as_mut() {
                        floor.reset();
                    }
                }
            }
        }
    }

    /// Writes a produced batch's outcome under the leases it was claimed
    /// under; retried while the leases still cover the rows, since the
    /// broker already has the messages. Returns how long the write took.
    async fn record(&self, batch: Unrecorded) -> Result<(Duration, Recorded), sqlx::Error> {
        let span = batch.span().clone();
        self.record_in_span(batch).instrument(span).await
    }

    async fn record_in_span(&self, batch: Unrecorded) -> Result<(Duration, Recorded), sqlx::Error> {
        let started = Instant::now();
        let delivered = batch.delivered_seqs();
        let keep = matches!(self.config.retention, Retention::Keep(_));
        let mut backoff = record_backoff();
        let mut attempt = 0u32;
        let recorded = loop {
            match self
                .outcome_sql
                .record(&self.pool, batch.fence(), &delivered, keep, batch.failed())
                .await
            {
                Ok(recorded) => break recorded,
                Err(error) if attempt < 20 && self.leases.usable() => {
                    attempt += 1;
                    self.counters.error();
                    self.metric_error(ErrorKind::Database);
                    tracing::warn!(%error, attempt, "outbox relay could not mark a delivered batch; retrying");
                    let delay = backoff.next().unwrap_or(Duration::from_secs(2));
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    tracing::error!(%error, events = delivered.len(), "outbox relay gave up marking a delivered batch; its events will be delivered again");
                    return Err(error);
                }
            }
        };
        batch.report(&self.counters, self.chores.metrics());
        let took = started.elapsed();
        tracing::debug!(
            claimed = batch.claimed(),
            delivered = delivered.len(),
            refused = recorded.refused,
            record_ms = took.as_secs_f64() * 1e3,
            "outbox batch recorded"
        );
        Ok((took, recorded))
    }
}

/// Logs a batch claimed ahead that is dropped unused: how many rows, the
/// first and the last `seq`, and why.
fn log_dropped((events, first_seq, last_seq): (usize, Option<i64>, Option<i64>), reason: &str) {
    tracing::debug!(
        events,
        first_seq,
        last_seq,
        reason,
        "outbox relay dropped the batch it claimed ahead"
    );
}

/// Moves the claim floor (see `floor.rs`). A failure may be a lost
/// connection to a server that restarted, so the floor starts over (claims
/// read from the index's start until the next reading); the relay goes on.
async fn move_floor(
    floor: &mut ClaimFloor,
    pool: &PgPool,
    mask: i64,
    first_in_flight: Option<i64>,
) {
    if let Err(error) = floor.advance(pool, mask, first_in_flight).await {
        tracing::debug!(%error, "outbox relay could not move its claim floor; it starts over");
        floor.reset();
    }
}
