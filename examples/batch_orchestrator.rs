//! The Batch Orchestrator Service: many events for many aggregates in one
//! transaction, and state transitions that publish their outcome.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 \
//!   cargo run --example batch_orchestrator -- --essays 200
//! ```
//!
//! It creates its tables and topics, starts a relay in-process, then:
//!
//! 1. registers two batches; each registration inserts the batch and its
//!    essays and publishes `BatchEssaysRegistered` plus one
//!    `EssaySpellcheckInitiateCommandV1` per essay — all in ONE transaction
//!    and one INSERT statement (an [`EventBatch`](outbox::EventBatch));
//! 2. completes the spellcheck phase of the first batch (every essay passed):
//!    the batch moves to `spellcheck_completed` and `BatchPhaseCompletedV1`
//!    is published in the same transaction;
//! 3. completes the phase of the second batch with failed essays: the batch
//!    moves to `failed` and `BatchPipelineErrorV1` is published;
//! 4. tries to complete the first batch again: the transition is refused
//!    and the transaction rolls back, publishing nothing;
//! 5. waits until the relay delivered every event, and exits.

use outbox::{Outbox, OutboxEvent, Relay, RelayConfig};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Errors of this example.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The essays of a batch were registered and their processing can start.
#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(topic = "huleedu.batch.essays.registered.v1", aggregate = "batch")]
pub struct BatchEssaysRegistered {
    #[outbox_event(aggregate_id)]
    pub batch_id: String,
    pub course_code: String,
    pub expected_essay_count: u32,
    pub essay_ids: Vec<String>,
}

/// Command to the Spellcheck Service: spellcheck one essay of a batch.
#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(
    topic = "huleedu.batch.spellcheck.initiate.command.v1",
    aggregate = "essay"
)]
pub struct EssaySpellcheckInitiateCommandV1 {
    #[outbox_event(aggregate_id)]
    pub essay_id: String,
    pub batch_id: String,
    pub language: String,
}

/// A processing phase finished for every essay of a batch.
#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(topic = "huleedu.batch.phase.completed.v1", aggregate = "batch")]
pub struct BatchPhaseCompletedV1 {
    #[outbox_event(aggregate_id)]
    pub batch_id: String,
    pub phase: String,
    pub essays_completed: u32,
}

/// A processing phase failed for a batch; the pipeline stops.
#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(topic = "huleedu.batch.pipeline.error.v1", aggregate = "batch")]
pub struct BatchPipelineErrorV1 {
    #[outbox_event(aggregate_id)]
    pub batch_id: String,
    pub phase: String,
    pub error_code: String,
    pub message: String,
    pub failed_essay_ids: Vec<String>,
}

/// Where to connect and how much to do.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Postgres URL (`DATABASE_URL`).
    pub database_url: String,
    /// Kafka bootstrap servers (`KAFKA_BOOTSTRAP_SERVERS`).
    pub bootstrap: String,
    /// Prefix of every topic (`OUTBOX_TOPIC_PREFIX`).
    pub topic_prefix: String,
    /// Essays per batch (`--essays N`).
    pub essays: usize,
}

impl Settings {
    /// From the environment and `--essays N`.
    pub fn from_env() -> Result<Self, Error> {
        let mut essays = 100;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--essays" => {
                    essays = args.next().ok_or("--essays needs a number")?.parse()?;
                }
                other => {
                    return Err(format!("unknown argument {other:?}; expected --essays N").into())
                }
            }
        }
        Ok(Self {
            database_url: env(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            bootstrap: env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            topic_prefix: env("OUTBOX_TOPIC_PREFIX", ""),
            essays,
        })
    }
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// What a registration committed.
#[derive(Debug, Clone)]
pub struct Registered {
    pub batch_id: String,
    /// Ids of all events of the registration, `BatchEssaysRegistered` first.
    pub event_ids: Vec<Uuid>,
    pub correlation_id: Uuid,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The batch whose phase completed.
    pub completed: Registered,
    /// The batch whose pipeline failed.
    pub failed: Registered,
    /// Essays of the failed batch that failed spellcheck.
    pub failed_essays: Vec<String>,
    /// Events committed in total.
    pub events_published: usize,
    /// Events the relay delivered.
    pub events_delivered: u64,
    /// Whether the repeated transition was refused.
    pub repeated_transition_refused: bool,
}

/// A batch is not in the state a transition starts from.
#[derive(Debug)]
pub struct InvalidTransition {
    pub batch_id: String,
    pub expected: &'static str,
}

