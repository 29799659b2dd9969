//! The relay's claim and marking statements against a real Postgres: the
//! claim ahead (which skips runs of in-flight rows by range) returns the
//! same rows as the fresh claim (which leaves them out by a hashed lookup),
//! and marking a batch touches exactly its rows, whether they form one run
//! (deleted by range) or not.

mod support;

use outbox::relay::database_only::DatabaseOnlyDrain;
use sqlx::PgPool;

/// Pending rows `1..=60`, aggregate `a{seq % 10}`, with a hole (`20..=24`
/// delivered), a failing row waiting for its retry (5, which holds back 15,
/// 25, …) and a dead row (7, which holds back 17, 27, …).
async fn outbox_with_holes_and_held_back_aggregates(pool: &PgPool) {
    outbox::migrate(pool).await.unwrap();
    sqlx::query(
        "INSERT INTO event_outbox (id, aggregate_type, aggregate_id, event_type, topic, event_key, event_data)
         SELECT gen_random_uuid(), 'essay', 'a' || (i % 10), 'EssayScoredV1', 'essays.v1', 'a' || (i % 10),
                json_build_object('event_id', gen_random_uuid(), 'event_type', 'EssayScoredV1', 'data', json_build_object('i', i))
         FROM generate_series(1, 60) i",
    )
    .execute(pool)
    .await
    .unwrap();
    for statement in [
        "DELETE FROM event_outbox WHERE seq BETWEEN 20 AND 24",
        "UPDATE event_outbox SET retry_count = 1, next_attempt_at = now() + interval '1 hour' WHERE seq = 5",
        "UPDATE event_outbox SET state = 'dead', retry_count = 3 WHERE seq = 7",
    ] {
        sqlx::query(statement).execute(pool).await.unwrap();
    }
}

async fn pending(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar("SELECT seq FROM event_outbox WHERE state = 'pending' ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn claim_ahead_skips_in_flight_runs_by_range_and_returns_what_the_fresh_claim_returns() {
    let db = support::TestDatabase::create("relay_claim_forms").await;
    outbox_with_holes_and_held_back_aggregates(&db.pool).await;
    // Batches of 12: the limit cuts through the rows of the ranges, so the
    // merge of the claim ahead's branches must keep `seq` order.
    let mut drain = DatabaseOnlyDrain::new(db.pool.clone(), 12);
    let seqs = |range: std::ops::RangeInclusive<i64>| range.collect::<Vec<i64>>();
    let cases: Vec<(&str, Vec<i64>)> = vec![
        ("nothing in flight", vec![]),
        ("one run at the head", seqs(1..=10)),
        ("one run above pending rows (late commits)", seqs(11..=19)),
        (
            "two runs around a hole",
            [seqs(11..=19), seqs(25..=30)].concat(),
        ),
        (
            "two runs given out of order",
            [seqs(40..=45), seqs(8..=14)].concat(),
        ),
        ("a run spanning the hole", seqs(18..=26)),
        (
            "three runs (the hashed form)",
            [vec![2, 3, 8, 9], seqs(30..=40)].concat(),
        ),
        ("a run past every row", seqs(55..=70)),
    ];
    for (case, in_flight) in &cases {
        let (fresh, ahead) = drain.both_claim_forms(in_flight).await.unwrap();
        assert!(!fresh.is_empty(), "{case}: the claim should find rows");
        assert_eq!(ahead, fresh, "{case}: in flight {in_flight:?}");
        assert!(
            fresh.iter().all(|seq| !in_flight.contains(seq)),
            "{case}: a row in flight was claimed: {fresh:?}"
        );
    }
    // Spelled out for one case: the rows below the run come first, held-back
    // aggregates (5 and 7 block a5 and a7) and the hole are left out.
    let (_, ahead) = drain.both_claim_forms(&seqs(11..=19)).await.unwrap();
    assert_eq!(ahead, [1, 2, 3, 4, 6, 8, 9, 10, 26, 28, 29, 30]);
    assert_eq!(pending(&db.pool).await.len(), 54, "claims changed nothing");
    db.drop_db().await;
}

#[tokio::test]
async fn marking_a_batch_deletes_exactly_its_rows_as_a_run_or_not() {
    let db = support::TestDatabase::create("relay_claim_marking").await;
    outbox_with_holes_and_held_back_aggregates(&db.pool).await;
    let mut drain = DatabaseOnlyDrain::new(db.pool.clone(), 3);
    // 1, 2, 3: one run, deleted by range.
    let batch = drain.next_batch().await.unwrap().unwrap();
    assert_eq!(batch.rows, 3);
    let left = pending(&db.pool).await;
    assert_eq!(left.first(), Some(&4), "{left:?}");
    assert_eq!(left.len(), 51);
    // 4, 6, 8: not a run (5 is held for its retry, 7 is dead); the rows
    // between them must survive.
    let batch = drain.next_batch().await.unwrap().unwrap();
    assert_eq!(batch.rows, 3);
    let left = pending(&db.pool).await;
    assert_eq!(&left[..4], [5, 9, 10, 11], "{left:?}");
    let dead: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_outbox WHERE seq = 7 AND state = 'dead'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(dead, 1, "the dead row between the batch's rows is kept");
    db.drop_db().await;
}
