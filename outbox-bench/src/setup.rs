//! Databases, topics, backlogs and relay processes for the scenarios.

use crate::broker::{Broker, Brokers};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub const TOPIC: &str = "bench.essay-scored.v1";

/// Where Postgres and the brokers are (scripts/bench.sh sets both).
pub struct Env {
    pub database_url: String,
    pub brokers: Brokers,
}

impl Env {
    pub fn from_env() -> Result<Self, BoxError> {
        let database_url = std::env::var("DATABASE_URL")
            .map_err(|_| "DATABASE_URL is not set: run scripts/bench.sh")?;
        Ok(Self {
            database_url,
            brokers: Brokers::from_env()?,
        })
    }
}

fn with_database(url: &str, db: &str) -> String {
    let scheme_end = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[scheme_end..].find('/') {
        Some(i) => format!("{}/{db}", &url[..scheme_end + i]),
        None => format!("{url}/{db}"),
    }
}

/// A database of one scenario, migrated.
pub struct BenchDb {
    pub pool: PgPool,
    pub url: String,
    name: String,
    admin_url: String,
}

impl BenchDb {
    pub async fn create(env: &Env, label: &str) -> Result<Self, BoxError> {
        let name = format!(
            "outbox_bench_{label}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&env.database_url)
            .await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&admin)
            .await?;
        admin.close().await;
        let url = with_database(&env.database_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .connect(&url)
            .await?;
        outbox::migrate(&pool).await?;
        sqlx::query("CREATE TABLE essays (id TEXT NOT NULL, score INT NOT NULL)")
            .execute(&pool)
            .await?;
        Ok(Self {
            pool,
            url,
            name,
            admin_url: env.database_url.clone(),
        })
    }

    pub async fn drop_db(self) -> Result<(), BoxError> {
        self.pool.close().await;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.admin_url)
            .await?;
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name
        ))
        .execute(&admin)
        .await?;
        admin.close().await;
        Ok(())
    }
}

