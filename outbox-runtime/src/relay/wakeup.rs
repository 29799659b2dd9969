//! Waiting between batches: until the next poll, a Postgres `NOTIFY` from a
//! publisher in any process, the in-process signal of a commit in this one,
//! or shutdown.
//!
//! A wake-up is followed by one more poll [`trailing`](Wakeups::new) later:
//! publishers fold the notifications of commits close together into one
//! (`wake.rs`), so a commit right after a notified one is found by that
//! poll rather than by the next regular one.

use crate::wake;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::time::sleep_until;

/// How long a relay that could not `LISTEN` polls before trying again.
const LISTEN_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The relay's sources of wake-ups.
pub(crate) struct Wakeups {
    /// Whether to react to wake-ups at all (else only polling).
    listen: bool,
    channel: String,
    poll_interval: Duration,
    trailing: Duration,
    local: watch::Receiver<u64>,
    listener: Option<PgListener>,
    listener_retry_at: Instant,
    trailing_until: Option<Instant>,
}

impl Wakeups {
    pub(crate) fn new(
        listen: bool,
        channel: &str,
        poll_interval: Duration,
        trailing: Duration,
    ) -> Self {
        let mut local = wake::subscribe_local();
        local.borrow_and_update();
        Self {
            listen,
            channel: channel.to_owned(),
            poll_interval,
            trailing,
            local,
            listener: None,
            listener_retry_at: Instant::now(),
            trailing_until: None,
        }
    }

    /// Opens the `LISTEN` connection if it is missing (at most every few
    /// seconds after a failure; the relay polls meanwhile).
    pub(crate) async fn connect(&mut self, pool: &PgPool) {
        if !self.listen || self.listener.is_some() || Instant::now() < self.listener_retry_at {
            return;
        }
        let connected = async {
            let mut listener = PgListener::connect_with(pool).await?;
            listener.listen(&self.channel).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match connected {
            Ok(listener) => self.listener = Some(listener),
            Err(error) => {
                tracing::warn!(%error, "outbox relay could not LISTEN for wake-ups; polling until it can");
                self.listener_retry_at = Instant::now() + LISTEN_RETRY_AFTER;
            }
        }
    }

    /// Waits until a wake-up, the next poll, `deadline` (the relay's next
    /// chore), or shutdown.
    pub(crate) async fn wait(&mut self, deadline: Instant, shutdown: &watch::Receiver<bool>) {
        let now = Instant::now();
        let mut deadline = deadline.min(now + self.poll_interval);
        if let Some(until) = self.trailing_until {
            if until > now {
                deadline = deadline.min(until);
            } else {
                self.trailing_until = None;
            }
        }
        let trailing = self.trailing;
        let listen = self.listen;
        let mut shutdown = shutdown.clone();
        let listener = &mut self.listener;
        let notified = async {
            match listener {
                Some(l) => l.try_recv().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = sleep_until(deadline.into()) => {}
            _ = shutdown.changed() => {}
            _ = self.local.changed(), if listen => {
                self.trailing_until = Some(Instant::now() + trailing);
            }
            result = notified => {
                match result {
                    Ok(()) => self.trailing_until = Some(Instant::now() + trailing),
                    Err(error) => {
                        tracing::warn!(%error, "outbox relay lost its LISTEN connection; reconnecting");
                        self.listener = None;
                    }
                }
            }
        }
    }
}
