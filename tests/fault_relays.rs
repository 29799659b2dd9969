//! Guarantees under concurrency and faults (docs/reference/guarantees.md): several
//! relays in one process (also joining while one drains a backlog with
//! batches claimed ahead) and in several processes killed with SIGKILL, lost
//! database connections, a broker restart, bad rows inserted by hand, late
//! commits of earlier sequence numbers, and secrets kept out of logs. Each
//! scenario prints its tally.

mod fixtures;
mod support;

use fixtures::relay_process::{relay_binary, RelayProcess};
use outbox::{Outbox, OutboxEvent, Relay, RelayConfig, RelayHandle};
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "faults.essay-graded.v1", aggregate = "essay")]
struct EssayGradedV1 {
    #[outbox_event(aggregate_id)]
    essay_id: String,
    seq: i64,
}

/// Writers owning disjoint aggregates commit `per_aggregate` events each,
/// `per_tx` per transaction, optionally paced.
fn spawn_writers(
    outbox: &Outbox,
    writers: usize,
    aggregates: usize,
    per_aggregate: i64,
    per_tx: usize,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let outbox = outbox.clone();
            tokio::spawn(async move {
                let mut batch = Vec::new();
                for seq in 0..per_aggregate {
                    for a in 0..aggregates {
                        batch.push(EssayGradedV1 {
                            essay_id: format!("e-{w}-{a}"),
                            seq,
                        });
                        if batch.len() == per_tx {
                            let mut tx = outbox.transactional_publish().await.unwrap();
                            tx.publish_all(&batch).await.unwrap();
                            tx.commit().await.unwrap();
                            batch.clear();
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                    }
                }
                if !batch.is_empty() {
                    let mut tx = outbox.transactional_publish().await.unwrap();
                    tx.publish_all(&batch).await.unwrap();
                    tx.commit().await.unwrap();
                }
            })
        })
        .collect()
}

