//! The consumer side against a real Postgres and broker: redeliveries have
//! one effect, failed handlers leave nothing behind, a consumer killed
//! between its database commit and its offset commit does not repeat the
//! effect, and messages that cannot be decoded go to the dead-letter topic
//! while consumption continues.

mod fixtures;
mod support;

use outbox::consume::{
    dead_letter_headers as dlq, ConsumeError, Consumer, ConsumerConfig, Dispatcher, Inbox,
    InboxOutcome,
};
use outbox::{Envelope, EnvelopeMetadata, Outbox, OutboxEvent, Relay, RelayHandle};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The consumed event.
#[derive(Debug, Clone, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(
    topic = "consumer.essay-scored.v1",
    aggregate = "essay",
    version = 2,
    allow_topic_version_mismatch
)]
struct EssayScoredV1 {
    #[outbox_event(aggregate_id)]
    essay_id: String,
    points: i64,
}

/// The follow-up event the handler publishes in its transaction.
#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(topic = "consumer.score-recorded.v1", aggregate = "essay")]
struct ScoreRecordedV1 {
    #[outbox_event(aggregate_id)]
    essay_id: String,
    total: i64,
}

struct Env {
    db: support::TestDatabase,
    bootstrap: String,
    prefix: String,
    input: String,
    followups: support::Collector,
    dead_letters: support::Collector,
    relay: RelayHandle,
    producer: FutureProducer,
    group: String,
}

async fn setup(label: &str) -> Env {
    support::init_tracing();
    let bootstrap = support::bootstrap_servers();
    let db = support::TestDatabase::create(label).await;
    outbox::migrate(&db.pool).await.expect("migrations apply");
    sqlx::query(
        "CREATE TABLE scores (essay_id TEXT PRIMARY KEY, total BIGINT NOT NULL, applied INTEGER NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let prefix = support::unique(label);
    let input = format!("{prefix}{}", EssayScoredV1::REGISTRATION.topic);
    let followup = format!("{prefix}{}", ScoreRecordedV1::REGISTRATION.topic);
    let dead = format!("{input}.dlq");
    let mut topics = fixtures::prefixed_topics(&prefix);
    topics.push(dead.clone());
    support::create_topics(&bootstrap, &topics, 1).await;
    let followups = support::Collector::start(&bootstrap, &[followup]);
    let dead_letters = support::Collector::start(&bootstrap, &[dead]);
    let relay = Relay::new(
        db.pool.clone(),
        fixtures::kafka(&bootstrap),
        fixtures::relay_config(&prefix),
    )
    .await
    .expect("relay starts")
    .spawn();
    let producer: FutureProducer = fixtures::kafka(&bootstrap).create().unwrap();
    Env {
        db,
        prefix: prefix.clone(),
        input,
        followups,
        dead_letters,
        relay,
        producer,
        group: format!("{prefix}scorer"),
        bootstrap,
    }
}

impl Env {
    async fn teardown(self) {
        self.relay.shutdown().await.unwrap();
        self.followups.stop();
        self.dead_letters.stop();
        self.db.drop_db().await;
    }

    fn config(&self, max_retries: u32) -> ConsumerConfig {
        ConsumerConfig {
            topic_prefix: self.prefix.clone(),
            max_retries,
            retry_backoff: Duration::from_millis(50),
            max_retry_backoff: Duration::from_millis(300),
            ..ConsumerConfig::new(self.group.clone())
        }
    }

    async fn consumer(&self, dispatcher: Dispatcher, max_retries: u32) -> Consumer {
        let outbox = Outbox::new(self.db.pool.clone(), "scorer");
        Consumer::new(
            outbox,
            fixtures::kafka(&self.bootstrap),
            dispatcher,
            self.config(max_retries),
        )
        .await
        .expect("consumer starts")
    }

    /// Produces a message as a plain producer would (a redelivery, a
    /// replay, or a foreign producer); returns its offset.
    async fn produce(&self, payload: Option<&[u8]>, headers: &[(&str, String)]) -> i64 {
        let mut h = OwnedHeaders::new();
        for (key, value) in headers {
            h = h.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let mut record: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(&self.input).key("k").headers(h);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        let (_, offset) = self
            .producer
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| e)
            .expect("test message produced");
        offset
    }

    async fn produce_event(&self, event_id: Uuid, bytes: &[u8]) -> i64 {
        self.produce(
            Some(bytes),
            &[
                ("event_id", event_id.to_string()),
                ("event_type", "EssayScoredV1".into()),
            ],
        )
        .await
    }

    async fn score(&self, essay_id: &str) -> Option<(i64, i32)> {
        sqlx::query_as("SELECT total, applied FROM scores WHERE essay_id = $1")
            .bind(essay_id)
            .fetch_optional(&self.db.pool)
            .await
            .unwrap()
    }

    async fn inbox_rows(&self, event_id: Uuid) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM event_inbox WHERE event_id = $1")
            .bind(event_id)
            .fetch_one(&self.db.pool)
            .await
            .unwrap()
    }

    fn committed_offset(&self) -> i64 {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", &self.group)
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.input, 0);
        let got = c
            .committed_offsets(tpl, Duration::from_secs(10))
            .expect("committed offsets");
        match got.find_partition(&self.input, 0).map(|p| p.offset()) {
            Some(Offset::Offset(n)) => n,
            _ => -1,
        }
    }
}

