#![doc = include_str!("../docs/crate.md")]
#![deny(missing_docs)]

extern crate self as outbox;

pub use outbox_macros::OutboxEvent;
pub use outbox_runtime::*;

#[doc(hidden)]
pub mod __private;

#[cfg(feature = "cli")]
pub mod cli;
