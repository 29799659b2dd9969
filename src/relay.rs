//! Delivering committed events to Kafka: the [`Relay`] and its settings.
//!
//! Most services need only [`Relay`], [`RelayConfig`] and [`RelayHandle`],
//! also at the crate root. See `docs/design/relay.md` for how a relay
//! claims, produces and records, and `docs/reference/guarantees.md` for what
//! it promises.

pub use outbox_runtime::relay::{
    DeadEventPolicy, Relay, RelayConfig, RelayCounters, RelayHandle, RelayStats, Retention, SHARDS,
};
pub use outbox_runtime::RelayError;

#[doc(hidden)]
pub use outbox_runtime::relay::Mechanisms;

#[cfg(feature = "bench-hooks")]
#[doc(hidden)]
pub use outbox_runtime::relay::database_only;
