//! The relay loop: maintain leases, claim, produce, record, wait.

use super::claim::{shard_mask, Claimed, ClaimedRow, Claimer};
use super::config::{DeadEventPolicy, Retention};
use super::floor::ClaimFloor;
use super::lease::Leases;
use super::outcome::{retry_delay, FailedRow, Failure, OutcomeSql};
use super::pending_claim::PendingClaim;
use super::prefetch::Prefetched;
use super::produce::produce_batch;
use super::proof::Proof;
use super::stats::RelayCounters;
use super::unrecorded::Unrecorded;
use super::{Relay, RelayConfig};
use crate::identifier::Names;
use crate::metrics::{ErrorKind, OutboxMetrics};
use crate::stats_query::{fetch_summary, summary_sql};
use crate::wake;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::ClientConfig;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tracing::Instrument;
use uuid::Uuid;

/// Batches in a row the broker took none of before the producer is replaced.
const PRODUCER_RENEWAL_AFTER: u32 = 3;
const RETENTION_SWEEP_EVERY: Duration = Duration::from_secs(30);
const RETENTION_SWEEP_ROWS: i64 = 5_000;
/// How often a relay with metrics refreshes the queue gauges.
const QUEUE_GAUGES_EVERY: Duration = Duration::from_secs(5);

pub(crate) struct Worker {
    pool: PgPool,
    producer: FutureProducer,
    producer_config: ClientConfig,
    unreachable_batches: u32,
    config: RelayConfig,
    names: Names,
    instance_id: Uuid,
    counters: Arc<RelayCounters>,
    claimer: Claimer,
    outcome_sql: OutcomeSql,
    retention_sql: String,
    leases: Leases,
    shutdown: watch::Receiver<bool>,
    local: watch::Receiver<u64>,
    listener: Option<PgListener>,
    listener_retry_at: Instant,
    backoff: ExponentialBackoff,
    trailing_until: Option<Instant>,
    next_retention: Instant,
    metrics: Option<OutboxMetrics>,
    queue_sql: String,
    next_queue_gauges: Instant,
    /// What was claimed while the previous batch was produced: one batch,
    /// or for a relay that owns only some of the shards up to
    /// [`PARTIAL_OWNER_CLAIM_BATCHES`], taken one per round.
    prefetched: Option<Prefetched>,
    /// The claim of the batches after the prefetch's last one, started
    /// while the batch before it is produced (`pending_claim.rs`); only
    /// beside a prefetch.
    early_claim: Option<PendingClaim>,
    /// The batch produced last, whose outcome is written while the next
    /// one is produced.
    unrecorded: Option<Unrecorded>,
    /// Where claims start in the pending index; `None` only while it is
    /// being advanced.
    floor: Option<ClaimFloor>,
}

struct BatchResult {
    claimed: usize,
    broker_unreachable: bool,
}

/// Batches a relay that owns only some of the shards claims ahead at once.
///
/// Its rows in flight (the batch being produced and the one being marked)
/// lie between other relays' rows, so a claim that cannot start above them
/// (no proof stands, `proof.rs`) cannot skip them by range as a relay with
/// every shard does (`claim.rs`, `copy_statement`): it reads them again,
/// 2,000 rows for 1,000 claimed. Claiming two batches at once, the second
/// left in `prefetched` for the round after the first, reads them once per
/// two batches: with two relays on two cores Postgres used about a fifth
/// less CPU per event (docs/benchmarks.md §6, measured before claims above
/// a proven batch, which skip them whenever a proof stands). Such a claim
/// reads the other relays' rows among its own and takes longer than
/// producing a batch, so it starts a round early (`pending_claim.rs`).
const PARTIAL_OWNER_CLAIM_BATCHES: usize = 2;

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

impl Worker {
    pub(crate) fn new(relay: Relay, shutdown: watch::Receiver<bool>) -> Self {
        let Relay {
            pool,
            producer,
            producer_config,
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
        let mut local = wake::subscribe_local();
        local.borrow_and_update();
        Self {
            claimer: Claimer::new(
                pool.clone(),
                &names,
                config.dead_event_policy == DeadEventPolicy::BlockAggregate,
                config.batch_size,
            ),
            outcome_sql: OutcomeSql::new(&names),
            floor: Some(ClaimFloor::new(&names)),
            retention_sql: format!(
                "DELETE FROM {o} WHERE seq IN (
                     SELECT seq FROM {o} WHERE state = 'published'
                       AND published_at < now() - make_interval(secs => $1)
                     LIMIT $2)",
                o = names.outbox
            ),
            queue_sql: summary_sql(&names),
            leases,
            pool,
            producer,
            producer_config,
            unreachable_batches: 0,
            config,
            names,
            instance_id,
            counters,
            shutdown,
            local,
            listener: None,
            listener_retry_at: Instant::now(),
            backoff: infra_backoff(),
            trailing_until: None,
            next_retention: Instant::now(),
            metrics,
            next_queue_gauges: Instant::now(),
            prefetched: None,
            early_claim: None,
            unrecorded: None,
        }
    }

