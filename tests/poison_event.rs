//! Proof 5: an event the broker side refuses (larger than the maximum
//! message size) is retried, then dead with a readable last_error, while
//! 50 other aggregates keep flowing; later events of its aggregate wait
//! (the default `block` policy) until an operator releases it.

mod fixtures;
mod support;

use fixtures::Shards;
use outbox::{OutboxEvent, Relay};
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
    let bootstrap = support::bootstrap_servers();
    let s = fixtures::scenario("poison", &bootstrap, 2).await;
    let collector = support::Collector::start(&bootstrap, &s.topics);

    let mut kafka = fixtures::kafka(&bootstrap);
    kafka.set("message.max.bytes", "50000"); // the size limit messages must respect
    let mut config = fixtures::relay_config(&s.prefix);
    // Retries spread over several seconds, so the other aggregates' events
    // provably arrive while the poison event is still being retried.
    config.max_retries = 3;
    config.retry_backoff = Duration::from_secs(2);
    config.max_retry_backoff = Duration::from_secs(4);
    let handle = Relay::new(s.db.pool.clone(), kafka, config)
        .await
        .unwrap()
        .spawn();

    let mut tx = s.outbox.transactional_publish().await.unwrap();
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
    // 50 other aggregates, 4 events each.
    for round in 0..4 {
        let events: Vec<EssayUploadedV1> = (0..50)
            .map(|a| EssayUploadedV1 {
                essay_id: format!("ok-{a}"),
                seq: round,
                content: "fine".into(),
            })
            .collect();
        fixtures::commit_all(&s.outbox, &events).await;
    }

    collector.wait_for(200, Duration::from_secs(60)).await;
    // The batch's outcome is recorded just after the broker's acks.
    let mut row = (String::new(), 0);
    for _ in 0..50 {
        row = sqlx::query_as(
            "SELECT state, retry_count FROM event_outbox WHERE aggregate_id = 'poison' AND event_data->'data'->>'seq' = '0'",
        )
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
        if row.1 > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (state, retries): (String, i32) = row;
    assert_eq!(
        (state.as_str(), retries > 0),
        ("pending", true),
        "the 50 other aggregates' events arrived while the poison event was being retried"
    );
    let others = collector.snapshot();
    let t = fixtures::report("poison_event_others_flow", 200, &others);
    assert_eq!(t.received, 200, "other aggregates flowed: {}", t.received);
    assert_eq!(t.order_violations, 0);

    // Wait for the poison event to exhaust its retries.
    let mut dead = None;
    for _ in 0..150 {
        dead = sqlx::query_as::<_, (i32, Option<String>)>(
            "SELECT retry_count, last_error FROM event_outbox WHERE state = 'dead' AND aggregate_id = 'poison'",
        )
        .fetch_optional(&s.db.pool)
        .await
        .unwrap();
        if dead.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (retries, error) = dead.expect("the oversized event becomes dead");
    assert_eq!(retries, 4, "first attempt + max_retries");
    let error = error.unwrap_or_default();
    assert!(
        error.to_lowercase().contains("too large"),
        "readable last_error: {error}"
    );

    // Default policy (block): the aggregate's later event keeps waiting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        collector
            .snapshot()
            .iter()
            .all(|m| m.headers["aggregate_id"] != "poison"),
        "the poison aggregate's later event waits behind the dead one"
    );
    let waiting: String = sqlx::query_scalar("SELECT state FROM event_outbox WHERE aggregate_id = 'poison' AND event_data->'data'->>'seq' = '1'")
        .fetch_one(&s.db.pool)
        .await
        .unwrap();
    assert_eq!(waiting, "pending");

    // An operator releases the aggregate: the dead event stays (released),
    // the later one is delivered.
    let released = outbox::ops::admin::release(&s.db.pool, None, "essay", "poison")
        .await
        .unwrap();
    assert_eq!(released, 1);
    let all = collector.wait_for(201, Duration::from_secs(30)).await;
    let later: Vec<_> = all
        .iter()
        .filter(|m| m.headers["aggregate_id"] == "poison")
        .collect();
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].payload["data"]["seq"], 1);
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(stats.dead, 1);
    collector.stop();
    s.db.drop_db().await;
}

/// The relay claims the next full batch while the current one is produced.
/// When an event of the current batch fails, its aggregate's later event that
/// was already claimed ahead must not be sent: it waits behind the failed
/// one (default `block` policy), while everything else in both batches flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_holds_back_its_aggregate_in_the_batch_claimed_ahead() {
    // Batch 1 holds ok-0..ok-4, the poison event, ok-6..ok-9; batch 2
    // (claimed ahead while batch 1 is produced) holds the poison aggregate's
    // second event at position 12.
    hold_back_scenario("ahead", 5, &[12], Shards::All).await;
}

