//! Proof 1 and 2 of the runtime: a committed event arrives with the right
//! topic, key, headers and envelope; a rolled-back one never does.

mod fixtures;
mod support;

use outbox::{Outbox, OutboxEvent, PublishContext, PublishError, Relay};
use serde::Serialize;
use std::time::Duration;
use uuid::Uuid;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(
    topic = "files.batch-file-added.v1",
    aggregate = "file_upload",
    version = 2,
    allow_topic_version_mismatch
)]
struct BatchFileAddedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: String,
    #[outbox_event(key)]
    batch_id: String,
    file_name: String,
}

async fn setup(label: &str) -> (support::TestDatabase, String, support::Collector) {
    support::init_tracing();
    let db = support::TestDatabase::create(label).await;
    outbox::migrate(&db.pool).await.expect("migrations apply");
    sqlx::query("CREATE TABLE file_uploads (id TEXT PRIMARY KEY, batch_id TEXT NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    let prefix = support::unique(label);
    let topics = fixtures::prefixed_topics(&prefix);
    support::create_topics(&support::bootstrap_servers(), &topics, 3).await;
    let collector = support::Collector::start(&support::bootstrap_servers(), &topics);
    (db, prefix, collector)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_event_arrives_with_topic_key_headers_and_envelope() {
    let (db, prefix, collector) = setup("commit").await;
    let outbox = Outbox::new(db.pool.clone(), "file_service");
    let relay = Relay::new(
        db.pool.clone(),
        fixtures::kafka(&support::bootstrap_servers()),
        fixtures::relay_config(&prefix),
    )
    .await
    .expect("relay starts");
    let handle = relay.spawn();

    let correlation = Uuid::new_v4();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let event_id = PublishContext::new()
        .with_correlation_id(correlation)
        .with_traceparent(traceparent)
        .scope(async {
            let mut tx = outbox.transactional_publish().await.unwrap();
            sqlx::query("INSERT INTO file_uploads (id, batch_id) VALUES ('f-1', 'batch-7')")
                .execute(&mut *tx)
                .await
                .unwrap();
            let id = tx
                .publish(&BatchFileAddedV1 {
                    file_upload_id: "f-1".into(),
                    batch_id: "batch-7".into(),
                    file_name: "essay.txt".into(),
                })
                .await
                .unwrap();
            assert_eq!(tx.commit().await.unwrap(), 1);
            id
        })
        .await;

    let got = collector.wait_for(1, Duration::from_secs(30)).await;
    let m = &got[0];
    assert_eq!(m.topic, format!("{prefix}files.batch-file-added.v1"));
    assert_eq!(
        m.key.as_deref(),
        Some("batch-7"),
        "key is the #[outbox_event(key)] field"
    );
    let h = &m.headers;
    assert_eq!(h["event_id"], event_id.to_string());
    assert_eq!(h["event_type"], "BatchFileAddedV1");
    assert_eq!(h["aggregate_type"], "file_upload");
    assert_eq!(h["aggregate_id"], "f-1");
    assert_eq!(h["correlation_id"], correlation.to_string());
    assert_eq!(h["traceparent"], traceparent);
    let e = &m.payload;
    assert_eq!(e["event_id"], event_id.to_string());
    assert_eq!(e["event_type"], "BatchFileAddedV1");
    assert_eq!(e["version"], 2);
    assert_eq!(e["source_service"], "file_service");
    assert_eq!(e["correlation_id"], correlation.to_string());
    assert_eq!(e["aggregate_type"], "file_upload");
    assert_eq!(e["aggregate_id"], "f-1");
    assert_eq!(e["data"]["file_name"], "essay.txt");
    assert_eq!(e["metadata"]["traceparent"], traceparent);
    assert!(e["event_timestamp"]
        .as_str()
        .is_some_and(|t| t.contains('T')));
    assert_eq!(
        Uuid::parse_str(e["event_id"].as_str().unwrap())
            .unwrap()
            .get_version_num(),
        7
    );

    let all = collector.settle(Duration::from_secs(2)).await;
    assert_eq!(all.len(), 1, "delivered exactly once");
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(stats.delivered, 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM event_outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "default retention deletes delivered rows");
    collector.stop();
    db.drop_db().await;
}

/// A relay configured with a schema claims (its claim statements name the
/// schema-qualified table) and marks only that schema's rows; a row in the
/// default schema's outbox is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_on_a_configured_schema_delivers_that_schema_only() {
    let (db, prefix, collector) = setup("schema").await;
    let schema = outbox::SchemaName::new("file_service").unwrap();
    outbox::migrate_in_schema(&db.pool, &schema).await.unwrap();
    let in_schema = Outbox::builder(db.pool.clone(), "file_service")
        .schema(schema.clone())
        .build();
    let in_default = Outbox::new(db.pool.clone(), "file_service");
    let event = |upload: &str, file: &str| BatchFileAddedV1 {
        file_upload_id: upload.into(),
        batch_id: upload.into(),
        file_name: file.into(),
    };
    let mut tx = in_default.transactional_publish().await.unwrap();
    tx.publish(&event("default-1", "stays.txt")).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = in_schema.transactional_publish().await.unwrap();
    tx.publish_all(&[
        event("f-1", "a.txt"),
        event("f-2", "b.txt"),
        event("f-1", "c.txt"),
    ])
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let config = outbox::RelayConfig {
        schema: Some(schema),
        ..fixtures::relay_config(&prefix)
    };
    let relay = Relay::new(
        db.pool.clone(),
        fixtures::kafka(&support::bootstrap_servers()),
        config,
    )
    .await
    .expect("relay starts");
    let handle = relay.spawn();
    collector.wait_for(3, Duration::from_secs(30)).await;
    let all = collector.settle(Duration::from_secs(2)).await;
    let files: Vec<(&str, &str)> = all
        .iter()
        .map(|m| {
            (
                m.payload["aggregate_id"].as_str().unwrap_or_default(),
                m.payload["data"]["file_name"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        all.len(),
        3,
        "the schema's three events, once each: {files:?}"
    );
    let f1: Vec<&str> = files
        .iter()
        .filter(|(aggregate, _)| *aggregate == "f-1")
        .map(|(_, file)| *file)
        .collect();
    assert_eq!(f1, ["a.txt", "c.txt"], "in commit order per aggregate");
    let stats = handle.shutdown().await.unwrap();
    assert_eq!(stats.delivered, 3);
    let left_in_schema: i64 = sqlx::query_scalar("SELECT count(*) FROM file_service.event_outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(left_in_schema, 0, "delivered rows are deleted");
    let default_state: String = sqlx::query_scalar("SELECT state FROM event_outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        default_state, "pending",
        "the default schema's row is untouched"
    );
    collector.stop();
    db.drop_db().await;
}

#[derive(Debug)]
enum BusinessError {
    Rejected,
    Outbox(#[allow(dead_code)] PublishError),
}

impl From<PublishError> for BusinessError {
    fn from(e: PublishError) -> Self {
        Self::Outbox(e)
    }
}

async fn upload_then_fail(outbox: &Outbox) -> Result<(), BusinessError> {
    let mut tx = outbox.transactional_publish().await?;
    sqlx::query("INSERT INTO file_uploads (id, batch_id) VALUES ('f-err', 'b-err')")
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            BusinessError::Outbox(PublishError::Database {
                action: "test",
                source: e,
            })
        })?;
    tx.publish(&BatchFileAddedV1 {
        file_upload_id: "f-err".into(),
        batch_id: "b-err".into(),
        file_name: "x".into(),
    })
    .await?;
    // Business logic decides to fail: the `?` drops the guard uncommitted.
    Err(BusinessError::Rejected)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_or_business_error_publishes_nothing() {
    let (db, prefix, collector) = setup("rollback").await;
    let outbox = Outbox::new(db.pool.clone(), "file_service");
    let handle = Relay::new(
        db.pool.clone(),
        fixtures::kafka(&support::bootstrap_servers()),
        fixtures::relay_config(&prefix),
    )
    .await
    .unwrap()
    .spawn();

    // 1. Guard dropped without commit.
    {
        let mut tx = outbox.transactional_publish().await.unwrap();
        sqlx::query("INSERT INTO file_uploads (id, batch_id) VALUES ('f-drop', 'b-drop')")
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.publish(&BatchFileAddedV1 {
            file_upload_id: "f-drop".into(),
            batch_id: "b-drop".into(),
            file_name: "x".into(),
        })
        .await
        .unwrap();
    }
    // 2. Explicit rollback.
    let mut tx = outbox.transactional_publish().await.unwrap();
    tx.publish(&BatchFileAddedV1 {
        file_upload_id: "f-rb".into(),
        batch_id: "b-rb".into(),
        file_name: "x".into(),
    })
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    // 3. An error returned by business logic inside the guard.
    assert!(matches!(
        upload_then_fail(&outbox).await,
        Err(BusinessError::Rejected)
    ));

    // A marker committed afterwards proves the relay was running and
    // caught up: everything before it had its chance to arrive.
    let mut tx = outbox.transactional_publish().await.unwrap();
    tx.publish(&BatchFileAddedV1 {
        file_upload_id: "f-ok".into(),
        batch_id: "b-ok".into(),
        file_name: "x".into(),
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();

    collector.wait_for(1, Duration::from_secs(30)).await;
    let all = collector.settle(Duration::from_secs(3)).await;
    let ids: Vec<&str> = all
        .iter()
        .map(|m| m.headers["aggregate_id"].as_str())
        .collect();
    assert_eq!(ids, ["f-ok"], "only the committed event arrives");
    let business: i64 = sqlx::query_scalar("SELECT count(*) FROM file_uploads")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        business, 0,
        "no business rows from rolled-back transactions"
    );
    let outbox_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM event_outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(outbox_rows, 0);
    handle.shutdown().await.unwrap();
    collector.stop();
    db.drop_db().await;
}

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "files.unserializable.v1", aggregate = "file_upload")]
struct Unserializable {
    #[outbox_event(aggregate_id)]
    id: String,
    #[serde(serialize_with = "always_fails")]
    broken: u8,
}

fn always_fails<S: serde::Serializer>(_: &u8, _: S) -> Result<S::Ok, S::Error> {
    Err(serde::ser::Error::custom("this field refuses to serialize"))
}

#[tokio::test]
async fn serialization_failure_is_typed_and_writes_nothing() {
    let db = support::TestDatabase::create("serfail").await;
    outbox::migrate(&db.pool).await.unwrap();
    let outbox = Outbox::new(db.pool.clone(), "svc");
    let mut tx = outbox.transactional_publish().await.unwrap();
    let good = BatchFileAddedV1 {
        file_upload_id: "a".into(),
        batch_id: "b".into(),
        file_name: "c".into(),
    };
    let mut batch = tx.batch();
    batch.push(&good).unwrap();
    let err = batch
        .push(&Unserializable {
            id: "x".into(),
            broken: 1,
        })
        .unwrap_err();
    assert!(
        matches!(
            err,
            PublishError::Serialize {
                event_type: "Unserializable",
                ..
            }
        ),
        "{err}"
    );
    // serde's message is the cause, printed once by error-chain reporters.
    let cause = std::error::Error::source(&err).map(ToString::to_string);
    assert!(
        cause
            .as_deref()
            .is_some_and(|c| c.contains("refuses to serialize")),
        "{err}: {cause:?}"
    );
    let err = tx
        .publish(&Unserializable {
            id: "x".into(),
            broken: 1,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, PublishError::Serialize { .. }));
    tx.commit().await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM event_outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    db.drop_db().await;
}

#[tokio::test]
async fn publish_all_writes_many_events_in_one_statement_in_order() {
    let db = support::TestDatabase::create("puball").await;
    outbox::migrate(&db.pool).await.unwrap();
    let outbox = Outbox::new(db.pool.clone(), "svc");
    let events: Vec<BatchFileAddedV1> = (0..500)
        .map(|i| BatchFileAddedV1 {
            file_upload_id: format!("f-{i}"),
            batch_id: "b".into(),
            file_name: i.to_string(),
        })
        .collect();
    let mut tx = outbox.transactional_publish().await.unwrap();
    let ids = tx.publish_all(&events).await.unwrap();
    tx.commit().await.unwrap();
    let stored: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT id, event_data->'data'->>'file_name' FROM event_outbox ORDER BY seq",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(stored.len(), 500);
    for (i, (id, name)) in stored.iter().enumerate() {
        assert_eq!(*id, ids[i]);
        assert_eq!(*name, i.to_string());
    }
    // The plain function on a transaction the caller owns.
    let mut own = db.pool.begin().await.unwrap();
    outbox.publish_in(&mut own, &events[0]).await.unwrap();
    own.commit().await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM event_outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, 501);
    db.drop_db().await;
}
