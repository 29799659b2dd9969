//! A batch of one partition's messages in one transaction: one inbox
//! statement says which are new, their handlers run in partition order,
//! one commit. A handler failure rolls the batch back and re-runs it one
//! message at a time, which isolates the failing message.

use super::dispatch::{handle_run, DecodedEvent};
use super::handling::{catch_panic, AttemptError, Handling};
use super::pace::{infra_backoff, sleep_or_shutdown, Flow};
use super::stats::Counter;
use super::{InboxEntry, InboxOutcome};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

/// A decoded message and its index in the batch.
type Indexed = (usize, DecodedEvent);

impl Handling {
    /// Handles `messages` (consecutive messages of one partition, in
    /// order); [`Flow::Commit`] when every one of them is finished.
    pub(crate) async fn process_batch(
        &self,
        messages: &[OwnedMessage],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Flow {
        let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
            return Flow::Commit;
        };
        let started = Instant::now();
        self.counters.add(Counter::Received, messages.len() as u64);
        let span = tracing::debug_span!(
            "outbox.consume.batch",
            topic = first.topic(),
            partition = first.partition(),
            first_offset = first.offset(),
            last_offset = last.offset(),
            size = messages.len(),
        );
        let flow = self
            .decode_and_handle(messages, shutdown)
            .instrument(span)
            .await;
        if let Flow::Commit = flow {
            self.counters
                .batch(messages.len(), started.elapsed().as_secs_f64());
        }
        flow
    }

