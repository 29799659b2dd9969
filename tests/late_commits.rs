//! Rows that become pending below rows already claimed, against a real
//! Postgres and broker, during a backlog the relay drains with claims ahead
//! that start at its claim floor (`outbox-runtime/src/relay/floor.rs`):
//!
//! - a row whose transaction is still open while later rows of its shards
//!   are claimed: when it commits, it still goes out before the later
//!   events of its aggregate (the horizon keeps the floor below it);
//! - a dead row an operator sends again during the backlog: it goes out
//!   before its aggregate's later events (the floor never passes a dead
//!   row, and the retried row holds its aggregate back while it is retried).

mod fixtures;
mod support;

use fixtures::Shards;
use outbox::{Outbox, OutboxEvent};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "late.ledger-entry-posted.v1", aggregate = "account")]
struct LedgerEntryPostedV1 {
    #[outbox_event(aggregate_id)]
    account_id: String,
    seq: i64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_late_during_a_backlog_precedes_its_aggregates_later_events() {
    late_commit_scenario("latecommitall", Shards::All).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_late_precedes_later_events_for_a_relay_with_some_shards() {
    late_commit_scenario("latecommithalf", Shards::LowerHalf).await;
}

/// Events of backlog aggregates, numbered per aggregate in `next`.
fn backlog(
    ids: &[String],
    count: usize,
    next: &mut HashMap<String, i64>,
) -> Vec<LedgerEntryPostedV1> {
    (0..count)
        .map(|i| {
            let id = &ids[i % ids.len()];
            let seq = next.entry(id.clone()).or_default();
            *seq += 1;
            LedgerEntryPostedV1 {
                account_id: id.clone(),
                seq: *seq,
            }
        })
        .collect()
}

async fn late_commit_scenario(name: &str, shards: Shards) {
    const BACKLOG: usize = 3_000;
    const LATE: usize = 4;
    let bootstrap = support::bootstrap_servers();
    let s = fixtures::scenario(name, &bootstrap, 2).await;
    let collector = support::Collector::start(&bootstrap, &s.topics);
    shards.prepare(&s.db.pool).await;
    let ids = shards
        .aggregate_ids(&s.db.pool, "account", "acct-", LATE + 60)
        .await;
    let (late_ids, backlog_ids) = ids.split_at(LATE);
    let mut next = HashMap::new();

    // A backlog, then rows whose transactions stay open, then more backlog
    // above them.
    fixtures::commit_all(&s.outbox, &backlog(backlog_ids, BACKLOG, &mut next)).await;
    let late_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(LATE as u32)
        .connect(&s.db.url)
        .await
        .unwrap();
    let late_outbox = Outbox::new(late_pool.clone(), "svc");
    let mut open = Vec::new();
    for id in late_ids {
        let mut tx = late_outbox.transactional_publish().await.unwrap();
        tx.publish(&LedgerEntryPostedV1 {
            account_id: id.clone(),
            seq: 1,
        })
        .await
        .unwrap();
        open.push(tx);
    }
    fixtures::commit_all(&s.outbox, &backlog(backlog_ids, BACKLOG, &mut next)).await;

    let handle = fixtures::spawn_relay(&s, &bootstrap, 20).await;

    // Once the relay claims above the open rows (the first backlog gone,
    // the second begun), they commit, each followed at once by its
    // aggregate's next event, while the backlog keeps the relay claiming
    // ahead.
    let mut waited = 0;
    while fixtures::pending_rows(&s.db.pool).await > (BACKLOG - 200) as i64 && waited < 6_000 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        waited += 1;
    }
    let left = fixtures::pending_rows(&s.db.pool).await;
    assert!(
        left > 500 && left <= (BACKLOG - 200) as i64,
        "the relay is inside the second backlog when the late rows commit ({left} pending)"
    );
    fixtures::commit_all(&s.outbox, &backlog(backlog_ids, BACKLOG, &mut next)).await;
    for (tx, id) in open.into_iter().zip(late_ids) {
        tx.commit().await.unwrap();
        fixtures::commit_all(
            &s.outbox,
            &[LedgerEntryPostedV1 {
                account_id: id.clone(),
                seq: 2,
            }],
        )
        .await;
    }

    let total = 3 * BACKLOG + 2 * LATE;
    let delivered = collector.wait_for(total, Duration::from_secs(120)).await;
    let all = collector.settle(Duration::from_secs(2)).await;
    let t = fixtures::report(&format!("late_commit_{name}"), total, &all);
    assert!(delivered.len() >= total, "every event arrives");
    assert_eq!(t.received, total, "every event arrives");
    assert_eq!(
        t.order_violations, 0,
        "each late row before its aggregate's next event"
    );
    handle.shutdown().await.unwrap();
    late_pool.close().await;
    collector.stop();
    s.db.drop_db().await;
}

/// A dead event passed over by claims during a backlog, then sent again by
/// an operator while the backlog still drains: its aggregate's later events
/// (held back behind it while it was dead) still go out after it. Once the
/// row is pending again it lies below rows already claimed, so the floor
/// must not have passed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_event_sent_again_during_a_backlog_precedes_its_aggregates_later_events() {
    const EVENTS: usize = 20_000;
    const DEAD_AT: usize = 40;
    /// Every this many events after it, one more of its aggregate.
    const SPREAD: usize = 200;
    let bootstrap = support::bootstrap_servers();
    let s = fixtures::scenario("latedeadretry", &bootstrap, 2).await;
    let collector = support::Collector::start(&bootstrap, &s.topics);
    let mut next = HashMap::<String, i64>::new();
    let events: Vec<LedgerEntryPostedV1> = (0..EVENTS)
        .map(|position| {
            let id = if position >= DEAD_AT && (position - DEAD_AT) % SPREAD == 0 {
                "acct-dead".to_string()
            } else {
                format!("acct-{}", position % 60)
            };
            let seq = next.entry(id.clone()).or_default();
            *seq += 1;
            LedgerEntryPostedV1 {
                account_id: id,
                seq: *seq,
            }
        })
        .collect();
    fixtures::commit_all(&s.outbox, &events).await;
    // The first event of the aggregate is too big for the producer.
    sqlx::query(
        "UPDATE event_outbox SET event_data = json_build_object('event_id', event_data->'event_id',
                'event_type', event_data->'event_type',
                'data', json_build_object('account_id', 'acct-dead', 'seq', 1, 'pad', repeat('x', 200000)))
         WHERE aggregate_id = 'acct-dead' AND event_data->'data'->>'seq' = '1'",
    )
    .execute(&s.db.pool)
    .await
    .unwrap();

    let handle = fixtures::spawn_strict_relay(&s, &bootstrap, 20, 1).await;

    let mut dead_id = None;
    for _ in 0..600 {
        dead_id = sqlx::query_scalar(
            "SELECT id FROM event_outbox WHERE aggregate_id = 'acct-dead' AND state = 'dead'",
        )
        .fetch_optional(&s.db.pool)
        .await
        .unwrap();
        if dead_id.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dead_id: uuid::Uuid = dead_id.expect("the oversized event becomes dead");
    // An operator fixes it and sends it again.
    sqlx::query(
        "UPDATE event_outbox SET event_data = json_build_object('event_id', event_data->'event_id',
                'event_type', event_data->'event_type', 'data', json_build_object('account_id', 'acct-dead', 'seq', 1))
         WHERE id = $1",
    )
    .bind(dead_id)
    .execute(&s.db.pool)
    .await
    .unwrap();
    outbox::ops::admin::retry(&s.db.pool, None, dead_id)
        .await
        .unwrap();
    let left = fixtures::pending_rows(&s.db.pool).await;
    assert!(
        left > (EVENTS / 4) as i64,
        "the backlog still drains when the event is sent again ({left} pending)"
    );

    let delivered = collector.wait_for(EVENTS, Duration::from_secs(180)).await;
    let all = collector.settle(Duration::from_secs(2)).await;
    let t = fixtures::report("dead_sent_again_during_backlog", EVENTS, &all);
    assert!(delivered.len() >= EVENTS);
    assert_eq!(t.received, EVENTS, "every event arrives");
    assert_eq!(
        t.order_violations, 0,
        "the event sent again before the rest of its aggregate"
    );
    handle.shutdown().await.unwrap();
    collector.stop();
    s.db.drop_db().await;
}
