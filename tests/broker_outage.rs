//! Proof 3: with the broker stopped, commits succeed and events wait; when
//! the broker comes back every event arrives, none lost, in order.

mod fixtures;
mod support;

use outbox::{Outbox, OutboxEvent, Relay};
use serde::Serialize;
use std::time::Duration;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "outage.file-added.v1", aggregate = "file_upload")]
struct FileAddedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: String,
    seq: i64,
}

async fn commit_round(outbox: &Outbox, round: i64) {
    for a in 0..5 {
        let mut tx = outbox
            .transactional_publish()
            .await
            .expect("commit works without a broker");
        let events: Vec<FileAddedV1> = (0..5)
            .map(|i| FileAddedV1 {
                file_upload_id: format!("f-{a}"),
                seq: round * 5 + i,
            })
            .collect();
        tx.publish_all(&events).await.unwrap();
        tx.commit().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_committed_while_the_broker_is_down_arrive_when_it_returns() {
    support::init_tracing();
    let db = support::TestDatabase::create("outage").await;
    outbox::migrate(&db.pool).await.unwrap();
    let port = support::free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let prefix = support::unique("outage");
    let outbox = Outbox::new(db.pool.clone(), "svc");

    // The relay starts while no broker listens on its address.
    let mut config = fixtures::relay_config(&prefix);
    config.max_retries = 1_000;
    let relay = Relay::new(db.pool.clone(), fixtures::kafka(&bootstrap), config)
        .await
        .unwrap()
        .spawn();
    commit_round(&outbox, 0).await;
    tokio::time::sleep(Duration::from_secs(4)).await; // at least one produce times out
    commit_round(&outbox, 1).await;
    let (pending, dead): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'pending'), count(*) FILTER (WHERE state = 'dead') FROM event_outbox",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((pending, dead), (50, 0), "events wait, none given up");
    assert!(relay.stats().errors > 0, "the relay noticed the outage");

    // Broker comes back on the same address.
    let broker = support::TansuBroker::start(Some(port));
    let topics = fixtures::prefixed_topics(&prefix);
    support::create_topics(&broker.bootstrap(), &topics, 2).await;
    let collector = support::Collector::start(&broker.bootstrap(), &topics);
    commit_round(&outbox, 2).await;

    collector.wait_for(75, Duration::from_secs(120)).await;
    let all = collector.settle(Duration::from_secs(3)).await;
    let t = fixtures::report("broker_down_while_committing", 75, &all);
    assert_eq!(t.received, 75, "none lost");
    assert_eq!(t.order_violations, 0);
    relay.shutdown().await.unwrap();
    collector.stop();
    drop(broker);
    db.drop_db().await;
}
