//! The consumer loop: decode, handle in one transaction with the inbox
//! record, commit the offset only after that transaction committed.

use super::config::{check_topic, ConsumerConfig};
use super::dead_letter::dead_letter_headers;
use super::dispatch::{DecodedEvent, Dispatcher, EventInfo};
use super::error::{ConsumeError, ConsumerError, HandlerError, Permanent};
use super::stats::{ConsumerCounters, ConsumerStats, Counter};
use crate::context::PublishContext;
use crate::error::ConfigError;
use crate::handle::Outbox;
use crate::inbox::InboxOutcome;
use crate::registry;
use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, TopicPartitionList};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

/// Settings the loop enforces on the Kafka consumer for its guarantee.
const REQUIRED: [(&str, &str); 2] = [
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

type FaultHook = Arc<dyn Fn(&EventInfo) -> BoxFuture<'static, ()> + Send + Sync>;

/// A consumer loop on rdkafka's `StreamConsumer`, checked and subscribed.
///
/// For each message, in order: decode it with the [`Dispatcher`]; begin a
/// [`TransactionalPublish`](crate::TransactionalPublish) (carrying the
/// event's correlation id and trace context); record the event in the
/// [inbox](crate::inbox) (a redelivery is skipped here); run the handler;
/// commit; only then store and commit the Kafka offset. See
/// [the module documentation](crate::consume) for failures, retries and the
/// dead-letter topic.
///
/// ```no_run
/// use outbox::consume::{Consumer, ConsumerConfig, Dispatcher};
/// use outbox::{Outbox, OutboxEvent};
/// use rdkafka::ClientConfig;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, OutboxEvent)]
/// #[outbox_event(topic = "essay.spellcheck.completed.v1", aggregate = "essay")]
/// struct SpellcheckCompletedV1 {
///     #[outbox_event(aggregate_id)]
///     essay_id: String,
///     errors: i32,
/// }
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let outbox = Outbox::new(pool, "cj_assessment_service");
/// let dispatcher = Dispatcher::new().register::<SpellcheckCompletedV1>(|event, tx| {
///     Box::pin(async move {
///         sqlx::query("INSERT INTO essay_errors (essay_id, errors) VALUES ($1, $2)")
///             .bind(&event.data.essay_id)
///             .bind(event.data.errors)
///             .execute(&mut **tx)
///             .await?;
///         Ok(())
///     })
/// });
/// let mut kafka = ClientConfig::new();
/// kafka.set("bootstrap.servers", "127.0.0.1:9092");
/// let consumer = Consumer::new(outbox, kafka, dispatcher, ConsumerConfig::new("cj_assessment_service")).await?;
/// let handle = consumer.spawn();
/// // ... until the service stops:
/// let stats = handle.shutdown().await?; // finishes the message in flight, commits its offset
/// # Ok(()) }
/// ```
pub struct Consumer {
    outbox: Outbox,
    consumer: StreamConsumer<LoopContext>,
    producer: FutureProducer,
    dispatcher: Dispatcher,
    config: ConsumerConfig,
    topics: Vec<String>,
    counters: Arc<ConsumerCounters>,
    after_db_commit: Option<FaultHook>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("config", &self.config)
            .field("topics", &self.topics)
            .field("dispatcher", &self.dispatcher)
            .finish_non_exhaustive()
    }
}

fn consumer_config(client: &ClientConfig, group_id: &str) -> Result<ClientConfig, ConfigError> {
    let mut cc = client.clone();
    for (key, want) in REQUIRED {
        if let Some(value) = cc.get(key) {
            if value != want {
                return Err(ConfigError::Invalid {
                    setting: key,
                    reason: format!(
                        "the consumer loop requires {key}={want} so offsets are committed only \
                         after the handler's transaction; remove the override {key}={value}"
                    ),
                });
            }
        }
        cc.set(key, want);
    }
    cc.set("group.id", group_id);
    if cc.get("auto.offset.reset").is_none() {
        cc.set("auto.offset.reset", "earliest");
    }
    Ok(cc)
}

