//! The CJ Assessment Service: consumes `SpellcheckCompletedV1` through the
//! inbox, updates its own state and publishes `CJAssessmentCompletedV1` —
//! inbox record, state change and follow-up event in ONE transaction.
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \
//! KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 \
//!   cargo run --example cj_assessment -- --once --essays 12
//! ```
//!
//! It creates its tables and topics (with the `.dlq` dead-letter topic) and
//! starts a relay in-process. To have something to consume, it plays the
//! Spellcheck Service too: it opens a CJ batch of N essays and publishes N
//! `SpellcheckCompletedV1` through a second outbox handle (in one
//! transaction, so they share a correlation id). The consumer records each
//! event in `event_inbox`, stores the essay's spellcheck result, and when
//! the last essay of the batch arrives ranks the essays and publishes
//! `CJAssessmentCompletedV1` (carrying the same correlation id). A
//! redelivered `SpellcheckCompletedV1` is recognised by the inbox and changes
//! nothing.
//!
//! With `--once` it exits when the assessment was published and delivered;
//! without, it keeps consuming until Ctrl-C.

use outbox::consume::{Consumer, ConsumerConfig, Dispatcher, HandlerError, Permanent};
use outbox::{
    Envelope, Outbox, OutboxEvent, PublishContext, Relay, RelayConfig, TransactionalPublish,
};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Errors of this example.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Spellcheck finished for one essay (published by the Spellcheck Service).
#[derive(Debug, Clone, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(topic = "huleedu.essay.spellcheck.completed.v1", aggregate = "essay")]
pub struct SpellcheckCompletedV1 {
    #[outbox_event(aggregate_id)]
    pub essay_id: String,
    #[outbox_event(key)]
    pub batch_id: String,
    pub word_count: u32,
    pub spelling_errors: u32,
}

/// One essay's place in a comparative-judgement ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EssayRanking {
    pub essay_id: String,
    pub rank: u32,
    pub score: f64,
}

/// Comparative judgement finished for a batch.
#[derive(Debug, Clone, Serialize, Deserialize, OutboxEvent)]
#[outbox_event(topic = "huleedu.cj.assessment.completed.v1", aggregate = "cj_batch")]
pub struct CJAssessmentCompletedV1 {
    #[outbox_event(aggregate_id)]
    pub batch_id: String,
    pub rankings: Vec<EssayRanking>,
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
    /// Kafka consumer group (`CJ_CONSUMER_GROUP`, default `cj_assessment_service`).
    pub group_id: String,
    /// Essays in the simulated batch (`--essays N`).
    pub essays: usize,
    /// Exit once the assessment was delivered (`--once`).
    pub once: bool,
}

impl Settings {
    /// From the environment, `--essays N` and `--once`.
    pub fn from_env() -> Result<Self, Error> {
        let mut essays = 12;
        let mut once = false;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--once" => once = true,
                "--essays" => {
                    essays = args.next().ok_or("--essays needs a number")?.parse()?;
                }
                other => {
                    return Err(
                        format!("unknown argument {other:?}; expected --once, --essays N").into(),
                    )
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
            group_id: env("CJ_CONSUMER_GROUP", "cj_assessment_service"),
            essays,
            once,
        })
    }
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    pub batch_id: String,
    /// Correlation id of the spellcheck events, carried over to the assessment.
    pub correlation_id: Uuid,
    /// Ids of the `SpellcheckCompletedV1` events.
    pub spellcheck_event_ids: Vec<Uuid>,
    /// The published ranking.
    pub rankings: Vec<EssayRanking>,
    /// The consumer's counters at the end.
    pub consumer: outbox::consume::ConsumerStats,
}

/// Creates the service's tables.
pub async fn create_tables(pool: &PgPool) -> Result<(), Error> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS cj_batches (
             batch_id        TEXT PRIMARY KEY,
             expected_essays INTEGER NOT NULL,
             state           TEXT NOT NULL DEFAULT 'collecting',
             rankings        JSONB,
             completed_at    TIMESTAMPTZ);
         CREATE TABLE IF NOT EXISTS cj_essays (
             batch_id        TEXT NOT NULL REFERENCES cj_batches,
             essay_id        TEXT NOT NULL,
             word_count      INTEGER NOT NULL,
             spelling_errors INTEGER NOT NULL,
             PRIMARY KEY (batch_id, essay_id));",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Handles one `SpellcheckCompletedV1` inside the consumer's transaction