impl std::fmt::Display for InvalidTransition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "batch {} is not in state `{}`; the transition is refused",
            self.batch_id, self.expected
        )
    }
}

impl std::error::Error for InvalidTransition {}

/// Creates the service's tables.
pub async fn create_tables(pool: &PgPool) -> Result<(), Error> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS bos_batches (
             batch_id    TEXT PRIMARY KEY,
             course_code TEXT NOT NULL,
             state       TEXT NOT NULL,
             essay_count INTEGER NOT NULL,
             updated_at  TIMESTAMPTZ NOT NULL DEFAULT now());
         CREATE TABLE IF NOT EXISTS bos_batch_essays (
             batch_id          TEXT NOT NULL REFERENCES bos_batches,
             essay_id          TEXT NOT NULL,
             spellcheck_status TEXT NOT NULL DEFAULT 'requested',
             PRIMARY KEY (batch_id, essay_id));",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Registers a batch: the batch row, its essay rows, `BatchEssaysRegistered`
/// and one spellcheck command per essay commit in one transaction.
pub async fn register_batch(
    outbox: &Outbox,
    batch_id: &str,
    course_code: &str,
    essay_ids: &[String],
) -> Result<Registered, Error> {
    let mut tx = outbox.transactional_publish().await?;
    sqlx::query(
        "INSERT INTO bos_batches (batch_id, course_code, state, essay_count)
         VALUES ($1, $2, 'spellcheck_in_progress', $3)",
    )
    .bind(batch_id)
    .bind(course_code)
    .bind(i32::try_from(essay_ids.len())?)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO bos_batch_essays (batch_id, essay_id) SELECT $1, unnest($2::text[])")
        .bind(batch_id)
        .bind(essay_ids)
        .execute(&mut *tx)
        .await?;

    let mut events = tx.batch();
    events.push(&BatchEssaysRegistered {
        batch_id: batch_id.to_owned(),
        course_code: course_code.to_owned(),
        expected_essay_count: u32::try_from(essay_ids.len())?,
        essay_ids: essay_ids.to_vec(),
    })?;
    for essay_id in essay_ids {
        events.push(&EssaySpellcheckInitiateCommandV1 {
            essay_id: essay_id.clone(),
            batch_id: batch_id.to_owned(),
            language: "en".into(),
        })?;
    }
    let event_ids = tx.publish_batch(events).await?; // one INSERT for all of them
    let correlation_id = tx.correlation_id();
    tx.commit().await?;
    tracing::info!(%batch_id, essays = essay_ids.len(), events = event_ids.len(), %correlation_id, "batch registered");
    Ok(Registered {
        batch_id: batch_id.to_owned(),
        event_ids,
        correlation_id,
    })
}

/// Records the spellcheck outcome of every essay (`true` = passed) and
/// moves the batch out of `spellcheck_in_progress`: to
/// `spellcheck_completed` with `BatchPhaseCompletedV1` when all passed, to
/// `failed` with `BatchPipelineErrorV1` otherwise. Refused (nothing
/// committed) when the batch is not in `spellcheck_in_progress`.
pub async fn complete_spellcheck_phase(
    outbox: &Outbox,
    batch_id: &str,
    outcomes: &[(String, bool)],
) -> Result<Uuid, Error> {
    let mut tx = outbox.transactional_publish().await?;
    let moved = sqlx::query(
        "UPDATE bos_batches SET state = 'spellcheck_finishing', updated_at = now()
         WHERE batch_id = $1 AND state = 'spellcheck_in_progress'",
    )
    .bind(batch_id)
    .execute(&mut *tx)
    .await?;
    if moved.rows_affected() == 0 {
        // Returning drops the guard: nothing of this transaction commits.
        return Err(InvalidTransition {
            batch_id: batch_id.to_owned(),
            expected: "spellcheck_in_progress",
        }
        .into());
    }
    let (ids, passed): (Vec<String>, Vec<bool>) = outcomes.iter().cloned().unzip();
    sqlx::query(
        "UPDATE bos_batch_essays e
         SET spellcheck_status = CASE WHEN o.passed THEN 'completed' ELSE 'failed' END
         FROM unnest($2::text[], $3::bool[]) AS o(essay_id, passed)
         WHERE e.batch_id = $1 AND e.essay_id = o.essay_id",
    )
    .bind(batch_id)
    .bind(&ids)
    .bind(&passed)
    .execute(&mut *tx)
    .await?;
    let failed: Vec<String> = outcomes
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(id, _)| id.clone())
        .collect();
    let (state, event_id) = if failed.is_empty() {
        let id = tx
            .publish(&BatchPhaseCompletedV1 {
                batch_id: batch_id.to_owned(),
                phase: "spellcheck".into(),
                essays_completed: u32::try_from(outcomes.len())?,
            })
            .await?;
        ("spellcheck_completed", id)
    } else {
        let id = tx
            .publish(&BatchPipelineErrorV1 {
                batch_id: batch_id.to_owned(),
                phase: "spellcheck".into(),
                error_code: "SPELLCHECK_FAILED".into(),
                message: format!("{} essay(s) failed spellcheck", failed.len()),
                failed_essay_ids: failed,
            })
            .await?;
        ("failed", id)
    };
    sqlx::query("UPDATE bos_batches SET state = $2 WHERE batch_id = $1")
        .bind(batch_id)
        .bind(state)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    tracing::info!(%batch_id, state, %event_id, "spellcheck phase finished");
    Ok(event_id)
}

