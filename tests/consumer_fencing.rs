//! A group instance id used by two live members, end to end with a real
//! librdkafka client: the group coordinator answers the consumer's
//! heartbeat with FENCED_INSTANCE_ID, as a Kafka broker does once another
//! live member joined with the same `group.instance.id` (KIP-345), and the
//! consumer must stop by itself, say why and how to fix it, and lose
//! nothing.
//!
//! The coordinator is librdkafka's mock cluster (`rdkafka::mocking`), in
//! the test process, with the answer injected: neither it nor Tansu 0.6
//! fences a second member on its own (Tansu gives a member joining with a
//! known instance id the first member's member id; it never answers
//! FENCED_INSTANCE_ID). Postgres is real, for the inbox and the effects.
//!
//! The relay delivers 200 events to the mock cluster. A consumer with
//! instance id `scorer-0` handles them in batches; one handler call is held
//! while the fence is injected, then released. Checked:
//!
//! - the consumer stays up while the batch is in flight, then stops by
//!   itself with `ConsumerError::FencedInstance` naming the group, the
//!   instance id and the fix;
//! - the batch in flight when it was fenced commits its transaction but
//!   not its offset (librdkafka refuses commits after a fatal error), so a
//!   member with another instance id gets it again and the inbox skips it;
//! - every event has exactly one effect and one inbox row.
//!
//! A second test runs a consumer with `Consumer::run_until` and checks that
//! it returns the same error when fenced.

mod fixtures;
mod mock_broker;
mod support;

use mock_broker::MockKafka;
use outbox::consume::{Consumer, ConsumerConfig, ConsumerError, ConsumerHandle, Dispatcher};
use outbox::{Outbox, OutboxEvent, Relay};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(topic = "fencing.essay-scored.v1", aggregate = "essay")]
struct EssayScoredV1 {
    #[outbox_event(aggregate_id)]
    essay_id: String,
    seq: i64,
}

const ESSAYS: i64 = 20;
const PER_ESSAY: i64 = 10;
const EVENTS: i64 = ESSAYS * PER_ESSAY;
const PARTITIONS: i32 = 2;
/// Small batches, so the held one is neither the first nor the last.
const BATCH_SIZE: usize = 10;
/// The event whose handler is held while the fence is injected.
const HELD_ESSAY: &str = "essay-7";
const HELD_SEQ: i64 = 5;
const GROUP_INSTANCE_ID: &str = "scorer-0";
/// The coordinator's session timeout: how long the fenced member, which
/// sends no LeaveGroup (a static member does not), stays in the group.
const SESSION_TIMEOUT_MS: &str = "6000";
/// Heartbeats this often, so the injected answer arrives soon.
const HEARTBEAT_MS: &str = "100";
/// How long the handler is held after the fence was injected: many
/// heartbeat intervals.
const HELD_AFTER_FENCE: Duration = Duration::from_secs(2);

/// Holds one handler call until released.
#[derive(Default)]
struct Hold {
    armed: AtomicBool,
    entered: Notify,
    release: Notify,
}

fn dispatcher(hold: Arc<Hold>) -> Dispatcher {
    Dispatcher::new().register::<EssayScoredV1>(move |event, tx| {
        let hold = hold.clone();
        Box::pin(async move {
            sqlx::query("INSERT INTO effects (event_id, essay_id, seq) VALUES ($1, $2, $3)")
                .bind(event.event_id)
                .bind(&event.data.essay_id)
                .bind(event.data.seq)
                .execute(&mut **tx)
                .await?;
            if event.data.essay_id == HELD_ESSAY
                && event.data.seq == HELD_SEQ
                && hold.armed.swap(false, Ordering::SeqCst)
            {
                hold.entered.notify_one();
                hold.release.notified().await;
            }
            Ok(())
        })
    })
}

