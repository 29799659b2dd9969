//! Publishing: the [`Outbox`] handle, the [`TransactionalPublish`] guard
//! and [`EventBatch`].

mod batch;
mod guard;
mod outbox;
mod writer;

pub use batch::EventBatch;
pub use guard::TransactionalPublish;
pub use outbox::{Outbox, OutboxBuilder, DEFAULT_NOTIFY_WINDOW};