/// (the inbox already recorded the event id in it). Stores the essay's
/// result; when the batch is complete, ranks it and publishes
/// `CJAssessmentCompletedV1` through the same transaction.
pub async fn on_spellcheck_completed(
    event: &Envelope<SpellcheckCompletedV1>,
    tx: &mut TransactionalPublish<'static>,
) -> Result<(), HandlerError> {
    let e = &event.data;
    // Locks the batch row: two consumers finishing the same batch serialize here.
    let batch: Option<(i32, String)> = sqlx::query_as(
        "SELECT expected_essays, state FROM cj_batches WHERE batch_id = $1 FOR UPDATE",
    )
    .bind(&e.batch_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((expected, state)) = batch else {
        return Err(Permanent::new(format!(
            "no CJ batch {} is open; the essay {} cannot be assessed",
            e.batch_id, e.essay_id
        ))
        .into());
    };
    sqlx::query(
        "INSERT INTO cj_essays (batch_id, essay_id, word_count, spelling_errors)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (batch_id, essay_id) DO UPDATE
         SET word_count = EXCLUDED.word_count, spelling_errors = EXCLUDED.spelling_errors",
    )
    .bind(&e.batch_id)
    .bind(&e.essay_id)
    .bind(i32::try_from(e.word_count)?)
    .bind(i32::try_from(e.spelling_errors)?)
    .execute(&mut **tx)
    .await?;
    let received: i64 = sqlx::query_scalar("SELECT count(*) FROM cj_essays WHERE batch_id = $1")
        .bind(&e.batch_id)
        .fetch_one(&mut **tx)
        .await?;
    tracing::info!(batch_id = %e.batch_id, essay_id = %e.essay_id, received, expected, "spellcheck result stored");
    if state != "collecting" || received < i64::from(expected) {
        return Ok(());
    }
    let rows: Vec<(String, i32, i32)> = sqlx::query_as(
        "SELECT essay_id, word_count, spelling_errors FROM cj_essays WHERE batch_id = $1",
    )
    .bind(&e.batch_id)
    .fetch_all(&mut **tx)
    .await?;
    let rankings = rank(rows);
    sqlx::query(
        "UPDATE cj_batches SET state = 'completed', rankings = $2, completed_at = now()
         WHERE batch_id = $1",
    )
    .bind(&e.batch_id)
    .bind(serde_json::to_value(&rankings)?)
    .execute(&mut **tx)
    .await?;
    let id = tx
        .publish(&CJAssessmentCompletedV1 {
            batch_id: e.batch_id.clone(),
            rankings,
        })
        .await?;
    tracing::info!(batch_id = %e.batch_id, event_id = %id, "CJ assessment completed");
    Ok(())
}

/// A stand-in for comparative judgement: fewer spelling errors per word
/// ranks higher.
fn rank(rows: Vec<(String, i32, i32)>) -> Vec<EssayRanking> {
    let mut scored: Vec<(String, f64)> = rows
        .into_iter()
        .map(|(id, words, errors)| {
            let score = 1.0 - f64::from(errors) / f64::from(words.max(1));
            (id, (score * 1000.0).round() / 1000.0)
        })
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    scored
        .into_iter()
        .zip(1u32..)
        .map(|((essay_id, score), rank)| EssayRanking {
            essay_id,
            rank,
            score,
        })
        .collect()
}

/// The consumer's handlers.
pub fn dispatcher() -> Dispatcher {
    Dispatcher::new()
        .register::<SpellcheckCompletedV1>(|event, tx| Box::pin(on_spellcheck_completed(event, tx)))
}

/// Plays the Spellcheck Service: opens a CJ batch and publishes one
/// `SpellcheckCompletedV1` per essay, in one transaction.
pub async fn simulate_spellcheck(
    pool: &PgPool,
    batch_id: &str,
    essays: usize,
) -> Result<(Uuid, Vec<Uuid>), Error> {
    sqlx::query("INSERT INTO cj_batches (batch_id, expected_essays) VALUES ($1, $2)")
        .bind(batch_id)
        .bind(i32::try_from(essays)?)
        .execute(pool)
        .await?;
    let spellchecker = Outbox::new(pool.clone(), "spellchecker_service");
    let correlation_id = Uuid::new_v4();
    let mut tx = spellchecker
        .transactional_publish_with(PublishContext::new().with_correlation_id(correlation_id))
        .await?;
    let events: Vec<SpellcheckCompletedV1> = (0..essays)
        .map(|i| SpellcheckCompletedV1 {
            essay_id: format!("{batch_id}-essay-{i:03}"),
            batch_id: batch_id.to_owned(),
            word_count: 300 + u32::try_from(i * 17 % 200).unwrap_or(0),
            spelling_errors: u32::try_from(i * 7 % 11).unwrap_or(0),
        })
        .collect();
    let ids = tx.publish_all(&events).await?;
    tx.commit().await?;
    Ok((correlation_id, ids))
}

async fn wait_for_assessment(
    pool: &PgPool,
    batch_id: &str,
    timeout: Duration,
) -> Result<Vec<EssayRanking>, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let row: Option<(String, Option<serde_json::Value>)> =
            sqlx::query_as("SELECT state, rankings FROM cj_batches WHERE batch_id = $1")
                .bind(batch_id)
                .fetch_optional(pool)
                .await?;
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM event_outbox WHERE state = 'pending'")
                .fetch_one(pool)
                .await?;
        if let Some((state, Some(rankings))) = row {
            if state == "completed" && pending == 0 {
                return Ok(serde_json::from_value(rankings)?);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "batch {batch_id} was not assessed and delivered within {timeout:?}"
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The whole scenario. With `settings.once` it returns when the assessment
/// was delivered; otherwise it keeps consuming until Ctrl-C.
pub async fn run(settings: Settings) -> Result<Report, Error> {
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&settings.database_url)
        .await?;
    outbox::migrate(&pool).await?; // outbox and inbox tables
    create_tables(&pool).await?;

    let mut kafka = ClientConfig::new();
    kafka.set("bootstrap.servers", &settings.bootstrap);
    let prefix = &settings.topic_prefix;
    outbox::ops::create_registry_topics(&kafka, prefix, 3, 1).await?;
    let consumed = format!("{prefix}{}", SpellcheckCompletedV1::REGISTRATION.topic);
    outbox::ops::create_topics(&kafka, &[format!("{consumed}.dlq")], 3, 1).await?;

    let relay_config = RelayConfig {
        topic_prefix: prefix.clone(),
        ..RelayConfig::from_env()?
    };
    let relay = Relay::new(pool.clone(), kafka.clone(), relay_config)
        .await?
        .spawn();

    let batch_id = format!("cj-batch-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let (correlation_id, spellcheck_event_ids) =
        simulate_spellcheck(&pool, &batch_id, settings.essays).await?;
    tracing::info!(%batch_id, essays = settings.essays, %correlation_id, "spellcheck results published");

    let config = ConsumerConfig {
        topic_prefix: prefix.clone(),
        ..ConsumerConfig::new(settings.group_id.clone())
    };
    let cj = Outbox::new(pool.clone(), "cj_assessment_service");
    let consumer = Consumer::new(cj, kafka, dispatcher(), config)
        .await?
        .spawn();

    let rankings = wait_for_assessment(&pool, &batch_id, Duration::from_secs(120)).await?;
    tracing::info!(%batch_id, essays = rankings.len(), "assessment published and delivered");
    if !settings.once {
        tracing::info!("consuming until Ctrl-C");
        tokio::signal::ctrl_c().await?;
    }
    let consumer_stats = consumer.shutdown().await?;
    relay.shutdown().await?;
    pool.close().await;
    Ok(Report {
        batch_id,
        correlation_id,
        spellcheck_event_ids,
        rankings,
        consumer: consumer_stats,
    })
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
    if let Some(best) = report.rankings.first() {
        tracing::info!(batch_id = %report.batch_id, best = %best.essay_id, score = best.score, "ranked");
    }
    tracing::info!(
        handled = report.consumer.handled,
        duplicates = report.consumer.duplicates,
        dead_lettered = report.consumer.dead_lettered,
        correlation_id = %report.correlation_id,
        "cj assessment done"
    );
    Ok(())
}
