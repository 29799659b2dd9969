//! The consumer: a fan-out loop that receives from Kafka and hands each
//! partition's messages to that partition's worker.

use super::client::{commit_failure, consumer_config, producer_config, LoopContext, Revocations};
use super::config::{check_topic, ConsumerConfig};
use super::dead_letter::DeadLetters;
use super::dispatch::{Dispatcher, EventInfo};
use super::error::ConsumerError;
use super::handling::{FaultHook, Handling};
use super::metrics::ConsumerMetrics;
use super::pace::{sleep_or_shutdown, wait_for_shutdown};
use super::partition::{KafkaConsumer, PartitionQueue, WorkerEnv, WorkerTask};
use super::stats::{ConsumerCounters, ConsumerStats, Counter};
use crate::{registry, Outbox};
use futures::future::BoxFuture;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A consumer loop on rdkafka's `StreamConsumer`, checked and subscribed.
///
/// Each assigned partition has a worker task; the partitions are handled in
/// parallel (at most [`ConsumerConfig::max_partitions_in_flight`] at once),
/// each in order. A worker takes up to [`ConsumerConfig::batch_size`]
/// messages of its partition, decodes them with the [`Dispatcher`], records
/// them in the [inbox](crate::Inbox) with one statement inside one
/// [`TransactionalPublish`](crate::TransactionalPublish) (redeliveries are
/// skipped there), runs the handlers of the new ones in partition order,
/// commits, and only then stores and commits the partition's offset. See
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
    consumer: KafkaConsumer,
    producer: FutureProducer,
    dispatcher: Dispatcher,
    config: Arc<ConsumerConfig>,
    topics: Vec<String>,
    counters: Arc<ConsumerCounters>,
    revocations: Arc<Revocations>,
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

