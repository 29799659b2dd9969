//! Batched consumption against a real Postgres and broker: a batch with a
//! failing message isolates it and applies the others once; batch handlers
//! get runs of events with the inbox's semantics; partitions run in
//! parallel in order per aggregate; consumer processes SIGKILLed in the
//! middle of a batch's transaction or between its commit and the offset
//! commit leave every effect exactly once, counted from the database.

mod fixtures;
mod support;

use outbox::consume::{
    dead_letter_headers as dlq, Consumer, ConsumerConfig, ConsumerMetrics, Dispatcher,
    HandlerError, Permanent,
};
use outbox::{Envelope, EnvelopeMetadata, Outbox, OutboxEvent};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The consumed event: the `seq`-th event of essay `essay_id`.
#[derive(Debug, Clone, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(topic = "batches.essay-scored.v1", aggregate = "essay")]
struct BatchScoredV1 {
    #[outbox_event(aggregate_id)]
    essay_id: String,
    seq: i64,
}

/// The follow-up event handlers publish.
#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(topic = "batches.score-noted.v1", aggregate = "essay")]
struct ScoreNotedV1 {
    #[outbox_event(aggregate_id)]
    essay_id: String,
    seq: i64,
}

struct Env {
    db: support::TestDatabase,
    bootstrap: String,
    prefix: String,
    input: String,
    producer: FutureProducer,
    group: String,
}

/// A sent event: what the effects must show.
#[derive(Clone)]
struct Sent {
    event_id: Uuid,
    correlation_id: Uuid,
    essay_id: String,
    seq: i64,
}

