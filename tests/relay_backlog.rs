//! Proofs 4 and 6: 10,000 events over 100 aggregates arrive complete, in
//! order per aggregate, without duplicates; a graceful shutdown in the middle
//! of a backlog followed by a restart delivers every event exactly once; a
//! sudden backlog after idling drains at once; a late commit below a
//! draining backlog is not left for its end.

mod fixtures;
mod support;

use outbox::{Outbox, OutboxEvent, Relay};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "load.essay-scored.v1", aggregate = "essay")]
struct EssayScoredV1 {
    #[outbox_event(aggregate_id)]
    essay_id: String,
    seq: i64,
    body: String,
}

/// Writers that each own `aggregates` aggregates and commit their events in
/// small transactions, so commit order interleaves across writers.
async fn write(
    outbox: &Outbox,
    writers: usize,
    aggregates_per_writer: usize,
    events_per_aggregate: usize,
    per_tx: usize,
) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let outbox = outbox.clone();
        tasks.push(tokio::spawn(async move {
            let aggregates: Vec<String> = (0..aggregates_per_writer)
                .map(|a| format!("essay-{w}-{a}"))
                .collect();
            let mut pending = Vec::new();
            for seq in 0..events_per_aggregate {
                for a in &aggregates {
                    pending.push(EssayScoredV1 {
                        essay_id: a.clone(),
                        seq: seq as i64,
                        body: "x".repeat(200),
                    });
                    if pending.len() == per_tx {
                        let mut tx = outbox.transactional_publish().await.unwrap();
                        tx.publish_all(&pending).await.unwrap();
                        tx.commit().await.unwrap();
                        pending.clear();
                    }
                }
            }
            if !pending.is_empty() {
                let mut tx = outbox.transactional_publish().await.unwrap();
                tx.publish_all(&pending).await.unwrap();
                tx.commit().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_over_a_hundred_aggregates_arrive_in_order_once() {
    support::init_tracing();
    let db = support::TestDatabase::create("load").await;
    outbox::migrate(&db.pool).await.unwrap();
    let prefix = support::unique("load");
    let topics = fixtures::prefixed_topics(&prefix);
    let bootstrap = support::bootstrap_servers();
    support::create_topics(&bootstrap, &topics, 4).await;
    let collector = support::Collector::start(&bootstrap, &topics);
    let outbox = Outbox::new(db.pool.clone(), "load");
    let handle = Relay::new(
        db.pool.clone(),
        fixtures::kafka(&bootstrap),
        fixtures::relay_config(&prefix),
    )
    .await
    .unwrap()
    .spawn();

    // 10 writers x 10 aggregates x 100 events, 10 events per transaction,
    // written while the relay runs.
    write(&outbox, 10, 10, 100, 10).await;

    let got = collector.wait_for(10_000, Duration::from_secs(180)).await;
    let all = collector.settle(Duration::from_secs(3)).await;
    let t = fixtures::report("one_relay_10000_events", 10_000, &all);
    assert!(got.len() >= 10_000);
    assert_eq!(t.received, 10_000, "every committed event arrives");
    assert_eq!(
        t.duplicates, 0,
        "no duplicates with one relay and no faults"
    );
    assert_eq!(t.order_violations, 0, "each aggregate in commit order");
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(stats.delivered, 10_000);
    collector.stop();
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_mid_backlog_then_restart_delivers_exactly_once() {
    support::init_tracing();
    let db = support::TestDatabase::create("shutdown").await;
    outbox::migrate(&db.pool).await.unwrap();
    let prefix = support::unique("shutdown");
    let topics = fixtures::prefixed_topics(&prefix);
    let bootstrap = support::bootstrap_servers();
    support::create_topics(&bootstrap, &topics, 2).await;
    let outbox = Outbox::new(db.pool.clone(), "load");
    write(&outbox, 4, 5, 150, 50).await; // 3,000 events backlog
    let collector = support::Collector::start(&bootstrap, &topics);

    let mut config = fixtures::relay_config(&prefix);
    config.batch_size = 50;
    let first = Relay::new(db.pool.clone(), fixtures::kafka(&bootstrap), config.clone())
        .await
        .unwrap()
        .spawn();
    collector.wait_for(300, Duration::from_secs(60)).await;
    let stats = first.shutdown().await.unwrap();
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_outbox WHERE state = 'pending'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        pending > 0,
        "shutdown happened mid-backlog (delivered {})",
        stats.delivered
    );
    assert_eq!(
        stats.delivered as i64 + pending,
        3_000,
        "every delivered row was marked before shutdown returned"
    );
    let leases: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_outbox_lease WHERE owner IS NOT NULL")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(leases, 0, "a stopped relay gives its leases back");

    let second = Relay::new(db.pool.clone(), fixtures::kafka(&bootstrap), config)
        .await
        .unwrap()
        .spawn();
    collector.wait_for(3_000, Duration::from_secs(120)).await;
    let all = collector.settle(Duration::from_secs(3)).await;
    let t = fixtures::report("graceful_shutdown_then_restart", 3_000, &all);
    assert_eq!(t.received, 3_000);
    assert_eq!(t.duplicates, 0, "exactly once across a graceful restart");
    assert_eq!(t.order_violations, 0);
    second.shutdown().await.unwrap();
    collector.stop();
    db.drop_db().await;
}

/// A relay idle on an empty table runs its claim many times against it.
/// PostgreSQL then plans a prepared statement once for all parameter values
/// (a generic plan), and on an empty table that plan scans the whole table,
/// and scans it again for every row it checks: a backlog committed later
/// would take hours to drain (a first claim over 5,000 rows took 2.2 s, over
/// 100,000 rows more than ten minutes). The relay plans its statements on the
/// outbox table at each execution, so a sudden backlog drains at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_idle_on_an_empty_table_drains_a_sudden_backlog() {
    const BACKLOG: usize = 40_000;
    support::init_tracing();
    let db = support::TestDatabase::create("sudden").await;
    outbox::migrate(&db.pool).await.unwrap();
    // What autovacuum leaves on an idle outbox: statistics of an empty table.
    sqlx::query("VACUUM ANALYZE event_outbox")
        .execute(&db.pool)
        .await
        .unwrap();
    let prefix = support::unique("sudden");
    let topics = fixtures::prefixed_topics(&prefix);
    let bootstrap = support::bootstrap_servers();
    support::create_topics(&bootstrap, &topics, 4).await;
    let collector = support::Collector::start(&bootstrap, &topics);
    let mut config = fixtures::relay_config(&prefix);
    config.poll_interval = Duration::from_millis(20);
    let handle = Relay::new(db.pool.clone(), fixtures::kafka(&bootstrap), config)
        .await
        .unwrap()
        .spawn();
    // Dozens of empty claims: well past the five after which PostgreSQL
    // considers a generic plan.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let outbox = Outbox::new(db.pool.clone(), "load");
    let events: Vec<EssayScoredV1> = (0..BACKLOG)
        .map(|i| EssayScoredV1 {
            essay_id: format!("essay-{}", i % 400),
            seq: (i / 400) as i64,
            body: "x".repeat(200),
        })
        .collect();
    let mut tx = outbox.transactional_publish().await.unwrap();
    tx.publish_all(&events).await.unwrap();
    tx.commit().await.unwrap();

    collector.wait_for(BACKLOG, Duration::from_secs(120)).await;
    let all = collector.settle(Duration::from_secs(2)).await;
    let t = fixtures::report("sudden_backlog_after_idle", BACKLOG, &all);
    assert_eq!(t.received, BACKLOG);
    assert_eq!(t.duplicates, 0);
    assert_eq!(t.order_violations, 0);
    handle.shutdown().await.unwrap();
    collector.stop();
    db.drop_db().await;
}

/// Every claim reads the pending rows from the start of the outbox (no
/// high-water mark, docs/reference/guarantees.md §6), so a transaction that took a
/// lower `seq` and commits while a backlog drains is delivered during the
/// drain, not after it. A writer keeps the backlog growing several times
/// faster than a relay with batches of 2 drains it, so every batch is full
/// and claimed ahead. With claims ahead that start above the batch in
/// flight and no claim from the start, this test fails after 40 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_commit_below_a_draining_backlog_is_delivered_during_the_drain() {
    /// The writer stops after this long whatever happens.
    const WRITE_AT_MOST: Duration = Duration::from_secs(40);
    let bootstrap = support::bootstrap_servers();
    let s = fixtures::scenario("latebacklog", &bootstrap, 1).await;
    let collector = support::Collector::start(&bootstrap, &s.topics);
    // The late transaction takes its seq before any row of the backlog.
    let mut late = s.outbox.transactional_publish().await.unwrap();
    late.publish(&EssayScoredV1 {
        essay_id: "late".into(),
        seq: 0,
        body: String::new(),
    })
    .await
    .unwrap();
    let relay = fixtures::spawn_relay(&s, &bootstrap, 2).await;
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let outbox = s.outbox.clone();
        let writing = writing.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut written = 0usize;
            while writing.load(Ordering::Relaxed) && started.elapsed() < WRITE_AT_MOST {
                let events: Vec<EssayScoredV1> = (0..100)
                    .map(|i| EssayScoredV1 {
                        essay_id: format!("bulk-{}", i % 50),
                        seq: (written + i) as i64,
                        body: String::new(),
                    })
                    .collect();
                let mut tx = outbox.transactional_publish().await.unwrap();
                tx.publish_all(&events).await.unwrap();
                tx.commit().await.unwrap();
                written += events.len();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            written
        })
    };
    // The relay is draining the backlog, batch after batch.
    collector.wait_for(100, Duration::from_secs(60)).await;
    late.commit().await.unwrap();
    let delivered_late = |c: &support::Collector| {
        c.snapshot()
            .iter()
            .any(|r| r.headers.get("aggregate_id").map(String::as_str) == Some("late"))
    };
    while !delivered_late(&collector) {
        assert!(
            !writer.is_finished(),
            "the late row was not delivered while the backlog drained ({WRITE_AT_MOST:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_outbox WHERE state = 'pending'")
            .fetch_one(&s.db.pool)
            .await
            .unwrap();
    writing.store(false, Ordering::Relaxed);
    let written = writer.await.unwrap();
    println!("late row delivered with {pending} rows pending, {written} written");
    assert!(
        pending > 0,
        "the backlog was still draining when the late row arrived"
    );
    relay.shutdown().await.unwrap();
    collector.stop();
    s.db.drop_db().await;
}
