//! `GET /metrics` and `GET /health` as an axum router, for the standalone
//! relay (`outbox relay --metrics-addr`) or to merge into a service's own
//! router.

use crate::ops::health::HealthProbe;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use std::sync::Arc;

/// Content type of the `/metrics` response (OpenMetrics text, which
/// Prometheus negotiates and parses).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug, Clone)]
struct Ops {
    registry: Arc<Registry>,
    health: HealthProbe,
}

/// A router serving `GET /metrics` (the registry in the OpenMetrics text
/// format) and `GET /health` (a [`HealthReport`](crate::ops::health::HealthReport) as
/// JSON: status 200 when healthy, 503 when not).
///
/// ```no_run
/// use outbox::ops::http::ops_router;
/// use outbox::ops::HealthProbe;
/// use outbox::OutboxMetrics;
/// use prometheus_client::registry::Registry;
/// use std::sync::Arc;
///
/// # async fn run(pool: sqlx::PgPool, relay: outbox::RelayHandle) -> std::io::Result<()> {
/// let metrics = OutboxMetrics::new();
/// let mut registry = Registry::default();
/// metrics.register(&mut registry);
/// // ... give `metrics` to the Outbox and the Relay ...
/// let router = ops_router(
///     Arc::new(registry),
///     HealthProbe::new(pool).relay(relay.counters()),
/// );
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:9464").await?;
/// axum::serve(listener, router).await
/// # }
/// ```
pub fn ops_router(registry: Arc<Registry>, health: HealthProbe) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health_check))
        .with_state(Ops { registry, health })
}

async fn metrics(State(ops): State<Ops>) -> Response {
    let mut body = String::new();
    match encode(&mut body, &ops.registry) {
        Ok(()) => ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], body).into_response(),
        Err(error) => {
            tracing::error!(%error, "could not encode the outbox metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not encode the metrics; see the process logs\n",
            )
                .into_response()
        }
    }
}

async fn health_check(State(ops): State<Ops>) -> Response {
    let report = ops.health.check().await;
    let status = if report.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}