fn producer_config(client: &ClientConfig) -> ClientConfig {
    let mut cc = client.clone();
    for key in [
        "group.id",
        "auto.offset.reset",
        "enable.auto.commit",
        "enable.auto.offset.store",
        "session.timeout.ms",
        "heartbeat.interval.ms",
        "max.poll.interval.ms",
    ] {
        cc.remove(key);
    }
    cc.set("enable.idempotence", "true").set("acks", "all");
    cc
}

impl Consumer {
    /// Validates the settings, the dispatcher and the registry, checks the
    /// inbox table exists, creates the Kafka consumer
    /// (`enable.auto.commit=false`, `enable.auto.offset.store=false` are
    /// enforced; `auto.offset.reset` defaults to `earliest`) and the
    /// dead-letter producer, and subscribes.
    ///
    /// `kafka` holds the connection settings (`bootstrap.servers`, security)
    /// shared by both clients; the group id comes from `config`.
    pub async fn new(
        outbox: Outbox,
        kafka: ClientConfig,
        dispatcher: Dispatcher,
        config: ConsumerConfig,
    ) -> Result<Self, ConsumerError> {
        config.validate()?;
        dispatcher.validate()?;
        registry::validate()?;
        let topics = if config.topics.is_empty() {
            dispatcher.topics(&config.topic_prefix)
        } else {
            config.topics.clone()
        };
        for topic in &topics {
            check_topic("topics", topic)?;
            check_topic("dead_letter", &config.dead_letter.for_topic(topic))?;
        }
        if let Some(inbox) = &config.inbox {
            let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
                .bind(inbox.table())
                .fetch_one(outbox.pool())
                .await
                .map_err(|source| ConsumerError::Database {
                    action: "checking that the inbox table exists",
                    source,
                })?;
            if found.is_none() {
                return Err(ConsumerError::MissingInboxTable {
                    table: inbox.table().to_owned(),
                });
            }
        }
        let consumer: StreamConsumer<LoopContext> = consumer_config(&kafka, &config.group_id)?
            .create_with_context(LoopContext {
                group_id: config.group_id.clone(),
            })
            .map_err(|source| ConsumerError::Kafka {
                action: "create the Kafka consumer",
                source,
            })?;
        let producer: FutureProducer =
            producer_config(&kafka)
                .create()
                .map_err(|source| ConsumerError::Kafka {
                    action: "create the dead-letter producer",
                    source,
                })?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|source| ConsumerError::Kafka {
                action: "subscribe to the topics",
                source,
            })?;
        Ok(Self {
            outbox,
            consumer,
            producer,
            dispatcher,
            config,
            topics,
            counters: Arc::new(ConsumerCounters::default()),
            after_db_commit: None,
        })
    }

    /// The topics this consumer subscribed to.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Live counters, shared with the running loop.
    pub fn counters(&self) -> Arc<ConsumerCounters> {
        self.counters.clone()
    }

    /// Fault point for crash tests: awaited after a handler's transaction
    /// committed and before its offset is stored. A hook that never returns,
    /// followed by [`ConsumerHandle::abort`], simulates a process killed
    /// between the two commits.
    #[doc(hidden)]
    pub fn fault_after_db_commit(
        &mut self,
        hook: impl Fn(&EventInfo) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) {
        self.after_db_commit = Some(Arc::new(hook));
    }

    /// Runs the loop on the current task until `shutdown` resolves, then
    /// finishes the message in flight, commits the offsets and returns.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> ConsumerStats {
        let (tx, rx) = watch::channel(false);
        let counters = self.counters.clone();
        let run = self.run(rx);
        tokio::pin!(run);
        tokio::select! {
            () = &mut run => {}
            () = shutdown => {
                let _ = tx.send(true);
                run.await;
            }
        }
        counters.snapshot()
    }

    /// Spawns the loop on the tokio runtime.
    pub fn spawn(self) -> ConsumerHandle {
        let (tx, rx) = watch::channel(false);
        let counters = self.counters.clone();
        let join = tokio::spawn(self.run(rx));
        ConsumerHandle {
            shutdown: tx,
            join,
            counters,
        }
    }

    async fn run(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(group_id = %self.config.group_id, topics = ?self.topics, "outbox consumer started");
        let mut next_purge = Instant::now();
        loop {
            if *shutdown.borrow() {
                break;
            }
            if let (Some(inbox), Some(retention)) =
                (&self.config.inbox, self.config.inbox_retention)
            {
                if Instant::now() >= next_purge {
                    next_purge = Instant::now() + self.config.inbox_purge_interval;
                    if let Err(error) = inbox
                        .purge_older_than(
                            self.outbox.pool(),
                            retention,
                            self.config.inbox_purge_batch,
                        )
                        .await
                    {
                        self.counters.add(Counter::Error);
                        tracing::warn!(%error, "could not purge old inbox rows; retrying later");
                    }
                }
            }
            let received = tokio::select! {
                biased;
                () = wait_for_shutdown(&mut shutdown) => break,
                received = self.consumer.recv() => received,
            };
            match received {
                Err(error) => {
                    self.counters.add(Counter::Error);
                    tracing::warn!(%error, "Kafka consumer error; continuing");
                    if !sleep_or_shutdown(Duration::from_millis(200), &mut shutdown).await {
                        break;
                    }
                }
                Ok(message) => match self.process(&message, &mut shutdown).await {
                    Flow::Commit => self.commit_offset(&message),
                    Flow::Stop => break,
                },
            }
        }
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                tracing::warn!(%error, "could not commit offsets at shutdown; the last messages will be redelivered and skipped by the inbox");
            }
        }
        let stats = self.counters.snapshot();
        tracing::info!(group_id = %self.config.group_id, ?stats, "outbox consumer stopped");
    }

    async fn process(
        &self,
        message: &BorrowedMessage<'_>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Flow {
        self.counters.add(Counter::Received);
        let decoded = match self.dispatcher.decode(message) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.counters.add(Counter::DecodeError);
                tracing::warn!(
                    %error,
                    kind = error.kind(),
                    event_id = ?error.event_id(),
                    topic = message.topic(),
                    partition = message.partition(),
                    offset = message.offset(),
                    "message cannot be decoded; sending it to the dead-letter topic"
                );
                return self.dead_letter(message, &error, shutdown).await;
            }
        };
        let info = decoded.info();
        let span = tracing::info_span!(
            "outbox.consume",
            event_id = %info.event_id,
            event_type = %info.event_type,
            correlation_id = %info.correlation_id,
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
        );
        self.handle_with_retries(message, &decoded, shutdown)
            .instrument(span)
            .await
    }

    async fn handle_with_retries(
        &self,
        message: &BorrowedMessage<'_>,
        decoded: &DecodedEvent,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Flow {
        let base = ExponentialBuilder::default()
            .with_min_delay(self.config.retry_backoff)
            .with_max_delay(self.config.max_retry_backoff)
            .with_jitter();
        let max_retries = usize::try_from(self.config.max_retries).unwrap_or(usize::MAX);
        let mut handler_backoff = base.with_max_times(max_retries).build();
        let mut infra_backoff = base.without_max_times().build();
        let mut attempts = 0u32;
        loop {
            match self.attempt(decoded).await {
                Ok(Attempt::Handled) => {
                    self.counters.add(Counter::Handled);
                    tracing::debug!(attempts = attempts + 1, "event handled");
                    return Flow::Commit;
                }
                Ok(Attempt::Duplicate) => {
                    self.counters.add(Counter::Duplicate);
                    tracing::info!("event already processed (inbox); skipping the redelivery");
                    return Flow::Commit;
                }
                Err(AttemptError::Infrastructure(error)) => {
                    self.counters.add(Counter::Error);
                    let delay = infra_backoff
                        .next()
                        .unwrap_or(self.config.max_retry_backoff);
                    tracing::warn!(%error, ?delay, "database error while handling; retrying (not counted as a handler failure)");
                    if !sleep_or_shutdown(delay, shutdown).await {
                        return Flow::Stop;
                    }
                }
                Err(AttemptError::Handler(error)) => {
                    attempts += 1;
                    let delay = if Permanent::is_permanent(&error) {
                        None
                    } else {
                        handler_backoff.next()
                    };
                    let Some(delay) = delay else {
                        let info = decoded.info();
                        let error = ConsumeError::Handler {
                            event_type: info.event_type.clone(),
                            event_id: info.event_id,
                            location: info.location.clone(),
                            attempts,
                            source: error,
                        };
                        tracing::error!(%error, "handler failed for good; sending the message to the dead-letter topic");
                        return self.dead_letter(message, &error, shutdown).await;
                    };
                    self.counters.add(Counter::Retry);
                    tracing::warn!(%error, attempt = attempts, ?delay, "handler failed; its transaction rolled back; retrying");
                    if !sleep_or_shutdown(delay, shutdown).await {
                        return Flow::Stop;
                    }
                }
            }
        }
    }

    async fn attempt(&self, decoded: &DecodedEvent) -> Result<Attempt, AttemptError> {
        let info = decoded.info();
        let context = PublishContext {
            correlation_id: Some(info.correlation_id),
            traceparent: info.metadata.traceparent.clone(),
            tracestate: info.metadata.tracestate.clone(),
        };
        let mut tx = self
            .outbox
            .transactional_publish_with(context.clone())
            .await
            .map_err(AttemptError::infrastructure)?;
        if let Some(inbox) = &self.config.inbox {
            let outcome = inbox
                .record(
                    &mut tx,
                    info.event_id,
                    &info.event_type,
                    info.location.as_ref(),
                )
                .await
                .map_err(AttemptError::infrastructure)?;
            if outcome == InboxOutcome::AlreadyProcessed {
                let _ = tx.rollback().await;
                return Ok(Attempt::Duplicate);
            }
        }
        let handled = AssertUnwindSafe(context.scope(decoded.handle(&mut tx)))
            .catch_unwind()
            .await;
        match handled {
            Ok(Ok(())) => {}
            // Dropping the guard rolls back the inbox record and every write.
            Ok(Err(error)) => return Err(AttemptError::Handler(error)),
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic payload".to_owned());
                return Err(AttemptError::Handler(
                    format!("the handler panicked: {text}").into(),
                ));
            }
        }
        // A failed commit may still have committed: the retry finds the
        // inbox row and skips.
        tx.commit().await.map_err(AttemptError::infrastructure)?;
        if let Some(hook) = &self.after_db_commit {
            hook(info).await;
        }
        Ok(Attempt::Handled)
    }

    /// Produces the original message with dead-letter headers and waits for
    /// the broker's acknowledgement; retried until it succeeds or shutdown
    /// (then the message is not committed and comes back on restart).
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        error: &ConsumeError,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Flow {
        let topic = self.config.dead_letter.for_topic(message.topic());
        let headers = dead_letter_headers(message, error, &self.config.group_id);
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.retry_backoff)
            .with_max_delay(self.config.max_retry_backoff)
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&topic).headers(headers.clone());
            if let Some(key) = message.key() {
                record = record.key(key);
            }
            if let Some(payload) = message.payload() {
                record = record.payload(payload);
            }
            match self.producer.send(record, Duration::from_secs(5)).await {
                Ok(_) => {
                    self.counters.add(Counter::DeadLettered);
                    tracing::warn!(
                        dead_letter_topic = %topic,
                        kind = error.kind(),
                        event_id = ?error.event_id(),
                        topic = message.topic(),
                        partition = message.partition(),
                        offset = message.offset(),
                        "message dead-lettered; moving on"
                    );
                    return Flow::Commit;
                }
                Err((kafka_error, _)) => {
                    self.counters.add(Counter::Error);
                    let delay = backoff.next().unwrap_or(self.config.max_retry_backoff);
                    tracing::warn!(error = %kafka_error, dead_letter_topic = %topic, ?delay, "could not produce to the dead-letter topic; retrying (the offset stays uncommitted)");
                    if !sleep_or_shutdown(delay, shutdown).await {
                        return Flow::Stop;
                    }
                }
            }
        }
    }

    fn commit_offset(&self, message: &BorrowedMessage<'_>) {
        if let Err(error) = self.consumer.store_offset_from_message(message) {
            self.counters.add(Counter::Error);
            tracing::warn!(%error, topic = message.topic(), partition = message.partition(), offset = message.offset(),
                "could not store the offset (partition revoked?); the message will be redelivered and skipped by the inbox");
            return;
        }
        match self.consumer.commit_consumer_state(CommitMode::Async) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                self.counters.add(Counter::Error);
                tracing::warn!(%error, "could not commit offsets; they are committed with the next message or at shutdown");
            }
        }
    }
}

