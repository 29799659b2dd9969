//! [`MockBroker`]: librdkafka's mock cluster with the registry's topics, for
//! running the real relay in a test without a Kafka cluster.

use super::read_back::read_back;
use super::{Published, TestingError};
use crate::{Relay, RelayConfig, RelayHandle};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::ClientConfig;
use sqlx::PgPool;
use std::time::Duration;

/// Partitions of each topic unless [`MockBroker::with_partitions`] says
/// otherwise: more than one, so keys are routed as on a real cluster.
pub const DEFAULT_PARTITIONS: i32 = 3;

/// An in-process Kafka cluster (librdkafka's mock cluster, one broker)
/// holding a topic for every event type in the registry.
///
/// Run the real [`Relay`] against it with [`spawn_relay`](Self::spawn_relay)
/// and read back what it produced with [`produced`](Self::produced). The
/// cluster lives as long as this value; it is not `Send`, so keep it in the
/// test's own task.
///
/// ```no_run
/// use outbox::testing::MockBroker;
/// use std::time::Duration;
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let broker = MockBroker::start()?;
/// let relay = broker.spawn_relay(&pool).await?;
/// // ... commit two events ...
/// let produced = broker.produced(2, Duration::from_secs(10)).await?;
/// relay.shutdown().await?;
/// assert_eq!(produced.len(), 2);
/// # Ok(()) }
/// ```
pub struct MockBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
    topics: Vec<String>,
    partitions: i32,
}

impl std::fmt::Debug for MockBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockBroker")
            .field("bootstrap_servers", &self.bootstrap_servers())
            .field("topics", &self.topics)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl MockBroker {
    /// Starts a cluster with [`DEFAULT_PARTITIONS`] per topic.
    pub fn start() -> Result<Self, TestingError> {
        Self::with_partitions(DEFAULT_PARTITIONS)
    }

    /// Starts a cluster with `partitions` per topic (at least one).
    pub fn with_partitions(partitions: i32) -> Result<Self, TestingError> {
        let partitions = partitions.max(1);
        let cluster = MockCluster::new(1).map_err(TestingError::kafka("starting the cluster"))?;
        let mut topics: Vec<String> = crate::registry::registrations()
            .iter()
            .map(|r| r.topic.to_owned())
            .collect();
        topics.sort();
        topics.dedup();
        for topic in &topics {
            cluster
                .create_topic(topic, partitions, 1)
                .map_err(TestingError::kafka("creating the registry's topics"))?;
        }
        tracing::debug!(bootstrap = %cluster.bootstrap_servers(), ?topics, "mock broker started");
        Ok(Self {
            cluster,
            topics,
            partitions,
        })
    }

    /// The `bootstrap.servers` of the cluster.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    /// The topics it holds: every topic of the registry.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Partitions per topic.
    pub fn partitions(&self) -> i32 {
        self.partitions
    }

    /// The cluster itself, to inject faults (errors on requests, brokers
    /// down, slow responses).
    pub fn cluster(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }

    /// Client settings for the cluster: give them to
    /// [`Relay::new`] or to a consumer.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.bootstrap_servers())
            .set("reconnect.backoff.max.ms", "500")
            .set("topic.metadata.refresh.interval.ms", "1000");
        config
    }

    /// Relay settings for tests: quick polls and retries, short leases and
    /// timeouts. Change them (e.g. the `schema`) and pass them to
    /// [`spawn_relay_with`](Self::spawn_relay_with).
    pub fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            poll_interval: Duration::from_millis(100),
            retry_backoff: Duration::from_millis(100),
            max_retry_backoff: Duration::from_secs(1),
            lease_ttl: Duration::from_secs(6),
            message_timeout: Duration::from_secs(2),
            ..RelayConfig::default()
        }
    }

    /// Starts the real relay on `pool`'s outbox (default schema), delivering
    /// to this cluster with [`relay_config`](Self::relay_config).
    pub async fn spawn_relay(&self, pool: &PgPool) -> Result<RelayHandle, TestingError> {
        self.spawn_relay_with(pool, self.relay_config()).await
    }

    /// Starts the real relay with `config`, delivering to this cluster.
    pub async fn spawn_relay_with(
        &self,
        pool: &PgPool,
        config: RelayConfig,
    ) -> Result<RelayHandle, TestingError> {
        let relay = Relay::new(pool.clone(), self.client_config(), config).await?;
        Ok(relay.spawn())
    }

    /// Waits until at least `at_least` messages are in the cluster's
    /// topics, at most `within`, then returns every message produced so
    /// far, decoded from their envelopes: in order within each partition,
    /// and across partitions by event id (the order they were created in).
    ///
    /// Fails with [`TestingError::NotProduced`], listing what arrived, when
    /// fewer arrive in time.
    pub async fn produced(
        &self,
        at_least: usize,
        within: Duration,
    ) -> Result<Published, TestingError> {
        let events = read_back(
            &self.bootstrap_servers(),
            &self.topics,
            self.partitions,
            at_least,
            within,
        )
        .await?;
        Ok(Published::new(events, "produced to the mock broker"))
    }
}