async fn consumer(
    pool: &sqlx::PgPool,
    bootstrap: &str,
    prefix: &str,
    group: &str,
    instance: &str,
    hold: Arc<Hold>,
) -> ConsumerHandle {
    unstarted_consumer(pool, bootstrap, prefix, group, instance, hold)
        .await
        .spawn()
}

async fn unstarted_consumer(
    pool: &sqlx::PgPool,
    bootstrap: &str,
    prefix: &str,
    group: &str,
    instance: &str,
    hold: Arc<Hold>,
) -> Consumer {
    let mut kafka = fixtures::kafka(bootstrap);
    kafka
        .set("session.timeout.ms", SESSION_TIMEOUT_MS)
        .set("heartbeat.interval.ms", HEARTBEAT_MS);
    let config = ConsumerConfig {
        topic_prefix: prefix.to_owned(),
        group_instance_id: Some(instance.to_owned()),
        batch_size: BATCH_SIZE,
        ..ConsumerConfig::new(group)
    };
    Consumer::new(
        Outbox::new(pool.clone(), "scorer"),
        kafka,
        dispatcher(hold),
        config,
    )
    .await
    .expect("consumer starts")
}

async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// A migrated database with the `effects` table, a mock cluster holding
/// the event's topic and its dead-letter topic, and the topic prefix.
async fn setup(label: &str) -> (support::TestDatabase, MockKafka, String) {
    support::init_tracing();
    let db = support::TestDatabase::create(label).await;
    outbox::migrate(&db.pool).await.unwrap();
    sqlx::query(
        "CREATE TABLE effects (event_id UUID NOT NULL, essay_id TEXT NOT NULL, seq BIGINT NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let prefix = support::unique("fencing");
    let input = format!("{prefix}{}", EssayScoredV1::REGISTRATION.topic);
    let kafka = MockKafka::start(
        1,
        &[input.clone(), format!("{input}.dlq")],
        PARTITIONS,
        &[1],
    );
    (db, kafka, prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fenced_instance_stops_the_consumer_with_its_id_and_loses_nothing() {
    let (db, kafka, prefix) = setup("fencing").await;
    let bootstrap = kafka.bootstrap();

    // Every event on the topic before the consumer starts; rounds of one
    // event per essay, so the held event has later events behind it in its
    // partition.
    let outbox = Outbox::new(db.pool.clone(), "svc");
    for seq in 0..PER_ESSAY {
        let round: Vec<EssayScoredV1> = (0..ESSAYS)
            .map(|essay| EssayScoredV1 {
                essay_id: format!("essay-{essay}"),
                seq,
            })
            .collect();
        fixtures::commit_all(&outbox, &round).await;
    }
    let relay = Relay::new(
        db.pool.clone(),
        fixtures::kafka(&bootstrap),
        fixtures::relay_config(&prefix),
    )
    .await
    .unwrap()
    .spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    while fixtures::pending_rows(&db.pool).await > 0 {
        assert!(Instant::now() < deadline, "the relay delivered within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    relay.shutdown().await.unwrap();

    let group = format!("{prefix}scorer");
    let hold = Arc::new(Hold::default());
    hold.armed.store(true, Ordering::SeqCst);
    let fenced = consumer(
        &db.pool,
        &bootstrap,
        &prefix,
        &group,
        GROUP_INSTANCE_ID,
        hold.clone(),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(60), hold.entered.notified())
        .await
        .expect("the consumer reached the held event within 60 s");

    // What a broker answers once another live member took the instance id.
    kafka.cluster.request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID],
    );
    tokio::time::sleep(HELD_AFTER_FENCE).await;
    assert!(
        !fenced.is_finished(),
        "the fenced consumer waits for the batch in flight"
    );
    hold.release.notify_one();
    wait_until(
        "the fenced consumer stopped by itself",
        Duration::from_secs(30),
        || fenced.is_finished(),
    )
    .await;
    let fenced_stats = fenced.stats();
    let error = match fenced.shutdown().await {
        Err(error) => error,
        Ok(stats) => panic!("the fenced consumer stopped without an error: {stats:?}"),
    };
    let message = error.to_string();
    match &error {
        ConsumerError::FencedInstance {
            group_id,
            group_instance_id,
        } => {
            assert_eq!(group_id, &group);
            assert_eq!(group_instance_id, GROUP_INSTANCE_ID);
        }
        other => panic!("expected ConsumerError::FencedInstance, got {other:?}"),
    }
    for part in [
        GROUP_INSTANCE_ID,
        group.as_str(),
        "give each live member its own `ConsumerConfig::group_instance_id`",
    ] {
        assert!(message.contains(part), "{message:?} names {part:?}");
    }
    let applied_by_fenced = count(&db.pool, "SELECT count(*) FROM effects").await;
    assert!(
        applied_by_fenced < EVENTS,
        "the fenced consumer stopped before the end ({applied_by_fenced} of {EVENTS} applied)"
    );
    let held_applied = count(
        &db.pool,
        &format!(
            "SELECT count(*) FROM effects WHERE essay_id = '{HELD_ESSAY}' AND seq = {HELD_SEQ}"
        ),
    )
    .await;
    assert_eq!(
        held_applied, 1,
        "the batch in flight when fenced committed its transaction"
    );

    // A member with its own instance id takes over.
    let successor = consumer(
        &db.pool,
        &bootstrap,
        &prefix,
        &group,
        "scorer-1",
        Arc::new(Hold::default()),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&db.pool, "SELECT count(DISTINCT event_id) FROM effects").await < EVENTS {
        assert!(
            Instant::now() < deadline,
            "the successor applied every event within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let successor_stats = successor.shutdown().await.expect("the successor stops");

    let effects = count(&db.pool, "SELECT count(*) FROM effects").await;
    let inbox = count(&db.pool, "SELECT count(*) FROM event_inbox").await;
    println!(
        "fenced: handled={} applied={applied_by_fenced}; successor: handled={} duplicates={}; effects={effects} inbox={inbox}",
        fenced_stats.handled, successor_stats.handled, successor_stats.duplicates
    );
    assert_eq!(effects, EVENTS, "every event has exactly one effect");
    assert_eq!(inbox, EVENTS, "every event has one inbox row");
    assert!(
        successor_stats.duplicates >= 1,
        "the batch in flight at the fence was not committed to Kafka: its events reached the successor again and the inbox skipped them"
    );
    assert_eq!(
        successor_stats.handled as i64 + applied_by_fenced,
        EVENTS,
        "the successor handled exactly what the fenced consumer had not"
    );
    db.drop_db().await;
}

/// `Consumer::run_until` returns the error that stopped the consumer, as
/// `ConsumerHandle::shutdown` does, instead of ending as if asked to.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_until_returns_the_fencing_error() {
    let (db, kafka, prefix) = setup("fencing_run_until").await;
    let group = format!("{prefix}scorer");
    let running = tokio::spawn(
        unstarted_consumer(
            &db.pool,
            &kafka.bootstrap(),
            &prefix,
            &group,
            GROUP_INSTANCE_ID,
            Arc::default(),
        )
        .await
        .run_until(std::future::pending()),
    );
    // Joined and heartbeating before the coordinator fences it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    kafka.cluster.request_errors(
        RDKafkaApiKey::Heartbeat,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID],
    );
    let ended = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the fenced consumer stopped by itself within 30 s")
        .expect("the consumer task ran to its end");
    match ended {
        Err(ConsumerError::FencedInstance {
            group_id,
            group_instance_id,
        }) => {
            assert_eq!(group_id, group);
            assert_eq!(group_instance_id, GROUP_INSTANCE_ID);
        }
        other => panic!("expected ConsumerError::FencedInstance, got {other:?}"),
    }
    db.drop_db().await;
}
