//! The relay: delivers committed outbox rows to Kafka, in order per
//! aggregate, at least once.

// The stages of a round, in the order the worker runs them.
mod bounds;
mod claim;
mod lease;
mod produce;
mod record;
// Around them.
mod chores;
mod config;
#[cfg(feature = "bench-hooks")]
#[doc(hidden)]
pub mod database_only;
mod seq_runs;
mod stats;
mod wakeup;
mod worker;

pub use config::{DeadEventPolicy, Mechanisms, RelayConfig, Retention};
pub use lease::SHARDS;
pub use stats::{RelayCounters, RelayStats};

use crate::error::{ConfigError, RelayError};
use crate::identifier::Names;
use crate::metrics::OutboxMetrics;
use crate::registry;
use produce::KafkaBroker;
use rdkafka::ClientConfig;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// A relay instance, checked and ready to run.
///
/// ```no_run
/// use outbox::{Relay, RelayConfig};
/// use rdkafka::ClientConfig;
///
/// # async fn run(pool: sqlx::PgPool) -> Result<(), outbox::RelayError> {
/// let mut kafka = ClientConfig::new();
/// kafka.set("bootstrap.servers", "127.0.0.1:9092");
/// let relay = Relay::new(pool, kafka, RelayConfig::from_env()?).await?;
/// let handle = relay.spawn();
/// // ... serve requests ...
/// handle.shutdown().await?; // finishes the batch in flight
/// # Ok(()) }
/// ```
pub struct Relay {
    pool: PgPool,
    broker: KafkaBroker,
    config: RelayConfig,
    names: Names,
    instance_id: Uuid,
    counters: Arc<RelayCounters>,
    metrics: Option<OutboxMetrics>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("instance_id", &self.instance_id)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Settings the relay enforces on the producer for its guarantees:
/// idempotence and `acks=all` so a retried request neither duplicates nor
/// reorders within a partition, and the gapless guarantee so a batch that
/// fails permanently stops the producer (a fatal error, after which the
/// relay builds a new one) instead of letting later messages of the same
/// partition through ahead of it.
const REQUIRED: [(&str, &str); 3] = [
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("enable.gapless.guarantee", "true"),
];
/// librdkafka's batching delay and its older name.
const LINGER: &str = "linger.ms";
const LINGER_ALIAS: &str = "queue.buffering.max.ms";
/// librdkafka's message timeout and its alias (the Java client's name).
const TIMEOUT: &str = "message.timeout.ms";
const TIMEOUT_ALIAS: &str = "delivery.timeout.ms";
/// Partitioners that map a key to the same partition every time (and the
/// relay always sets a key). `random` would scatter one aggregate's events
/// over partitions and lose their order.
const KEYED_PARTITIONERS: [&str; 6] = [
    "consistent",
    "consistent_random",
    "murmur2",
    "murmur2_random",
    "fnv1a",
    "fnv1a_random",
];

fn invalid(setting: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { setting, reason }
}

fn producer_config(
    client: &ClientConfig,
    config: &RelayConfig,
) -> Result<(ClientConfig, Duration), ConfigError> {
    let mut cc = client.clone();
    for (key, want) in REQUIRED {
        if let Some(value) = cc.get(key) {
            let ok = value == want || (key == "acks" && value == "-1");
            if !ok {
                return Err(invalid(
                    key,
                    format!(
                        "the relay requires {key}={want} for ordered, loss-free delivery; remove the override {key}={value}"
                    ),
                ));
            }
        }
        cc.set(key, want);
    }
    if let Some(partitioner) = cc.get("partitioner") {
        if !KEYED_PARTITIONERS.contains(&partitioner) {
            return Err(invalid(
                "partitioner",
                format!(
                    "{partitioner:?} does not send one key to one partition, so an aggregate's events would lose their order; \
                     use one of {} (librdkafka's default is consistent_random; Java clients use murmur2_random) \
                     and keep it unchanged while the topic has events",
                    KEYED_PARTITIONERS.join(", ")
                ),
            ));
        }
    }
    // The relay enqueues a whole batch at once and awaits its acknowledgements
    // before the next claim, so lingering only delays the tail of every batch
    // (0 ms instead of librdkafka's 5 ms raises drain throughput by a third
    // and lowers end-to-end latency; docs/design/relay.md). A user's own
    // setting, under either name, wins.
    if cc.get(LINGER).is_none() && cc.get(LINGER_ALIAS).is_none() {
        cc.set(LINGER, "0");
    }
    let timeout = match (cc.get(TIMEOUT), cc.get(TIMEOUT_ALIAS)) {
        (Some(a), Some(b)) if a != b => {
            return Err(invalid(
                TIMEOUT,
                format!(
                "{TIMEOUT}={a} and its alias {TIMEOUT_ALIAS}={b} disagree; set only one of them"
            ),
            ))
        }
        (Some(ms), _) => Some((TIMEOUT, ms.to_owned())),
        (None, Some(ms)) => Some((TIMEOUT_ALIAS, ms.to_owned())),
        (None, None) => None,
    };
    let timeout = match timeout {
        Some((setting, ms)) => {
            let ms = ms
                .trim()
                .parse::<u64>()
                .map_err(|_| invalid(setting, format!("{ms:?} is not a number of milliseconds")))?;
            if ms == 0 {
                return Err(invalid(
                    setting,
                    format!(
                        "0 means no timeout, but the relay needs a bound on how long a produce takes so that a shard lease covers it; \
                         set {setting} to a few seconds (default {} ms)",
                        config.message_timeout.as_millis()
                    ),
                ));
            }
            Duration::from_millis(ms)
        }
        None => {
            let ms = config.message_timeout.as_millis().to_string();
            cc.set(TIMEOUT, ms);
            config.message_timeout
        }
    };
    if config.lease_ttl < timeout * 2 + Duration::from_secs(1) {
        return Err(invalid(
            TIMEOUT,
            format!(
                "{timeout:?} is too long for lease_ttl {:?}; lower {TIMEOUT} or raise OUTBOX_LEASE_TTL_SECONDS",
                config.lease_ttl
            ),
        ));
    }
    Ok((cc, timeout))
}

/// The relay's own connections: the pool's connect options with a
/// `statement_timeout`, so no claim or mark can wait (behind a lock, on a
/// stalled server) much beyond what its shard lease covers. The fence on
/// every claim and mark (`lease.rs`) keeps a late statement harmless; the
/// timeout keeps the relay from waiting on one.
///
/// The same `idle_in_transaction_session_timeout`: a relay process paused
/// inside one of its transactions (the lease maintenance locks lease rows)
/// has its session ended by the server, so the locks go with it and
/// another instance can take the shards once the leases expire.
///
/// Its connections are named `outbox-relay/<instance id>` (`application_name`),
/// so `pg_stat_activity` shows which relay instance runs what.
fn relay_pool(pool: &PgPool, config: &RelayConfig, instance_id: Uuid) -> PgPool {
    let timeout = statement_timeout(config);
    let options = (*pool.connect_options())
        .clone()
        .application_name(&format!("outbox-relay/{instance_id}"))
        .options([
            ("statement_timeout", timeout.as_millis().to_string()),
            (
                "idle_in_transaction_session_timeout",
                timeout.as_millis().to_string(),
            ),
        ]);
    PgPoolOptions::new()
        .max_connections(RELAY_CONNECTIONS)
        .min_connections(0)
        .acquire_timeout(timeout)
        .connect_lazy_with(options)
}

/// Connections a relay uses at most at once: the claim ahead, the outcome
/// and floor writes, the lease maintenance or a gauge refresh, and the
/// `LISTEN` connection.
const RELAY_CONNECTIONS: u32 = 5;

/// A third of the lease TTL, and at least a second.
fn statement_timeout(config: &RelayConfig) -> Duration {
    (config.lease_ttl / 3).max(Duration::from_secs(1))
}

impl Relay {
    /// Validates the registry and settings, checks the outbox tables exist
    /// and are writable, and creates the idempotent producer
    /// (`enable.idempotence=true`, `acks=all` and
    /// `enable.gapless.guarantee=true` are enforced; `message.timeout.ms`
    /// must be bounded and `partitioner` must map a key to one partition).
    ///
    /// The relay opens its own few connections with `pool`'s connect
    /// options, a `statement_timeout` and an
    /// `idle_in_transaction_session_timeout` of a third of the lease TTL,
    /// and the `application_name` `outbox-relay/<instance id>`.
    pub async fn new(
        pool: PgPool,
        client_config: ClientConfig,
        mut config: RelayConfig,
    ) -> Result<Self, RelayError> {
        config.validate()?;
        registry::validate()?;
        let (cc, timeout) = producer_config(&client_config, &config)?;
        config.message_timeout = timeout;
        let names = Names::new(config.schema.as_ref());
        check_tables(&pool, &names).await?;
        let broker = KafkaBroker::new(cc).map_err(|source| RelayError::Kafka { source })?;
        let instance_id = Uuid::new_v4();
        Ok(Self {
            pool: relay_pool(&pool, &config, instance_id),
            broker,
            config,
            names,
            instance_id,
            counters: RelayCounters::shared(),
            metrics: None,
        })
    }