enum Flow {
    /// The message is finished (handled, skipped or dead-lettered): commit its offset.
    Commit,
    /// Shutdown interrupted it: leave its offset uncommitted.
    Stop,
}

enum Attempt {
    Handled,
    Duplicate,
}

enum AttemptError {
    Handler(HandlerError),
    Infrastructure(HandlerError),
}

impl AttemptError {
    fn infrastructure(error: impl Into<HandlerError>) -> Self {
        Self::Infrastructure(error.into())
    }
}

async fn wait_for_shutdown(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        // The handle was dropped without asking to stop: keep running.
        std::future::pending::<()>().await;
    }
}

/// Sleeps `delay`; false when shutdown was requested meanwhile.
async fn sleep_or_shutdown(delay: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        biased;
        () = wait_for_shutdown(shutdown) => false,
        () = tokio::time::sleep(delay) => true,
    }
}

/// A running consumer.
#[derive(Debug)]
pub struct ConsumerHandle {
    shutdown: watch::Sender<bool>,
    join: JoinHandle<()>,
    counters: Arc<ConsumerCounters>,
}

impl ConsumerHandle {
    /// Live counters.
    pub fn stats(&self) -> ConsumerStats {
        self.counters.snapshot()
    }

    /// Live counters, shareable (e.g. with a metrics exporter).
    pub fn counters(&self) -> Arc<ConsumerCounters> {
        self.counters.clone()
    }

