//! Waiting that a shutdown interrupts, and the backoffs of retries.

use super::config::ConsumerConfig;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::time::Duration;
use tokio::sync::watch;

/// What becomes of a message (or a batch) once the loop is done with it.
pub(crate) enum Flow {
    /// Finished (handled, skipped or dead-lettered): its offset may be stored.
    Commit,
    /// Shutdown interrupted it: its offset stays where it was.
    Stop,
}

/// Resolves when shutdown is requested; never when the handle was dropped
/// without asking to stop.
pub(crate) async fn wait_for_shutdown(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sleeps `delay`; false when shutdown was requested meanwhile.
pub(crate) async fn sleep_or_shutdown(
    delay: Duration,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    tokio::select! {
        biased;
        () = wait_for_shutdown(shutdown) => false,
        () = tokio::time::sleep(delay) => true,
    }
}

fn base(config: &ConsumerConfig) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(config.retry_backoff)
        .with_max_delay(config.max_retry_backoff)
        .with_jitter()
}

/// Delays between handler attempts: `max_retries` of them, then none.
pub(crate) fn handler_backoff(config: &ConsumerConfig) -> ExponentialBackoff {
    let max_retries = usize::try_from(config.max_retries).unwrap_or(usize::MAX);
    base(config).with_max_times(max_retries).build()
}

/// Delays between attempts that failed on infrastructure: without end.
pub(crate) fn infra_backoff(config: &ConsumerConfig) -> ExponentialBackoff {
    base(config).without_max_times().build()
}
