//! Proof 5: an event the broker side refuses (larger than the maximum
//! message size) is retried, then dead with a readable last_error, while
//! other aggregates keep flowing; later events of its aggregate wait.

mod fixtures;
mod support;

use outbox::{Outbox, OutboxEvent, Relay};
use serde::Serialize;
use std::time::Duration;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "poison.essay-uploaded.v1", aggregate = "essay")]
struct EssayUploadedV1 {
    #[outbox_event(aggregate_id)]
    essay_id: String,
    seq: i64,
    content: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_event_goes_dead_and_others_keep_flowing() {
    support::init_tracing();
    let db = support::TestDatabase::create("poison").await;
    outbox::migrate(&db.pool).await.unwrap();
    let prefix = support::unique("poison");
    let topics = fixtures::prefixed_topics(&prefix);
    let bootstrap = support::bootstrap_servers();
    support::create_topics(&bootstrap, &topics, 2).await;
    let collector = support::Collector::start(&bootstrap, &topics);
    let outbox = Outbox::new(db.pool.clone(), "svc");

    let mut kafka = fixtures::kafka(&bootstrap);
    kafka.set("message.max.bytes", "50000"); // the size limit messages must respect
    let mut config = fixtures::relay_config(&prefix);
    config.max_retries = 2;
    let handle = Relay::new(db.pool.clone(), kafka, config)
        .await
        .unwrap()
        .spawn();

    let mut tx = outbox.transactional_publish().await.unwrap();
    tx.publish(&EssayUploadedV1 {
        essay_id: "poison".into(),
        seq: 0,
        content: "x".repeat(200_000),
    })
    .await
    .unwrap();
    tx.publish(&EssayUploadedV1 {
        essay_id: "poison".into(),
        seq: 1,
        content: "small".into(),
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();
    for round in 0..20 {
        let mut tx = outbox.transactional_publish().await.unwrap();
        for a in 0..5 {
            tx.publish(&EssayUploadedV1 {
                essay_id: format!("ok-{a}"),
                seq: round,
                content: "fine".into(),
            })
            .await
            .unwrap();
        }
        tx.commit().await.unwrap();
    }

    collector.wait_for(100, Duration::from_secs(60)).await;
    // Wait for the poison event to exhaust its retries.
    let mut dead = None;
    for _ in 0..100 {
        dead = sqlx::query_as::<_, (i32, Option<String>)>(
            "SELECT retry_count, last_error FROM event_outbox WHERE state = 'dead' AND aggregate_id = 'poison'",
        )
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        if dead.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (retries, error) = dead.expect("the oversized event becomes dead");
    assert_eq!(retries, 3, "first attempt + max_retries");
    let error = error.unwrap_or_default();
    assert!(
        error.to_lowercase().contains("too large"),
        "readable last_error: {error}"
    );

    let all = collector.settle(Duration::from_secs(3)).await;
    let t = fixtures::tally(&all);
    assert_eq!(t.received, 100, "other aggregates flowed: {}", t.received);
    assert!(
        all.iter().all(|m| m.headers["aggregate_id"] != "poison"),
        "the poison aggregate's later event waits behind the dead one"
    );
    let waiting: String = sqlx::query_scalar("SELECT state FROM event_outbox WHERE aggregate_id = 'poison' AND event_data->'data'->>'seq' = '1'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(waiting, "pending");
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(stats.dead, 1);
    collector.stop();
    db.drop_db().await;
}
