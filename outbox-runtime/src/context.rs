//! Correlation id and trace context for publishes, explicit or taken from the
//! current task.

use std::future::Future;
use uuid::Uuid;

tokio::task_local! {
    static CURRENT: PublishContext;
}

/// Correlation id and W3C trace context stamped on published events.
///
/// Set it for a whole request with [`PublishContext::scope`]; every
/// [`transactional_publish`](crate::Outbox::transactional_publish) inside the
/// scope uses it. Without a scope, each transaction gets a fresh correlation id.
///
/// ```
/// use outbox::PublishContext;
/// use uuid::Uuid;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let id = Uuid::new_v4();
/// let seen = PublishContext::new()
///     .with_correlation_id(id)
///     .scope(async { PublishContext::current().correlation_id })
///     .await;
/// assert_eq!(seen, Some(id));
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishContext {
    /// Correlation id; generated per transaction when absent.
    pub correlation_id: Option<Uuid>,
    /// W3C `traceparent` header value.
    pub traceparent: Option<String>,
    /// W3C `tracestate` header value.
    pub tracestate: Option<String>,
}

impl PublishContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the W3C `traceparent` (e.g. from an incoming HTTP request).
    pub fn with_traceparent(mut self, traceparent: impl Into<String>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// The context of the current task, or an empty one.
    pub fn current() -> Self {
        CURRENT.try_with(Clone::clone).unwrap_or_default()
    }

    /// Runs `fut` with this context as the current one.
    pub async fn scope<F: Future>(self, fut: F) -> F::Output {
        CURRENT.scope(self, fut).await
    }

    /// Fills the gaps of `self` from the current task's context and gives
    /// the transaction a correlation id.
    pub(crate) fn resolve(self) -> ResolvedContext {
        let current = Self::current();
        ResolvedContext {
            correlation_id: self
                .correlation_id
                .or(current.correlation_id)
                .unwrap_or_else(Uuid::new_v4),
            traceparent: self.traceparent.or(current.traceparent),
            tracestate: self.tracestate.or(current.tracestate),
        }
    }
}

/// The context a transaction publishes with.
#[derive(Debug, Clone)]
pub(crate) struct ResolvedContext {
    pub correlation_id: Uuid,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn explicit_wins_over_scope_and_absent_is_generated() {
        let outer = Uuid::new_v4();
        let explicit = Uuid::new_v4();
        PublishContext::new()
            .with_correlation_id(outer)
            .with_traceparent("tp")
            .scope(async {
                let r = PublishContext::new()
                    .with_correlation_id(explicit)
                    .resolve();
                assert_eq!(r.correlation_id, explicit);
                assert_eq!(r.traceparent.as_deref(), Some("tp"));
                assert_eq!(PublishContext::new().resolve().correlation_id, outer);
            })
            .await;
        let a = PublishContext::new().resolve().correlation_id;
        let b = PublishContext::new().resolve().correlation_id;
        assert_ne!(a, b);
    }
}