/// The envelope bytes the relay would produce for `event`.
fn envelope(
    event_id: Uuid,
    correlation_id: Uuid,
    event_type: &str,
    version: u32,
    data: serde_json::Value,
) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        event_id,
        event_type: event_type.into(),
        version,
        event_timestamp: chrono::Utc::now(),
        source_service: "grader".into(),
        correlation_id,
        aggregate_type: "essay".into(),
        aggregate_id: data["essay_id"].as_str().unwrap_or("x").into(),
        data,
        metadata: EnvelopeMetadata::default(),
    })
    .unwrap()
}

fn scored(event_id: Uuid, correlation_id: Uuid, essay_id: &str, points: i64) -> Vec<u8> {
    envelope(
        event_id,
        correlation_id,
        "EssayScoredV1",
        2,
        serde_json::json!({"essay_id": essay_id, "points": points}),
    )
}

/// The handler: adds the points, publishes `ScoreRecordedV1`, and fails
/// afterwards (all of it rolled back) while `failures` is above zero.
fn dispatcher(failures: Arc<AtomicU32>) -> Dispatcher {
    Dispatcher::new().register::<EssayScoredV1>(move |event, tx| {
        let failures = failures.clone();
        Box::pin(async move {
            let (total,): (i64,) = sqlx::query_as(
                "INSERT INTO scores (essay_id, total, applied) VALUES ($1, $2, 1)
                 ON CONFLICT (essay_id) DO UPDATE
                 SET total = scores.total + EXCLUDED.total, applied = scores.applied + 1
                 RETURNING total",
            )
            .bind(&event.data.essay_id)
            .bind(event.data.points)
            .fetch_one(&mut **tx)
            .await?;
            tx.publish(&ScoreRecordedV1 {
                essay_id: event.data.essay_id.clone(),
                total,
            })
            .await?;
            if failures.load(Ordering::SeqCst) > 0 {
                failures.fetch_sub(1, Ordering::SeqCst);
                return Err("injected failure after the writes and the publish".into());
            }
            Ok(())
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_message_delivered_three_times_has_one_effect() {
    let env = setup("thrice").await;
    let (event_id, correlation_id) = (Uuid::now_v7(), Uuid::new_v4());
    let bytes = scored(event_id, correlation_id, "e-1", 7);
    for _ in 0..3 {
        env.produce_event(event_id, &bytes).await;
    }
    let handle = env.consumer(dispatcher(Arc::default()), 3).await.spawn();
    let stats = support::wait_finished(&handle, 3).await;
    assert_eq!(
        (stats.handled, stats.duplicates, stats.dead_lettered),
        (1, 2, 0),
        "{stats:?}"
    );
    assert_eq!(env.score("e-1").await, Some((7, 1)), "effect applied once");
    assert_eq!(env.inbox_rows(event_id).await, 1);
    let row: (String, String, i32, i64) = sqlx::query_as(
        "SELECT consumer, topic, kafka_partition, kafka_offset FROM event_inbox WHERE event_id = $1",
    )
    .bind(event_id)
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(
        row,
        (env.group.clone(), env.input.clone(), 0, 0),
        "the first delivery is recorded"
    );

    env.followups.wait_for(1, Duration::from_secs(30)).await;
    let followups = env.followups.settle(Duration::from_secs(2)).await;
    assert_eq!(followups.len(), 1, "one follow-up event");
    assert_eq!(
        followups[0].headers["correlation_id"],
        correlation_id.to_string(),
        "follow-ups carry the consumed event's correlation id"
    );
    assert_eq!(followups[0].payload["data"]["total"], 7);

    handle.shutdown().await.unwrap();
    assert_eq!(env.committed_offset(), 3, "all three deliveries committed");
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_handler_leaves_nothing_and_redelivery_succeeds_once() {
    let env = setup("handlerfail").await;
    let failures = Arc::new(AtomicU32::new(0));
    let handle = env.consumer(dispatcher(failures.clone()), 2).await.spawn();

    // Fails twice, succeeds on the third attempt (within max_retries = 2).
    failures.store(2, Ordering::SeqCst);
    let first = Uuid::now_v7();
    env.produce_event(first, &scored(first, Uuid::new_v4(), "e-1", 5))
        .await;
    let stats = support::wait_finished(&handle, 1).await;
    assert_eq!(
        (stats.handled, stats.retries, stats.dead_lettered),
        (1, 2, 0),
        "{stats:?}"
    );
    assert_eq!(
        env.score("e-1").await,
        Some((5, 1)),
        "rolled-back attempts left no trace"
    );

    // Fails on every attempt: dead-lettered with nothing committed.
    failures.store(u32::MAX, Ordering::SeqCst);
    let second = Uuid::now_v7();
    let bytes = scored(second, Uuid::new_v4(), "e-2", 9);
    env.produce_event(second, &bytes).await;
    let stats = support::wait_finished(&handle, 2).await;
    assert_eq!((stats.handled, stats.dead_lettered), (1, 1), "{stats:?}");
    let dead = env.dead_letters.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(dead[0].headers[dlq::ERROR_KIND], "handler_failed");
    assert_eq!(dead[0].headers[dlq::ATTEMPTS], "3");
    assert!(
        dead[0].headers[dlq::ERROR].contains("injected failure"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(
        dead[0].headers["event_id"],
        second.to_string(),
        "original headers kept"
    );
    assert_eq!(
        dead[0].payload["event_id"],
        second.to_string(),
        "original value kept"
    );
    assert_eq!(env.inbox_rows(second).await, 0, "no inbox row");
    assert_eq!(env.score("e-2").await, None, "no state change");
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_outbox WHERE aggregate_id = 'e-2'")
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
    assert_eq!(pending, 0, "no follow-up event in the outbox");

    // Redelivery (a replay from the dead-letter topic) succeeds, once.
    failures.store(0, Ordering::SeqCst);
    env.produce_event(second, &bytes).await;
    let stats = support::wait_finished(&handle, 3).await;
    assert_eq!(
        (stats.handled, stats.duplicates, stats.dead_lettered),
        (2, 0, 1),
        "{stats:?}"
    );
    assert_eq!(env.score("e-2").await, Some((9, 1)));
    assert_eq!(env.inbox_rows(second).await, 1);

    env.followups.wait_for(2, Duration::from_secs(30)).await;
    let followups = env.followups.settle(Duration::from_secs(2)).await;
    let ids: Vec<&str> = followups
        .iter()
        .map(|m| m.headers["aggregate_id"].as_str())
        .collect();
    assert_eq!(
        ids,
        ["e-1", "e-2"],
        "exactly one follow-up per handled event"
    );
    handle.shutdown().await.unwrap();
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_between_db_commit_and_offset_commit_does_not_repeat_the_effect() {
    let env = setup("killed").await;
    let event_id = Uuid::now_v7();
    env.produce_event(event_id, &scored(event_id, Uuid::new_v4(), "e-1", 3))
        .await;

    // The first consumer stops dead right after its transaction committed.
    let (committed_tx, committed_rx) = tokio::sync::oneshot::channel::<()>();
    let committed_tx = std::sync::Mutex::new(Some(committed_tx));
    let mut first = env.consumer(dispatcher(Arc::default()), 3).await;
    first.fault_after_db_commit(move |_| {
        if let Some(tx) = committed_tx.lock().unwrap().take() {
            let _ = tx.send(());
        }
        Box::pin(std::future::pending())
    });
    let first = first.spawn();
    tokio::time::timeout(Duration::from_secs(60), committed_rx)
        .await
        .expect("handled")
        .unwrap();
    assert_eq!(
        env.score("e-1").await,
        Some((3, 1)),
        "the database transaction committed"
    );
    assert_eq!(env.inbox_rows(event_id).await, 1);
    first.abort().await; // killed: its offset was never stored nor committed
    assert_eq!(env.committed_offset(), -1, "no offset committed");

    // On restart the message is redelivered, recognised, and its offset advances.
    let second = env.consumer(dispatcher(Arc::default()), 3).await.spawn();
    let stats = support::wait_finished(&second, 1).await;
    assert_eq!(
        (stats.handled, stats.duplicates),
        (0, 1),
        "redelivered and skipped: {stats:?}"
    );
    second.shutdown().await.unwrap();
    assert_eq!(
        env.committed_offset(),
        1,
        "offset advanced past the message"
    );
    assert_eq!(env.score("e-1").await, Some((3, 1)), "effect still once");

    env.followups.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(
        env.followups.settle(Duration::from_secs(2)).await.len(),
        1,
        "one follow-up event"
    );
    env.teardown().await;
}

const CHILD_ENV: &str = "OUTBOX_TEST_CONSUMER_CHILD";
const CHILD_MARK: &str = "OUTBOX-CHILD-DB-COMMITTED";

/// Kafka settings for the process test: a killed member leaves the group
/// after 6 s instead of the default 45 s.
fn short_session(bootstrap: &str) -> ClientConfig {
    let mut kafka = fixtures::kafka(bootstrap);
    kafka
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
    kafka
}

/// Not a test of its own: the consumer process the next test starts (this
/// test binary, re-executed with `CHILD_ENV` set) and kills with SIGKILL
/// right after its database commit. Without `CHILD_ENV` it does nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_consumer_process() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let [url, bootstrap, prefix, group]: [String; 4] = serde_json::from_str(&spec).unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let config = ConsumerConfig {
        topic_prefix: prefix,
        ..ConsumerConfig::new(group)
    };
    let mut consumer = Consumer::new(
        Outbox::new(pool, "scorer"),
        short_session(&bootstrap),
        dispatcher(Arc::default()),
        config,
    )
    .await
    .unwrap();
    consumer.fault_after_db_commit(|_| {
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{CHILD_MARK}");
        let _ = out.flush();
        Box::pin(std::future::pending())
    });
    let _running = consumer.spawn();
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_process_sigkilled_between_db_commit_and_offset_commit_does_not_repeat_the_effect()
{
    use std::io::BufRead;
    let env = setup("sigkill").await;
    let event_id = Uuid::now_v7();
    env.produce_event(event_id, &scored(event_id, Uuid::new_v4(), "e-1", 4))
        .await;

    let spec =
        serde_json::to_string(&[&env.db.url, &env.bootstrap, &env.prefix, &env.group]).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_consumer_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("consumer process starts");
    let stdout = child.stdout.take().unwrap();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains(CHILD_MARK) {
                let _ = seen_tx.send(());
            }
        }
    });
    let committed = seen_rx.recv_timeout(Duration::from_secs(90));
    child.kill().unwrap(); // SIGKILL: no offset commit, no group leave
    child.wait().unwrap();
    committed.expect("the consumer process committed its transaction");
    assert_eq!(env.score("e-1").await, Some((4, 1)));
    assert_eq!(env.inbox_rows(event_id).await, 1);
    assert_eq!(env.committed_offset(), -1, "no offset committed");

    let outbox = Outbox::new(env.db.pool.clone(), "scorer");
    let restarted = Consumer::new(
        outbox,
        short_session(&env.bootstrap),
        dispatcher(Arc::default()),
        env.config(3),
    )
    .await
    .unwrap()
    .spawn();
    let stats = support::wait_finished(&restarted, 1).await;
    assert_eq!(
        (stats.handled, stats.duplicates),
        (0, 1),
        "redelivered and skipped: {stats:?}"
    );
    restarted.shutdown().await.unwrap();
    assert_eq!(
        env.committed_offset(),
        1,
        "offset advanced past the message"
    );
    assert_eq!(env.score("e-1").await, Some((4, 1)), "effect still once");
    env.followups.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(
        env.followups.settle(Duration::from_secs(2)).await.len(),
        1,
        "one follow-up event"
    );
    env.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_dead_lettered_and_consumption_continues() {
    let env = setup("undecodable").await;
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::now_v7()).collect();
    let unknown = envelope(
        ids[0],
        Uuid::new_v4(),
        "NoSuchEventV1",
        1,
        serde_json::json!({"essay_id": "x"}),
    );
    let not_json = b"this is not an envelope".to_vec();
    let old_version = envelope(
        ids[1],
        Uuid::new_v4(),
        "EssayScoredV1",
        1,
        serde_json::json!({"essay_id": "e", "points": 1}),
    );
    let bad_payload = envelope(
        ids[2],
        Uuid::new_v4(),
        "EssayScoredV1",
        2,
        serde_json::json!({"essay_id": "e"}),
    );
    let good = scored(ids[3], Uuid::new_v4(), "e-good", 11);

    // The typed errors, as the dispatcher reports them.
    let d = dispatcher(Arc::default());
    assert!(matches!(
        d.decode(&unknown[..]),
        Err(ConsumeError::UnknownEventType { .. })
    ));
    assert!(matches!(
        d.decode(&not_json[..]),
        Err(ConsumeError::MalformedEnvelope { .. })
    ));
    assert!(matches!(
        d.decode(&old_version[..]),
        Err(ConsumeError::VersionMismatch {
            expected: 2,
            found: 1,
            ..
        })
    ));
    assert!(matches!(
        d.decode(&bad_payload[..]),
        Err(ConsumeError::MalformedPayload { .. })
    ));

    let headers = |id: Uuid| vec![("event_id", id.to_string())];
    env.produce(Some(&unknown), &headers(ids[0])).await;
    env.produce(Some(&not_json), &[]).await;
    env.produce(Some(&old_version), &headers(ids[1])).await;
    env.produce(Some(&bad_payload), &headers(ids[2])).await;
    env.produce(None, &[]).await; // no value at all
    env.produce_event(ids[3], &good).await;

    let handle = env.consumer(d, 3).await.spawn();
    let stats = support::wait_finished(&handle, 6).await;
    assert_eq!(
        (
            stats.dead_lettered,
            stats.decode_errors,
            stats.handled,
            stats.retries
        ),
        (5, 5, 1, 0),
        "{stats:?}"
    );
    assert_eq!(
        env.score("e-good").await,
        Some((11, 1)),
        "the good message after them was handled"
    );

    let dead = env.dead_letters.wait_for(5, Duration::from_secs(30)).await;
    let kinds: Vec<&str> = dead
        .iter()
        .map(|m| m.headers[dlq::ERROR_KIND].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "unknown_event_type",
            "malformed_envelope",
            "version_mismatch",
            "malformed_payload",
            "malformed_envelope"
        ]
    );
    for (offset, m) in dead.iter().enumerate() {
        assert_eq!(m.headers[dlq::ORIGINAL_TOPIC], env.input);
        assert_eq!(m.headers[dlq::ORIGINAL_PARTITION], "0");
        assert_eq!(m.headers[dlq::ORIGINAL_OFFSET], offset.to_string());
        assert_eq!(m.headers[dlq::CONSUMER_GROUP], env.group);
        assert_eq!(m.headers[dlq::ATTEMPTS], "0");
        assert_eq!(m.key.as_deref(), Some("k"), "original key kept");
    }
    assert!(
        dead[0].headers[dlq::ERROR].contains("NoSuchEventV1")
            && dead[0].headers[dlq::ERROR].contains("Dispatcher::register")
    );
    assert_eq!(dead[0].headers["event_id"], ids[0].to_string());
    assert_eq!(
        dead[1].payload,
        serde_json::json!("this is not an envelope"),
        "value kept byte for byte"
    );
    assert!(dead[2].headers[dlq::ERROR].contains("version 1"));
    assert!(dead[3].headers[dlq::ERROR].contains("points"));
    assert!(dead[4].headers[dlq::ERROR].contains("no value"));
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM event_inbox")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(inbox, 1, "only the handled event is in the inbox");

    handle.shutdown().await.unwrap();
    assert_eq!(
        env.committed_offset(),
        6,
        "dead-lettered messages are committed too"
    );
    env.teardown().await;
}

#[tokio::test]
async fn inbox_commits_with_the_outbox_guard_and_purges_in_batches() {
    let db = support::TestDatabase::create("inboxguard").await;
    outbox::migrate(&db.pool).await.unwrap();
    let outbox = Outbox::new(db.pool.clone(), "scorer");
    let inbox = Inbox::new("scorer");
    let id = Uuid::now_v7();

    // Rolled back: neither the inbox row nor the follow-up event survives.
    let mut tx = outbox.transactional_publish().await.unwrap();
    assert_eq!(
        inbox
            .record(&mut tx, id, "EssayScoredV1", None)
            .await
            .unwrap(),
        InboxOutcome::New
    );
    assert!(inbox.contains(&mut tx, id).await.unwrap());
    tx.publish(&ScoreRecordedV1 {
        essay_id: "e".into(),
        total: 1,
    })
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    let mut conn = db.pool.acquire().await.unwrap();
    assert!(!inbox.contains(&mut conn, id).await.unwrap());

    // Committed: both.
    let mut tx = outbox.transactional_publish().await.unwrap();
    assert_eq!(
        inbox
            .record(&mut tx, id, "EssayScoredV1", None)
            .await
            .unwrap(),
        InboxOutcome::New
    );
    tx.publish(&ScoreRecordedV1 {
        essay_id: "e".into(),
        total: 1,
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let mut tx = outbox.transactional_publish().await.unwrap();
    assert_eq!(
        inbox
            .record(&mut tx, id, "EssayScoredV1", None)
            .await
            .unwrap(),
        InboxOutcome::AlreadyProcessed
    );
    drop(tx);
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM event_outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(events, 1);

    // Another consumer has its own inbox.
    let other = Inbox::new("auditor");
    assert_eq!(
        other
            .record(&mut conn, id, "EssayScoredV1", None)
            .await
            .unwrap(),
        InboxOutcome::New
    );

    // Retention: 25 old rows deleted in batches of 10; recent and other consumers' rows kept.
    for _ in 0..25 {
        inbox
            .record(&mut conn, Uuid::now_v7(), "EssayScoredV1", None)
            .await
            .unwrap();
    }
    sqlx::query(
        "UPDATE event_inbox SET processed_at = now() - interval '2 days' WHERE event_id <> $1",
    )
    .bind(id)
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE event_inbox SET processed_at = now() - interval '2 days' WHERE consumer = 'auditor'")
        .execute(&db.pool)
        .await
        .unwrap();
    let deleted = inbox
        .purge_older_than(&db.pool, Duration::from_secs(86_400), 10)
        .await
        .unwrap();
    assert_eq!(deleted, 25);
    let left: Vec<(String, Uuid)> =
        sqlx::query_as("SELECT consumer, event_id FROM event_inbox ORDER BY consumer")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        left,
        [("auditor".to_owned(), id), ("scorer".to_owned(), id)]
    );
    drop(conn);
    db.drop_db().await;
}

#[tokio::test]
async fn consumer_refuses_to_start_without_the_inbox_table_or_with_auto_commit() {
    let db = support::TestDatabase::create("noinbox").await;
    let outbox = Outbox::new(db.pool.clone(), "scorer");
    let err = Consumer::new(
        outbox.clone(),
        fixtures::kafka("127.0.0.1:1"),
        dispatcher(Arc::default()),
        ConsumerConfig::new("g"),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, outbox::ConsumerError::MissingInboxTable { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("run the migrations"), "{err}");

    outbox::migrate(&db.pool).await.unwrap();
    let mut kafka = fixtures::kafka("127.0.0.1:1");
    kafka.set("enable.auto.commit", "true");
    let err = Consumer::new(
        outbox.clone(),
        kafka,
        dispatcher(Arc::default()),
        ConsumerConfig::new("g"),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("requires enable.auto.commit=false"),
        "{err}"
    );

    let err = Consumer::new(
        outbox,
        fixtures::kafka("127.0.0.1:1"),
        Dispatcher::new(),
        ConsumerConfig::new("g"),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no handlers"), "{err}");
    db.drop_db().await;
}
