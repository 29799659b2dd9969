//! One worker task per assigned partition: it takes what its partition
//! has queued (up to a batch), handles it, and stores the offset past it.
//! Partitions run in parallel, each in order.

use super::client::LoopContext;
use super::handling::Handling;
use super::pace::{wait_for_shutdown, Flow};
use super::stats::Counter;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::TopicPartitionList;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub(crate) type KafkaConsumer = Arc<StreamConsumer<LoopContext>>;

/// What a partition worker needs besides its queue.
#[derive(Clone)]
pub(crate) struct WorkerEnv {
    pub(crate) handling: Arc<Handling>,
    pub(crate) consumer: KafkaConsumer,
    /// Bounds the partitions handled at once.
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) shutdown: watch::Receiver<bool>,
}

/// Messages received for a partition and not yet taken by its worker; the
/// partition is paused while too many wait, so one slow partition never
/// holds up the others nor fills memory.
struct Backlog {
    queued: AtomicUsize,
    paused: Mutex<bool>,
    high: usize,
    low: usize,
}

impl Backlog {
    fn tpl(topic: &str, partition: i32) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition);
        tpl
    }

    fn added(&self, consumer: &KafkaConsumer, topic: &str, partition: i32) {
        if self.queued.fetch_add(1, Ordering::AcqRel) + 1 >= self.high {
            self.set_paused(true, consumer, topic, partition);
        }
    }

    fn taken(&self, n: usize, consumer: &KafkaConsumer, topic: &str, partition: i32) {
        if self.queued.fetch_sub(n, Ordering::AcqRel).saturating_sub(n) <= self.low {
            self.set_paused(false, consumer, topic, partition);
        }
    }

    fn set_paused(&self, pause: bool, consumer: &KafkaConsumer, topic: &str, partition: i32) {
        let Ok(mut paused) = self.paused.lock() else {
            return;
        };
        if *paused == pause {
            return;
        }
        let tpl = Self::tpl(topic, partition);
        let done = if pause {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        match done {
            Ok(()) => {
                *paused = pause;
                tracing::debug!(
                    topic,
                    partition,
                    pause,
                    "partition fetch paused/resumed by its backlog"
                );
            }
            Err(error) => {
                tracing::debug!(topic, partition, pause, %error, "could not pause/resume the partition")
            }
        }
    }
}

/// A worker's task, aborted when dropped: a consumer aborted (a simulated
/// crash) takes its workers with it instead of leaving them consuming.
pub(crate) struct WorkerTask(JoinHandle<()>);

impl WorkerTask {
    pub(crate) fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// Waits until the worker has ended.
    pub(crate) async fn join(mut self) {
        let _ = (&mut self.0).await;
    }
}

impl Drop for WorkerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The fan-out loop's end of one partition's worker.
pub(crate) struct PartitionQueue {
    topic: String,
    partition: i32,
    sender: mpsc::UnboundedSender<OwnedMessage>,
    backlog: Arc<Backlog>,
    revoked: Arc<AtomicBool>,
    task: WorkerTask,
}

