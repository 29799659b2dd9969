//! The claim floor against a real Postgres: claims start above the rows
//! already delivered, but never above a row that is, or can still become,
//! pending: a row whose transaction is still open (seen through
//! `pg_locks`, also in a session that reports nothing to
//! `pg_stat_activity`), a dead row an operator may send again, a row
//! waiting for its retry.

mod support;

use outbox::relay::database_only::DatabaseOnlyDrain;
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;

/// Long enough for every candidate read before it to be final (the horizon
/// waits for the transactions open at a reading to end; these are short).
const PAST_THE_MARGIN: Duration = Duration::from_millis(1_300);

const INSERT: &str =
    "INSERT INTO event_outbox (id, aggregate_type, aggregate_id, event_type, topic, event_key, event_data)
     SELECT gen_random_uuid(), 'essay', 'a' || (i % 10), 'EssayScoredV1', 'essays.v1', 'a' || (i % 10),
            json_build_object('event_id', gen_random_uuid(), 'event_type', 'EssayScoredV1', 'data', json_build_object('i', i))
     FROM generate_series(1, $1) i";

async fn insert(pool: &PgPool, rows: i32) {
    sqlx::query(INSERT).bind(rows).execute(pool).await.unwrap();
}

async fn execute(pool: &PgPool, statement: &str) {
    sqlx::query(statement).execute(pool).await.unwrap();
}

/// A migrated database of its own with `rows` pending rows, and a drain
/// of it in batches of 50.
async fn outbox_with_rows(label: &str, rows: i32) -> (support::TestDatabase, DatabaseOnlyDrain) {
    let db = support::TestDatabase::create(label).await;
    outbox::migrate(&db.pool).await.unwrap();
    let drain = DatabaseOnlyDrain::new(db.pool.clone(), 50);
    insert(&db.pool, rows).await;
    (db, drain)
}

/// How many rows were drained until nothing was claimable.
async fn drain_all(drain: &mut DatabaseOnlyDrain, pool: &PgPool) -> usize {
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM event_outbox")
        .fetch_one(pool)
        .await
        .unwrap();
    let mut rows = 0;
    while let Some(batch) = drain.next_batch().await.unwrap() {
        rows += batch.rows;
        assert!(rows as i64 <= before, "claimed more rows than exist");
    }
    rows
}

/// Drains, then gives every candidate time to become final and moves the
/// floor as far as it goes.
async fn drain_and_settle(drain: &mut DatabaseOnlyDrain, pool: &PgPool) -> i64 {
    drain_all(drain, pool).await;
    drain.advance_floor().await.unwrap();
    tokio::time::sleep(PAST_THE_MARGIN).await;
    drain.advance_floor().await.unwrap();
    drain.advance_floor().await.unwrap()
}

async fn max_seq(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT last_value FROM event_outbox_seq_seq")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A transaction that inserted one outbox row and stays open; returns its
/// connection and the row's `seq`.
async fn open_transaction_with_a_row(url: &str, setup: Option<&str>) -> (PgConnection, i64) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    if let Some(setup) = setup {
        sqlx::query(setup).execute(&mut conn).await.unwrap();
    }
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    let seq: i64 = sqlx::query_scalar(&format!("{INSERT} RETURNING seq"))
        .bind(1)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    (conn, seq)
}

