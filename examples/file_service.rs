//! The File Service example: a File Service whose uploads and removals commit
//! together with their events, delivered to Kafka by an in-process relay.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/files \
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 FILE_SERVICE_ADDR=127.0.0.1:8080 \
//!   cargo run --example file_service
//! curl -X POST localhost:8080/batches/b-1/files -H 'content-type: application/json' \
//!   -d '{"file_name":"essay.txt","content":"Once upon a time..."}'
//! ```
//!
//! Routes: `POST /batches/{batch_id}/files`, `DELETE /batches/{batch_id}/files/{id}`,
//! `GET /health`. `scripts/demo.sh` runs all of it against a fresh Postgres
//! and broker; `tests/file_service_example.rs` tests it with `outbox::testing`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use outbox::{Outbox, OutboxEvent, PublishContext, Relay, RelayConfig};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// A file's text was extracted and stored: downstream services may process it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(
    topic = "files.essay-content-provisioned.v1",
    aggregate = "file_upload"
)]
pub struct EssayContentProvisionedV1 {
    #[outbox_event(aggregate_id)]
    pub file_upload_id: Uuid,
    #[outbox_event(key)]
    pub batch_id: String,
    pub file_name: String,
    pub content_length: usize,
}

/// An uploaded file failed validation and will not be processed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(topic = "files.essay-validation-failed.v1", aggregate = "file_upload")]
pub struct EssayValidationFailedV1 {
    #[outbox_event(aggregate_id)]
    pub file_upload_id: Uuid,
    #[outbox_event(key)]
    pub batch_id: String,
    pub file_name: String,
    pub error_code: String,
    pub message: String,
}

/// A file was added to a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(topic = "files.batch-file-added.v1", aggregate = "file_upload")]
pub struct BatchFileAddedV1 {
    #[outbox_event(aggregate_id)]
    pub file_upload_id: Uuid,
    #[outbox_event(key)]
    pub batch_id: String,
    pub file_name: String,
}

/// A file was removed from its batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(topic = "files.batch-file-removed.v1", aggregate = "file_upload")]
pub struct BatchFileRemovedV1 {
    #[outbox_event(aggregate_id)]
    pub file_upload_id: Uuid,
    #[outbox_event(key)]
    pub batch_id: String,
}

/// The body of an upload.
#[derive(Deserialize)]
pub struct Upload {
    pub file_name: String,
    pub content: String,
}

/// Errors answered to HTTP clients.
pub enum ApiError {
    NotFound,
    Internal(String),
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        Self::Internal(e.to_string())
    }
}

impl From<outbox::PublishError> for ApiError {
    fn from(e: outbox::PublishError) -> Self {
        Self::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "no such file upload"})),
            )
                .into_response(),
            Self::Internal(e) => {
                tracing::error!(error = %e, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": e}))).into_response()
            }
        }
    }
}

const MIN_CONTENT_CHARS: usize = 1;

/// `POST /batches/{batch_id}/files`: stores the file and publishes its events.
pub async fn upload(
    State(outbox): State<Outbox>,
    Path(batch_id): Path<String>,
    Json(body): Json<Upload>,
) -> Result<Response, ApiError> {
    let id = Uuid::now_v7();
    let valid = body.content.trim().chars().count() >= MIN_CONTENT_CHARS;
    let status = if valid { "provisioned" } else { "rejected" };
    // The correlation id of this request is stamped on every event below.
    let context = PublishContext::new().with_correlation_id(Uuid::new_v4());
    let mut tx = outbox.transactional_publish_with(context).await?;
    sqlx::query("INSERT INTO file_uploads (id, batch_id, file_name, status, content) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(&batch_id)
        .bind(&body.file_name)
        .bind(status)
        .bind(&body.content)
        .execute(&mut *tx)
        .await?;
    if valid {
        let mut events = tx.batch();
        events.push(&BatchFileAddedV1 {
            file_upload_id: id,
            batch_id: batch_id.clone(),
            file_name: body.file_name.clone(),
        })?;
        events.push(&EssayContentProvisionedV1 {
            file_upload_id: id,
            batch_id: batch_id.clone(),
            file_name: body.file_name.clone(),
            content_length: body.content.len(),
        })?;
        tx.publish_batch(events).await?;
    } else {
        tx.publish(&EssayValidationFailedV1 {
            file_upload_id: id,
            batch_id: batch_id.clone(),
            file_name: body.file_name.clone(),
            error_code: "EMPTY_CONTENT".into(),
            message: "the file has no text content".into(),
        })
        .await?;
    }
    let correlation_id = tx.correlation_id();
    tx.commit().await?;
    tracing::info!(file_upload_id = %id, %batch_id, status, %correlation_id, "file upload recorded");
    let code = if valid {
        StatusCode::CREATED
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    Ok((
        code,
        Json(json!({"file_upload_id": id, "batch_id": batch_id, "status": status})),
    )
        .into_response())
}

/// `DELETE /batches/{batch_id}/files/{id}`: removes the file and publishes
/// `BatchFileRemovedV1`; publishes nothing when there is no such file.
pub async fn remove(
    State(outbox): State<Outbox>,
    Path((batch_id, id)): Path<(String, Uuid)>,
) -> Result<StatusCode, ApiError> {
    let mut tx = outbox.transactional_publish().await?;
    let removed = sqlx::query("DELETE FROM file_uploads WHERE id = $1 AND batch_id = $2")
        .bind(id)
        .bind(&batch_id)
        .execute(&mut *tx)
        .await?;
    if removed.rows_affected() == 0 {
        return Err(ApiError::NotFound); // guard dropped: rolled back
    }
    tx.publish(&BatchFileRemovedV1 {
        file_upload_id: id,
        batch_id,
    })
    .await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates the service's own table.
pub async fn create_tables(pool: &sqlx::PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS file_uploads (
             id UUID PRIMARY KEY, batch_id TEXT NOT NULL, file_name TEXT NOT NULL,
             status TEXT NOT NULL, content TEXT NOT NULL, created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .execute(pool)
    .await?;
    Ok(())
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .init();
    let database_url = env(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    let bootstrap = env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092");
    let addr = env("FILE_SERVICE_ADDR", "127.0.0.1:8080");

    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&database_url)
        .await?;
    outbox::migrate(&pool).await?;
    create_tables(&pool).await?;

    let mut kafka = ClientConfig::new();
    kafka.set("bootstrap.servers", &bootstrap);
    // Development convenience: create the registry's topics if missing.
    let created = outbox::ops::create_registry_topics(&kafka, "", 3, 1).await?;
    tracing::info!(?created, "topics ready");
    for r in outbox::registry::registrations() {
        tracing::info!(
            event_type = r.event_type,
            topic = r.topic,
            aggregate = r.aggregate_type,
            "registered event"
        );
    }

    let relay = Relay::new(pool.clone(), kafka, RelayConfig::from_env()?)
        .await?
        .spawn();
    let outbox = Outbox::new(pool, "file_service");
    let app = Router::new()
        .route("/health", get(health))
        .route("/batches/{batch_id}/files", post(upload))
        .route("/batches/{batch_id}/files/{id}", delete(remove))
        .with_state(outbox);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(%addr, "file service listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    let stats = relay.shutdown().await?;
    tracing::info!(delivered = stats.delivered, "file service stopped");
    Ok(())
}
