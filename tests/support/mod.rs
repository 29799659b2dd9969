//! Helpers for integration tests against a real Postgres and a real
//! Kafka-protocol broker. Included by each test file with `mod support;`.
#![allow(dead_code)]

use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::ClientConfig;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `DATABASE_URL`, or the machine's Postgres.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Replaces the database name of a Postgres URL.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..].find('/').map(|i| i + scheme_end);
    let host = match path_start {
        Some(i) => &base[..i],
        None => base,
    };
    match query {
        Some(q) => format!("{host}/{db}?{q}"),
        None => format!("{host}/{db}"),
    }
}

/// A database of the test's own, dropped by [`TestDatabase::drop_db`].
pub struct TestDatabase {
    pub pool: PgPool,
    pub url: String,
    name: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn create(label: &str) -> TestDatabase {
        let admin_url = database_url();
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let label: String = label
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(30)
            .collect::<String>()
            .to_lowercase();
        let name = format!("outbox_t_{label}_{suffix}");
        let admin = PgPoolOptions::new().max_connections(1).connect(&admin_url).await.unwrap_or_else(|e| {
            panic!("cannot reach Postgres at DATABASE_URL (or 127.0.0.1:5432): {e}; run the suite through scripts/test.sh")
        });
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let url = with_database(&admin_url, &name);
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await
            .unwrap();
        TestDatabase {
            pool,
            url,
            name,
            admin_url,
        }
    }

    pub async fn drop_db(self) {
        self.pool.close().await;
        if let Ok(admin) = PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.admin_url)
            .await
        {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .execute(&admin)
            .await;
            admin.close().await;
        }
    }
}

/// `KAFKA_BOOTSTRAP_SERVERS`; the suite's broker.
pub fn bootstrap_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS")
        .unwrap_or_else(|_| panic!("KAFKA_BOOTSTRAP_SERVERS is not set: run the suite through scripts/test.sh, which starts a broker"))
}

/// A short unique topic prefix for one test, e.g. `t-commit-1a2b3c4d.`.
pub fn unique(label: &str) -> String {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let label: String = label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    format!("t-{label}-{suffix}.")
}

/// Creates topics (existing ones are fine) and waits until metadata shows them.
pub async fn create_topics(bootstrap: &str, topics: &[String], partitions: i32) {
    let mut cc = ClientConfig::new();
    cc.set("bootstrap.servers", bootstrap);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match outbox::ops::create_topics(&cc, topics, partitions, 1).await {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %e, "creating topics failed; retrying");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("cannot create topics {topics:?}: {e}"),
        }
    }
    let admin: AdminClient<DefaultClientContext> = cc.create().unwrap();
    loop {
        let ok = topics.iter().all(|t| {
            admin
                .inner()
                .fetch_metadata(Some(t), Duration::from_secs(5))
                .map(|m| {
                    m.topics().iter().any(|mt| {
                        mt.name() == t && mt.error().is_none() && !mt.partitions().is_empty()
                    })
                })
                .unwrap_or(false)
        });
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "topics {topics:?} did not appear in metadata"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A message as a consumer received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub payload: serde_json::Value,
}

/// A consumed message as [`Received`]: its headers as text, its payload as
/// JSON (a payload that is not JSON as a JSON string, none as `null`).
pub fn received_from(m: &BorrowedMessage<'_>) -> Received {
    let mut headers = BTreeMap::new();
    if let Some(h) = m.headers() {
        for header in h.iter() {
            let value = header
                .value
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            headers.insert(header.key.to_owned(), value);
        }
    }
    let payload = m
        .payload()
        .map(|p| {
            serde_json::from_slice(p).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(p).into_owned())
            })
        })
        .unwrap_or(serde_json::Value::Null);
    Received {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        headers,
        payload,
    }
}

/// The longest [`Collector::settle`] waits for the stream to go quiet.
pub const SETTLE_AT_MOST: Duration = Duration::from_secs(300);

/// Where a message read from a partition goes, by its offset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Placement {
    /// The next offset, or one past a gap.
    Next,
    /// An offset of an earlier gap.
    Filled,
    /// Read before (after a seek back).
    Seen,
}

/// The offsets read from one partition, and those the broker's fetch
/// skipped.
///
/// Tansu 0.6.0 with in-memory storage advances a partition's high
/// watermark before it stores the batch (tansu-storage `dynostore.rs`,
/// `produce`), and its fetch returns the batches stored at or above the
/// offset asked for: with two producers on one partition, a fetch between
/// the two steps returns a later producer's batch without the earlier one,
/// and a live consumer moves past the earlier one for good (seen once in
/// `shards_move_while_batches_are_claimed_ahead`: every row marked
/// delivered exactly once after its acknowledgement, one message never
/// received). These topics have no transactions and no compaction, so a
/// Kafka broker never leaves a gap in a partition's offsets; the collector
/// reads a gap again from the broker, so it reports what the broker holds.
/// A message the broker does not hold stays missing, and the test fails.
#[derive(Debug, Default)]
pub struct PartitionLog {
    next: Option<i64>,
    missing: BTreeSet<i64>,
    seen: HashSet<i64>,
    last_seek: Option<Instant>,
}

impl PartitionLog {
    pub fn place(&mut self, offset: i64) -> Placement {
        if !self.seen.insert(offset) {
            return Placement::Seen;
        }
        if self.missing.remove(&offset) {
            return Placement::Filled;
        }
        // Every topic here is new: its partitions start at 0.
        let next = self.next.unwrap_or(0);
        self.missing.extend(next..offset);
        self.next = Some(offset + 1);
        Placement::Next
    }

