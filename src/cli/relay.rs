//! `outbox relay`: a standalone relay process serving `/metrics` and
//! `/health`, stopped gracefully by SIGINT or SIGTERM.

use super::topics::{client_config, parse_key_value};
use super::{db, output, CliError, CliResult, Exit, Global};
use crate::ops::http::ops_router;
use crate::ops::{HealthConfig, HealthProbe};
use crate::{OutboxMetrics, Relay, RelayConfig, RelayError};
use clap::Args;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP_SERVERS", value_name = "HOST:PORT[,...]")]
    bootstrap_servers: String,
    /// Extra librdkafka producer setting (repeatable), e.g.
    /// `security.protocol=SASL_SSL`. `enable.idempotence` and `acks` are
    /// enforced by the relay.
    #[arg(long = "kafka-config", short = 'X', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    kafka_config: Vec<(String, String)>,
    /// Serve `GET /metrics` (Prometheus) and `GET /health` (JSON) on this
    /// address, e.g. `0.0.0.0:9464`.
    #[arg(long, env = "OUTBOX_METRICS_ADDR", value_name = "HOST:PORT")]
    metrics_addr: Option<String>,
    /// `/health` turns unhealthy when the oldest pending event is older.
    #[arg(long, default_value = "30m", value_name = "DURATION", value_parser = parse_duration)]
    health_max_pending_age: Duration,
    /// Keep `/health` healthy while dead events exist (alert on the
    /// `outbox_dead_events` metric instead).
    #[arg(long)]
    health_ignore_dead: bool,
    /// Database connections of the relay's pool.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=100))]
    max_connections: u32,
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    humantime::parse_duration(value)
        .map_err(|e| format!("{e}; expected a duration such as `30m` or `1h`"))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rdkafka=warn"));
    // A service embedding the CLI may have installed its own subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn relay_error(error: RelayError) -> CliError {
    let exit = match &error {
        RelayError::Config(_) => Exit::Usage,
        RelayError::Registry(_) => Exit::Conflict,
        _ => Exit::Failure,
    };
    CliError::new(exit, super::with_causes(&error))
}

pub(crate) async fn run(global: &Global, args: RelayArgs) -> CliResult {
    init_logging();
    let mut config = RelayConfig::from_env().map_err(|e| CliError::usage(e.to_string()))?;
    if global.schema.is_some() {
        config.schema = global.schema.clone();
    }
    let schema = config.schema.clone();
    let pool = db::connect(global, args.max_connections).await?;

    let metrics = OutboxMetrics::new();
    let mut registry = Registry::default();
    metrics.register(&mut registry);

    let kafka = client_config(&args.bootstrap_servers, &args.kafka_config);
    let relay = Relay::new(pool.clone(), kafka, config)
        .await
        .map_err(relay_error)?
        .with_metrics(metrics);
    let listener = match &args.metrics_addr {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            CliError::failure(format!(
                "could not listen on --metrics-addr {addr}: {e}; pick a free HOST:PORT"
            ))
        })?),
        None => None,
    };

    let handle = relay.spawn();
    tracing::info!(
        bootstrap_servers = %args.bootstrap_servers,
        database = %db::mask_url(db::database_url(global)?),
        metrics_addr = args.metrics_addr.as_deref().unwrap_or("-"),
        "outbox relay process running; stop it with SIGINT or SIGTERM"
    );

    let (stop_http, http_stopped) = watch::channel(false);
    let server = listener.map(|listener| {
        let health = HealthProbe::new(pool.clone())
            .schema(schema)
            .config(HealthConfig {
                max_oldest_pending_age: args.health_max_pending_age,
                dead_events_unhealthy: !args.health_ignore_dead,
                ..HealthConfig::default()
            })
            .relay(handle.counters());
        let router = ops_router(Arc::new(registry), health);
        let mut stopped = http_stopped;
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                })
                .await
        })
    });

    let ended_by_itself = tokio::select! {
        () = shutdown_signal() => false,
        () = relay_ended(&handle) => true,
    };
    tracing::info!("outbox relay process stopping: finishing the batch in flight");
    let stats = handle.shutdown().await.map_err(relay_error);
    let _ = stop_http.send(true);
    if let Some(server) = server {
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the metrics server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "the metrics server task failed"),
        }
    }
    pool.close().await;
    let stats = stats?;
    if ended_by_itself {
        return Err(CliError::failure(
            "the relay stopped on its own; see the log above for the cause",
        ));
    }
    let summary = format!(
        "outbox relay stopped: {} delivered, {} retried, {} dead, {} transient errors",
        stats.delivered, stats.retried, stats.dead, stats.errors
    );
    if global.json {
        output::print_json(&serde_json::json!({
            "delivered": stats.delivered,
            "retried": stats.retried,
            "dead": stats.dead,
            "errors": stats.errors,
            "batches": stats.batches,
        }))
    } else {
        output::print(&summary)
    }
}

async fn relay_ended(handle: &crate::RelayHandle) {
    while !handle.is_finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
