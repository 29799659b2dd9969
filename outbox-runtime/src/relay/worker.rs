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
use crate::relay::lease::{Fence, Leases, Maintained};
use crate::relay::produce::{Broker, KafkaBroker};
use crate::relay::record::unfinished::Unfinished;
use crate::relay::record::unrecorded::Unrecorded;
use crate::relay::record::{retry_delay, FailedRow, Failure, OutcomeSql, Recorded};
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
    /// The batch claimed while the one before it was settled.
    prefetched: Option<Prefetched>,
    /// The batch enqueued last, whose results are awaited next round.
    in_flight: Option<Flight<B::Acks>>,
    /// The batch settled last, whose outcome is written while the next
    /// batch is claimed.
    unrecorded: Option<Unrecorded>,
    /// Where claims start in the pending index; `None` only while it is
    /// being advanced.
    floor: Option<ClaimFloor>,
}

/// A batch handed to the broker whose results are not in yet.
struct Flight<A> {
    rows: Vec<ClaimedRow>,
    acks: A,
    /// Aggregates of which a row could not be enqueued: the next batch
    /// holds their rows back.
    failed_to_enqueue: Unfinished,
    fence: Fence,
    claimed_at: Instant,
    claim_took: Duration,
    enqueued_at: Instant,
    enqueue_took: Duration,
    span: tracing::Span,
}

impl<A> Flight<A> {
    fn first_seq(&self) -> Option<i64> {
        self.rows.iter().map(|row| row.seq).min()
    }
}

/// What a settled batch leaves for the round.
struct Settled {
    /// Aggregates that did not get through.
    unfinished: Unfinished,
    broker_unreachable: bool,
}

struct BatchResult {
    /// Rows claimed this round.
    claimed: usize,
    /// Batches are in flight or their outcome was just settled: go on
    /// without waiting for a wake-up.
    busy: bool,
    /// A batch's results came in this round.
    settled: bool,
    /// Nothing of the settled batch got through for the broker's fault:
    /// back off.
    broker_unreachable: bool,
}

