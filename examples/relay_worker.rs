//! A relay as its own process, configured from the environment
//! (`DATABASE_URL`, `KAFKA_BOOTSTRAP_SERVERS`, `OUTBOX_*`). Stops gracefully
//! on SIGINT/SIGTERM. The fault-injection tests start several of these and
//! kill them; `outbox relay` is the full-featured standalone relay.

use outbox::{Relay, RelayConfig};
use rdkafka::ClientConfig;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            }
            _ => std::future::pending::<()>().await,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let database_url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set")?;
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP_SERVERS")
        .map_err(|_| "KAFKA_BOOTSTRAP_SERVERS is not set")?;
    let config = RelayConfig::from_env()?;
    let options = PgConnectOptions::from_str(&database_url)?.application_name("outbox-relay");
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    let mut kafka = ClientConfig::new();
    kafka.set("bootstrap.servers", &bootstrap);
    if let Ok(v) = std::env::var("RELAY_MESSAGE_MAX_BYTES") {
        kafka.set("message.max.bytes", v);
    }
    let relay = Relay::new(pool, kafka, config).await?;
    tracing::info!(instance_id = %relay.instance_id(), "relay process ready");
    let stats = relay.run_until(stop_signal()).await;
    tracing::info!(
        delivered = stats.delivered,
        dead = stats.dead,
        "relay process stopped"
    );
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "relay process failed");
            std::process::ExitCode::FAILURE
        }
    }
}
