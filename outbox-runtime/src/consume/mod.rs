#![doc = include_str!("../../../docs/consumers.md")]

mod config;
mod dead_letter;
mod decode;
mod dispatch;
mod error;
mod runner;
mod stats;

pub use config::{ConsumerConfig, DeadLetterTopic};
pub use dead_letter::headers as dead_letter_headers;
pub use decode::{decode, decode_raw, RawMessage};
pub use dispatch::{DecodedEvent, Dispatcher, EventInfo, HandlerFuture};
pub use error::{
    ConsumeError, ConsumerError, DispatcherError, HandlerError, MessageLocation, Permanent,
};
pub use runner::{Consumer, ConsumerHandle};
pub use stats::{ConsumerCounters, ConsumerStats};

#[cfg(test)]
mod tests;