impl Consumer {
    /// Validates the settings, the dispatcher and the registry, checks the
    /// inbox table exists, creates the Kafka consumer
    /// (`enable.auto.commit=false`, `enable.auto.offset.store=false` are
    /// enforced; `auto.offset.reset` defaults to `earliest`,
    /// `partition.assignment.strategy` to `cooperative-sticky`;
    /// `group.instance.id` is [`ConsumerConfig::group_instance_id`]) and
    /// the dead-letter producer, and subscribes.
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
        let counters = Arc::new(ConsumerCounters::default());
        let revocations = Arc::new(Revocations::default());
        let consumer: StreamConsumer<LoopContext> = consumer_config(&kafka, &config)?
            .create_with_context(LoopContext {
                group_id: config.group_id.clone(),
                counters: counters.clone(),
                revocations: revocations.clone(),
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
            consumer: Arc::new(consumer),
            producer,
            dispatcher,
            config: Arc::new(config),
            topics,
            counters,
            revocations,
            after_db_commit: None,
        })
    }

    /// Feeds `metrics` (register them once in the service's registry);
    /// only the first metrics given to a consumer are fed.
    ///
    /// ```no_run
    /// use outbox::consume::{Consumer, ConsumerMetrics};
    /// use outbox::prometheus_client::registry::Registry;
    ///
    /// # fn run(consumer: Consumer) {
    /// let metrics = ConsumerMetrics::new();
    /// let mut registry = Registry::default();
    /// metrics.register(&mut registry);
    /// let handle = consumer.with_metrics(metrics).spawn();
    /// # }
    /// ```
    pub fn with_metrics(self, metrics: ConsumerMetrics) -> Self {
        if !self.counters.attach(metrics) {
            tracing::warn!(group_id = %self.config.group_id, "the consumer already has metrics; keeping the first");
        }
        self
    }

    /// The topics this consumer subscribed to.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Live counters, shared with the running loop.
    pub fn counters(&self) -> Arc<ConsumerCounters> {
        self.counters.clone()
    }

    /// Fault point for crash tests: awaited after a batch's transaction
    /// committed (with the last handled event) and before its offset is
    /// stored. A hook that never returns, followed by
    /// [`ConsumerHandle::abort`], simulates a process killed between the
    /// two commits.
    #[doc(hidden)]
    pub fn fault_after_db_commit(
        &mut self,
        hook: impl Fn(&EventInfo) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) {
        self.after_db_commit = Some(Arc::new(hook));
    }

    /// Runs the loop on the current task until `shutdown` resolves, then
    /// finishes the batches in flight, commits the offsets and returns what
    /// it handled.
    ///
    /// # Errors
    ///
    /// A consumer that stops by itself returns why, e.g.
    /// [`ConsumerError::FencedInstance`] when another live member took its
    /// `group_instance_id`, or the inbox table missing.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<ConsumerStats, ConsumerError> {
        let (tx, rx) = watch::channel(false);
        let counters = self.counters.clone();
        let run = self.run(rx);
        tokio::pin!(run);
        let ended = tokio::select! {
            ended = &mut run => ended,
            () = shutdown => {
                let _ = tx.send(true);
                run.await
            }
        };
        ended.map(|()| counters.snapshot())
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

    async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), ConsumerError> {
        tracing::info!(group_id = %self.config.group_id, group_instance_id = ?self.config.group_instance_id, topics = ?self.topics, "outbox consumer started");
        let env = WorkerEnv {
            handling: Arc::new(Handling {
                outbox: self.outbox.clone(),
                dispatcher: self.dispatcher,
                config: self.config.clone(),
                counters: self.counters.clone(),
                dead_letters: DeadLetters {
                    producer: self.producer,
                    config: self.config.clone(),
                    counters: self.counters.clone(),
                },
                after_db_commit: self.after_db_commit,
            }),
            consumer: self.consumer.clone(),
            permits: Arc::new(Semaphore::new(self.config.max_partitions_in_flight)),
            shutdown: shutdown.clone(),
        };
        let mut partitions = Partitions::default();
        let mut next_purge = Instant::now();
        let mut ended = Ok(());
        loop {
            if *shutdown.borrow() {
                break;
            }
            if Instant::now() >= next_purge {
                next_purge = Instant::now() + self.config.inbox_purge_interval;
                purge_inbox(&self.outbox, &self.config, &self.counters).await;
            }
            let received = tokio::select! {
                biased;
                () = wait_for_shutdown(&mut shutdown) => break,
                () = self.revocations.wait() => None,
                received = self.consumer.recv() => Some(received),
            };
            partitions.retire(&self.revocations);
            match received {
                None => {}
                Some(Ok(message)) => {
                    let message = message.detach();
                    let queue = partitions.queue(&env, message.topic(), message.partition());
                    tokio::select! {
                        biased;
                        () = wait_for_shutdown(&mut shutdown) => break,
                        () = queue.push(message) => {}
                    }
                }
                Some(Err(error)) => {
                    if let Some(fatal) = fatal_error(&self.consumer, &self.config) {
                        tracing::error!(error = %fatal, "the Kafka consumer failed fatally; stopping");
                        // The client can neither store nor commit offsets
                        // any more: handling what is queued would only
                        // repeat work the partitions' next owner does.
                        partitions.lose_all();
                        ended = Err(fatal);
                        break;
                    }
                    self.counters.add(Counter::Error, 1);
                    tracing::warn!(%error, "Kafka consumer error; continuing");
                    if !sleep_or_shutdown(Duration::from_millis(200), &mut shutdown).await {
                        break;
                    }
                }
            }
        }
        partitions.close().await;
        if let Some(error) = commit_failure(self.consumer.commit_consumer_state(CommitMode::Sync)) {
            tracing::warn!(%error, "could not commit offsets at shutdown; the last messages will be redelivered and skipped by the inbox");
        }
        let stats = self.counters.snapshot();
        tracing::info!(group_id = %self.config.group_id, ?stats, "outbox consumer stopped");
        ended
    }
}

