//! Waking the relay: Postgres NOTIFY (throttled per process) and an
//! in-process signal for relays running in the publishing process.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Decides whether a transaction sends a `NOTIFY`. Postgres already folds
/// identical notifications of one transaction into one; this also folds
/// notifications of transactions committed within `window` of each other
/// into the first. A relay that receives a notification polls again after
/// the window (see the relay's trailing poll), so none is lost.
#[derive(Debug)]
pub(crate) struct NotifyThrottle {
    window: Duration,
    last: Mutex<Option<Instant>>,
}

impl NotifyThrottle {
    pub(crate) fn new(window: Duration) -> Self {
        Self {
            window,
            last: Mutex::new(None),
        }
    }

    pub(crate) fn should_notify(&self) -> bool {
        if self.window.is_zero() {
            return true;
        }
        let now = Instant::now();
        // A poisoned lock only means another thread panicked mid-update of an
        // Instant; notifying is always safe.
        let mut last = match self.last.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match *last {
            Some(at) if now.duration_since(at) < self.window => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

fn local() -> &'static watch::Sender<u64> {
    static LOCAL: OnceLock<watch::Sender<u64>> = OnceLock::new();
    LOCAL.get_or_init(|| watch::channel(0).0)
}

/// Wakes relays running in this process (after a commit that added events).
pub(crate) fn wake_local_relays() {
    local().send_modify(|n| *n = n.wrapping_add(1));
}

/// Subscribes a relay to in-process wake-ups.
pub(crate) fn subscribe_local() -> watch::Receiver<u64> {
    local().subscribe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_folds_within_window() {
        let t = NotifyThrottle::new(Duration::from_secs(60));
        assert!(t.should_notify());
        assert!(!t.should_notify());
        let always = NotifyThrottle::new(Duration::ZERO);
        assert!(always.should_notify() && always.should_notify());
    }

    #[tokio::test]
    async fn local_wake_reaches_subscribers() {
        let mut rx = subscribe_local();
        rx.borrow_and_update();
        wake_local_relays();
        tokio::time::timeout(Duration::from_secs(1), rx.changed())
            .await
            .unwrap()
            .unwrap();
    }
}