impl PartitionQueue {
    /// Starts the worker of `topic`/`partition`; it begins once `previous`
    /// (the worker of an earlier assignment of the partition, finishing
    /// its batch) has ended, so one partition never has two workers.
    pub(crate) fn start(
        env: &WorkerEnv,
        topic: &str,
        partition: i32,
        previous: Option<WorkerTask>,
    ) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        let batch = env.handling.config.batch_size;
        let backlog = Arc::new(Backlog {
            queued: AtomicUsize::new(0),
            paused: Mutex::new(false),
            high: batch.saturating_mul(2).saturating_add(500),
            low: batch,
        });
        let revoked = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            env: env.clone(),
            topic: topic.to_owned(),
            partition,
            receiver,
            backlog: backlog.clone(),
            revoked: revoked.clone(),
        };
        let task = tokio::spawn(async move {
            if let Some(previous) = previous {
                previous.join().await;
            }
            worker.run().await;
        });
        Self {
            topic: topic.to_owned(),
            partition,
            sender,
            backlog,
            revoked,
            task: WorkerTask(task),
        }
    }

    /// Whether the worker still runs (it ends on revocation or shutdown).
    pub(crate) fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Queues a message for the worker.
    pub(crate) fn push(&self, consumer: &KafkaConsumer, message: OwnedMessage) {
        // Counted before it is sent, so the worker never takes more than
        // was counted.
        self.backlog.added(consumer, &self.topic, self.partition);
        if self.sender.send(message).is_err() {
            self.backlog.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The partition was revoked: the worker finishes the batch it is in,
    /// drops what is queued and ends. Returns its task, to be awaited
    /// before another worker of the partition starts.
    pub(crate) fn retire(self, consumer: &KafkaConsumer) -> WorkerTask {
        self.revoked.store(true, Ordering::Release);
        self.backlog
            .set_paused(false, consumer, &self.topic, self.partition);
        self.task
    }

    /// Shutdown: no more messages; the worker ends after its batch.
    pub(crate) fn close(self) -> WorkerTask {
        self.task
    }
}

struct Worker {
    env: WorkerEnv,
    topic: String,
    partition: i32,
    receiver: mpsc::UnboundedReceiver<OwnedMessage>,
    backlog: Arc<Backlog>,
    revoked: Arc<AtomicBool>,
}

impl Worker {
    async fn run(mut self) {
        tracing::debug!(topic = %self.topic, partition = self.partition, "partition worker started");
        while let Some(batch) = self.collect().await {
            let Ok(_permit) = self.env.permits.clone().acquire_owned().await else {
                break;
            };
            if self.stopped() {
                break;
            }
            let mut shutdown = self.env.shutdown.clone();
            match self.env.handling.process_batch(&batch, &mut shutdown).await {
                Flow::Commit => self.store_offset(&batch),
                Flow::Stop => break,
            }
        }
        tracing::debug!(topic = %self.topic, partition = self.partition, "partition worker ended");
    }

    fn stopped(&self) -> bool {
        self.revoked.load(Ordering::Acquire) || *self.env.shutdown.borrow()
    }

    /// The next batch: the first message waited for, then what is queued
    /// or arrives within `batch_wait`, up to `batch_size`. `None` once the
    /// partition is revoked or the consumer stops.
    async fn collect(&mut self) -> Option<Vec<OwnedMessage>> {
        let config = &self.env.handling.config;
        let mut shutdown = self.env.shutdown.clone();
        let first = tokio::select! {
            biased;
            () = wait_for_shutdown(&mut shutdown) => None,
            message = self.receiver.recv() => message,
        }?;
        let mut batch = Vec::with_capacity(config.batch_size.min(1024));
        batch.push(first);
        let deadline = Instant::now() + config.batch_wait;
        while batch.len() < config.batch_size {
            match self.receiver.try_recv() {
                Ok(message) => batch.push(message),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, self.receiver.recv()).await {
                        Ok(Some(message)) => batch.push(message),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        self.backlog
            .taken(batch.len(), &self.env.consumer, &self.topic, self.partition);
        if self.stopped() {
            return None;
        }
        Some(batch)
    }

    /// Stores the offset past `batch` and commits asynchronously (a
    /// synchronous commit follows before a revocation and at shutdown).
    fn store_offset(&self, batch: &[OwnedMessage]) {
        let Some(last) = batch.last() else {
            return;
        };
        let consumer = &self.env.consumer;
        // `store_offset` stores the offset after the one given.
        if let Err(error) = consumer.store_offset(last.topic(), last.partition(), last.offset()) {
            self.env.handling.counters.add(Counter::Error, 1);
            tracing::warn!(%error, topic = last.topic(), partition = last.partition(), offset = last.offset(),
                "could not store the offset (partition revoked?); the batch will be redelivered and skipped by the inbox");
            return;
        }
        match consumer.commit_consumer_state(CommitMode::Async) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => {
                self.env.handling.counters.add(Counter::Error, 1);
                tracing::warn!(%error, topic = last.topic(), partition = last.partition(), "could not commit offsets; they are committed with the next batch or at shutdown");
            }
        }
    }
}