async fn a_late_commit_stays_above_the_floor(label: &str, setup: Option<&str>) {
    let (db, mut drain) = outbox_with_rows(label, 100).await;
    let (mut open, late_seq) = open_transaction_with_a_row(&db.url, setup).await;
    insert(&db.pool, 100).await;

    assert_eq!(drain_all(&mut drain, &db.pool).await, 200);
    let floor = drain_and_settle(&mut drain, &db.pool).await;
    assert!(
        floor <= late_seq,
        "the floor ({floor}) passed row {late_seq}, whose transaction is still open"
    );

    sqlx::query("COMMIT").execute(&mut open).await.unwrap();
    open.close().await.unwrap();
    let batch = drain.next_batch().await.unwrap();
    assert_eq!(
        batch.map(|b| b.rows),
        Some(1),
        "the row committed late is claimed"
    );

    // With nothing open any more, the floor moves past every row.
    let floor = drain_and_settle(&mut drain, &db.pool).await;
    assert_eq!(
        floor,
        max_seq(&db.pool).await + 1,
        "the floor passes delivered rows"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn the_floor_stays_at_a_row_whose_transaction_is_still_open() {
    a_late_commit_stays_above_the_floor("floor_open_transaction", None).await;
}

#[tokio::test]
async fn the_floor_stays_at_a_row_of_a_session_that_does_not_report_its_transaction() {
    // Its `pg_stat_activity` row shows state `disabled` and no
    // `xact_start`: nothing tells when its transaction began.
    a_late_commit_stays_above_the_floor(
        "floor_untracked_session",
        Some("SET track_activities = off"),
    )
    .await;
}

#[tokio::test]
async fn the_floor_stays_at_the_first_dead_row_so_sending_it_again_delivers_it() {
    let (db, mut drain) = outbox_with_rows("floor_dead_row", 200).await;
    execute(
        &db.pool,
        "UPDATE event_outbox SET state = 'dead', retry_count = 5 WHERE seq = 30",
    )
    .await;
    let floor = drain_and_settle(&mut drain, &db.pool).await;
    assert_eq!(floor, 30, "the first dead row holds the floor");

    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM event_outbox WHERE seq = 30")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    outbox::ops::admin::retry(&db.pool, None, id).await.unwrap();
    // It comes first and alone, as the head of its aggregate; the 17 later
    // rows of its aggregate (40, 50, …, 200) that waited behind it follow
    // once it is delivered.
    let batch = drain.next_batch().await.unwrap();
    assert_eq!(
        batch.map(|b| b.rows),
        Some(1),
        "the row sent again is claimed, alone"
    );
    let batch = drain.next_batch().await.unwrap();
    assert_eq!(batch.map(|b| b.rows), Some(17), "then its aggregate's rows");
    assert_eq!(drain_all(&mut drain, &db.pool).await, 0);
    db.drop_db().await;
}

#[tokio::test]
async fn the_floor_stays_at_a_row_waiting_for_its_retry() {
    let (db, mut drain) = outbox_with_rows("floor_retry_row", 200).await;
    // Row 41 is retried in an hour; row 42 (another aggregate) is not held.
    execute(
        &db.pool,
        "UPDATE event_outbox SET retry_count = 1, next_attempt_at = now() + interval '1 hour'
         WHERE seq = 41",
    )
    .await;
    let floor = drain_and_settle(&mut drain, &db.pool).await;
    assert_eq!(floor, 41, "the row waiting for its retry holds the floor");
    let left: Vec<i64> = sqlx::query_scalar("SELECT seq FROM event_outbox ORDER BY seq")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left.first(), Some(&41), "{left:?}");

    execute(
        &db.pool,
        "UPDATE event_outbox SET next_attempt_at = now() WHERE seq = 41",
    )
    .await;
    assert!(
        drain_all(&mut drain, &db.pool).await >= 1,
        "the row is claimed once due"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn the_floor_passes_delivered_rows_as_soon_as_their_transactions_have_ended() {
    // No clock margin: a reading that finds none of the transactions open
    // at the reading before it makes that reading's sequence value final,
    // so three readings in a row (record, make final, use) move the floor
    // past every delivered row, within milliseconds.
    let (db, mut drain) = outbox_with_rows("floor_no_margin", 120).await;
    assert_eq!(drain_all(&mut drain, &db.pool).await, 120);
    let started = std::time::Instant::now();
    let mut floor = 0;
    for _ in 0..3 {
        floor = drain.advance_floor().await.unwrap();
    }
    assert_eq!(
        floor,
        max_seq(&db.pool).await + 1,
        "the floor passes the delivered rows without waiting ({:?} after the drain)",
        started.elapsed()
    );
    db.drop_db().await;
}
