//! The File Service example (`examples/file_service.rs`) tested with the
//! outbox test kit: what an upload publishes, that a failed request
//! publishes nothing, delivery by the real relay to an in-process mock
//! Kafka cluster, and a downstream consumer that handles each event once.
//!
//! Each test gets a fresh database with the outbox tables
//! (`#[sqlx::test(migrator = "outbox::MIGRATOR")]`, `DATABASE_URL`).
#![cfg(feature = "testing")]

#[path = "../examples/file_service.rs"]
#[allow(dead_code)]
mod file_service;

use axum::body::to_bytes;
use axum::extract::{Json, Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use file_service::{
    BatchFileAddedV1, BatchFileRemovedV1, EssayContentProvisionedV1, EssayValidationFailedV1,
    Upload,
};
use outbox::consume::{Dispatcher, InboxOutcome};
use outbox::testing::{envelope, ConsumerHarness, Mark, MockBroker, Published};
use outbox::{Inbox, Outbox, PublishContext};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The service's tables next to the outbox's, and its outbox handle.
async fn file_service(pool: &PgPool) -> Result<Outbox, sqlx::Error> {
    file_service::create_tables(pool).await?;
    Ok(Outbox::new(pool.clone(), "file_service"))
}

/// `POST /batches/{batch}/files`: the status and the new file's id.
async fn upload(
    outbox: &Outbox,
    batch: &str,
    file_name: &str,
    content: &str,
) -> (StatusCode, Uuid) {
    let body = Upload {
        file_name: file_name.into(),
        content: content.into(),
    };
    let response = file_service::upload(State(outbox.clone()), Path(batch.into()), Json(body))
        .await
        .into_response();
    let status = response.status();
    let bytes = to_bytes(response.into_body(), usize::MAX).await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    let id = json["file_upload_id"].as_str().unwrap().parse().unwrap();
    (status, id)
}

fn added(id: Uuid, batch: &str, file_name: &str) -> BatchFileAddedV1 {
    BatchFileAddedV1 {
        file_upload_id: id,
        batch_id: batch.into(),
        file_name: file_name.into(),
    }
}

fn provisioned(id: Uuid, batch: &str, file_name: &str, content: &str) -> EssayContentProvisionedV1 {
    EssayContentProvisionedV1 {
        file_upload_id: id,
        batch_id: batch.into(),
        file_name: file_name.into(),
        content_length: content.len(),
    }
}

#[sqlx::test(migrator = "outbox::MIGRATOR")]
async fn an_upload_publishes_added_then_provisioned_with_the_request_context(
    pool: PgPool,
) -> TestResult {
    let outbox = file_service(&pool).await?;
    let mark = Mark::take(&pool).await?;

    // The request arrives with a trace context; the service sets a correlation id.
    let (status, id) = PublishContext::new()
        .with_traceparent(TRACEPARENT)
        .scope(upload(&outbox, "b-1", "essay.txt", "Once upon a time"))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let published = Published::since(&pool, &mark).await?;
    published.assert_exactly_for(
        id,
        &[
            &added(id, "b-1", "essay.txt"),
            &provisioned(id, "b-1", "essay.txt", "Once upon a time"),
        ],
    );
    let [event] = published
        .of::<EssayContentProvisionedV1>()?
        .try_into()
        .unwrap();
    assert_eq!(
        event.data,
        provisioned(id, "b-1", "essay.txt", "Once upon a time")
    );
    assert_eq!(event.aggregate_type, "file_upload");
    assert_eq!(event.aggregate_id, id.to_string());
    assert_eq!(event.key, "b-1", "keyed by batch");
    assert_eq!(event.topic, "files.essay-content-provisioned.v1");
    assert_eq!(event.source_service, "file_service");
    assert_eq!(event.traceparent.as_deref(), Some(TRACEPARENT));
    let [first] = published.of::<BatchFileAddedV1>()?.try_into().unwrap();
    assert_eq!(
        first.correlation_id, event.correlation_id,
        "one request, one correlation id"
    );
    Ok(())
}

#[sqlx::test(migrator = "outbox::MIGRATOR")]
async fn an_empty_file_publishes_only_its_validation_failure(pool: PgPool) -> TestResult {
    let outbox = file_service(&pool).await?;
    let mark = Mark::take(&pool).await?;

    let (status, id) = upload(&outbox, "b-1", "blank.txt", "   ").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    Published::since(&pool, &mark)
        .await?
        .assert_exactly(&[&EssayValidationFailedV1 {
            file_upload_id: id,
            batch_id: "b-1".into(),
            file_name: "blank.txt".into(),
            error_code: "EMPTY_CONTENT".into(),
            message: "the file has no text content".into(),
        }]);
    Ok(())
}

#[sqlx::test(migrator = "outbox::MIGRATOR")]
async fn removing_a_file_of_another_batch_rolls_back_and_publishes_nothing(
    pool: PgPool,
) -> TestResult {
    let outbox = file_service(&pool).await?;
    let (_, id) = upload(&outbox, "b-1", "essay.txt", "text").await;
    let mark = Mark::take(&pool).await?;

    let refused = file_service::remove(State(outbox.clone()), Path(("b-2".into(), id))).await;
    assert_eq!(refused.into_response().status(), StatusCode::NOT_FOUND);
    Published::since(&pool, &mark).await?.assert_nothing();

    let removed = file_service::remove(State(outbox.clone()), Path(("b-1".into(), id))).await;
    assert_eq!(removed.into_response().status(), StatusCode::NO_CONTENT);
    Published::since(&pool, &mark)
        .await?
        .assert_exactly(&[&BatchFileRemovedV1 {
            file_upload_id: id,
            batch_id: "b-1".into(),
        }]);
    Ok(())
}

/// A downstream service that counts the files of each batch: a handler
/// of `BatchFileAddedV1`, its own table, and its inbox.
async fn batch_counter(outbox: &Outbox) -> Result<ConsumerHarness, Box<dyn std::error::Error>> {
    sqlx::query("CREATE TABLE batch_files (batch_id TEXT PRIMARY KEY, files INT NOT NULL)")
        .execute(outbox.pool())
        .await?;
    let dispatcher = Dispatcher::new().register::<BatchFileAddedV1>(|event, tx| {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO batch_files (batch_id, files) VALUES ($1, 1)
                 ON CONFLICT (batch_id) DO UPDATE SET files = batch_files.files + 1",
            )
            .bind(&event.data.batch_id)
            .execute(&mut **tx)
            .await?;
            Ok(())
        })
    });
    let inbox = Inbox::new("batch_counter");
    Ok(ConsumerHarness::new(outbox.clone(), dispatcher, inbox).await?)
}

