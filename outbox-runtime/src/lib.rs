//! Runtime of the `outbox` framework. Use it through the `outbox` facade
//! crate, which re-exports everything here.

pub mod event;
pub mod registry;

pub use event::{EventRegistration, OutboxEvent};