    /// Records delivery, failures, transient errors, timings and the queue
    /// gauges (refreshed every few seconds) in `metrics`; see
    /// [`OutboxMetrics`] for the list.
    ///
    /// ```no_run
    /// use outbox::{OutboxMetrics, Relay, RelayConfig};
    ///
    /// # async fn run(pool: sqlx::PgPool, kafka: rdkafka::ClientConfig, metrics: OutboxMetrics) -> Result<(), outbox::RelayError> {
    /// let handle = Relay::new(pool, kafka, RelayConfig::from_env()?)
    ///     .await?
    ///     .with_metrics(metrics)
    ///     .spawn();
    /// # Ok(()) }
    /// ```
    pub fn with_metrics(mut self, metrics: OutboxMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// This instance's id (as in `event_outbox_relay` and lease owners).
    pub fn instance_id(&self) -> Uuid {
        self.instance_id
    }

    /// Live counters, shared with the running relay.
    pub fn counters(&self) -> Arc<RelayCounters> {
        self.counters.clone()
    }

    /// Runs the relay on the current task until `shutdown` resolves, then
    /// finishes the batch in flight, gives its shard leases back and returns.
    pub async fn run_until(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> RelayStats {
        let (tx, rx) = watch::channel(false);
        let counters = self.counters.clone();
        let worker = worker::Worker::new(self, rx);
        let run = worker.run();
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

    /// Spawns the relay on the tokio runtime.
    pub fn spawn(self) -> RelayHandle {
        let (tx, rx) = watch::channel(false);
        let counters = self.counters.clone();
        let worker = worker::Worker::new(self, rx);
        let join = tokio::spawn(worker.run());
        RelayHandle {
            shutdown: tx,
            join,
            counters,
        }
    }
}

async fn check_tables(pool: &PgPool, names: &Names) -> Result<(), RelayError> {
    for table in [&names.outbox, &names.lease, &names.relay] {
        let found: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(table)
            .fetch_one(pool)
            .await
            .map_err(RelayError::db("checking that the outbox tables exist"))?;
        if found.is_none() {
            return Err(RelayError::MissingTable {
                table: table.clone(),
            });
        }
        let row: (String, bool, bool, bool, bool) = sqlx::query_as(
            "SELECT current_user::text,
                    has_table_privilege($1, 'SELECT'), has_table_privilege($1, 'INSERT'),
                    has_table_privilege($1, 'UPDATE'), has_table_privilege($1, 'DELETE')",
        )
        .bind(table)
        .fetch_one(pool)
        .await
        .map_err(RelayError::db("checking privileges on the outbox tables"))?;
        let missing: Vec<&str> = [
            ("SELECT", row.1),
            ("INSERT", row.2),
            ("UPDATE", row.3),
            ("DELETE", row.4),
        ]
        .into_iter()
        .filter(|(_, has)| !has)
        .map(|(p, _)| p)
        .collect();
        if !missing.is_empty() {
            return Err(RelayError::MissingPrivileges {
                role: row.0,
                table: table.clone(),
                missing: missing.join(", "),
            });
        }
    }
    Ok(())
}

/// A running relay.
#[derive(Debug)]
pub struct RelayHandle {
    shutdown: watch::Sender<bool>,
    join: JoinHandle<()>,
    counters: Arc<RelayCounters>,
}

impl RelayHandle {
    /// Live counters.
    pub fn stats(&self) -> RelayStats {
        self.counters.snapshot()
    }

    /// Live counters, shareable (e.g. with a metrics exporter).
    pub fn counters(&self) -> Arc<RelayCounters> {
        self.counters.clone()
    }

    /// Whether the relay task has ended.
    pub fn is_finished(&self) -> bool {
        self.join.is_finished()
    }

    /// Asks the relay to stop, waits for the batch in flight to be produced
    /// and marked, and for its leases to be given back.
    pub async fn shutdown(self) -> Result<RelayStats, RelayError> {
        let _ = self.shutdown.send(true);
        self.join
            .await
            .map_err(|e| RelayError::Task(e.to_string()))?;
        Ok(self.counters.snapshot())
    }

    /// Stops the relay abruptly, as a crash would (for tests of crash
    /// safety): nothing is marked, leases are left to expire.
    pub fn abort(self) {
        self.join.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relay_connections_end_statements_and_idle_transactions_within_a_third_of_the_ttl() {
        let pool = PgPool::connect_lazy("postgres://relay@127.0.0.1:1/outbox").unwrap();
        let config = RelayConfig {
            lease_ttl: Duration::from_secs(12),
            ..RelayConfig::default()
        };
        let relay = relay_pool(&pool, &config, Uuid::from_u128(1));
        let options = relay.connect_options();
        let settings = options.get_options().unwrap_or_default();
        assert!(settings.contains("-c statement_timeout=4000"), "{settings}");
        assert!(
            settings.contains("-c idle_in_transaction_session_timeout=4000"),
            "{settings}"
        );
        assert_eq!(
            options.get_application_name(),
            Some("outbox-relay/00000000-0000-0000-0000-000000000001")
        );
    }

    #[test]
    fn security_settings_pass_through_unchanged_and_guarantees_are_enforced() {
        let mut user = ClientConfig::new();
        user.set("bootstrap.servers", "broker:9093")
            .set("security.protocol", "SASL_SSL")
            .set("sasl.mechanism", "SCRAM-SHA-512")
            .set("sasl.username", "svc")
            .set("sasl.password", "p@ss word")
            .set("ssl.ca.location", "/etc/ca.pem");
        let (cc, timeout) = producer_config(&user, &RelayConfig::default()).unwrap();
        for (key, value) in user.config_map() {
            assert_eq!(cc.get(key), Some(value.as_str()), "{key} passed through");
        }
        assert_eq!(cc.get("enable.idempotence"), Some("true"));
        assert_eq!(cc.get("acks"), Some("all"));
        assert_eq!(cc.get("enable.gapless.guarantee"), Some("true"));
        assert_eq!(cc.get("message.timeout.ms"), Some("10000"));
        assert_eq!(timeout, Duration::from_secs(10));
    }

    #[test]
    fn linger_defaults_to_zero_unless_the_user_set_it() {
        let (cc, _) = producer_config(&ClientConfig::new(), &RelayConfig::default()).unwrap();
        assert_eq!(cc.get(LINGER), Some("0"));
        for key in [LINGER, LINGER_ALIAS] {
            let mut user = ClientConfig::new();
            user.set(key, "20");
            let (cc, _) = producer_config(&user, &RelayConfig::default()).unwrap();
            assert_eq!(cc.get(key), Some("20"), "{key} kept");
            let other = if key == LINGER { LINGER_ALIAS } else { LINGER };
            assert_eq!(cc.get(other), None, "no second linger next to {key}");
        }
    }

    #[test]
    fn weakening_overrides_are_refused() {
        let mut user = ClientConfig::new();
        user.set("enable.idempotence", "false");
        let err = producer_config(&user, &RelayConfig::default()).unwrap_err();
        assert!(
            err.to_string().contains("requires enable.idempotence=true"),
            "{err}"
        );
        let mut user = ClientConfig::new();
        user.set("message.timeout.ms", "60000");
        let err = producer_config(&user, &RelayConfig::default()).unwrap_err();
        assert!(err.to_string().contains("lease_ttl"), "{err}");
        let mut user = ClientConfig::new();
        user.set("enable.gapless.guarantee", "false");
        let err = producer_config(&user, &RelayConfig::default()).unwrap_err();
        assert!(
            err.to_string().contains("enable.gapless.guarantee=true"),
            "{err}"
        );
    }

    #[test]
    fn the_timeout_alias_is_read_and_an_unbounded_timeout_is_refused() {
        let refused = |key: &str, value: &str| {
            let mut user = ClientConfig::new();
            user.set(key, value);
            producer_config(&user, &RelayConfig::default())
                .unwrap_err()
                .to_string()
        };
        for key in [TIMEOUT, TIMEOUT_ALIAS] {
            let err = refused(key, "0");
            assert!(err.contains(key) && err.contains("no timeout"), "{err}");
        }
        let err = refused(TIMEOUT_ALIAS, "60000");
        assert!(err.contains("lease_ttl"), "the alias is checked too: {err}");
        let mut user = ClientConfig::new();
        user.set(TIMEOUT_ALIAS, "3000");
        let (cc, timeout) = producer_config(&user, &RelayConfig::default()).unwrap();
        assert_eq!(timeout, Duration::from_secs(3));
        assert_eq!(cc.get(TIMEOUT), None, "no second timeout beside the alias");
        user.set(TIMEOUT, "4000");
        let err = producer_config(&user, &RelayConfig::default()).unwrap_err();
        assert!(err.to_string().contains("disagree"), "{err}");
    }

    #[test]
    fn only_partitioners_that_keep_a_key_on_one_partition_pass() {
        for partitioner in KEYED_PARTITIONERS {
            let mut user = ClientConfig::new();
            user.set("partitioner", partitioner);
            assert!(
                producer_config(&user, &RelayConfig::default()).is_ok(),
                "{partitioner}"
            );
        }
        let mut user = ClientConfig::new();
        user.set("partitioner", "random");
        let err = producer_config(&user, &RelayConfig::default()).unwrap_err();
        assert!(
            err.to_string().contains("\"random\" does not send one key"),
            "{err}"
        );
    }
}
