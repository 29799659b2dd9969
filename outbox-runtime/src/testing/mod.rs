//! A test kit for services that publish and consume through the outbox
//! (feature `testing`; use it as a dev-dependency).
//!
//! - **What a test published**: take a [`Mark`], run the code under test,
//!   read [`Published::since`] the mark. [`Published::of`] decodes the
//!   events of one type with their envelope fields;
//!   [`assert_exactly_for`](Published::assert_exactly_for),
//!   [`assert_exactly`](Published::assert_exactly) and
//!   [`assert_nothing`](Published::assert_nothing) compare, and their
//!   failure messages list what was published instead.
//! - **Test databases**: `#[sqlx::test(migrator = "outbox::MIGRATOR")]`
//!   gives each test a fresh, migrated database; [`migrate_schema`] migrates
//!   a custom schema in one line.
//! - **The relay without a Kafka cluster**: [`MockBroker`] runs librdkafka's
//!   mock cluster in the test process; the real relay delivers to it and
//!   [`MockBroker::produced`] reads back what it produced, as [`Published`].
//! - **Consumers**: [`envelope`] builds the envelope a handler receives;
//!   [`ConsumerHarness`] delivers it as the consumer loop does, with the
//!   inbox, and asserts that a duplicate is skipped.
//!
//! The guide, with a complete example test, is `docs/guide/testing.md`.
//!
//! ```no_run
//! use outbox::testing::{Mark, Published};
//! use outbox::{Outbox, OutboxEvent};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
//! #[outbox_event(topic = "files.batch-file-removed.v1", aggregate = "file_upload")]
//! struct BatchFileRemovedV1 {
//!     #[outbox_event(aggregate_id)]
//!     file_upload_id: String,
//! }
//!
//! // #[sqlx::test(migrator = "outbox::MIGRATOR")]
//! async fn a_rolled_back_removal_publishes_nothing(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//!     let outbox = Outbox::new(pool.clone(), "file_service");
//!     let mark = Mark::take(&pool).await?;
//!     let mut tx = outbox.transactional_publish().await?;
//!     tx.publish(&BatchFileRemovedV1 { file_upload_id: "f-1".into() }).await?;
//!     tx.rollback().await?;
//!     Published::since(&pool, &mark).await?.assert_nothing();
//!     Ok(())
//! }
//! ```

mod check;
mod envelope;
mod error;
mod expect;
mod harness;
mod listing;
mod mark;
mod mock_broker;
mod published;
mod read_back;
mod recorded;
mod schema;
mod tables;
mod typed;

pub use envelope::{envelope, TEST_SOURCE_SERVICE};
pub use error::TestingError;
pub use expect::{Expectation, ExpectedEvent};
pub use harness::ConsumerHarness;
pub use mark::Mark;
pub use mock_broker::{MockBroker, DEFAULT_PARTITIONS};
pub use published::Published;
pub use recorded::RecordedEvent;
pub use schema::migrate_schema;
pub use typed::PublishedEvent;

#[cfg(test)]
mod tests;
