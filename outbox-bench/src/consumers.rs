//! The consumer scenarios: batched exactly-once consumption against a plain
//! rdkafka consumer doing the same inserts, and how long a SIGKILLed
//! member's partitions stall with static and with dynamic membership, each
//! next to how long a member alone in a fresh group takes to consume every
//! partition on the same broker when nothing was killed (for static
//! members on Tansu 0.6, about 6 s: see [`consumer_recovery`]).

use crate::broker::Broker;
use crate::scenarios::Sizes;
use crate::setup::{BenchDb, BoxError, Env};
use crate::stats::{Bound, Report};
use futures::future::join_all;
use outbox::consume::{Consumer, ConsumerConfig, Dispatcher};
use outbox::{Outbox, OutboxEvent};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The consumed event (~1 KiB with its envelope, like the relay's).
#[derive(Serialize, Deserialize, OutboxEvent)]
#[outbox_event(topic = "bench.consumed-scored.v1", aggregate = "essay")]
pub struct ConsumedScoredV1 {
    #[outbox_event(aggregate_id)]
    essay_id: String,
    seq: i64,
    partition: i32,
    body: String,
}

/// Messages per transaction, for the consumer and its baseline alike.
const BATCH: usize = 500;
/// How long both wait for more messages once they have one.
const BATCH_WAIT: Duration = Duration::from_millis(5);
const PARTITIONS: i32 = 4;
/// Messages the one-transaction-per-message consumer is timed over.
const PER_MESSAGE_SAMPLE: u64 = 3_000;
/// The child consumers' session timeout in `consumer_recovery`.
const SESSION_TIMEOUT_MS: &str = "10000";
const CHILD_ENV: &str = "OUTBOX_BENCH_CONSUMER_CHILD";

fn topic_name(prefix: &str) -> String {
    format!("{prefix}{}", ConsumedScoredV1::REGISTRATION.topic)
}

async fn create_topic(broker: &Broker, label: &str) -> Result<String, BoxError> {
    let prefix = format!(
        "b-{label}-{}.",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let admin: AdminClient<_> = broker.kafka().create()?;
    let name = topic_name(&prefix);
    let topic = NewTopic::new(&name, PARTITIONS, TopicReplication::Fixed(1));
    for result in admin.create_topics(&[topic], &AdminOptions::new()).await? {
        result.map_err(|(topic, code)| format!("creating {topic}: {code}"))?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(prefix)
}

/// The relay's message for event `seq` of essay `seq % 1000`, sent to
/// `partition`.
fn record_parts(seq: i64, partition: i32) -> (String, Vec<u8>, String) {
    let essay_id = format!("essay-{}", seq % 1000);
    let event_id = uuid::Uuid::now_v7().to_string();
    let envelope = serde_json::json!({
        "event_id": event_id,
        "event_type": "ConsumedScoredV1",
        "version": 1,
        "event_timestamp": "2026-12-01T00:00:00Z",
        "source_service": "bench",
        "correlation_id": uuid::Uuid::new_v4(),
        "aggregate_type": "essay",
        "aggregate_id": essay_id,
        "data": {"essay_id": essay_id, "seq": seq, "partition": partition, "body": "x".repeat(720)},
        "metadata": {},
    });
    (essay_id, envelope.to_string().into_bytes(), event_id)
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    seq: i64,
    partition: i32,
) -> Result<(), BoxError> {
    let (key, payload, event_id) = record_parts(seq, partition);
    let headers = OwnedHeaders::new().insert(Header {
        key: "event_id",
        value: Some(event_id.as_bytes()),
    });
    producer
        .send(
            FutureRecord::to(topic)
                .key(&key)
                .payload(&payload)
                .partition(partition)
                .headers(headers),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(())
}

fn producer(broker: &Broker) -> Result<FutureProducer, BoxError> {
    Ok(broker.kafka().set("linger.ms", "5").create()?)
}

/// `n` events over the partitions (setup, not measured).
async fn produce_backlog(broker: &Broker, topic: &str, n: i64) -> Result<(), BoxError> {
    let producer = producer(broker)?;
    let mut seq = 0;
    while seq < n {
        let end = (seq + 5_000).min(n);
        let sends = (seq..end).map(|s| send(&producer, topic, s, (s % PARTITIONS as i64) as i32));
        for result in join_all(sends).await {
            result?;
        }
        seq = end;
    }
    Ok(())
}

/// Events per second from the first finished message to `target`, as
/// `count` reports them (so group joins and start-up are not measured).
async fn rate(count: impl Fn() -> u64, target: u64, timeout: Duration) -> Result<f64, BoxError> {
    let deadline = Instant::now() + timeout;
    let (started, first) = loop {
        let c = count();
        if c > 0 {
            break (Instant::now(), c);
        }
        if Instant::now() > deadline {
            return Err("nothing was consumed".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    loop {
        let c = count();
        if c >= target {
            return Ok((c - first) as f64 / started.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            return Err(format!("{c} of {target} consumed within {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn one_row_dispatcher() -> Dispatcher {
    Dispatcher::new().register::<ConsumedScoredV1>(|event, tx| {
        Box::pin(async move {
            sqlx::query("INSERT INTO essays (id, score) VALUES ($1, $2)")
                .bind(&event.data.essay_id)
                .bind(event.data.seq as i32)
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    })
}

/// The outbox consumer with the inbox and the one-row handler, in
/// batches of `batch_size`: events per second over `target` events.
async fn outbox_rate(
    broker: &Broker,
    prefix: &str,
    db: &BenchDb,
    batch_size: usize,
    target: u64,
) -> Result<f64, BoxError> {
    let config = ConsumerConfig {
        topic_prefix: prefix.into(),
        batch_size,
        batch_wait: BATCH_WAIT,
        inbox_retention: None,
        ..ConsumerConfig::new(format!("bench-outbox-{}", uuid::Uuid::new_v4()))
    };
    let consumer = Consumer::new(
        Outbox::new(db.pool.clone(), "bench"),
        broker.kafka(),
        one_row_dispatcher(),
        config,
    )
    .await?;
    let handle = consumer.spawn();
    let counters = handle.counters();
    let measured = rate(
        || counters.snapshot().handled,
        target,
        Duration::from_secs(900),
    )
    .await;
    handle.shutdown().await?;
    measured
}

/// The baseline: a plain rdkafka consumer inserting the same rows, one
/// transaction per batch of the same size, storing and committing the
/// offsets after each.
async fn plain_rate(
    broker: &Broker,
    topic: &str,
    pool: &PgPool,
    target: u64,
) -> Result<f64, BoxError> {
    let consumer: StreamConsumer = broker
        .kafka()
        .set("group.id", format!("bench-plain-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[topic])?;
    let consumer = Arc::new(consumer);
    let done = Arc::new(AtomicU64::new(0));
    let task = {
        let (consumer, done, pool) = (consumer.clone(), done.clone(), pool.clone());
        tokio::spawn(async move { plain_loop(&consumer, &pool, &done, target).await })
    };
    let measured = rate(
        || done.load(Ordering::Relaxed),
        target,
        Duration::from_secs(900),
    )
    .await;
    task.abort();
    measured
}

async fn plain_loop(
    consumer: &StreamConsumer,
    pool: &PgPool,
    done: &AtomicU64,
    target: u64,
) -> Result<(), BoxError> {
    while done.load(Ordering::Relaxed) < target {
        let mut batch = vec![consumer.recv().await?.detach()];
        let deadline = tokio::time::Instant::now() + BATCH_WAIT;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(message) => batch.push(message?.detach()),
                Err(_) => break,
            }
        }
        let mut tx = pool.begin().await?;
        let mut last: HashMap<i32, i64> = HashMap::new();
        for message in &batch {
            let envelope: outbox::Envelope<ConsumedScoredV1> =
                serde_json::from_slice(message.payload().unwrap_or_default())?;
            sqlx::query("INSERT INTO essays (id, score) VALUES ($1, $2)")
                .bind(&envelope.data.essay_id)
                .bind(envelope.data.seq as i32)
                .execute(&mut *tx)
                .await?;
            last.insert(message.partition(), message.offset());
        }
        tx.commit().await?;
        for (partition, offset) in last {
            consumer.store_offset(batch[0].topic(), partition, offset)?;
        }
        consumer.commit_consumer_state(CommitMode::Async)?;
        done.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

/// `consumer_throughput`: a backlog consumed by the outbox consumer (inbox,
/// one-row handler, batches of 500) vs the plain baseline, and vs the same
/// consumer with one transaction per message.
pub async fn consumer_throughput(
    env: &Env,
    sizes: &Sizes,
    report: &mut Report,
) -> Result<(), BoxError> {
    let n = sizes.backlog;
    let broker = env.brokers.broker("consumer_throughput").await?;
    let prefix = create_topic(&broker, "consume").await?;
    let topic = topic_name(&prefix);
    produce_backlog(&broker, &topic, n).await?;
    let target = n as u64;

    let db = BenchDb::create(env, "cplain").await?;
    let plain = plain_rate(&broker, &topic, &db.pool, target).await?;
    db.drop_db().await?;
    let db = BenchDb::create(env, "cbatch").await?;
    let batched = outbox_rate(&broker, &prefix, &db, BATCH, target).await?;
    db.drop_db().await?;
    let db = BenchDb::create(env, "cone").await?;
    let per_message = outbox_rate(&broker, &prefix, &db, 1, PER_MESSAGE_SAMPLE.min(target)).await?;
    db.drop_db().await?;

    println!(
        "consumer_throughput: backlog={n} partitions={PARTITIONS} batch={BATCH} plain={plain:.0}/s outbox={batched:.0}/s outbox_one_tx_per_message={per_message:.0}/s (over {} events)",
        PER_MESSAGE_SAMPLE.min(target)
    );
    report.figure("consumer_throughput.plain_events_per_s", plain);
    report.figure("consumer_throughput.outbox_events_per_s", batched);
    report.figure(
        "consumer_throughput.one_tx_per_message_events_per_s",
        per_message,
    );
    report.target(
        "consumer_throughput.ratio_to_plain",
        batched / plain,
        Bound::AtLeast(0.7),
        "",
    );
    report.target(
        "consumer_throughput.speedup_over_one_tx_per_message",
        batched / per_message,
        Bound::AtLeast(10.0),
        "x",
    );
    Ok(())
}

/// What a child consumer process of `consumer_recovery` runs.
#[derive(Serialize, Deserialize)]
struct ChildSpec {
    db_url: String,
    bootstrap: String,
    prefix: String,
    group: String,
    instance: Option<String>,
}

/// In a child process (`CHILD_ENV` set): runs a consumer until killed and
/// returns true; otherwise false at once.
pub async fn run_child_if_asked() -> bool {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return false;
    };
    if let Err(error) = child(&spec).await {
        eprintln!("consumer child failed: {error}");
    }
    true
}

async fn child(spec: &str) -> Result<(), BoxError> {
    let spec: ChildSpec = serde_json::from_str(spec)?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect(&spec.db_url)
        .await?;
    let dispatcher = Dispatcher::new().register::<ConsumedScoredV1>(|event, tx| {
        Box::pin(async move {
            sqlx::query("INSERT INTO recovered (kafka_partition, seq) VALUES ($1, $2)")
                .bind(event.data.partition)
                .bind(event.data.seq)
                .execute(&mut **tx)
                .await?;
            Ok(())
        })
    });
    let mut kafka = ClientConfig::new();
    kafka
        .set("bootstrap.servers", &spec.bootstrap)
        .set("session.timeout.ms", SESSION_TIMEOUT_MS)
        .set("heartbeat.interval.ms", "1000");
    let config = ConsumerConfig {
        topic_prefix: spec.prefix,
        group_instance_id: spec.instance,
        ..ConsumerConfig::new(spec.group)
    };
    let consumer = Consumer::new(Outbox::new(pool, "bench"), kafka, dispatcher, config).await?;
    let _running = consumer.spawn();
    std::future::pending::<()>().await;
    Ok(())
}

struct ChildConsumer(Child);

impl ChildConsumer {
    fn start(spec: &ChildSpec) -> Result<Self, BoxError> {
        let child = Command::new(std::env::current_exe()?)
            .env(CHILD_ENV, serde_json::to_string(spec)?)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(Self(child))
    }

    fn sigkill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildConsumer {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// What `consumer_recovery` measures for one kind of membership, in one
/// group on one broker.
struct Recovery {
    /// Seconds from starting a member alone in a fresh group, nothing
    /// killed, until it consumes every partition: the broker's cost of a
    /// plain join, the floor a recovery cannot go below.
    first_start_s: f64,
    /// Seconds from the SIGKILL of one of two members (restarted at once,
    /// as an orchestrator restarts a pod) until every partition is consumed
    /// again.
    recovery_s: f64,
}

/// One member started alone in a group of its own (timed:
/// [`Recovery::first_start_s`]) and stopped; then two members of another
/// group, the second SIGKILLed and restarted at once (timed:
/// [`Recovery::recovery_s`]). Every process is the same child consumer,
/// on the same topic and broker.
async fn recovery(
    env: &Env,
    broker: &Broker,
    static_membership: bool,
) -> Result<Recovery, BoxError> {
    let db = BenchDb::create(env, "crecover").await?;
    sqlx::query(
        "CREATE TABLE recovered (kafka_partition INT NOT NULL, seq BIGINT NOT NULL,
                                 handled_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())",
    )
    .execute(&db.pool)
    .await?;
    let prefix = create_topic(broker, "recover").await?;
    let topic = topic_name(&prefix);
    let group = format!("bench-recover-{}", uuid::Uuid::new_v4());
    let alone = format!("bench-recover-alone-{}", uuid::Uuid::new_v4());
    let spec_in = |group: &str, instance: &str| ChildSpec {
        db_url: db.url.clone(),
        bootstrap: broker.bootstrap.clone(),
        prefix: prefix.clone(),
        group: group.to_owned(),
        instance: static_membership.then(|| instance.to_owned()),
    };
    let spec = |instance: &str| spec_in(&group, instance);

    // A steady stream: one event per partition every 20 ms.
    let producing = {
        let producer = producer(broker)?;
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut seq = 0i64;
            loop {
                for partition in 0..PARTITIONS {
                    let _ = send(&producer, &topic, seq, partition).await;
                    seq += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let measured = async {
        // The baseline: the same child alone in a group of its own,
        // nothing killed, from its start until it consumes every partition.
        let started = db_clock::now(&db.pool).await?;
        let mut first = ChildConsumer::start(&spec_in(&alone, "c0"))?;
        let first_start_s =
            wait_all_partitions_since(&db.pool, &started.sql(), Duration::from_secs(60))
                .await
                .map_err(|e| format!("a member alone in a fresh group: {e}"))?;
        first.sigkill();

        let _survivor = ChildConsumer::start(&spec("c0"))?;
        let mut victim = ChildConsumer::start(&spec("c1"))?;
        // Warm: both members joined and every partition consumed recently.
        tokio::time::sleep(Duration::from_secs(15)).await;
        wait_all_partitions_since(
            &db.pool,
            "now() - interval '1 second'",
            Duration::from_secs(60),
        )
        .await
        .map_err(|e| format!("two members warming up: {e}"))?;
        victim.sigkill();
        let killed = db_clock::now(&db.pool).await?;
        let _restarted = ChildConsumer::start(&spec("c1"))?;
        let recovery_s =
            wait_all_partitions_since(&db.pool, &killed.sql(), Duration::from_secs(120))
                .await
                .map_err(|e| format!("after the kill and restart: {e}"))?;
        Ok::<Recovery, BoxError>(Recovery {
            first_start_s,
            recovery_s,
        })
    }
    .await;
    producing.abort();
    db.drop_db().await?;
    measured
}

/// Waits until every partition has a row handled after `since` (an SQL
/// timestamp expression); the seconds from `since` until the last
/// partition's first such row.
async fn wait_all_partitions_since(
    pool: &PgPool,
    since: &str,
    timeout: Duration,
) -> Result<f64, BoxError> {
    let sql = format!(
        "SELECT count(*), coalesce(extract(epoch FROM max(first) - ({since}))::float8, 0)
         FROM (SELECT min(handled_at) AS first FROM recovered
               WHERE handled_at > ({since}) GROUP BY kafka_partition) p"
    );
    let deadline = Instant::now() + timeout;
    loop {
        let (partitions, seconds): (i64, f64) = sqlx::query_as(&sql).fetch_one(pool).await?;
        if partitions >= i64::from(PARTITIONS) {
            return Ok(seconds);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {partitions} of {PARTITIONS} partitions consumed within {timeout:?}"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Database time, so the kill and the handlers' timestamps share a clock.
mod db_clock {
    use super::BoxError;
    use sqlx::PgPool;

    pub struct DbTime(String);

    impl DbTime {
        pub fn sql(&self) -> String {
            format!("'{}'::timestamptz", self.0)
        }
    }

    pub async fn now(pool: &PgPool) -> Result<DbTime, BoxError> {
        let text: String = sqlx::query_scalar("SELECT clock_timestamp()::text")
            .fetch_one(pool)
            .await?;
        Ok(DbTime(text))
    }
}

/// `consumer_recovery`: one of two consumers SIGKILLed and restarted; time
/// until all partitions are consumed again, with static membership and
/// (same run, same broker) with dynamic membership, each next to the time
/// a member alone in a fresh group took to consume every partition when
/// nothing was killed.
///
/// On Tansu 0.6 the static figures cannot go below about 6 s: its group
/// coordinator holds every JoinGroup and every SyncGroup of a member with a
/// `group.instance.id` until at least 3 s have passed since the request
/// arrived (`PAUSE_MS` in tansu-broker's `coordinator/group/administrator.rs`),
/// and a member needs one of each before it is assigned partitions. The
/// static first start is that floor as this broker imposes it; the
/// difference is what a kill and restart add over a plain static join.
pub async fn consumer_recovery(
    env: &Env,
    _sizes: &Sizes,
    report: &mut Report,
) -> Result<(), BoxError> {
    let broker = env.brokers.broker("consumer_recovery").await?;
    let fixed = recovery(env, &broker, true).await?;
    let dynamic = recovery(env, &broker, false).await?;
    let added = fixed.recovery_s - fixed.first_start_s;
    println!(
        "consumer_recovery: partitions={PARTITIONS} session.timeout.ms={SESSION_TIMEOUT_MS} \
         static={:.2}s static_first_start={:.2}s added_by_kill={added:.2}s \
         dynamic={:.2}s dynamic_first_start={:.2}s",
        fixed.recovery_s, fixed.first_start_s, dynamic.recovery_s, dynamic.first_start_s,
    );
    println!(
        "consumer_recovery: static_first_start is the broker's floor for any static member: \
         Tansu 0.6 holds each JoinGroup and SyncGroup of a member with group.instance.id \
         for at least 3 s (PAUSE_MS), so no static recovery on it can meet the 5 s target; \
         added_by_kill is what a kill and restart cost over that floor"
    );
    report.figure(
        "consumer_recovery.static_first_start_s",
        fixed.first_start_s,
    );
    report.figure("consumer_recovery.static_added_by_kill_s", added);
    report.figure("consumer_recovery.dynamic_membership_s", dynamic.recovery_s);
    report.figure(
        "consumer_recovery.dynamic_first_start_s",
        dynamic.first_start_s,
    );
    report.target(
        "consumer_recovery.static_membership_s",
        fixed.recovery_s,
        Bound::Below(5.0),
        &format!(
            " s (this broker's static join floor, same run: {:.2} s)",
            fixed.first_start_s
        ),
    );
    Ok(())
}