async fn files_in(pool: &PgPool, batch: &str) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT coalesce(max(files), 0) FROM batch_files WHERE batch_id = $1")
        .bind(batch)
        .fetch_one(pool)
        .await
}

#[sqlx::test(migrator = "outbox::MIGRATOR")]
async fn a_redelivered_event_changes_the_consumer_once(pool: PgPool) -> TestResult {
    let outbox = Outbox::new(pool.clone(), "batch_service");
    let harness = batch_counter(&outbox).await?;

    let event = envelope(&added(Uuid::now_v7(), "b-7", "essay.txt"))?;
    harness.assert_deduplicated(&event).await;
    assert_eq!(files_in(&pool, "b-7").await?, 1);

    let other = envelope(&added(Uuid::now_v7(), "b-7", "notes.txt"))?;
    assert_eq!(harness.deliver(&other).await?, InboxOutcome::New);
    assert_eq!(files_in(&pool, "b-7").await?, 2);
    Ok(())
}

#[sqlx::test(migrator = "outbox::MIGRATOR")]
async fn the_relay_delivers_uploads_to_a_mock_cluster_and_a_consumer_counts_them_once(
    pool: PgPool,
) -> TestResult {
    let outbox = file_service(&pool).await?;
    let broker = MockBroker::start()?;
    let relay = broker.spawn_relay(&pool).await?;

    let (_, first) = upload(&outbox, "b-1", "one.txt", "first essay").await;
    let (_, second) = upload(&outbox, "b-1", "two.txt", "second essay").await;
    let produced = broker.produced(4, Duration::from_secs(20)).await?;
    relay.shutdown().await?;

    produced.assert_exactly_for(
        first,
        &[
            &added(first, "b-1", "one.txt"),
            &provisioned(first, "b-1", "one.txt", "first essay"),
        ],
    );
    produced.assert_exactly_for(
        second,
        &[
            &added(second, "b-1", "two.txt"),
            &provisioned(second, "b-1", "two.txt", "second essay"),
        ],
    );
    assert_eq!(
        produced.data_of::<BatchFileAddedV1>()?,
        [
            added(first, "b-1", "one.txt"),
            added(second, "b-1", "two.txt")
        ]
    );
    for event in produced.of::<EssayContentProvisionedV1>()? {
        assert_eq!(event.key, "b-1");
        assert_eq!(event.topic, "files.essay-content-provisioned.v1");
    }
    assert!(
        Published::all(&pool).await?.is_empty(),
        "delivered rows are deleted"
    );

    // Downstream: every produced message, then all of them again.
    let harness = batch_counter(&Outbox::new(pool.clone(), "batch_service")).await?;
    let added_events: Vec<_> = produced
        .events()
        .iter()
        .filter(|e| e.envelope.event_type == "BatchFileAddedV1")
        .collect();
    for event in &added_events {
        assert_eq!(harness.deliver(&event.envelope).await?, InboxOutcome::New);
    }
    for event in &added_events {
        assert_eq!(
            harness.deliver(&event.envelope).await?,
            InboxOutcome::AlreadyProcessed
        );
    }
    assert_eq!(files_in(&pool, "b-1").await?, 2);
    Ok(())
}