    /// Whether the consumer task has ended.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Asks the consumer to stop: the message in flight is finished and its
    /// offset committed (a message waiting for a retry is left uncommitted
    /// and redelivered later), then the offsets are committed synchronously.
    pub async fn shutdown(self) -> Result<ConsumerStats, ConsumerError> {
        let _ = self.shutdown.send(true);
        self.join
            .await
            .map_err(|e| ConsumerError::Task(e.to_string()))?;
        Ok(self.counters.snapshot())
    }

    /// Stops the consumer abruptly, as a crash would: nothing more is
    /// committed. Waits until the task is gone.
    pub async fn abort(self) {
        self.join.abort();
        let _ = self.join.await;
    }
}

/// Logs commits and rebalances of the loop's Kafka consumer.
struct LoopContext {
    group_id: String,
}

impl ClientContext for LoopContext {}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        // Offsets stored but not yet committed would be lost with the
        // partitions; commit them while this member still owns them.
        if let Rebalance::Revoke(_) = rebalance {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(error) => {
                    tracing::warn!(group_id = %self.group_id, %error, "could not commit offsets before giving partitions up; their last messages will be redelivered and skipped by the inbox");
                }
            }
        }
    }

    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance<'_>,
    ) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(group_id = %self.group_id, partitions = tpl.count(), "partitions assigned");
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(group_id = %self.group_id, partitions = tpl.count(), "partitions revoked");
            }
            Rebalance::Error(error) => {
                tracing::warn!(group_id = %self.group_id, %error, "rebalance error");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                tracing::warn!(group_id = %self.group_id, %error, "offset commit failed; those messages will be redelivered and skipped by the inbox");
            }
        }
    }
}