/// Waits until no outbox row is pending.
async fn wait_until_delivered(pool: &PgPool, timeout: Duration) -> Result<(), Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM event_outbox WHERE state = 'pending'")
                .fetch_one(pool)
                .await?;
        if pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{pending} event(s) still pending after {timeout:?}; is the broker reachable?"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The whole scenario; returns when the relay delivered every event.
pub async fn run(settings: Settings) -> Result<Report, Error> {
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect(&settings.database_url)
        .await?;
    outbox::migrate(&pool).await?;
    create_tables(&pool).await?;

    let mut kafka = ClientConfig::new();
    kafka.set("bootstrap.servers", &settings.bootstrap);
    outbox::ops::create_registry_topics(&kafka, &settings.topic_prefix, 3, 1).await?;
    let relay_config = RelayConfig {
        topic_prefix: settings.topic_prefix.clone(),
        ..RelayConfig::from_env()?
    };
    let relay = Relay::new(pool.clone(), kafka, relay_config).await?.spawn();
    let outbox = Outbox::new(pool.clone(), "batch_orchestrator_service");

    let run_id = &Uuid::new_v4().simple().to_string()[..8];
    let essays = |batch: &str| -> Vec<String> {
        (0..settings.essays)
            .map(|i| format!("{batch}-essay-{i:04}"))
            .collect()
    };
    let ok_batch = format!("batch-{run_id}-a");
    let bad_batch = format!("batch-{run_id}-b");
    let ok_essays = essays(&ok_batch);
    let bad_essays = essays(&bad_batch);

    let completed = register_batch(&outbox, &ok_batch, "ENG5", &ok_essays).await?;
    let failed = register_batch(&outbox, &bad_batch, "ENG5", &bad_essays).await?;

    let all_passed: Vec<(String, bool)> = ok_essays.iter().map(|e| (e.clone(), true)).collect();
    complete_spellcheck_phase(&outbox, &ok_batch, &all_passed).await?;
    let some_failed: Vec<(String, bool)> = bad_essays
        .iter()
        .enumerate()
        .map(|(i, e)| (e.clone(), i % 3 != 0))
        .collect();
    let failed_essays: Vec<String> = some_failed
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(e, _)| e.clone())
        .collect();
    complete_spellcheck_phase(&outbox, &bad_batch, &some_failed).await?;

    let repeated_transition_refused =
        match complete_spellcheck_phase(&outbox, &ok_batch, &all_passed).await {
            Err(e) if e.is::<InvalidTransition>() => {
                tracing::info!(error = %e, "repeated transition refused, nothing published");
                true
            }
            Err(e) => return Err(e),
            Ok(_) => false,
        };

    let events_published = completed.event_ids.len() + failed.event_ids.len() + 2;
    wait_until_delivered(&pool, Duration::from_secs(120)).await?;
    let stats = relay.shutdown().await?;
    pool.close().await;
    let report = Report {
        completed,
        failed,
        failed_essays,
        events_published,
        events_delivered: stats.delivered,
        repeated_transition_refused,
    };
    tracing::info!(
        published = report.events_published,
        delivered = report.events_delivered,
        "batch orchestrator done"
    );
    Ok(report)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .init();
    let report = run(Settings::from_env()?).await?;
    tracing::info!(
        completed_batch = %report.completed.batch_id,
        failed_batch = %report.failed.batch_id,
        failed_essays = report.failed_essays.len(),
        published = report.events_published,
        delivered = report.events_delivered,
        "done"
    );
    Ok(())
}