async fn setup(label: &str, partitions: i32) -> Env {
    support::init_tracing();
    let bootstrap = support::bootstrap_servers();
    let db = support::TestDatabase::create(label).await;
    outbox::migrate(&db.pool).await.expect("migrations apply");
    // No unique key on purpose: a repeated effect shows as a second row.
    sqlx::query(
        "CREATE TABLE effects (id BIGSERIAL PRIMARY KEY, event_id UUID NOT NULL,
                               essay_id TEXT NOT NULL, seq BIGINT NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let prefix = support::unique(label);
    let input = format!("{prefix}{}", BatchScoredV1::REGISTRATION.topic);
    let dead = format!("{input}.dlq");
    support::create_topics(&bootstrap, &[input.clone(), dead], partitions).await;
    let producer: FutureProducer = fixtures::kafka(&bootstrap).create().unwrap();
    Env {
        db,
        prefix: prefix.clone(),
        input,
        producer,
        group: format!("{prefix}grader"),
        bootstrap,
    }
}

impl Env {
    fn config(&self) -> ConsumerConfig {
        ConsumerConfig {
            topic_prefix: self.prefix.clone(),
            max_retries: 2,
            retry_backoff: Duration::from_millis(20),
            max_retry_backoff: Duration::from_millis(100),
            batch_size: 100,
            ..ConsumerConfig::new(self.group.clone())
        }
    }

    async fn consumer(&self, dispatcher: Dispatcher, config: ConsumerConfig) -> Consumer {
        Consumer::new(
            Outbox::new(self.db.pool.clone(), "grader"),
            fixtures::kafka(&self.bootstrap),
            dispatcher,
            config,
        )
        .await
        .expect("consumer starts")
    }

    /// Produces `count` events over `essays` essays (key = essay id, so one
    /// essay's events share a partition), each essay's `seq` increasing.
    async fn produce(&self, count: i64, essays: i64) -> Vec<Sent> {
        let mut sent = Vec::new();
        for i in 0..count {
            let event = Sent {
                event_id: Uuid::now_v7(),
                correlation_id: Uuid::new_v4(),
                essay_id: format!("essay-{}", i % essays),
                seq: i,
            };
            self.send(&event).await;
            sent.push(event);
        }
        sent
    }

    async fn send(&self, event: &Sent) {
        let bytes = serde_json::to_vec(&Envelope {
            event_id: event.event_id,
            event_type: "BatchScoredV1".into(),
            version: 1,
            event_timestamp: chrono::Utc::now(),
            source_service: "grader".into(),
            correlation_id: event.correlation_id,
            aggregate_type: "essay".into(),
            aggregate_id: event.essay_id.clone(),
            data: BatchScoredV1 {
                essay_id: event.essay_id.clone(),
                seq: event.seq,
            },
            metadata: EnvelopeMetadata::default(),
        })
        .unwrap();
        let event_id = event.event_id.to_string();
        let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
            key: "event_id",
            value: Some(event_id.as_bytes()),
        });
        self.producer
            .send(
                FutureRecord::to(&self.input)
                    .key(&event.essay_id)
                    .payload(&bytes)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("test message produced");
    }

    /// Effects as (event id, essay id, seq), in the order they committed.
    async fn effects(&self) -> Vec<(Uuid, String, i64)> {
        sqlx::query_as("SELECT event_id, essay_id, seq FROM effects ORDER BY id")
            .fetch_all(&self.db.pool)
            .await
            .unwrap()
    }

    async fn effect_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM effects")
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    async fn wait_effects(&self, n: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.effect_count().await < n {
            assert!(
                Instant::now() < deadline,
                "{} of {n} effects after {timeout:?}",
                self.effect_count().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every sent event has exactly one effect, and each essay's effects
/// committed in `seq` order.
fn assert_exactly_once_in_order(sent: &[Sent], effects: &[(Uuid, String, i64)]) {
    let mut per_event: BTreeMap<Uuid, usize> = BTreeMap::new();
    for (event_id, _, _) in effects {
        *per_event.entry(*event_id).or_default() += 1;
    }
    let repeated = per_event.values().filter(|n| **n > 1).count();
    let missing = sent
        .iter()
        .filter(|s| !per_event.contains_key(&s.event_id))
        .count();
    let mut last: BTreeMap<&str, i64> = BTreeMap::new();
    let mut out_of_order = 0;
    for (_, essay, seq) in effects {
        if let Some(previous) = last.insert(essay, *seq) {
            if previous > *seq {
                out_of_order += 1;
            }
        }
    }
    assert_eq!(
        (effects.len(), repeated, missing, out_of_order),
        (sent.len(), 0, 0, 0),
        "(effects, repeated effects, missing effects, order violations)"
    );
}

/// The one-row handler, publishing a follow-up; fails (permanently) for
/// the essays in `poison`, and while `failures` is above zero.
fn dispatcher(poison: &'static [&'static str], failures: Arc<AtomicU32>) -> Dispatcher {
    Dispatcher::new().register::<BatchScoredV1>(move |event, tx| {
        let failures = failures.clone();
        Box::pin(async move {
            sqlx::query("INSERT INTO effects (event_id, essay_id, seq) VALUES ($1, $2, $3)")
                .bind(event.event_id)
                .bind(&event.data.essay_id)
                .bind(event.data.seq)
                .execute(&mut **tx)
                .await?;
            tx.publish(&ScoreNotedV1 {
                essay_id: event.data.essay_id.clone(),
                seq: event.data.seq,
            })
            .await?;
            if poison.contains(&event.data.essay_id.as_str()) {
                return Err(Permanent::new("poisoned essay").into());
            }
            if failures.load(Ordering::SeqCst) > 0 {
                failures.fetch_sub(1, Ordering::SeqCst);
                return Err(HandlerError::from("injected transient failure"));
            }
            Ok(())
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_message_is_isolated_and_the_rest_of_its_batch_happens_once() {
    let env = setup("isolate", 1).await;
    let sent = env.produce(60, 6).await;
    let dead_letters = support::Collector::start(&env.bootstrap, &[format!("{}.dlq", env.input)]);
    let failures = Arc::new(AtomicU32::new(1));
    let metrics = ConsumerMetrics::new();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let handle = env
        .consumer(dispatcher(&["essay-3"], failures), env.config())
        .await
        .with_metrics(metrics)
        .spawn();
    let stats = support::wait_finished(&handle, 60).await;
    let poisoned: Vec<&Sent> = sent.iter().filter(|s| s.essay_id == "essay-3").collect();
    assert_eq!(
        (stats.handled, stats.dead_lettered, stats.duplicates),
        (50, 10, 0),
        "{stats:?}"
    );
    assert!(stats.batch_fallbacks >= 1, "{stats:?}");
    let healthy: Vec<Sent> = sent
        .iter()
        .filter(|s| s.essay_id != "essay-3")
        .cloned()
        .collect();
    assert_exactly_once_in_order(&healthy, &env.effects().await);

    // One follow-up per handled event, carrying that event's correlation id.
    let followups: Vec<(String, String)> = sqlx::query_as(
        "SELECT aggregate_id || '/' || (event_data->'data'->>'seq'), headers->>'correlation_id'
         FROM event_outbox",
    )
    .fetch_all(&env.db.pool)
    .await
    .unwrap();
    let expected: BTreeMap<String, String> = healthy
        .iter()
        .map(|s| {
            (
                format!("{}/{}", s.essay_id, s.seq),
                s.correlation_id.to_string(),
            )
        })
        .collect();
    assert_eq!(
        followups.into_iter().collect::<BTreeMap<_, _>>(),
        expected,
        "each follow-up keeps its own event's correlation id"
    );

    let dead = dead_letters.wait_for(10, Duration::from_secs(30)).await;
    let dead_ids: Vec<String> = dead.iter().map(|m| m.headers["event_id"].clone()).collect();
    let poisoned_ids: Vec<String> = poisoned.iter().map(|s| s.event_id.to_string()).collect();
    assert_eq!(
        dead_ids, poisoned_ids,
        "the poisoned essay's events, in order"
    );
    assert!(
        dead.iter()
            .all(|m| m.headers[dlq::ERROR_KIND] == "handler_failed"
                && m.headers[dlq::ATTEMPTS] == "1")
    );

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for line in [
        "outbox_consumer_messages_handled_total 50",
        "outbox_consumer_messages_dead_lettered_total 10",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing in\n{text}"
        );
    }
    assert!(
        !text.contains("outbox_consumer_batch_fallbacks_total 0"),
        "{text}"
    );
    handle.shutdown().await.unwrap();
    dead_letters.stop();
    env.db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_handlers_get_runs_of_new_events_and_redeliveries_are_skipped() {
    let env = setup("batchhandler", 1).await;
    let sent = env.produce(40, 4).await;
    // Redeliveries of the first ten, after the originals.
    for event in &sent[..10] {
        env.send(event).await;
    }
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let dispatcher = Dispatcher::new().register_batch::<BatchScoredV1>(move |events, tx| {
        counted.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
            let essays: Vec<&str> = events.iter().map(|e| e.data.essay_id.as_str()).collect();
            let seqs: Vec<i64> = events.iter().map(|e| e.data.seq).collect();
            sqlx::query(
                "INSERT INTO effects (event_id, essay_id, seq)
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[])",
            )
            .bind(&ids)
            .bind(&essays)
            .bind(&seqs)
            .execute(&mut **tx)
            .await?;
            Ok(())
        })
    });
    let handle = env.consumer(dispatcher, env.config()).await.spawn();
    let stats = support::wait_finished(&handle, 50).await;
    assert_eq!((stats.handled, stats.duplicates), (40, 10), "{stats:?}");
    assert_exactly_once_in_order(&sent, &env.effects().await);
    let calls = calls.load(Ordering::SeqCst);
    assert!(
        (1..=10).contains(&calls),
        "{calls} handler calls for 40 events: runs, not one call per event"
    );
    handle.shutdown().await.unwrap();
    env.db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_are_handled_in_parallel_each_in_order() {
    let env = setup("parallel", 4).await;
    let sent = env.produce(800, 40).await;
    let handle = env
        .consumer(dispatcher(&[], Arc::default()), env.config())
        .await
        .spawn();
    let stats = support::wait_finished(&handle, 800).await;
    assert_eq!(stats.handled, 800, "{stats:?}");
    assert!(
        stats.batches < 200,
        "{} batches for 800 messages: batched",
        stats.batches
    );
    assert_exactly_once_in_order(&sent, &env.effects().await);
    let partitions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT kafka_partition) FROM event_inbox WHERE consumer = $1",
    )
    .bind(&env.group)
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(partitions, 4);
    handle.shutdown().await.unwrap();
    env.db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_partition_queue_is_consumed_whole_and_in_order() {
    let env = setup("backlog", 1).await;
    // Batches of 10 and a backlog of 3,000: the receiving loop outruns the
    // worker and waits on the partition's queue of 520 messages.
    let sent = env.produce(3_000, 30).await;
    let config = ConsumerConfig {
        batch_size: 10,
        batch_wait: Duration::ZERO,
        ..env.config()
    };
    let handle = env
        .consumer(dispatcher(&[], Arc::default()), config)
        .await
        .spawn();
    let stats = support::wait_finished(&handle, 3_000).await;
    assert_eq!((stats.handled, stats.duplicates), (3_000, 0), "{stats:?}");
    assert_exactly_once_in_order(&sent, &env.effects().await);
    handle.shutdown().await.unwrap();
    env.db.drop_db().await;
}

const CHILD_ENV: &str = "OUTBOX_TEST_BATCH_CONSUMER_CHILD";
const MID_BATCH: &str = "OUTBOX-CHILD-MID-BATCH";
const COMMITTED: &str = "OUTBOX-CHILD-BATCH-COMMITTED";

/// What a child consumer process does.
#[derive(Serialize, Deserialize)]
struct ChildSpec {
    db_url: String,
    bootstrap: String,
    prefix: String,
    group: String,
    /// Static membership under this id, or dynamic.
    instance: Option<String>,
    /// Print `MID_BATCH` and hang inside the handler of the event with this
    /// seq (after the batch's earlier events were handled in the same
    /// transaction).
    hang_at_seq: Option<i64>,
    /// Print `COMMITTED` and hang after the first batch's commit, before
    /// its offset is stored.
    hang_after_commit: bool,
}

/// A short session, so a killed member's partitions move on quickly.
fn child_kafka(bootstrap: &str) -> ClientConfig {
    let mut kafka = fixtures::kafka(bootstrap);
    kafka
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
    kafka
}

fn say(mark: &str) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{mark}");
    let _ = out.flush();
}

/// Not a test of its own: the consumer process the next test starts (this
/// test binary, re-executed with `CHILD_ENV` set) and kills with SIGKILL.
/// Without `CHILD_ENV` it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_batch_consumer_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let spec: ChildSpec = serde_json::from_str(&spec).unwrap();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let pool = sqlx::PgPool::connect(&spec.db_url).await.unwrap();
    let hang_at = spec.hang_at_seq;
    let dispatcher = Dispatcher::new().register::<BatchScoredV1>(move |event, tx| {
        Box::pin(async move {
            sqlx::query("INSERT INTO effects (event_id, essay_id, seq) VALUES ($1, $2, $3)")
                .bind(event.event_id)
                .bind(&event.data.essay_id)
                .bind(event.data.seq)
                .execute(&mut **tx)
                .await?;
            if hang_at == Some(event.data.seq) {
                say(MID_BATCH);
                std::future::pending::<()>().await;
            }
            Ok(())
        })
    });
    let config = ConsumerConfig {
        topic_prefix: spec.prefix,
        group_instance_id: spec.instance,
        batch_size: 50,
        ..ConsumerConfig::new(spec.group)
    };
    let mut consumer = Consumer::new(
        Outbox::new(pool, "grader"),
        child_kafka(&spec.bootstrap),
        dispatcher,
        config,
    )
    .await
    .unwrap();
    if spec.hang_after_commit {
        consumer.fault_after_db_commit(|_| {
            say(COMMITTED);
            Box::pin(std::future::pending())
        });
    }
    let _running = consumer.spawn();
    std::future::pending::<()>().await;
}

/// A child consumer process; killed (SIGKILL) when dropped, printing its
/// log when the test fails.
struct ChildConsumer {
    child: Child,
    marks: std::sync::mpsc::Receiver<String>,
    log: std::path::PathBuf,
}

impl ChildConsumer {
    fn start(spec: &ChildSpec) -> ChildConsumer {
        let log = std::env::temp_dir().join(format!("{}log", support::unique("batch-consumer")));
        let file = std::fs::File::create(&log).expect("consumer log file");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_batch_consumer_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, serde_json::to_string(spec).unwrap())
            .env("RUST_LOG", "info,rdkafka=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(file)
            .spawn()
            .expect("consumer process starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, marks) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        ChildConsumer { child, marks, log }
    }

    fn wait_for(&self, mark: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.marks.recv_timeout(left) {
                Ok(line) if line.contains(mark) => return,
                Ok(_) => {}
                Err(_) => panic!("the consumer process did not print {mark} within {timeout:?}"),
            }
        }
    }

    fn sigkill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for ChildConsumer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- log of consumer process {} ---\n{log}", self.child.id());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_processes_sigkilled_mid_batch_and_after_a_batch_commit_apply_each_effect_once() {
    let env = setup("killbatch", 2).await;
    let sent = env.produce(600, 20).await;
    let spec =
        |instance: Option<&str>, hang_at_seq: Option<i64>, hang_after_commit: bool| ChildSpec {
            db_url: env.db.url.clone(),
            bootstrap: env.bootstrap.clone(),
            prefix: env.prefix.clone(),
            group: env.group.clone(),
            instance: instance.map(str::to_owned),
            hang_at_seq,
            hang_after_commit,
        };
    // Killed right after its first batch committed, before the offset was
    // stored: the batch comes back and is skipped.
    let first = ChildConsumer::start(&spec(Some("a"), None, true));
    first.wait_for(COMMITTED, Duration::from_secs(90));
    first.sigkill();
    let committed = env.effect_count().await;
    assert!(committed > 0, "the first batch committed");

    // Killed inside a batch's transaction, the events before seq 300 of
    // that batch already written in it: none of them stays.
    let second = ChildConsumer::start(&spec(Some("a"), Some(300), false));
    second.wait_for(MID_BATCH, Duration::from_secs(90));
    let before_kill = env.effect_count().await;
    second.sigkill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.effect_count().await,
        before_kill,
        "the killed transaction left nothing behind"
    );

    // Two members share the rest through a rebalance.
    let _a = ChildConsumer::start(&spec(None, None, false));
    let _b = ChildConsumer::start(&spec(None, None, false));
    env.wait_effects(600, Duration::from_secs(120)).await;
    // Anything left to redeliver would show up within a few seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_exactly_once_in_order(&sent, &env.effects().await);
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM event_inbox WHERE consumer = $1")
        .bind(&env.group)
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(inbox, 600, "one inbox row per event");
    env.db.drop_db().await;
}

#[tokio::test]
async fn bad_batch_settings_are_refused_before_connecting() {
    let db = support::TestDatabase::create("batchconfig").await;
    outbox::migrate(&db.pool).await.unwrap();
    for (config, setting) in [
        (
            ConsumerConfig {
                batch_size: 0,
                ..ConsumerConfig::new("g")
            },
            "batch_size",
        ),
        (
            ConsumerConfig {
                group_instance_id: Some("two words".into()),
                ..ConsumerConfig::new("g")
            },
            "group_instance_id",
        ),
    ] {
        let err = Consumer::new(
            Outbox::new(db.pool.clone(), "grader"),
            fixtures::kafka("127.0.0.1:1"),
            dispatcher(&[], Arc::default()),
            config,
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains(setting), "{err}");
    }
    db.drop_db().await;
}