/// The same for a relay that owns only some of the shards: its batches lie
/// between other relays' rows, and the batch claimed ahead (10..20, with
/// the poison aggregate's next event at 12) and the one after it (24) must
/// both hold back behind the failure at 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_holds_back_its_aggregate_for_a_relay_with_some_shards() {
    hold_back_scenario("someshards", 5, &[12, 24], Shards::LowerHalf).await;
}

/// The relay also writes a batch's outcome while it produces the next one,
/// and a full next batch has the batch after it claimed meanwhile: before
/// the failure is written, so the claim statement cannot see it. The
/// failed event's aggregate has no event in batch 2 (which stays full) and
/// its next one in batch 3: that one must be held back too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_holds_back_its_aggregate_in_the_batch_claimed_while_it_is_marked() {
    hold_back_scenario("marking", 5, &[25], Shards::All).await;
}

/// A partial batch takes everything committed so far, and the next claim is
/// a fresh one, made at once. A failure of the batch is not written yet at
/// that moment, so the claim statement cannot see it: the relay must write
/// it first. The failed event's aggregate keeps getting events while the
/// relay runs, so they are there for that fresh claim; none may be sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_holds_back_its_aggregate_in_a_fresh_claim_made_before_it_is_marked() {
    let bootstrap = support::bootstrap_servers();
    let s = fixtures::scenario("fresh", &bootstrap, 2).await;
    let collector = support::Collector::start(&bootstrap, &s.topics);
    let handle = fixtures::spawn_strict_relay(&s, &bootstrap, 50, 1).await;

    let event = |id: &str, seq: i64, content: String| EssayUploadedV1 {
        essay_id: id.into(),
        seq,
        content,
    };
    let mut tx = s.outbox.transactional_publish().await.unwrap();
    tx.publish(&event("poison", 0, "x".repeat(200_000)))
        .await
        .unwrap();
    tx.publish(&event("ok-0", 0, "fine".into())).await.unwrap();
    tx.commit().await.unwrap();
    const LATER: usize = 200;
    for i in 1..=LATER {
        let mut tx = s.outbox.transactional_publish().await.unwrap();
        tx.publish(&event("poison", i as i64, "small".into()))
            .await
            .unwrap();
        tx.publish(&event(&format!("ok-{i}"), 0, "fine".into()))
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    let others = LATER + 1;

    let delivered = collector.wait_for(others, Duration::from_secs(60)).await;
    let t = fixtures::report("hold_back_fresh", others, &delivered);
    assert_eq!(t.order_violations, 0);
    let settled = collector.settle(Duration::from_secs(2)).await;
    assert!(
        settled
            .iter()
            .all(|m| m.headers["aggregate_id"] != "poison"),
        "none of the failed event's aggregate was sent: {} of {}",
        settled
            .iter()
            .filter(|m| m.headers["aggregate_id"] == "poison")
            .count(),
        LATER
    );
    assert_eq!(settled.len(), others);
    let pending: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_outbox WHERE aggregate_id = 'poison' AND state = 'pending'",
    )
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(pending as usize, LATER, "they wait behind it");
    handle.shutdown().await.unwrap();
    collector.stop();
    s.db.drop_db().await;
}

/// 40 events committed before the relay starts, so batches of 10 are full;
/// an oversized poison event at `poison_at` and the poison aggregate's later
/// events at `later` (positions). The relay may send none of those.
async fn hold_back_scenario(name: &str, poison_at: usize, later: &[usize], shards: Shards) {
    const EVENTS: usize = 40;
    let bootstrap = support::bootstrap_servers();
    let s = fixtures::scenario(name, &bootstrap, 2).await;
    let collector = support::Collector::start(&bootstrap, &s.topics);
    shards.prepare(&s.db.pool).await;
    // An aggregate id per position and one for the poison aggregate; for
    // `LowerHalf` only ids whose shard is below 32.
    let ids = shards
        .aggregate_ids(&s.db.pool, "essay", "agg-", EVENTS + 1)
        .await;
    let poison = &ids[EVENTS];

    let event = |id: &str, seq: i64, content: String| EssayUploadedV1 {
        essay_id: id.into(),
        seq,
        content,
    };
    let mut tx = s.outbox.transactional_publish().await.unwrap();
    let mut others = 0;
    for (position, id) in ids.iter().take(EVENTS).enumerate() {
        let e = if position == poison_at {
            event(poison, 0, "x".repeat(200_000))
        } else if let Some(n) = later.iter().position(|&p| p == position) {
            event(poison, n as i64 + 1, "small".into())
        } else {
            others += 1;
            event(id, 0, "fine".into())
        };
        tx.publish(&e).await.unwrap();
    }
    tx.commit().await.unwrap();

    let handle = fixtures::spawn_strict_relay(&s, &bootstrap, 10, 1).await;

    let delivered = collector.wait_for(others, Duration::from_secs(60)).await;
    let t = fixtures::report(&format!("hold_back_{name}"), others, &delivered);
    assert_eq!(t.order_violations, 0);
    if shards == Shards::LowerHalf {
        let owned: Vec<i16> = sqlx::query_scalar(
            "SELECT shard FROM event_outbox_lease WHERE owner <> $1 ORDER BY shard",
        )
        .bind(fixtures::NEVER_CLAIMS)
        .fetch_all(&s.db.pool)
        .await
        .unwrap();
        assert_eq!(
            owned,
            (0..32).collect::<Vec<i16>>(),
            "the relay owned shards 0..32"
        );
    }
    // Until the poison event is dead, and after, its aggregate's later
    // events stay pending and unsent.
    let dead = eventually(
        &s.db.pool,
        &format!(
            "SELECT EXISTS (SELECT 1 FROM event_outbox WHERE state = 'dead' AND aggregate_id = '{poison}')"
        ),
        100,
        Duration::from_millis(100),
    )
    .await;
    assert!(dead, "the oversized event becomes dead");
    let settled = collector.settle(Duration::from_secs(2)).await;
    assert_eq!(settled.len(), others, "only the other aggregates' events");
    assert!(
        settled
            .iter()
            .all(|m| m.headers["aggregate_id"] != poison.as_str()),
        "the events behind the failed one were not sent"
    );
    let waiting: Vec<String> = sqlx::query_scalar(
        "SELECT state FROM event_outbox
         WHERE aggregate_id = $1 AND event_data->'data'->>'seq' <> '0' ORDER BY seq",
    )
    .bind(poison)
    .fetch_all(&s.db.pool)
    .await
    .unwrap();
    assert_eq!(waiting, vec!["pending"; later.len()]);
    handle.shutdown().await.unwrap();
    collector.stop();
    s.db.drop_db().await;
}

