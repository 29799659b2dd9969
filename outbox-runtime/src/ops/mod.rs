//! Running an outbox in production: how full it is, whether the relay is
//! healthy, metrics, topics, and what to do with dead events.

pub mod admin;
pub mod health;
#[cfg(feature = "http")]
pub mod http;
pub mod queue_stats;