    /// The first skipped offset, at most every 200 ms.
    pub fn seek_to(&mut self) -> Option<i64> {
        let first = *self.missing.first()?;
        if self
            .last_seek
            .is_some_and(|at| at.elapsed() < Duration::from_millis(200))
        {
            return None;
        }
        self.last_seek = Some(Instant::now());
        Some(first)
    }
}

/// A background consumer collecting everything from some topics.
pub struct Collector {
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub fn start(bootstrap: &str, topics: &[String]) -> Collector {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("collector-{}", uuid::Uuid::new_v4()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("topic.metadata.refresh.interval.ms", "1000")
            .set("reconnect.backoff.max.ms", "500")
            .create()
            .expect("consumer");
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).expect("subscribe");
        let received: Arc<Mutex<Vec<Received>>> = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let task = tokio::spawn(async move {
            let mut logs: HashMap<(String, i32), PartitionLog> = HashMap::new();
            loop {
                match consumer.recv().await {
                    Ok(m) => {
                        let log = logs
                            .entry((m.topic().to_owned(), m.partition()))
                            .or_default();
                        let placement = log.place(m.offset());
                        if let Some(offset) = log.seek_to() {
                            eprintln!(
                                "collector: offset {offset} of {}/{} was skipped by the broker's fetch; reading from it again",
                                m.topic(),
                                m.partition()
                            );
                            let _ = consumer.seek(
                                m.topic(),
                                m.partition(),
                                rdkafka::Offset::Offset(offset),
                                Duration::from_secs(1),
                            );
                        }
                        if placement == Placement::Seen {
                            continue;
                        }
                        let r = received_from(&m);
                        let mut sink = sink.lock().unwrap();
                        match placement {
                            // A skipped message, read again: before the
                            // later messages of its partition.
                            Placement::Filled => {
                                let at = sink
                                    .iter()
                                    .position(|o| {
                                        o.topic == r.topic
                                            && o.partition == r.partition
                                            && o.offset > r.offset
                                    })
                                    .unwrap_or(sink.len());
                                sink.insert(at, r);
                            }
                            _ => sink.push(r),
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "collector consumer error; continuing");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Collector { received, task }
    }

    pub fn snapshot(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Waits until at least `n` messages arrived; panics on timeout.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let have = self.count();
            if have >= n {
                return self.snapshot();
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {n} messages; {have} arrived"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until nothing new arrived for `quiet`, then returns everything.
    /// Panics if messages keep arriving for [`SETTLE_AT_MOST`]: a relay that
    /// delivers the same rows again and again must fail the test, not hang
    /// it.
    pub async fn settle(&self, quiet: Duration) -> Vec<Received> {
        let started = Instant::now();
        let mut last = self.count();
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(
                started.elapsed() < SETTLE_AT_MOST,
                "messages kept arriving for {SETTLE_AT_MOST:?} ({last} so far): \
                 something is delivered again and again"
            );
            let now = self.count();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                return self.snapshot();
            }
        }
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tansu_binary() -> PathBuf {
    if let Ok(bin) = std::env::var("TANSU_BIN") {
        return PathBuf::from(bin);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("tansu");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let candidate = PathBuf::from(home).join(".cargo/bin/tansu");
    assert!(
        candidate.is_file(),
        "the tansu broker is not installed: run scripts/test.sh (it installs it) or set TANSU_BIN"
    );
    candidate
}

/// A broker process of the test's own, for tests that stop and start it.
pub struct TansuBroker {
    child: Option<Child>,
    port: u16,
}

impl TansuBroker {
    pub fn start(port: Option<u16>) -> TansuBroker {
        let port = port.unwrap_or_else(free_port);
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(tansu_binary())
            .args([
                "broker",
                "--storage-engine",
                "memory://tansu/",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tansu starts");
        let broker = TansuBroker {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen on {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        broker
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Test logging (RUST_LOG, default info).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// A Postgres server of the test's own (a throwaway cluster), for tests that
/// restart the database. Runs as user `postgres` when the suite runs as root
/// (the server refuses root).
pub struct PrivatePostgres {
    dir: PathBuf,
    port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}

fn pg_command(tool: &str) -> Command {
    let path = format!("{PG_BIN}/{tool}");
    assert!(std::path::Path::new(&path).exists(), "{path} is missing: install the Debian package postgresql-15 (scripts/test.sh does when needed)");
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", &path]);
        c
    } else {
        Command::new(path)
    }
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let dir = std::env::temp_dir().join(format!(
            "outbox-pg-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["postgres:postgres", dir.to_str().unwrap()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "cannot chown the test cluster's directory to postgres");
        }
        let data = dir.join("data");
        let out = pg_command("initdb")
            .args([
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = PrivatePostgres {
            dir,
            port: free_port(),
        };
        pg.pg_ctl("start");
        pg
    }

    fn pg_ctl(&self, action: &str) {
        let data = self.dir.join("data");
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {}",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        let out = pg_command("pg_ctl")
            .args([
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-m",
                "fast",
                "-w",
                action,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl {action} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn stop(&self) {
        self.pg_ctl("stop");
    }

    pub fn start_again(&self) {
        self.pg_ctl("start");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = pg_command("pg_ctl")
            .args([
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits until `handle`'s consumer has finished (handled, skipped or
/// dead-lettered) `n` messages; fails the test after 90 s with its stats.
pub async fn wait_finished(
    handle: &outbox::consume::ConsumerHandle,
    n: u64,
) -> outbox::consume::ConsumerStats {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let stats = handle.stats();
        if stats.finished() >= n {
            return stats;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "consumer finished {} of {n} messages in 90 s: {stats:?}",
            stats.finished()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