    async fn decode_and_handle(
        &self,
        messages: &[OwnedMessage],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Flow {
        let mut decoded: Vec<Indexed> = Vec::with_capacity(messages.len());
        for (index, message) in messages.iter().enumerate() {
            match self.dispatcher.decode(message) {
                Ok(event) => decoded.push((index, event)),
                // Dead-lettering first is safe: its effect is outside the
                // database, and the offset moves only past the whole batch.
                Err(error) => {
                    if let Flow::Stop = self.reject(message, &error, shutdown).await {
                        return Flow::Stop;
                    }
                }
            }
        }
        match decoded.as_slice() {
            [] => Flow::Commit,
            [(index, event)] => self.handle_one(&messages[*index], event, shutdown).await,
            _ => self.handle_together(messages, decoded, shutdown).await,
        }
    }

    async fn handle_together(
        &self,
        messages: &[OwnedMessage],
        mut events: Vec<Indexed>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Flow {
        let indices: Vec<usize> = events.iter().map(|(i, _)| *i).collect();
        let mut infra_delays = infra_backoff(&self.config);
        loop {
            match self.attempt_batch(events).await {
                Ok(()) => return Flow::Commit,
                Err(AttemptError::Infrastructure(error)) => {
                    self.counters.add(Counter::Error, 1);
                    let delay = infra_delays.next().unwrap_or(self.config.max_retry_backoff);
                    tracing::warn!(error = %crate::error::Chain(&*error), ?delay, "database error while handling a batch; retrying it (not counted as a handler failure)");
                    if !sleep_or_shutdown(delay, shutdown).await {
                        return Flow::Stop;
                    }
                    events = self.redecode(messages, &indices);
                }
                Err(AttemptError::Handler(error)) => {
                    self.counters.add(Counter::BatchFallback, 1);
                    tracing::warn!(error = %crate::error::Chain(&*error), size = indices.len(), "a handler failed; the batch rolled back; handling its messages one at a time");
                    return self.handle_each(messages, &indices, shutdown).await;
                }
            }
        }
    }

    /// The batch's messages, each in its own transaction with its own
    /// retries, in order.
    async fn handle_each(
        &self,
        messages: &[OwnedMessage],
        indices: &[usize],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Flow {
        for (index, event) in self.redecode(messages, indices) {
            if let Flow::Stop = self.handle_one(&messages[index], &event, shutdown).await {
                return Flow::Stop;
            }
        }
        Flow::Commit
    }

    /// Decodes again the messages an attempt consumed (decoding is
    /// deterministic: these decoded before).
    fn redecode(&self, messages: &[OwnedMessage], indices: &[usize]) -> Vec<Indexed> {
        indices
            .iter()
            .filter_map(|&i| {
                let message = messages.get(i)?;
                self.dispatcher.decode(message).ok().map(|event| (i, event))
            })
            .collect()
    }

    async fn attempt_batch(&self, events: Vec<Indexed>) -> Result<(), AttemptError> {
        let Some((_, first)) = events.first() else {
            return Ok(());
        };
        let mut tx = self
            .outbox
            .transactional_publish_with(first.context())
            .await
            .map_err(AttemptError::infrastructure)?;
        let outcomes = match &self.config.inbox {
            Some(inbox) => {
                let entries: Vec<InboxEntry<'_>> = events
                    .iter()
                    .map(|(_, event)| {
                        let info = event.info();
                        InboxEntry {
                            event_id: info.event_id,
                            event_type: &info.event_type,
                            location: info.location.as_ref(),
                        }
                    })
                    .collect();
                inbox
                    .record_many(&mut tx, &entries)
                    .await
                    .map_err(AttemptError::infrastructure)?
            }
            None => vec![InboxOutcome::New; events.len()],
        };
        let total = events.len();
        let mut fresh: Vec<DecodedEvent> = Vec::with_capacity(total);
        for ((_, event), outcome) in events.into_iter().zip(outcomes) {
            if outcome == InboxOutcome::New {
                fresh.push(event);
            } else {
                let info = event.info();
                tracing::debug!(event_id = %info.event_id, correlation_id = %info.correlation_id, location = ?info.location, "event already processed (inbox); skipping the redelivery");
            }
        }
        let handled = fresh.len();
        // Only the fault hook needs the last event, after `fresh` is consumed.
        let last = self
            .after_db_commit
            .as_ref()
            .and(fresh.last())
            .map(|event| event.info().clone());
        if handled > 0 {
            run_handlers(fresh, &mut tx).await?;
        }
        // A failed commit may still have committed: the retry finds the
        // inbox rows and skips.
        tx.commit().await.map_err(AttemptError::infrastructure)?;
        self.counters.add(Counter::Handled, handled as u64);
        self.counters
            .add(Counter::Duplicate, (total - handled) as u64);
        if total > handled {
            tracing::info!(
                duplicates = total - handled,
                "events already processed (inbox); skipped the redeliveries"
            );
        }
        if let (Some(hook), Some(info)) = (&self.after_db_commit, &last) {
            hook(info).await;
        }
        Ok(())
    }
}

/// Runs the handlers of `events` in order inside `tx`, each event's
/// correlation id and trace context set for its follow-up events;
/// consecutive events of one batch handler go to it in one call.
async fn run_handlers(
    events: Vec<DecodedEvent>,
    tx: &mut crate::TransactionalPublish<'static>,
) -> Result<(), AttemptError> {
    let mut pending = events.into_iter().peekable();
    while let Some(event) = pending.next() {
        let context = event.context();
        tx.set_context(context.clone());
        if event.takes_batches() {
            let event_type = event.info().event_type.clone();
            let mut run = vec![event];
            while let Some(next) =
                pending.next_if(|n| n.takes_batches() && n.info().event_type == event_type)
            {
                run.push(next);
            }
            catch_panic(context.scope(handle_run(run, tx)))
                .await
                .map_err(AttemptError::Handler)?;
        } else {
            let info = event.info();
            if let Err(error) = catch_panic(context.scope(event.handle(tx))).await {
                tracing::debug!(event_id = %info.event_id, correlation_id = %info.correlation_id, location = ?info.location, error = %crate::error::Chain(&*error), "handler failed inside a batch");
                return Err(AttemptError::Handler(error));
            }
        }
    }
    Ok(())
}
