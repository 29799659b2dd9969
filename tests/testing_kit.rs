//! The test kit against a real database and the mock cluster: its errors
//! for a schema without outbox tables, a payload that no longer decodes and
//! messages that never arrive; a custom schema end to end; a failing
//! handler leaves the inbox untouched. The failure texts of the assertion
//! helpers are snapshotted in `outbox-runtime/src/testing/tests.rs`.
#![cfg(feature = "testing")]

use outbox::consume::{Dispatcher, InboxOutcome, Permanent};
use outbox::testing::{
    envelope, migrate_schema, ConsumerHarness, Mark, MockBroker, Published, TestingError,
};
use outbox::{Inbox, Outbox, OutboxEvent};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use std::time::Duration;

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(topic = "kit.invoice-issued.v1", aggregate = "invoice")]
struct InvoiceIssuedV1 {
    #[outbox_event(aggregate_id)]
    invoice_id: String,
    cents: u64,
}

fn invoice(id: &str, cents: u64) -> InvoiceIssuedV1 {
    InvoiceIssuedV1 {
        invoice_id: id.into(),
        cents,
    }
}

const MISSING_TABLE_FIX: &str = "does not exist; migrate the test database first: \
    `#[sqlx::test(migrator = \"outbox::MIGRATOR\")]` or `outbox::migrate(&pool)`, or for a \
    custom schema `outbox::testing::migrate_schema(&pool, \"...\")` and then `Mark::take_in`, \
    `Published::all_in` or `Inbox::schema` with that schema";

#[sqlx::test(migrations = false)]
async fn a_schema_without_outbox_tables_is_named(pool: PgPool) {
    let err = Mark::take(&pool).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the table `event_outbox` {MISSING_TABLE_FIX}")
    );

    let billing = outbox::SchemaName::new("billing").unwrap();
    let err = Published::all_in(&pool, &billing).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the table `\"billing\".event_outbox` {MISSING_TABLE_FIX}")
    );

    let dispatcher =
        Dispatcher::new().register::<InvoiceIssuedV1>(|_, _| Box::pin(async { Ok(()) }));
    let outbox = Outbox::new(pool.clone(), "billing_service");
    let err = ConsumerHarness::new(outbox, dispatcher, Inbox::new("ledger"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("the table `event_inbox` {MISSING_TABLE_FIX}")
    );
}

#[sqlx::test(migrations = false)]
async fn a_custom_schema_is_migrated_published_to_and_read_back(pool: PgPool) -> TestResult {
    let schema = migrate_schema(&pool, "billing").await?;
    let outbox = Outbox::builder(pool.clone(), "billing_service")
        .schema(schema.clone())
        .build();
    let mark = Mark::take_in(&pool, &schema).await?;
    assert!(matches!(
        Mark::take(&pool).await,
        Err(TestingError::MissingTable { .. })
    ));

    let mut tx = outbox.transactional_publish().await?;
    tx.publish(&invoice("i-1", 1200)).await?;
    tx.commit().await?;

    let published = Published::since(&pool, &mark).await?;
    published.assert_exactly_for("i-1", &[&invoice("i-1", 1200)]);
    assert_eq!(Published::all_in(&pool, &schema).await?, published);

    let err = migrate_schema(&pool, "Billing; DROP TABLE x")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not a valid SQL identifier"),
        "{err}"
    );
    Ok(())
}

#[sqlx::test(migrator = "outbox::MIGRATOR")]
async fn a_stored_payload_that_no_longer_decodes_names_the_event_the_type_and_serde(
    pool: PgPool,
) -> TestResult {
    let outbox = Outbox::new(pool.clone(), "billing_service");
    let mark = Mark::take(&pool).await?;
    let mut tx = outbox.transactional_publish().await?;
    let id = tx.publish(&invoice("i-1", 1200)).await?;
    tx.commit().await?;
    // As an older version of the type wrote it.
    sqlx::query(
        "UPDATE event_outbox
         SET event_data = jsonb_set(event_data::jsonb, '{data,cents}', '\"12.00\"')::json",
    )
    .execute(&pool)
    .await?;

    let err = Published::since(&pool, &mark)
        .await?
        .of::<InvoiceIssuedV1>()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "event {id} of type `InvoiceIssuedV1` does not decode into \
             `testing_kit::InvoiceIssuedV1`: invalid type: string \"12.00\", expected u64; the \
             type changed since the event was published, or the test asked for the wrong type"
        )
    );
    Ok(())
}

#[tokio::test]
async fn messages_that_never_arrive_are_reported_with_what_did() {
    let broker = MockBroker::start().unwrap();
    assert!(broker
        .topics()
        .contains(&"kit.invoice-issued.v1".to_owned()));
    let err = broker
        .produced(1, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "0 of the 1 awaited messages reached the mock broker within 300ms; is a relay running \
         against it (`MockBroker::spawn_relay`), and were the events committed?"
    );
}

#[sqlx::test(migrator = "outbox::MIGRATOR")]
async fn a_failing_handler_rolls_back_its_inbox_record(pool: PgPool) -> TestResult {
    let dispatcher = Dispatcher::new().register::<InvoiceIssuedV1>(|event, _| {
        let cents = event.data.cents;
        Box::pin(async move {
            if cents == 0 {
                return Err(Permanent::new("an invoice of nothing").into());
            }
            Ok(())
        })
    });
    let outbox = Outbox::new(pool.clone(), "ledger");
    let harness = ConsumerHarness::new(outbox, dispatcher, Inbox::new("ledger")).await?;
    let free = envelope(&invoice("i-0", 0))?;

    let err = harness.deliver(&free).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "the handler of `InvoiceIssuedV1` failed on event {}",
            free.event_id
        )
    );
    let mut conn = pool.acquire().await?;
    assert!(!harness.inbox().contains(&mut conn, free.event_id).await?);

    let paid = envelope(&invoice("i-1", 100))?;
    assert_eq!(harness.deliver(&paid).await?, InboxOutcome::New);
    assert!(harness.inbox().contains(&mut conn, paid.event_id).await?);
    Ok(())
}