/// Purges inbox rows older than the retention, when there is one.
async fn purge_inbox(outbox: &Outbox, config: &ConsumerConfig, counters: &ConsumerCounters) {
    let (Some(inbox), Some(retention)) = (&config.inbox, config.inbox_retention) else {
        return;
    };
    if let Err(error) = inbox
        .purge_older_than(outbox.pool(), retention, config.inbox_purge_batch)
        .await
    {
        counters.add(Counter::Error, 1);
        tracing::warn!(error = %crate::error::Chain(&error), "could not purge old inbox rows; retrying later");
    }
}

/// The consumer's fatal error, if librdkafka declared one (the client is
/// unusable after it).
fn fatal_error(consumer: &KafkaConsumer, config: &ConsumerConfig) -> Option<ConsumerError> {
    let (code, reason) = consumer.client().fatal_error()?;
    Some(match (code, &config.group_instance_id) {
        (RDKafkaErrorCode::FencedInstanceId, Some(id)) => ConsumerError::FencedInstance {
            group_id: config.group_id.clone(),
            group_instance_id: id.clone(),
        },
        _ => ConsumerError::Fatal {
            group_id: config.group_id.clone(),
            reason,
        },
    })
}

/// The workers of the partitions this consumer received messages from.
#[derive(Default)]
struct Partitions {
    running: HashMap<(String, i32), PartitionQueue>,
    /// Workers of revoked partitions finishing their batch.
    retiring: HashMap<(String, i32), WorkerTask>,
}

impl Partitions {
    /// The queue of `topic`/`partition`, its worker started if needed.
    fn queue(&mut self, env: &WorkerEnv, topic: &str, partition: i32) -> &PartitionQueue {
        let key = (topic.to_owned(), partition);
        if self.running.get(&key).is_some_and(|q| !q.is_running()) {
            self.running.remove(&key);
        }
        let retiring = &mut self.retiring;
        self.running.entry(key).or_insert_with_key(|key| {
            let previous = retiring.remove(key);
            PartitionQueue::start(env, topic, partition, previous)
        })
    }

    /// Retires the workers of partitions revoked since the last call.
    fn retire(&mut self, revocations: &Revocations) {
        for key in revocations.take() {
            if let Some(queue) = self.running.remove(&key) {
                let task = queue.retire();
                self.retiring.insert(key, task);
            }
        }
        self.retiring.retain(|_, task| !task.is_finished());
    }

    /// The client failed fatally and its partitions are lost: as for a
    /// revocation, each worker finishes the batch it is in, drops what is
    /// queued and ends.
    fn lose_all(&mut self) {
        for (key, queue) in self.running.drain() {
            self.retiring.insert(key, queue.retire());
        }
    }

    /// Shutdown: waits for every worker to finish its batch.
    async fn close(self) {
        let tasks = self
            .running
            .into_values()
            .map(PartitionQueue::close)
            .chain(self.retiring.into_values());
        for task in tasks {
            task.join().await;
        }
    }
}

/// A running consumer.
#[derive(Debug)]
pub struct ConsumerHandle {
    shutdown: watch::Sender<bool>,
    join: JoinHandle<Result<(), ConsumerError>>,
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

    /// Asks the consumer to stop: the batches in flight are finished and
    /// their offsets stored (a message waiting for a retry is left
    /// uncommitted and redelivered later), then the offsets are committed
    /// synchronously. Fails with the error that ended the consumer, if one
    /// did (e.g. [`ConsumerError::FencedInstance`]).
    pub async fn shutdown(self) -> Result<ConsumerStats, ConsumerError> {
        let _ = self.shutdown.send(true);
        self.join
            .await
            .map_err(|e| ConsumerError::Task(e.to_string()))??;
        Ok(self.counters.snapshot())
    }

    /// Stops the consumer abruptly, as a crash would: nothing more is
    /// committed. Waits until the task is gone.
    pub async fn abort(self) {
        self.join.abort();
        let _ = self.join.await;
    }
}