/// A failing event whose aggregate has later events spread over a draining
/// backlog, fixed by hand while the backlog drains: once its retry gets
/// through, the rest of its aggregate follows in order (docs/reference/guarantees.md).
/// A claim that started above the batch in flight would leave the events
/// passed over while the aggregate was held back below its start and send a
/// later one first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_cleared_during_a_backlog_lets_its_aggregate_follow_in_order() {
    const EVENTS: usize = 20_000;
    /// Every this many events, one of the failing event's aggregate.
    const SPREAD: usize = 40;
    let bootstrap = support::bootstrap_servers();
    let s = fixtures::scenario("clearedfailure", &bootstrap, 2).await;
    let collector = support::Collector::start(&bootstrap, &s.topics);
    let mut per_aggregate = std::collections::HashMap::<String, i64>::new();
    let events: Vec<EssayUploadedV1> = (0..EVENTS)
        .map(|position| {
            let id = if position % SPREAD == 0 {
                "poison".to_string()
            } else {
                format!("ok-{}", position % 200)
            };
            let seq = per_aggregate.entry(id.clone()).or_default();
            *seq += 1;
            let content = if position == 0 {
                "x".repeat(200_000)
            } else {
                "fine".into()
            };
            EssayUploadedV1 {
                essay_id: id,
                seq: *seq,
                content,
            }
        })
        .collect();
    fixtures::commit_all(&s.outbox, &events).await;

    let handle = fixtures::spawn_strict_relay(&s, &bootstrap, 20, 1_000).await;
    // The oversized event failed once: fix it, as an operator would.
    let failed = eventually(
        &s.db.pool,
        "SELECT EXISTS (SELECT 1 FROM event_outbox WHERE aggregate_id = 'poison' AND retry_count > 0)",
        300,
        Duration::from_millis(20),
    )
    .await;
    assert!(failed, "the oversized event fails");
    sqlx::query(
        "UPDATE event_outbox SET event_data = replace(event_data::text, repeat('x', 200000), 'fixed')::json
         WHERE aggregate_id = 'poison' AND retry_count > 0",
    )
    .execute(&s.db.pool)
    .await
    .unwrap();
    let pending = fixtures::pending_rows(&s.db.pool).await;
    assert!(
        pending > (EVENTS / 4) as i64,
        "the backlog is still draining when the failure is fixed ({pending} pending)"
    );

    let delivered = collector.wait_for(EVENTS, Duration::from_secs(180)).await;
    let all = collector.settle(Duration::from_secs(2)).await;
    let t = fixtures::report("failure_cleared_during_backlog", EVENTS, &all);
    assert!(delivered.len() >= EVENTS);
    assert_eq!(t.received, EVENTS, "every event arrives");
    assert_eq!(t.order_violations, 0, "each aggregate in order");
    handle.shutdown().await.unwrap();
    collector.stop();
    s.db.drop_db().await;
}

/// Runs `query` (a `SELECT EXISTS …`) until it is true, at most `tries`
/// times, `every` apart; whether it became true.
async fn eventually(pool: &sqlx::PgPool, query: &str, tries: usize, every: Duration) -> bool {
    for _ in 0..tries {
        let found: bool = sqlx::query_scalar(query).fetch_one(pool).await.unwrap();
        if found {
            return true;
        }
        tokio::time::sleep(every).await;
    }
    false
}