/// Starts a relay on scenario `s` in this process.
async fn spawn_relay(s: &fixtures::Scenario, bootstrap: &str, config: &RelayConfig) -> RelayHandle {
    Relay::new(
        s.db.pool.clone(),
        fixtures::kafka(bootstrap),
        config.clone(),
    )
    .await
    .unwrap()
    .spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_relays_in_one_process_keep_order_while_rebalancing() {
    let bootstrap = support::bootstrap_servers();
    let s = fixtures::scenario("multi", &bootstrap, 4).await;
    let collector = support::Collector::start(&bootstrap, &s.topics);
    let config = fixtures::relay_config(&s.prefix);
    let spawn = || spawn_relay(&s, &bootstrap, &config);
    let a = spawn().await;
    let b = spawn().await;
    let c = spawn().await;
    // The first relay may take every shard before the others register; on
    // a fast machine it would then deliver everything before the first
    // rebalance. Share the shards first, so the shutdown below moves some.
    wait_for_lease_owners(&s.db.pool, 3).await;
    let writers = spawn_writers(&s.outbox, 4, 20, 100, 20); // 8,000 events, 80 aggregates
    collector.wait_for(2_000, Duration::from_secs(120)).await;
    b.shutdown().await.unwrap(); // its shards move to the others
    let d = spawn().await; // and are shared again
    for w in writers {
        w.await.unwrap();
    }
    collector.wait_for(8_000, Duration::from_secs(180)).await;
    let all = collector.settle(Duration::from_secs(3)).await;
    let t = fixtures::report("several_relays_one_process", 8_000, &all);
    assert_eq!(t.received, 8_000);
    assert_eq!(t.order_violations, 0);
    assert_eq!(t.duplicates, 0, "no crash, no duplicates");
    let delivered: u64 = [a.shutdown().await, c.shutdown().await, d.shutdown().await]
        .into_iter()
        .map(|r| r.unwrap().delivered)
        .sum();
    assert!(delivered > 0);
    collector.stop();
    s.db.drop_db().await;
}

/// Waits until `owners` relay instances hold shard leases.
async fn wait_for_lease_owners(pool: &sqlx::PgPool, owners: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now: i64 = sqlx::query_scalar(
            "SELECT count(DISTINCT owner) FROM event_outbox_lease WHERE expires_at > now()",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if now == owners {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{owners} relays did not share the shards within 60 s ({now} do)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A relay draining a backlog claims each next batch while producing the
/// current one, and gives shards away between batches when others join:
/// nothing is lost, duplicated or reordered while its shards move twice
/// with most of the backlog pending. (The narrower race, a newcomer claiming
/// rows of a batch the old owner claimed ahead before the move, lasts
/// milliseconds per move; `Prefetched::into_batch_if_owned` closes it and
/// its unit test in `prefetch.rs` proves that.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_move_while_batches_are_claimed_ahead() {
    let bootstrap = support::bootstrap_servers();
    let s = fixtures::scenario("aheadmove", &bootstrap, 4).await;
    let committed = 40_000;
    // The whole backlog first: every batch is full, so every batch is
    // claimed ahead.
    for w in spawn_writers(&s.outbox, 4, 100, 100, 1_000) {
        w.await.unwrap();
    }
    let collector = support::Collector::start(&bootstrap, &s.topics);
    let mut config = fixtures::relay_config(&s.prefix);
    // Small batches and quick lease maintenance (every TTL / 3), so the
    // shards move twice while most of the backlog is still pending.
    config.batch_size = 5;
    config.message_timeout = Duration::from_secs(1);
    config.lease_ttl = Duration::from_secs(3);
    let spawn = || spawn_relay(&s, &bootstrap, &config);
    let a = spawn().await;
    collector.wait_for(500, Duration::from_secs(120)).await;
    let b = spawn().await;
    wait_for_lease_owners(&s.db.pool, 2).await;
    let c = spawn().await;
    wait_for_lease_owners(&s.db.pool, 3).await;
    let pending = fixtures::pending_rows(&s.db.pool).await;
    println!("pending after the shards moved twice: {pending}");
    assert!(
        pending > 1_000,
        "the backlog must outlast the moves for this test to prove anything; raise `committed`"
    );
    collector
        .wait_for(committed, Duration::from_secs(300))
        .await;
    let all = collector.settle(Duration::from_secs(3)).await;
    let t = fixtures::report("claimed_ahead_shards_move", committed, &all);
    assert_eq!(t.received, committed);
    assert_eq!(t.order_violations, 0);
    assert_eq!(t.duplicates, 0, "no crash, so no row is produced twice");
    for relay in [a, b, c] {
        relay.shutdown().await.unwrap();
    }
    collector.stop();
    s.db.drop_db().await;
}

/// Guarantee 3 with relays as separate OS processes: three relays share
/// 20,000 events over 200 aggregates written by concurrent writers; one is
/// killed with SIGKILL mid-stream and restarted, another is killed for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_processes_killed_mid_stream_lose_nothing_and_keep_order() {
    const EVENTS: usize = 20_000;
    const BATCH: usize = 100; // relay_worker's OUTBOX_BATCH_SIZE default
    let bootstrap = support::bootstrap_servers();
    let s = fixtures::scenario("kill", &bootstrap, 4).await;
    let collector = support::Collector::start(&bootstrap, &s.topics);
    let start = || RelayProcess::start(&s.db.url, &bootstrap, &s.prefix, &[]);
    let (mut a, mut b, c) = (start(), start(), start());
    let writers = spawn_writers(&s.outbox, 4, 50, 100, 20); // 4 x 50 aggregates x 100 events
    collector.wait_for(4_000, Duration::from_secs(180)).await;
    a.sigkill();
    let a_again = start(); // killed and restarted
    collector.wait_for(10_000, Duration::from_secs(180)).await;
    b.sigkill(); // killed for good: its shards move to the survivors when its leases expire
    for w in writers {
        w.await.unwrap();
    }
    collector.wait_for(EVENTS, Duration::from_secs(300)).await;
    let all = collector.settle(Duration::from_secs(3)).await;
    let t = fixtures::report("relay_processes_sigkilled", EVENTS, &all);
    assert_eq!(t.received, EVENTS, "nothing lost");
    assert_eq!(t.order_violations, 0, "order kept across crashes");
    assert!(
        t.duplicates <= 2 * 2 * BATCH,
        "duplicates bounded by two batches (one being marked, one produced meanwhile) per killed relay: {}",
        t.duplicates
    );
    drop((a_again, c));
    collector.stop();
    s.db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_database_connections_are_survived() {
    let bootstrap = support::bootstrap_servers();
    let s = fixtures::scenario("connloss", &bootstrap, 2).await;
    let collector = support::Collector::start(&bootstrap, &s.topics);
    let relay = Relay::new(
        s.db.pool.clone(),
        fixtures::kafka(&bootstrap),
        fixtures::relay_config(&s.prefix),
    )
    .await
    .unwrap();
    // The relay's own connections carry its instance id.
    let app = format!("outbox-relay/{}", relay.instance_id());
    let relay = relay.spawn();
    let writers = spawn_writers(&s.outbox, 2, 10, 150, 10); // 3,000 events
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let pool = s.db.pool.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut kills = 0i64;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(700)).await;
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) t",
                )
                .bind(&app)
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
                kills += n;
            }
            kills
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    collector.wait_for(3_000, Duration::from_secs(180)).await;
    stop.store(true, Ordering::Relaxed);
    let kills = killer.await.unwrap();
    let all = collector.settle(Duration::from_secs(3)).await;
    let t = fixtures::report("database_connections_killed", 3_000, &all);
    println!("connections_terminated={kills}");
    assert!(kills > 0, "the fault was injected");
    assert_eq!(t.received, 3_000);
    assert_eq!(t.order_violations, 0);
    relay.shutdown().await.unwrap();
    collector.stop();
    s.db.drop_db().await;
}

