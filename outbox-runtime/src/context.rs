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
    /// the transaction a correlation id. With the `opentelemetry` feature, a
    /// trace context given neither explicitly nor by the task's scope is
    /// taken from the current OpenTelemetry context.
    pub(crate) fn resolve(self) -> ResolvedContext {
        let current = Self::current();
        let (traceparent, tracestate) = match self.traceparent.or(current.traceparent) {
            Some(tp) => (Some(tp), self.tracestate.or(current.tracestate)),
            None => otel::current_trace_context(),
        };
        ResolvedContext {
            correlation_id: self
                .correlation_id
                .or(current.correlation_id)
                .unwrap_or_else(Uuid::new_v4),
            traceparent,
            tracestate,
        }
    }
}

#[cfg(not(feature = "opentelemetry"))]
mod otel {
    pub(super) fn current_trace_context() -> (Option<String>, Option<String>) {
        (None, None)
    }
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use std::collections::HashMap;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// `traceparent` and `tracestate` of the current `tracing` span's
    /// OpenTelemetry context (tracing-opentelemetry), else of the current
    /// OpenTelemetry context; nothing when neither holds a valid span.
    pub(super) fn current_trace_context() -> (Option<String>, Option<String>) {
        let mut cx = tracing::Span::current().context();
        if !cx.span().span_context().is_valid() {
            cx = opentelemetry::Context::current();
            if !cx.span().span_context().is_valid() {
                return (None, None);
            }
        }
        let mut carrier: HashMap<String, String> = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        (
            carrier.remove("traceparent"),
            carrier.remove("tracestate").filter(|s| !s.is_empty()),
        )
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

    #[cfg(not(feature = "opentelemetry"))]
    #[test]
    fn without_the_feature_no_trace_context_is_invented() {
        let _span = tracing::info_span!("request").entered();
        let r = PublishContext::new().resolve();
        assert_eq!((r.traceparent, r.tracestate), (None, None));
    }

    #[cfg(feature = "opentelemetry")]
    mod opentelemetry {
        use super::*;
        use ::opentelemetry::trace::{TraceContextExt, TracerProvider as _};
        use opentelemetry_sdk::trace::SdkTracerProvider;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        use tracing_subscriber::layer::SubscriberExt;

        fn traced<T>(f: impl FnOnce() -> T) -> T {
            let provider = SdkTracerProvider::builder().build();
            let subscriber = tracing_subscriber::registry()
                .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("outbox-test")));
            tracing::subscriber::with_default(subscriber, f)
        }

        #[test]
        fn traceparent_comes_from_the_current_span() {
            traced(|| {
                let span = tracing::info_span!("http.request");
                let _entered = span.enter();
                let expected = span.context().span().span_context().clone();
                assert!(expected.is_valid());
                let r = PublishContext::new().resolve();
                let tp = r.traceparent.expect("a traceparent from the otel context");
                let parts: Vec<&str> = tp.split('-').collect();
                assert_eq!(parts.len(), 4, "{tp}");
                assert_eq!(parts[0], "00");
                assert_eq!(
                    parts[1],
                    expected.trace_id().to_string(),
                    "same trace: {tp}"
                );
                assert_eq!(
                    parts[2],
                    expected.span_id().to_string(),
                    "parent is the span: {tp}"
                );
                assert_eq!(parts[3], "01", "sampled: {tp}");
            });
        }

        #[test]
        fn explicit_traceparent_wins_and_no_span_means_none() {
            traced(|| {
                let _span = tracing::info_span!("http.request").entered();
                let explicit = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
                let r = PublishContext::new().with_traceparent(explicit).resolve();
                assert_eq!(r.traceparent.as_deref(), Some(explicit));
            });
            traced(|| {
                let r = PublishContext::new().resolve();
                assert_eq!(r.traceparent, None, "outside any span");
            });
        }
    }
}