    fn stopping(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub(crate) async fn run(mut self) {
        tracing::info!(instance_id = %self.instance_id, batch_size = self.config.batch_size, "outbox relay started");
        while !self.stopping() {
            self.counters.tick();
            self.refresh_gauges().await;
            if self.leases.maintenance_due() {
                // Shards may move: no outcome is left unwritten first.
                self.flush_unrecorded().await;
                if let Err(error) = self.leases.maintain(&self.pool).await {
                    self.leases.invalidate();
                    self.transient("renewing shard leases", &error).await;
                    continue;
                }
            }
            self.ensure_listener().await;
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
                        self.renew_producer_if_stuck();
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
            self.sweep_retention().await;
            self.advance_floor_while_idle().await;
            self.idle().await;
        }
        self.finish().await;
    }

    /// An idempotent producer can end in a state it does not leave by
    /// itself: a fatal error (e.g. the broker lost its producer state in a
    /// restart) or timing out batch after batch although the broker is back.
    /// Between batches nothing is in flight, so a fresh producer (new
    /// producer id, fresh metadata) is safe: unacknowledged rows are simply
    /// produced again, in order.
    fn renew_producer_if_stuck(&mut self) {
        let fatal = self.producer.client().fatal_error();
        if fatal.is_none() && self.unreachable_batches < PRODUCER_RENEWAL_AFTER {
            return;
        }
        match self.producer_config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::warn!(
                    fatal_error = ?fatal,
                    failed_batches = self.unreachable_batches,
                    "outbox relay replaced its Kafka producer"
                );
                self.producer = fresh;
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
        self.discard_early_claim().await;
        self.flush_unrecorded().await;
        if let Err(error) = self.leases.release_all(&self.pool).await {
            tracing::warn!(%error, "outbox relay could not give its leases back; they expire after the TTL");
        }
        let producer = self.producer.clone();
        let _ = tokio::task::spawn_blocking(move || producer.flush(Duration::from_secs(5))).await;
        tracing::info!(instance_id = %self.instance_id, "outbox relay stopped");
    }

    fn metric_error(&self, kind: ErrorKind) {
        if let Some(metrics) = &self.metrics {
            metrics.relay_error(kind);
        }
    }

    /// Marks the loop alive and, at most every few seconds, refreshes the
    /// queue gauges (a cheap query on the partial indexes).
    async fn refresh_gauges(&mut self) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        metrics.relay_loop();
        if Instant::now() < self.next_queue_gauges {
            return;
        }
        self.next_queue_gauges = Instant::now() + QUEUE_GAUGES_EVERY;
        match fetch_summary(&self.pool, &self.queue_sql).await {
            Ok(summary) => metrics.set_queue(&summary),
            Err(error) => tracing::warn!(%error, "outbox relay could not refresh the queue gauges"),
        }
    }

