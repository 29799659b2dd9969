//! One worker task per assigned partition: it takes what its partition
//! has queued (up to a batch), handles it, and stores the offset past it.
//! Partitions run in parallel, each in order.
//!
//! A partition's queue is bounded: when it is full the receiving loop waits
//! for that worker, which holds up the other partitions once their queues
//! are empty — for as long as one message waits for its retries. Pausing
//! the partition in librdkafka instead would make it fetch again from the
//! middle of a record batch on resume, and brokers that answer such a
//! fetch from the next batch (Tansu 0.6 does) would skip messages for good.

use super::client::{commit_failure, LoopContext};
use super::handling::Handling;
use super::pace::{wait_for_shutdown, Flow};
use super::stats::Counter;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    sender: mpsc::Sender<OwnedMessage>,
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
        let batch = env.handling.config.batch_size;
        let (sender, receiver) = mpsc::channel(batch.saturating_mul(2).saturating_add(500));
        let revoked = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            env: env.clone(),
            topic: topic.to_owned(),
            partition,
            receiver,
            revoked: revoked.clone(),
        };
        let task = tokio::spawn(async move {
            if let Some(previous) = previous {
                previous.join().await;
            }
            worker.run().await;
        });
        Self {
            sender,
            revoked,
            task: WorkerTask(task),
        }
    }

    /// Whether the worker still runs (it ends on revocation or shutdown).
    pub(crate) fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// Queues a message for the worker; waits while its queue is full
    /// (see the module documentation for why the partition is not paused).
    pub(crate) async fn push(&self, message: OwnedMessage) {
        // An error means the worker has ended (revoked): the message goes
        // with its partition.
        let _ = self.sender.send(message).await;
    }

    /// The partition was revoked: the worker finishes the batch it is in,
    /// drops what is queued and ends. Returns its task, to be awaited
    /// before another worker of the partition starts.
    pub(crate) fn retire(self) -> WorkerTask {
        self.revoked.store(true, Ordering::Release);
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
    receiver: mpsc::Receiver<OwnedMessage>,
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
        if let Some(error) = commit_failure(consumer.commit_consumer_state(CommitMode::Async)) {
            self.env.handling.counters.add(Counter::Error, 1);
            tracing::warn!(%error, topic = last.topic(), partition = last.partition(), "could not commit offsets; they are committed with the next batch or at shutdown");
        }
    }
}
