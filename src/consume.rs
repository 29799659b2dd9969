//! Consuming events: the [`Consumer`] loop, typed dispatch, and the
//! [`Inbox`] that applies each event's effects once.
//!
//! See `docs/guide/consumers.md`.

pub use outbox_runtime::consume::*;
pub use outbox_runtime::{
    Envelope, EnvelopeMetadata, Inbox, InboxError, InboxOutcome, INBOX_TABLE,
};
