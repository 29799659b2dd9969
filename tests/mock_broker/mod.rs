//! librdkafka's mock cluster as a test's broker, and a consumer that reads
//! every partition of its topics. Included with `mod mock_broker;` next to
//! `mod support;`.
//!
//! The mock cluster runs inside the test process (no external broker) and
//! takes faults on command: errors returned to the next requests of an API,
//! brokers down, slow responses, partitions moved to another leader or left
//! without one. Its brokers have ids `1..=brokers`.
#![allow(dead_code)]

use crate::support::{received_from, Received};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A mock cluster with topics of its own.
pub struct MockKafka {
    pub cluster: MockCluster<'static, DefaultProducerContext>,
    pub topics: Vec<String>,
    pub partitions: i32,
}

impl MockKafka {
    /// `brokers` brokers and `topics` with `partitions` partitions each,
    /// replicated on every broker; partition `p` is led by
    /// `leaders[p % leaders.len()]`.
    pub fn start(brokers: i32, topics: &[String], partitions: i32, leaders: &[i32]) -> MockKafka {
        let cluster = MockCluster::new(brokers).expect("mock cluster");
        for topic in topics {
            cluster
                .create_topic(topic, partitions, brokers)
                .expect("mock topic");
            for (p, leader) in (0..partitions).zip(leaders.iter().cycle()) {
                cluster
                    .partition_leader(topic, p, Some(*leader))
                    .expect("mock partition leader");
            }
        }
        MockKafka {
            cluster,
            topics: topics.to_vec(),
            partitions,
        }
    }

    pub fn bootstrap(&self) -> String {
        self.cluster.bootstrap_servers()
    }
}

/// A consumer made with `config`, assigned partitions `0..partitions` of
/// each of `topics` from their beginning: it takes no part in a consumer
/// group, so no coordinator is needed.
pub fn assigned_from_beginning(
    config: &ClientConfig,
    topics: &[String],
    partitions: i32,
) -> StreamConsumer {
    let consumer: StreamConsumer = config.create().expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .expect("assignment");
        }
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// A consumer reading every partition of some topics from the beginning,
/// with no consumer group (so no coordinator is needed while brokers are
/// down). A message read again at an offset already read is ignored: what
/// it collects is the log as the broker holds it, each offset once.
pub struct PartitionReader {
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PartitionReader {
    pub fn start(bootstrap: &str, topics: &[String], partitions: i32) -> PartitionReader {
        let consumer = assigned_from_beginning(
            ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
                .set("enable.auto.commit", "false")
                .set("fetch.wait.max.ms", "100")
                .set("topic.metadata.refresh.interval.ms", "1000")
                .set("reconnect.backoff.max.ms", "500"),
            topics,
            partitions,
        );
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let sink = received.clone();
        let task = tokio::spawn(async move {
            let mut read: HashSet<(String, i32, i64)> = HashSet::new();
            loop {
                match consumer.recv().await {
                    Ok(m) => {
                        if !read.insert((m.topic().to_owned(), m.partition(), m.offset())) {
                            continue;
                        }
                        sink.lock().unwrap().push(received_from(&m));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "reader consumer error; continuing");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        PartitionReader { received, task }
    }

    pub fn snapshot(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits until `done` holds for what arrived, at most `timeout`; what
    /// arrived, `Err` if `done` never held.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Result<Vec<Received>, Vec<Received>> {
        let deadline = Instant::now() + timeout;
        loop {
            let all = self.snapshot();
            if done(&all) {
                return Ok(all);
            }
            if Instant::now() >= deadline {
                return Err(all);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until nothing new arrived for `quiet`, at most `at_most`; what
    /// arrived, `Err` if messages kept coming.
    pub async fn settle(
        &self,
        quiet: Duration,
        at_most: Duration,
    ) -> Result<Vec<Received>, Vec<Received>> {
        let deadline = Instant::now() + at_most;
        let mut last = self.count();
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.count();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return Ok(self.snapshot());
            }
            if Instant::now() >= deadline {
                return Err(self.snapshot());
            }
        }
    }

    /// Stops the consumer and waits until it is closed.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}