impl BatchResult {
    const IDLE: Self = Self {
        claimed: 0,
        busy: false,
        settled: false,
        broker_unreachable: false,
    };
    const BUSY: Self = Self {
        claimed: 0,
        busy: true,
        settled: false,
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
            in_flight: None,
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
                // A lapsed lease: what was claimed under it is not used.
                self.prefetched = None;
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
                        // Only a batch that got through shows the broker is back.
                        if result.settled {
                            self.backoff = infra_backoff();
                            self.unreachable_batches = 0;
                        }
                        drained = result.claimed == 0 && !result.busy;
                    }
                    Err(error) => {
                        self.transient("claiming or recording a batch", &error)
                            .await;
                        continue;
                    }
                }
            } else {
                self.drain(Unfinished::default()).await;
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
    /// batch. Shards may move, so no outcome is left unwritten first, and
    /// what was claimed under a lease that did not hold is dropped.
    async fn maintain_leases(&mut self) -> bool {
        self.drain(Unfinished::default()).await;
        match self.leases.maintain(&self.pool).await {
            Ok(Maintained::Kept) => true,
            Ok(Maintained::LostShards) => {
                tracing::warn!(
                    instance_id = %self.instance_id,
                    "outbox relay's lease lapsed and another instance took some of its shards"
                );
                self.prefetched = None;
                true
            }
            Err(error) => {
                self.leases.invalidate();
                self.prefetched = None;
                self.transient("renewing shard leases", &error).await;
                false
            }
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
        // The batch in flight is settled and every outcome written.
        self.drain(Unfinished::default()).await;
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
        if self.unrecorded.is_some()
            || self.in_flight.is_some()
            || self.prefetched.is_some()
            || !self.leases.usable()
        {
            return;
        }
        let mask = shard_mask(self.leases.owned());
        if let Some(floor) = self.floor.as_mut().filter(|floor| floor.due_while_idle()) {
            move_floor(floor, &self.pool, mask, None).await;
        }
    }

    /// One round: take the next batch (claimed ahead last round, or claimed
    /// now while the outcome settled last round is written), enqueue it,
    /// then settle the batch enqueued the round before (its results in
    /// order) while the broker takes this one and, for a full batch, the
    /// next one is claimed.
    async fn run_batch(&mut self) -> Result<BatchResult, sqlx::Error> {
        let fence = self.leases.fence();
        let prefetched = self.prefetched.take().and_then(|p| p.into_batch(&fence));
        // Outside a drain no outcome waiting to be written holds a failure
        // (`settle_in_round`), so a claim made meanwhile cannot pass over a
        // row that must hold its aggregate back.
        let excluded = self.rows_not_recorded(&[]);
        let floor = self.claim_floor();
        let previous = self.unrecorded.take();
        let first_in_flight = self.in_flight.as_ref().and_then(Flight::first_seq);
        let mut moving = self.floor.take_if(|floor| floor.due());
        let mask = shard_mask(&fence.shards);
        let sequential = !self.config.mechanisms.record_while_claiming;
        let record = async {
            let recorded = match previous {
                Some(previous) => self.record(previous).await.map(Some),
                None => Ok(None),
            };
            if let (Ok(_), Some(floor)) = (&recorded, moving.as_mut()) {
                move_floor(floor, &self.pool, mask, first_in_flight).await;
            }
            recorded
        };
        let (claimed, recorded) = match prefetched {
            Some(batch) => (Ok(batch), record.await),
            None if sequential => {
                let recorded = record.await;
                (self.claimer.claim(&fence, &excluded, floor).await, recorded)
            }
            None => tokio::join!(self.claimer.claim(&fence, &excluded, floor), record),
        };
        if moving.is_some() {
            self.floor = moving;
        }
        if claimed.as_ref().is_ok_and(|batch| !batch.rows.is_empty()) {
            // Rows are being delivered: the floor has somewhere to move.
            if let Some(floor) = self.floor.as_mut() {
                floor.saw_batch();
            }
        }
        let recorded = match recorded {
            Ok(recorded) => recorded.map(|(took, recorded)| {
                self.refused_marks(recorded);
                took
            }),
            Err(error) => {
                self.drain(Unfinished::default()).await;
                return Err(error);
            }
        };
        let batch = match claimed {
            Ok(batch) => batch,
            Err(error) => {
                self.drain(Unfinished::default()).await;
                return Err(error);
            }
        };
        if batch.rows.is_empty() {
            // Nothing new: settle what is in flight; idle once nothing is.
            return Ok(match self.in_flight.take() {
                Some(flight) => self.settle_in_round(flight, recorded).await,
                None => {
                    self.flush_unrecorded().await;
                    BatchResult::IDLE
                }
            });
        }
        // The claim may have waited (behind a lock, or in a paused process)
        // until the leases no longer cover a whole produce: nothing of it is
        // enqueued then; its rows stay pending for whoever holds the shards.
        if !self.leases.usable() {
            tracing::warn!(
                events = batch.rows.len(),
                "outbox relay's leases ran short while it claimed; the batch is left pending"
            );
            self.drain(Unfinished::default()).await;
            return Ok(BatchResult::IDLE);
        }
        let span = tracing::info_span!(
            "outbox.relay.batch",
            events = batch.rows.len(),
            instance_id = %self.instance_id,
            first_seq = batch.rows.first().map(|r| r.seq),
            last_seq = batch.rows.last().map(|r| r.seq),
        );
        let claimed = batch.rows.len();
        let flight = self.enqueue(batch, span).await;
        let previous_flight = self.in_flight.replace(flight);
        let mut result = match previous_flight {
            Some(flight) => self.settle_in_round(flight, recorded).await,
            None => BatchResult::BUSY,
        };
        if !self.config.mechanisms.pipeline {
            // One batch in flight at a time: settle this one now.
            if let Some(flight) = self.in_flight.take() {
                let settled = self.settle_in_round(flight, None).await;
                result.settled = true;
                result.broker_unreachable |= settled.broker_unreachable;
            }
        }
        result.claimed = claimed;
        Ok(result)
    }

    /// Where a claim of the owned shards starts (see `bounds/`).
    fn claim_floor(&self) -> i64 {
        let mask = shard_mask(self.leases.owned());
        self.floor
            .as_ref()
            .map_or(crate::relay::bounds::NO_FLOOR, |floor| floor.get(mask))
    }

    /// `rows`, the rows in flight and the rows of the batch whose outcome is
    /// not written yet: all still `pending`, and no claim may return them.
    fn rows_not_recorded(&self, rows: &[ClaimedRow]) -> Vec<i64> {
        let in_flight = self.in_flight.iter().flat_map(|f| f.rows.iter());
        let unrecorded = self.unrecorded.iter().flat_map(|u| u.seqs());
        rows.iter()
            .chain(in_flight)
            .map(|r| r.seq)
            .chain(unrecorded)
            .collect()
    }

    /// Hands `batch` to the broker, holding back the aggregates that failed
    /// to enqueue in the batch still in flight.
    async fn enqueue(&self, batch: Claimed, span: tracing::Span) -> Flight<B::Acks> {
        let Claimed {
            rows,
            started: claimed_at,
            took: claim_took,
            fence,
        } = batch;
        let no_hold = Unfinished::default();
        let held = self
            .in_flight
            .as_ref()
            .map_or(&no_hold, |flight| &flight.failed_to_enqueue);
        let started = Instant::now();
        let enqueued = self
            .broker
            .enqueue(&self.config.topic_prefix, &rows, held)
            .instrument(span.clone())
            .await;
        Flight {
            rows,
            acks: enqueued.acks,
            failed_to_enqueue: enqueued.failed,
            fence,
            claimed_at,
            claim_took,
            enqueued_at: started,
            enqueue_took: started.elapsed(),
            span,
        }
    }

    /// Settles the batch enqueued last round while the broker takes the
    /// one just enqueued and, when that one is full, the batch after it is
    /// claimed. Drains the pipeline when the settled batch did not all get
    /// through: the batch enqueued since was claimed before that was known.
    async fn settle_in_round(
        &mut self,
        flight: Flight<B::Acks>,
        previous_record: Option<Duration>,
    ) -> BatchResult {
        // The newest batch handed to the broker: full means a backlog.
        let newest = self.in_flight.as_ref().unwrap_or(&flight);
        let full = newest.rows.len() >= self.claimer.limit()
            && !self.stopping()
            && self.config.mechanisms.claim_ahead;
        let claiming = full.then(|| self.claim_ahead(&flight.rows));
        let span = flight.span.clone();
        let settled = self
            .settle(flight, &Unfinished::default(), previous_record)
            .instrument(span)
            .await;
        let next = match claiming {
            Some(claiming) => Some(claiming.await),
            None => None,
        };
        let fatal = self.broker.fatal_error();
        if settled.unfinished.is_empty() && fatal.is_none() {
            match next {
                // Not kept past a lease this round found lapsed.
                Some(Ok(Ok(prefetched))) if self.leases.usable() => {
                    self.prefetched = Some(prefetched)
                }
                Some(Ok(Ok(_))) => {}
                Some(Ok(Err(error))) => {
                    // The next round claims afresh and reports a lasting error.
                    tracing::debug!(%error, "outbox relay could not claim ahead");
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "outbox relay's claim ahead ended abnormally");
                }
                None => {}
            }
            return BatchResult {
                claimed: 0,
                busy: true,
                settled: true,
                broker_unreachable: false,
            };
        }
        // Something did not get through: settle and write everything, so
        // the next claim sees every failure; then a broken producer is
        // replaced with nothing in flight.
        self.drain(settled.unfinished).await;
        if let Some(fatal) = &fatal {
            self.rebuild_producer(fatal);
        }
        BatchResult {
            claimed: 0,
            busy: true,
            settled: true,
            broker_unreachable: settled.broker_unreachable || fatal.is_some(),
        }
    }

    /// Waits for `flight`'s results and keeps its outcome to write
    /// (`unrecorded`, which must be empty). `prior`: aggregates that did not
    /// get through an earlier batch whose outcome was not known when this
    /// one was enqueued.
    async fn settle(
        &mut self,
        flight: Flight<B::Acks>,
        prior: &Unfinished,
        previous_record: Option<Duration>,
    ) -> Settled {
        let Flight {
            rows,
            acks,
            fence,
            claimed_at,
            claim_took,
            enqueued_at,
            enqueue_took,
            span,
            ..
        } = flight;
        let outcomes = acks.await;
        let acknowledged_ms = enqueued_at.elapsed().as_secs_f64() * 1e3;
        let claimed = rows.len();
        let current = Unrecorded::new(
            rows,
            outcomes,
            claimed_at,
            fence,
            prior,
            span,
            |row, failure| self.failed_row(row, failure),
        );
        let (retried, dead, uncounted) = current.failure_counts();
        tracing::debug!(
            claimed,
            delivered = current.delivered(),
            retried,
            dead,
            uncounted,
            reordered = current.reordered(),
            claim_ms = claim_took.as_secs_f64() * 1e3,
            enqueue_ms = enqueue_took.as_secs_f64() * 1e3,
            acknowledged_ms,
            previous_record_ms = previous_record.map(|took| took.as_secs_f64() * 1e3),
            "outbox batch produced"
        );
        let settled = Settled {
            unfinished: current.unfinished().clone(),
            broker_unreachable: current.broker_unreachable(),
        };
        // Written already, except in a drain after a failed write.
        self.flush_unrecorded().await;
        self.unrecorded = Some(current);
        settled
    }

    /// Settles whatever is in flight and writes every outcome, so nothing is
    /// in flight or unwritten: before lease maintenance, after a failure,
    /// and at shutdown. `prior`: aggregates that did not get through the
    /// batch settled last. What was claimed ahead is dropped.
    async fn drain(&mut self, prior: Unfinished) {
        self.prefetched = None;
        self.flush_unrecorded().await;
        if let Some(flight) = self.in_flight.take() {
            let span = flight.span.clone();
            self.settle(flight, &prior, None).instrument(span).await;
            self.flush_unrecorded().await;
        }
    }

    /// Claims the batch after the ones in flight (and `settling`, the batch
    /// being settled) in a task of its own: decoding a claimed batch is CPU
    /// work that would otherwise hold up this task while it settles.
    fn claim_ahead(&self, settling: &[ClaimedRow]) -> JoinHandle<Result<Prefetched, sqlx::Error>> {
        let claimer = self.claimer.clone();
        let fence = self.leases.fence();
        let in_flight = self.rows_not_recorded(settling);
        let floor = self.claim_floor();
        tokio::spawn(async move {
            let batch = claimer.claim_ahead(&fence, &in_flight, floor).await?;
            Ok(Prefetched::new(batch))
        })
    }

    /// Marks that touched fewer rows than they named: the shards' leases are
    /// no longer this instance's at the epoch the batch was claimed under
    /// (another instance took them after this one's lease lapsed). The
    /// leases are checked again before the next batch.
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
        self.prefetched = None;
    }

    /// Writes the outcome of the batch settled last, if it is not written
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

    fn failed_row(&self, row: &ClaimedRow, failure: Failure) -> FailedRow {
        let attempts = u32::try_from(row.retry_count).unwrap_or(0) + 1;
        let (increment, error, dead, delay) = match failure {
            Failure::Permanent(error) => (1, error, true, Duration::ZERO),
            Failure::Counted(error) => {
                let dead = attempts > self.config.max_retries;
                let delay = retry_delay(
                    self.config.retry_backoff,
                    self.config.max_retry_backoff,
                    attempts,
                );
                (1, error, dead, delay)
            }
            Failure::Uncounted(error) => (0, error, false, Duration::ZERO),
        };
        if dead {
            tracing::error!(
                event_id = %row.id,
                event_type = %row.event_type(),
                aggregate_type = %row.aggregate_type(),
                aggregate_id = %row.aggregate_id(),
                topic = %row.topic(),
                correlation_id = row.correlation_id().unwrap_or(""),
                attempts,
                %error,
                "outbox event is dead: it will not be retried automatically (see `outbox failed list`)"
            );
        } else if increment > 0 {
            tracing::warn!(
                event_id = %row.id,
                event_type = %row.event_type(),
                aggregate_type = %row.aggregate_type(),
                aggregate_id = %row.aggregate_id(),
                topic = %row.topic(),
                attempts,
                retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                %error,
                "outbox event delivery failed; will retry"
            );
        }
        FailedRow {
            seq: row.seq,
            increment,
            error,
            delay,
            dead,
        }
    }
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