    async fn transient(&mut self, action: &str, error: &(dyn std::fmt::Display + Sync)) {
        self.counters.error();
        self.metric_error(ErrorKind::Database);
        tracing::warn!(action, %error, "outbox relay error; backing off and retrying");
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

    async fn ensure_listener(&mut self) {
        if !self.config.listen || self.listener.is_some() || Instant::now() < self.listener_retry_at
        {
            return;
        }
        let connected = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(&self.names.channel).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match connected {
            Ok(listener) => self.listener = Some(listener),
            Err(error) => {
                tracing::warn!(%error, "outbox relay could not LISTEN for wake-ups; polling until it can");
                self.listener_retry_at = Instant::now() + Duration::from_secs(5);
            }
        }
    }

    async fn idle(&mut self) {
        let now = Instant::now();
        let mut deadline = (now + self.config.poll_interval).min(self.leases.next_maintenance());
        if let Some(until) = self.trailing_until {
            if until > now {
                deadline = deadline.min(until);
            } else {
                self.trailing_until = None;
            }
        }
        if matches!(self.config.retention, Retention::Keep(_)) {
            deadline = deadline.min(self.next_retention);
        }
        if self.metrics.is_some() {
            deadline = deadline.min(self.next_queue_gauges);
        }
        let trailing = self.config.trailing_poll;
        let listen = self.config.listen;
        let mut shutdown = self.shutdown.clone();
        let listener = &mut self.listener;
        let notified = async {
            match listener {
                Some(l) => l.try_recv().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep_until(deadline.into()) => {}
            _ = shutdown.changed() => {}
            _ = self.local.changed(), if listen => {
                self.trailing_until = Some(Instant::now() + trailing);
            }
            result = notified => {
                match result {
                    Ok(()) => self.trailing_until = Some(Instant::now() + trailing),
                    Err(error) => {
                        tracing::warn!(%error, "outbox relay lost its LISTEN connection; reconnecting");
                        self.listener = None;
                    }
                }
            }
        }
    }

    /// Between wake-ups nothing is in flight (the last outcome is written
    /// once a claim comes back empty), so the floor can move up to the
    /// pending rows: the claims of a steady trickle of events then skip the
    /// rows delivered since the last vacuum as a backlog's claims do.
    async fn advance_floor_while_idle(&mut self) {
        if self.unrecorded.is_some()
            || self.prefetched.is_some()
            || self.early_claim.is_some()
            || !self.leases.usable()
        {
            return;
        }
        let mask = shard_mask(self.leases.owned());
        if let Some(floor) = self.floor.as_mut().filter(|floor| floor.due_while_idle()) {
            move_floor(floor, &self.pool, mask, None).await;
        }
    }

    async fn sweep_retention(&mut self) {
        let Retention::Keep(keep) = self.config.retention else {
            return;
        };
        if Instant::now() < self.next_retention {
            return;
        }
        self.next_retention = Instant::now() + RETENTION_SWEEP_EVERY;
        match sqlx::query(&self.retention_sql)
            .persistent(false)
            .bind(keep.as_secs_f64())
            .bind(RETENTION_SWEEP_ROWS)
            .execute(&self.pool)
            .await
        {
            Ok(done) if done.rows_affected() > 0 => {
                tracing::debug!(deleted = done.rows_affected(), "outbox retention sweep");
                if done.rows_affected() == u64::try_from(RETENTION_SWEEP_ROWS).unwrap_or(0) {
                    self.next_retention = Instant::now();
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "outbox retention sweep failed; retrying later"),
        }
    }

    async fn run_batch(&mut self) -> Result<BatchResult, sqlx::Error> {
        let prefetched = self
            .prefetched
            .take()
            .and_then(|p| p.into_next_batch(self.leases.owned(), self.claimer.limit()));
        let batch = match prefetched {
            Some((batch, rest)) => {
                self.prefetched = rest;
                batch
            }
            None => {
                // The prefetch an early claim was started beside is gone
                // (shards moved): its rows are claimed afresh below.
                self.discard_early_claim().await;
                // A fresh claim cannot drop rows behind an unwritten failure
                // (a claim ahead can, see `deliver`): write that one first.
                if self
                    .unrecorded
                    .as_ref()
                    .is_some_and(|u| !u.unfinished().is_empty())
                {
                    self.flush_unrecorded().await;
                }
                let unrecorded = self.unrecorded_seqs(&[]);
                let floor = self.claim_floor();
                self.claimer
                    .claim(self.leases.owned(), &unrecorded, floor)
                    .await?
            }
        };
        if batch.rows.is_empty() {
            self.discard_early_claim().await;
            self.flush_unrecorded().await;
            return Ok(BatchResult {
                claimed: 0,
                broker_unreachable: false,
            });
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

    /// Where a claim of the owned shards starts (see `floor.rs`).
    fn claim_floor(&self) -> i64 {
        let mask = shard_mask(self.leases.owned());
        self.floor
            .as_ref()
            .map_or(super::floor::NO_FLOOR, |floor| floor.get(mask))
    }

    /// `rows` and the rows of the batch whose outcome is not written yet:
    /// both are still `pending`, and no claim may return them.
    fn unrecorded_seqs(&self, rows: &[ClaimedRow]) -> Vec<i64> {
        let unrecorded = self.unrecorded.iter().flat_map(|u| u.seqs());
        rows.iter().map(|r| r.seq).chain(unrecorded).collect()
    }

    /// Claims the batch after `rows` (`batches` of them at once) in a task
    /// of its own, while `rows` are produced: decoding a claimed batch is
    /// CPU work that would otherwise hold up this task while it enqueues and
    /// collects acknowledgements.
    ///
    /// `waiting`, the rows of a prefetch not produced yet, are left out too.
    /// `proof`, what the claim of the last rows in flight proved
    /// (`proof.rs`), lets the claim start above them.
    fn claim_ahead(
        &self,
        rows: &[ClaimedRow],
        waiting: impl IntoIterator<Item = i64>,
        batches: usize,
        proof: Option<Proof>,
    ) -> JoinHandle<Result<Prefetched, sqlx::Error>> {
        let claimer = self.claimer.clone();
        let shards = self.leases.owned().to_vec();
        let mut in_flight = self.unrecorded_seqs(rows);
        in_flight.extend(waiting);
        let floor = self.claim_floor();
        let final_before = self.floor.as_ref().and_then(ClaimFloor::final_seq);
        tokio::spawn(async move {
            let batch = claimer
                .claim_ahead(&shards, &in_flight, floor, batches, proof, final_before)
                .await?;
            Ok(Prefetched::new(batch, shards))
        })
    }

    /// Produces the batch while writing the outcome of the previous one and,
    /// when this one is full, claiming the next; keeps this batch's outcome
    /// to write during the next round (see `unrecorded`) and the batch
    /// claimed ahead (see `prefetch`).
    async fn deliver(&mut self, batch: Claimed) -> Result<BatchResult, sqlx::Error> {
        let Claimed {
            rows,
            started: claimed_at,
            took: claim_took,
            proof,
            ..
        } = batch;
        let claimed = rows.len();
        // A full batch means a backlog: claim the next one meanwhile (two,
        // for a relay with only some of the shards), unless the last claim
        // left the next batch already. A partial batch took
        // everything there was; what commits meanwhile is better claimed
        // fresh after this batch, in one round, than split across a
        // claim-ahead and the round after it.
        let mask = shard_mask(self.leases.owned());
        let batches = if mask == -1 {
            1
        } else {
            PARTIAL_OWNER_CLAIM_BATCHES
        };
        let full = claimed >= self.claimer.limit() && !self.stopping();
        let claiming = match self.early_claim.take() {
            // Started last round, beside this batch, the prefetch's last.
            Some(early) => Some(early),
            None => (full && self.prefetched.is_none())
                .then(|| PendingClaim::new(self.claim_ahead(&rows, [], batches, proof))),
        };
        // The prefetch's last batch waits, full: the claim after it starts
        // now and runs through this round and the next (`pending_claim.rs`).
        if claiming.is_none() && full && batches > 1 {
            let last = self
                .prefetched
                .as_ref()
                .filter(|next| next.len() == self.claimer.limit());
            if let Some(last) = last {
                let handle = self.claim_ahead(&rows, last.seqs(), batches, last.proof());
                self.early_claim = Some(PendingClaim::new(handle));
            }
        }
        let previous = self.unrecorded.take();
        // The claim ahead started before the previous outcome is written, so
        // it may hold rows behind the previous batch's failures too.
        let mut held_back = previous
            .as_ref()
            .map(|p| p.unfinished().clone())
            .unwrap_or_default();
        // Once the previous outcome is written, the floor moves up to this
        // batch (the only rows in flight then, besides the claim ahead's,
        // which are still pending).
        if let Some(floor) = self.floor.as_mut() {
            floor.saw_batch();
        }
        let mut floor = self.floor.take_if(|floor| floor.due());
        let first_in_flight = rows.iter().map(|row| row.seq).min();
        let produce_started = Instant::now();
        let ((outcomes, produce_took), previous_recorded) = tokio::join!(
            async {
                let outcomes =
                    produce_batch(&self.producer, &self.config.topic_prefix, &rows).await;
                (outcomes, produce_started.elapsed())
            },
            async {
                let recorded = match previous {
                    Some(previous) => self.record(previous).await.map(Some),
                    None => Ok(None),
                };
                if let (Ok(_), Some(floor)) = (&recorded, floor.as_mut()) {
                    move_floor(floor, &self.pool, mask, first_in_flight).await;
                }
                recorded
            }
        );
        if floor.is_some() {
            self.floor = floor;
        }
        let current = Unrecorded::new(
            rows,
            outcomes,
            claimed_at,
            tracing::Span::current(),
            |row, failure| self.failed_row(row, failure),
        );
        let broker_unreachable = current.broker_unreachable();
        let delivered = current.delivered();
        let (retried, dead, uncounted) = current.failure_counts();
        held_back.extend(current.unfinished());
        self.unrecorded = Some(current);
        // Awaited even when it is not used, so no claim outlives its batch.
        let next = match claiming {
            Some(claiming) => claiming.land().await,
            None => None,
        };
        if broker_unreachable || self.stopping() {
            self.flush_unrecorded().await;
        }
        let previous_record_ms = match previous_recorded {
            Ok(took) => took.map(|took| took.as_secs_f64() * 1e3),
            Err(error) => {
                // Rows left from an earlier claim ahead go too, as a claim
                // made this round does: the next round claims afresh.
                self.drop_prefetch().await;
                return Err(error);
            }
        };
        let (next_claim_ms, next_claim_above_proof) = match &next {
            Some(Ok(prefetched)) => (
                Some(prefetched.claim_took().as_secs_f64() * 1e3),
                Some(prefetched.claimed_above_proof()),
            ),
            _ => (None, None),
        };
        match next {
            _ if broker_unreachable => self.drop_prefetch().await,
            Some(Ok(prefetched)) => self.prefetched = Some(prefetched),
            Some(Err(error)) => {
                // The next round claims afresh and reports a lasting error.
                tracing::debug!(%error, "outbox relay could not claim ahead");
            }
            None => {}
        }
        // Whatever is claimed ahead, just now or in an earlier round, was
        // claimed before this round's outcome was known.
        if let Some(prefetched) = self.prefetched.as_mut() {
            prefetched.hold_back(&held_back);
        }
        if let Some(early) = self.early_claim.as_mut() {
            early.hold_back(&held_back);
        }
        tracing::debug!(
            claimed,
            delivered,
            retried,
            dead,
            uncounted,
            claim_ms = claim_took.as_secs_f64() * 1e3,
            produce_ms = produce_took.as_secs_f64() * 1e3,
            next_claim_ms,
            next_claim_above_proof,
            previous_record_ms,
            "outbox batch produced"
        );
        Ok(BatchResult {
            claimed,
            broker_unreachable,
        })
    }

    /// Writes the outcome of the batch produced last, if it is not written
    /// yet. A write that fails for good leaves its rows `pending`: they are
    /// delivered again (duplicates, never loss); `record` logged why.
    async fn flush_unrecorded(&mut self) {
        if let Some(batch) = self.unrecorded.take() {
            if self.record(batch).await.is_err() {
                self.counters.error();
                self.metric_error(ErrorKind::Database);
                // Its rows stay pending below what the prefetch proved.
                if let Some(prefetched) = self.prefetched.as_mut() {
                    prefetched.forget_proof();
                }
                if let Some(early) = self.early_claim.as_mut() {
                    early.forget_proof();
                }
            }
        }
    }

    /// Throws away what was claimed ahead: the prefetch, and the claim
    /// started early beside it.
    async fn drop_prefetch(&mut self) {
        self.prefetched = None;
        self.discard_early_claim().await;
    }

    /// Waits for a claim started early and throws it away (its prefetch is
    /// not produced as claimed).
    async fn discard_early_claim(&mut self) {
        if let Some(early) = self.early_claim.take() {
            early.discard().await;
        }
    }

    /// Writes a produced batch's outcome; retried while the leases still
    /// cover the rows, since the broker already has the messages. Returns
    /// how long the write took.
    async fn record(&self, batch: Unrecorded) -> Result<Duration, sqlx::Error> {
        let span = batch.span().clone();
        self.record_in_span(batch).instrument(span).await
    }

    async fn record_in_span(&self, batch: Unrecorded) -> Result<Duration, sqlx::Error> {
        let started = Instant::now();
        let delivered = batch.delivered_seqs();
        let keep = matches!(self.config.retention, Retention::Keep(_));
        let mut backoff = record_backoff();
        let mut attempt = 0u32;
        loop {
            match self
                .outcome_sql
                .record(&self.pool, &delivered, keep, batch.failed())
                .await
            {
                Ok(()) => break,
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
        }
        batch.report(&self.counters, self.metrics.as_ref());
        let took = started.elapsed();
        tracing::debug!(
            claimed = batch.claimed(),
            delivered = delivered.len(),
            record_ms = took.as_secs_f64() * 1e3,
            "outbox batch recorded"
        );
        Ok(took)
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

/// Moves the claim floor (see `floor.rs`); a failure only leaves it where
/// it was, so it is logged and the relay goes on.
async fn move_floor(
    floor: &mut ClaimFloor,
    pool: &PgPool,
    mask: i64,
    first_in_flight: Option<i64>,
) {
    if let Err(error) = floor.advance(pool, mask, first_in_flight).await {
        tracing::debug!(%error, "outbox relay could not move its claim floor");
    }
}
