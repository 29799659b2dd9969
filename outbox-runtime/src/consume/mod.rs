#![doc = include_str!("../../../docs/guide/consumers.md")]

mod batch;
mod client;
mod config;
mod dead_letter;
mod decode;
mod dispatch;
mod error;
mod handling;
mod metrics;
mod pace;
mod partition;
mod runner;
mod stats;

pub use crate::inbox::{Inbox, InboxEntry, InboxError, InboxOutcome};
pub use config::{ConsumerConfig, DeadLetterTopic};
pub use dead_letter::headers as dead_letter_headers;
pub use decode::{decode, decode_raw, RawMessage};
pub use dispatch::{context_of, DecodedEvent, Dispatcher, EventInfo, HandlerFuture};
pub use error::{
    ConsumeError, ConsumerError, DispatcherError, HandlerError, MessageLocation, Permanent,
};
pub use metrics::ConsumerMetrics;
pub use runner::{Consumer, ConsumerHandle};
pub use stats::{ConsumerCounters, ConsumerStats};

#[cfg(test)]
mod tests;