/// The test broker keeps messages in memory, so a restart forgets messages
/// it had acknowledged but the collector had not read yet. The outbox's
/// promise is about the broker acknowledging: every event is either received
/// or was acknowledged (marked published) before the restart began; every
/// event acknowledged after it is received.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    let mut broker = support::TansuBroker::start(None);
    let bootstrap = broker.bootstrap();
    let s = fixtures::scenario("brokerrestart", &bootstrap, 2).await;
    let collector = support::Collector::start(&bootstrap, &s.topics);
    let mut config = fixtures::relay_config(&s.prefix);
    config.max_retries = 1_000;
    config.retention = outbox::relay::Retention::Keep(Duration::from_secs(3600));
    let relay = Relay::new(s.db.pool.clone(), fixtures::kafka(&bootstrap), config)
        .await
        .unwrap()
        .spawn();
    let writers = spawn_writers(&s.outbox, 2, 10, 100, 10); // 2,000 events
    collector.wait_for(400, Duration::from_secs(120)).await;
    // The consumer is not under test: stop it across the restart and read
    // the re-provisioned topics with a fresh one.
    let before = collector.snapshot();
    collector.stop();
    broker.stop();
    // Events committed during the outage wait for the broker.
    let during = {
        let outbox = s.outbox.clone();
        tokio::spawn(async move {
            for seq in 0..20 {
                let events: Vec<EssayGradedV1> = (0..5)
                    .map(|a| EssayGradedV1 {
                        essay_id: format!("outage-{a}"),
                        seq,
                    })
                    .collect();
                let mut tx = outbox.transactional_publish().await.unwrap();
                tx.publish_all(&events).await.unwrap();
                tx.commit().await.unwrap();
            }
        })
    }; // 100 more events
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restart_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
    let port = broker.port();
    let broker = support::TansuBroker::start(Some(port));
    // The in-memory broker forgot its topics; provision them again.
    support::create_topics(&broker.bootstrap(), &s.topics, 2).await;
    let collector = support::Collector::start(&broker.bootstrap(), &s.topics);
    for w in writers.into_iter().chain([during]) {
        w.await.unwrap();
    }
    // Wait until the relay has delivered everything.
    for _ in 0..600 {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM event_outbox WHERE state <> 'published'")
                .fetch_one(&s.db.pool)
                .await
                .unwrap();
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut all = before;
    all.extend(collector.settle(Duration::from_secs(3)).await);
    let received: std::collections::HashSet<String> =
        all.iter().map(|m| m.headers["event_id"].clone()).collect();
    let rows: Vec<(uuid::Uuid, String, Option<chrono::DateTime<chrono::Utc>>)> =
        sqlx::query_as("SELECT id, state, published_at FROM event_outbox")
            .fetch_all(&s.db.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2_100);
    let mut forgotten_by_broker = 0;
    for (id, state, published_at) in &rows {
        assert_eq!(state, "published", "event {id} was not delivered");
        if !received.contains(&id.to_string()) {
            let at = published_at.expect("published rows have published_at");
            assert!(
                at < restart_at,
                "event {id} acknowledged after the restart ({at}) never arrived"
            );
            forgotten_by_broker += 1;
        }
    }
    let t = fixtures::report("broker_restarted", 2_100, &all);
    println!("acknowledged_then_forgotten_by_in_memory_broker={forgotten_by_broker}");
    assert_eq!(t.order_violations, 0);
    let stats = relay.shutdown().await.unwrap();
    assert!(stats.errors > 0, "the outage was noticed");
    assert_eq!(stats.dead, 0);
    collector.stop();
    drop(broker);
    s.db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_inserted_by_hand_become_dead_and_others_flow() {
    let bootstrap = support::bootstrap_servers();
    let s = fixtures::scenario("badrows", &bootstrap, 1).await;
    let collector = support::Collector::start(&bootstrap, &s.topics);
    let insert = "INSERT INTO event_outbox (id, aggregate_type, aggregate_id, event_type, topic, event_key, event_data)
                  VALUES (gen_random_uuid(), 'essay', $1, 'EssayGradedV1', $2, $1, $3::jsonb)";
    for (aggregate, topic, data) in [
        (
            "bad-envelope",
            "faults.essay-graded.v1",
            r#""just a string""#,
        ),
        (
            "missing-fields",
            "faults.essay-graded.v1",
            r#"{"hello": 1}"#,
        ),
        (
            "empty-topic",
            "",
            r#"{"event_id": "x", "event_type": "E", "data": {}}"#,
        ),
        (
            "invalid-topic",
            "bad topic!",
            r#"{"event_id": "x", "event_type": "E", "data": {}}"#,
        ),
    ] {
        sqlx::query(insert)
            .bind(aggregate)
            .bind(topic)
            .bind(data)
            .execute(&s.db.pool)
            .await
            .unwrap();
    }
    let mut tx = s.outbox.transactional_publish().await.unwrap();
    let good: Vec<EssayGradedV1> = (0..50)
        .map(|i| EssayGradedV1 {
            essay_id: format!("good-{}", i % 5),
            seq: i,
        })
        .collect();
    tx.publish_all(&good).await.unwrap();
    tx.commit().await.unwrap();
    let relay = Relay::new(
        s.db.pool.clone(),
        fixtures::kafka(&bootstrap),
        fixtures::relay_config(&s.prefix),
    )
    .await
    .unwrap()
    .spawn();
    collector.wait_for(50, Duration::from_secs(60)).await;
    let all = collector.settle(Duration::from_secs(2)).await;
    let t = fixtures::report("bad_rows", 50, &all);
    assert_eq!(t.received, 50, "good events flow past bad rows");
    let dead: Vec<(String, String)> = sqlx::query_as(
        "SELECT aggregate_id, last_error FROM event_outbox WHERE state = 'dead' ORDER BY aggregate_id",
    )
    .fetch_all(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(dead.len(), 4, "{dead:?}");
    for (aggregate, error) in &dead {
        match aggregate.as_str() {
            "bad-envelope" | "missing-fields" => {
                assert!(error.contains("malformed envelope"), "{error}")
            }
            "empty-topic" => assert!(error.contains("topic name is empty"), "{error}"),
            "invalid-topic" => assert!(error.contains("[A-Za-z0-9._-]"), "{error}"),
            other => panic!("unexpected dead row {other}"),
        }
        assert!(
            error.contains("outbox retry"),
            "the error names the fix: {error}"
        );
    }
    relay.shutdown().await.unwrap();
    collector.stop();
    s.db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commit_of_an_earlier_seq_is_not_skipped() {
    let bootstrap = support::bootstrap_servers();
    let s = fixtures::scenario("latecommit", &bootstrap, 1).await;
    let collector = support::Collector::start(&bootstrap, &s.topics);
    let relay = Relay::new(
        s.db.pool.clone(),
        fixtures::kafka(&bootstrap),
        fixtures::relay_config(&s.prefix),
    )
    .await
    .unwrap()
    .spawn();
    // Transaction A takes the lower seq but commits last.
    let mut a = s.outbox.transactional_publish().await.unwrap();
    a.publish(&EssayGradedV1 {
        essay_id: "early".into(),
        seq: 0,
    })
    .await
    .unwrap();
    let mut b = s.outbox.transactional_publish().await.unwrap();
    b.publish(&EssayGradedV1 {
        essay_id: "late".into(),
        seq: 0,
    })
    .await
    .unwrap();
    b.commit().await.unwrap();
    let first = collector.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(first[0].headers["aggregate_id"], "late");
    tokio::time::sleep(Duration::from_secs(1)).await; // several polls pass the higher seq
    a.commit().await.unwrap();
    let all = collector.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(
        all[1].headers["aggregate_id"], "early",
        "the lower seq committed later is still delivered"
    );
    relay.shutdown().await.unwrap();
    collector.stop();
    s.db.drop_db().await;
}

#[tokio::test]
async fn secrets_and_injections_in_configuration() {
    let db = support::TestDatabase::create("secrets").await;
    outbox::migrate(&db.pool).await.unwrap();
    // A password in the URL (trust auth ignores it) and an unreachable one.
    let with_password = db.url.replacen(
        "postgres://postgres@",
        "postgres://postgres:S3cretPa55word@",
        1,
    );
    assert!(
        with_password.contains("S3cretPa55word"),
        "test URL has the expected shape: {}",
        db.url
    );
    let unreachable = "postgres://postgres:S3cretPa55word@127.0.0.1:1/nowhere".to_string();
    {
        let out = Command::new(relay_binary())
            .env("DATABASE_URL", &unreachable)
            .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            !stderr.contains("S3cretPa55word"),
            "password leaked: {stderr}"
        );
    }
    let mut child = RelayProcess::start(
        &with_password,
        "127.0.0.1:1",
        "",
        &[("RUST_LOG", "debug,rdkafka=warn")],
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    child.sigkill();
    let stderr = child.log();
    assert!(stderr.contains("relay process ready"), "{stderr}");
    assert!(
        !stderr.contains("S3cretPa55word"),
        "password leaked: {stderr}"
    );
    // Injection through the schema setting is refused before any SQL runs.
    let out = Command::new(relay_binary())
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("OUTBOX_SCHEMA", "public; DROP TABLE event_outbox; --")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not a valid SQL identifier"), "{stderr}");
    let still_there: Option<String> =
        sqlx::query_scalar("SELECT to_regclass('event_outbox')::text")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(still_there.is_some());
    db.drop_db().await;
}

/// Postgres is stopped and started again while the relay drains a backlog:
/// every event arrives, in order per aggregate, with duplicates at most one
/// batch (a batch produced but not marked when the connection died).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_stream_is_survived() {
    const BACKLOG: usize = 8_000;
    const AFTER: usize = 100;
    support::init_tracing();
    let bootstrap = support::bootstrap_servers();
    let pg = support::PrivatePostgres::start();
    let pool = PgPoolOptions::new()
        .max_connections(6)
        .connect(&pg.url())
        .await
        .unwrap();
    outbox::migrate(&pool).await.unwrap();
    let prefix = support::unique("pgrestart");
    let topics = fixtures::prefixed_topics(&prefix);
    support::create_topics(&bootstrap, &topics, 2).await;
    let collector = support::Collector::start(&bootstrap, &topics);
    let outbox = Outbox::new(pool.clone(), "faults");
    // 40 aggregates x 200 events, committed before the relay starts.
    let backlog: Vec<EssayGradedV1> = (0..BACKLOG as i64)
        .map(|i| EssayGradedV1 {
            essay_id: format!("pg-{}", i % 40),
            seq: i / 40,
        })
        .collect();
    let mut tx = outbox.transactional_publish().await.unwrap();
    tx.publish_all(&backlog).await.unwrap();
    tx.commit().await.unwrap();
    let mut config = fixtures::relay_config(&prefix);
    // Many tiny batches, so the restart lands mid-stream however fast a
    // batch goes (asserted below).
    config.batch_size = 5;
    let relay = Relay::new(pool.clone(), fixtures::kafka(&bootstrap), config)
        .await
        .unwrap()
        .spawn();
    collector.wait_for(200, Duration::from_secs(60)).await;
    let pending = fixtures::pending_rows(&pool).await;
    assert!(pending > 0, "the restart must happen mid-stream");
    pg.stop();
    tokio::time::sleep(Duration::from_secs(3)).await; // the relay's claims, marks and lease renewals fail meanwhile
    pg.start_again();
    // The application's own pool reconnects too; commit more once it does.
    let after: Vec<EssayGradedV1> = (0..AFTER as i64)
        .map(|i| EssayGradedV1 {
            essay_id: format!("pg-{}", i % 40),
            seq: 1_000 + i / 40,
        })
        .collect();
    let mut committed = false;
    for _ in 0..50 {
        if outbox.pool().acquire().await.is_ok() {
            let mut tx = outbox.transactional_publish().await.unwrap();
            tx.publish_all(&after).await.unwrap();
            tx.commit().await.unwrap();
            committed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(committed, "the pool reconnected after the restart");
    collector
        .wait_for(BACKLOG + AFTER, Duration::from_secs(120))
        .await;
    let all = collector.settle(Duration::from_secs(3)).await;
    let t = fixtures::report("postgres_restarted", BACKLOG + AFTER, &all);
    println!("pending_at_restart={pending}");
    assert_eq!(t.received, BACKLOG + AFTER, "nothing lost");
    assert_eq!(t.order_violations, 0, "order kept across the restart");
    assert!(
        t.duplicates <= 20,
        "duplicates bounded by the two batches acknowledged but not yet marked, twice over: {}",
        t.duplicates
    );
    relay.shutdown().await.unwrap();
    collector.stop();
    pool.close().await;
}
