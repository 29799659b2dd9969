//! One message in its own transaction, with retries: the path of a batch
//! of one, and of every message of a batch a handler failure rolled back.

use super::config::ConsumerConfig;
use super::dead_letter::DeadLetters;
use super::dispatch::{DecodedEvent, Dispatcher, EventInfo};
use super::error::{ConsumeError, HandlerError, Permanent};
use super::pace::{handler_backoff, infra_backoff, sleep_or_shutdown, Flow};
use super::stats::{ConsumerCounters, Counter};
use crate::{InboxOutcome, Outbox, PublishContext};
use futures::future::BoxFuture;
use futures::FutureExt;
use rdkafka::message::{Message, OwnedMessage};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::Instrument;

pub(crate) type FaultHook = Arc<dyn Fn(&EventInfo) -> BoxFuture<'static, ()> + Send + Sync>;

/// What every partition worker shares: where effects go and what to do
/// with messages that cannot be handled.
pub(crate) struct Handling {
    pub(crate) outbox: Outbox,
    pub(crate) dispatcher: Dispatcher,
    pub(crate) config: Arc<ConsumerConfig>,
    pub(crate) counters: Arc<ConsumerCounters>,
    pub(crate) dead_letters: DeadLetters,
    pub(crate) after_db_commit: Option<FaultHook>,
}

pub(crate) enum Attempt {
    Handled,
    Duplicate,
}

pub(crate) enum AttemptError {
    /// The handler failed (or panicked): counts against its retries.
    Handler(HandlerError),
    /// Begin, inbox or commit failed: retried without limit.
    Infrastructure(HandlerError),
}

impl AttemptError {
    pub(crate) fn infrastructure(error: impl Into<HandlerError>) -> Self {
        Self::Infrastructure(error.into())
    }
}

/// The handler's outcome, a panic turned into an error.
pub(crate) async fn catch_panic(
    handled: impl std::future::Future<Output = Result<(), HandlerError>>,
) -> Result<(), HandlerError> {
    match AssertUnwindSafe(handled).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let text = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic payload".to_owned());
            Err(format!("the handler panicked: {text}").into())
        }
    }
}

impl Handling {
    /// Dead-letters a message that cannot be decoded.
    pub(crate) async fn reject(
        &self,
        message: &OwnedMessage,
        error: &ConsumeError,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Flow {
        self.counters.add(Counter::DecodeError, 1);
        tracing::warn!(
            error = %crate::error::Chain(&error),
            kind = error.kind(),
            event_id = ?error.event_id(),
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            "message cannot be decoded; sending it to the dead-letter topic"
        );
        self.dead_letters.send(message, error, shutdown).await
    }

    /// Handles one decoded message in its own transaction, with retries.
    pub(crate) async fn handle_one(
        &self,
        message: &OwnedMessage,
        decoded: &DecodedEvent,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Flow {
        let info = decoded.info();
        let span = tracing::info_span!(
            "outbox.consume",
            event_id = %info.event_id,
            event_type = %info.event_type,
            correlation_id = %info.correlation_id,
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
        );
        self.handle_with_retries(message, decoded, shutdown)
            .instrument(span)
            .await
    }

    async fn handle_with_retries(
        &self,
        message: &OwnedMessage,
        decoded: &DecodedEvent,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Flow {
        let mut handler_delays = handler_backoff(&self.config);
        let mut infra_delays = infra_backoff(&self.config);
        let mut attempts = 0u32;
        loop {
            match self.attempt(decoded).await {
                Ok(Attempt::Handled) => {
                    self.counters.add(Counter::Handled, 1);
                    tracing::debug!(attempts = attempts + 1, "event handled");
                    return Flow::Commit;
                }
                Ok(Attempt::Duplicate) => {
                    self.counters.add(Counter::Duplicate, 1);
                    tracing::info!("event already processed (inbox); skipping the redelivery");
                    return Flow::Commit;
                }
                Err(AttemptError::Infrastructure(error)) => {
                    self.counters.add(Counter::Error, 1);
                    let delay = infra_delays.next().unwrap_or(self.config.max_retry_backoff);
                    tracing::warn!(error = %crate::error::Chain(&*error), ?delay, "database error while handling; retrying (not counted as a handler failure)");
                    if !sleep_or_shutdown(delay, shutdown).await {
                        return Flow::Stop;
                    }
                }
                Err(AttemptError::Handler(error)) => {
                    attempts += 1;
                    let delay = if Permanent::is_permanent(&error) {
                        None
                    } else {
                        handler_delays.next()
                    };
                    let Some(delay) = delay else {
                        let info = decoded.info();
                        let error = ConsumeError::Handler {
                            event_type: info.event_type.clone(),
                            event_id: info.event_id,
                            location: info.location.clone(),
                            attempts,
                            source: error,
                        };
                        tracing::error!(error = %crate::error::Chain(&error), "handler failed for good; sending the message to the dead-letter topic");
                        return self.dead_letters.send(message, &error, shutdown).await;
                    };
                    self.counters.add(Counter::Retry, 1);
                    tracing::warn!(error = %crate::error::Chain(&*error), attempt = attempts, ?delay, "handler failed; its transaction rolled back; retrying");
                    if !sleep_or_shutdown(delay, shutdown).await {
                        return Flow::Stop;
                    }
                }
            }
        }
    }

    async fn attempt(&self, decoded: &DecodedEvent) -> Result<Attempt, AttemptError> {
        let info = decoded.info();
        let context: PublishContext = decoded.context();
        let mut tx = self
            .outbox
            .transactional_publish_with(context.clone())
            .await
            .map_err(AttemptError::infrastructure)?;
        if let Some(inbox) = &self.config.inbox {
            let outcome = inbox
                .record(
                    &mut tx,
                    info.event_id,
                    &info.event_type,
                    info.location.as_ref(),
                )
                .await
                .map_err(AttemptError::infrastructure)?;
            if outcome == InboxOutcome::AlreadyProcessed {
                let _ = tx.rollback().await;
                return Ok(Attempt::Duplicate);
            }
        }
        // Dropping the guard on failure rolls back the inbox row and every write.
        catch_panic(context.scope(decoded.handle(&mut tx)))
            .await
            .map_err(AttemptError::Handler)?;
        // A failed commit may still have committed: the retry finds the
        // inbox row and skips.
        tx.commit().await.map_err(AttemptError::infrastructure)?;
        if let Some(hook) = &self.after_db_commit {
            hook(info).await;
        }
        Ok(Attempt::Handled)
    }
}