/// A unique topic prefix, and the bench topic created under it.
pub async fn topic(broker: &Broker, label: &str, partitions: i32) -> Result<String, BoxError> {
    let prefix = format!(
        "b-{label}-{}.",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    outbox::ops::create_topics(
        &broker.kafka(),
        &[format!("{prefix}{TOPIC}")],
        partitions,
        1,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(prefix)
}

/// Inserts `n` pending rows with valid ~1 KiB envelopes over `aggregates`
/// aggregates, in chunks, then vacuums and analyzes the table (setup, not
/// measured).
pub async fn load_backlog(pool: &PgPool, n: i64, aggregates: i64) -> Result<(), BoxError> {
    insert_backlog(pool, n, aggregates).await?;
    sqlx::query("VACUUM ANALYZE event_outbox")
        .execute(pool)
        .await?;
    Ok(())
}

/// Gives the empty table the statistics of a table full of pending rows
/// (10,000 rows analyzed, then deleted and vacuumed). Without them the
/// planner takes a freshly committed backlog for a few rows and claims with a
/// scan of every pending row and a sort (150 ms a claim at 100,000 rows
/// instead of ~1 ms).
pub async fn prime_statistics(pool: &PgPool) -> Result<(), BoxError> {
    insert_backlog(pool, 10_000, 1_000).await?;
    sqlx::query("ANALYZE event_outbox").execute(pool).await?;
    sqlx::query("DELETE FROM event_outbox")
        .execute(pool)
        .await?;
    sqlx::query("VACUUM event_outbox").execute(pool).await?;
    Ok(())
}

/// Inserts `n` pending rows like `load_backlog`, without the vacuum: for
/// relays already running, which start draining at the commit.
pub async fn insert_backlog(pool: &PgPool, n: i64, aggregates: i64) -> Result<(), BoxError> {
    let chunk = 200_000;
    let mut start = 0;
    while start < n {
        let end = (start + chunk).min(n);
        sqlx::query(
            "INSERT INTO event_outbox (id, aggregate_type, aggregate_id, event_type, topic, event_key, event_data)
             SELECT gen_random_uuid(), 'essay', 'essay-' || (i % $3), 'EssayScoredV1', $4, 'essay-' || (i % $3),
                    jsonb_build_object('event_id', gen_random_uuid(), 'event_type', 'EssayScoredV1', 'version', 1,
                        'event_timestamp', now(), 'source_service', 'bench', 'correlation_id', gen_random_uuid(),
                        'aggregate_type', 'essay', 'aggregate_id', 'essay-' || (i % $3),
                        'data', jsonb_build_object('essay_id', 'essay-' || (i % $3), 'seq', i,
                                                   'body', repeat('x', 720)),
                        'metadata', '{}'::jsonb)
             FROM generate_series($1::int8, $2::int8 - 1) i",
        )
        .bind(start)
        .bind(end)
        .bind(aggregates)
        .bind(TOPIC)
        .execute(pool)
        .await?;
        start = end;
    }
    Ok(())
}

/// Wakes the relays listening on the default schema's channel, as the
/// commit of a publish does.
pub async fn wake_relays(pool: &PgPool) -> Result<(), BoxError> {
    sqlx::query("SELECT pg_notify('outbox_wakeup', '')")
        .execute(pool)
        .await?;
    Ok(())
}

/// Ends the checkpoint the load's own WAL started, so a drain measured next
/// starts from a clean checkpoint instead of inheriting one part-way (which
/// hit the 1,000,000-row drain and not the 10,000-row one). Needs superuser
/// or `pg_checkpoint`; without them the drain runs as it is, with a note.
pub async fn checkpoint(pool: &PgPool) {
    if let Err(error) = sqlx::query("CHECKPOINT").execute(pool).await {
        println!("# could not CHECKPOINT before the drain ({error}); it may inherit the load's checkpoint");
    }
}

/// Server-wide WAL counters: (full-page images, bytes, checkpoints).
#[derive(Debug, Clone, Copy, Default)]
pub struct WalCounters {
    pub full_page_images: i64,
    pub bytes: f64,
    pub checkpoints: i64,
}

impl WalCounters {
    /// Now; `None` if the statistics views cannot be read.
    pub async fn read(pool: &PgPool) -> Option<Self> {
        let (full_page_images, bytes, checkpoints): (i64, f64, i64) = sqlx::query_as(
            "SELECT w.wal_fpi, w.wal_bytes::float8, (b.checkpoints_timed + b.checkpoints_req)
             FROM pg_stat_wal w, pg_stat_bgwriter b",
        )
        .fetch_one(pool)
        .await
        .ok()?;
        Some(Self {
            full_page_images,
            bytes,
            checkpoints,
        })
    }

    /// What happened between `self` and `later`.
    pub fn until(self, later: Self) -> Self {
        Self {
            full_page_images: later.full_page_images - self.full_page_images,
            bytes: later.bytes - self.bytes,
            checkpoints: later.checkpoints - self.checkpoints,
        }
    }
}

/// Waits until the relay delivered its first batch (the oldest row is gone),
/// so start-up (process, leases, broker metadata) is not measured; returns
/// that instant.
pub async fn wait_first_delivery(pool: &PgPool, timeout: Duration) -> Result<Instant, BoxError> {
    let first: i64 =
        sqlx::query_scalar("SELECT min(seq) FROM event_outbox WHERE state = 'pending'")
            .fetch_one(pool)
            .await?;
    let started = Instant::now();
    loop {
        let there: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM event_outbox WHERE seq = $1 AND state = 'pending')",
        )
        .bind(first)
        .fetch_one(pool)
        .await?;
        if !there {
            return Ok(Instant::now());
        }
        if started.elapsed() > timeout {
            return Err(format!("nothing was delivered within {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until no pending row is left; returns the time it took.
pub async fn wait_drained(
    pool: &PgPool,
    started: Instant,
    timeout: Duration,
) -> Result<Duration, BoxError> {
    loop {
        // `min(seq)` goes through the partial index on pending rows; an
        // EXISTS was planned as a sequential scan after a large drain
        // (statistics still say a million pending rows), and took 1.5 s.
        let pending: bool = sqlx::query_scalar(
            "SELECT min(seq) IS NOT NULL FROM event_outbox WHERE state = 'pending'",
        )
        .fetch_one(pool)
        .await?;
        if !pending {
            return Ok(started.elapsed());
        }
        if started.elapsed() > timeout {
            return Err(format!("the backlog was not drained within {timeout:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn relay_binary() -> Result<PathBuf, BoxError> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let bin = PathBuf::from(target).join("release/examples/relay_worker");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} is missing: `cargo build --release --example relay_worker` (scripts/bench.sh does)",
            bin.display()
        )
        .into())
    }
}

/// A relay running as its own process (examples/relay_worker, release).
/// Its log filter is `OUTBOX_BENCH_RELAY_LOG` (default `warn`), e.g.
/// `warn,outbox_runtime::relay::worker=debug` for per-batch phase timings.
pub struct RelayProcess {
    child: Child,
}

impl RelayProcess {
    pub fn start(
        db_url: &str,
        bootstrap: &str,
        prefix: &str,
        batch: usize,
    ) -> Result<Self, BoxError> {
        let child = Command::new(relay_binary()?)
            .env("DATABASE_URL", db_url)
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("OUTBOX_TOPIC_PREFIX", prefix)
            .env("OUTBOX_BATCH_SIZE", batch.to_string())
            .env("OUTBOX_POLL_INTERVAL_SECONDS", "0.05")
            .env(
                "RUST_LOG",
                std::env::var("OUTBOX_BENCH_RELAY_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        Ok(Self { child })
    }

    /// Peak resident set size so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// Graceful stop (SIGTERM), as an operator would.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}
