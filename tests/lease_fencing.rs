//! Lease fencing against a real PostgreSQL and a Kafka-protocol broker
//! (librdkafka's in-process mock cluster): a relay instance that stalls past
//! its shard leases while another instance takes its shards neither claims
//! nor marks rows of those shards afterwards, and nothing is lost, reordered
//! or duplicated beyond the documented bound.
//!
//! Five stalls:
//!
//! - relay A's claims and marks wait behind `LOCK TABLE event_outbox` while
//!   the lock is held, in real time, until A's leases have lapsed and relay B
//!   took them (the relay's `statement_timeout` of a third of the TTL ends
//!   each wait, so A backs off until its leases lapse);
//! - relay A's mark waits behind `LOCK TABLE event_outbox IN SHARE MODE`
//!   while its leases are taken by B: the database's view of A's lease is
//!   aged (as if that wait had outlasted the TTL), so A's own clock still
//!   says its lease holds and only the database-side fence can refuse the
//!   mark;
//! - relay A, a process of its own, is stopped with SIGSTOP mid-backlog,
//!   stays stopped until B owns every shard, and is continued;
//! - the same stop, with B stopped before A is continued: A takes its shards
//!   back at new epochs while it still holds a batch claimed ahead under the
//!   leases B took, and must drop it (read from A's log at debug: no batch A
//!   produced afterwards is that claim);
//! - relay A, a process of its own, is stopped inside its lease maintenance
//!   transaction with every lease row locked by its renewal: the relay's
//!   `idle_in_transaction_session_timeout` ends its session, and B takes
//!   every shard while A is still stopped.
//!
//! Each scenario checks, from a consumer of the topic:
//!
//! - every committed event arrives;
//! - the first copies of each aggregate's events arrive in order (numbered
//!   per aggregate in the payload; another copy of an event already read is
//!   a duplicate, not a reordering);
//! - duplicates stay within two batches each time an instance lost its
//!   shards (its batch produced but not yet marked, and the one produced
//!   meanwhile), the losses counted from the lease history;
//!
//! from audit triggers installed in the test's database, that no relay
//! instance updated or deleted an outbox row of a shard whose lease another
//! instance held at the time (see [`stale_marks`]; a control row deleted
//! under a relay's connection name afterwards must be counted); and, from
//! the relays' logs, that none of their connections fell out of step with
//! the server (see [`check_sync`]). Each scenario prints one `scenario=…`
//! tally line (also appended to `OUTBOX_TALLY_FILE` when set).

mod fixtures;
mod mock_broker;
mod support;

use chrono::{DateTime, Utc};
use fixtures::relay_process::RelayProcess;
use fixtures::tallies::{all_arrived, print_tally_line, Delivery};
use mock_broker::PartitionReader;
use outbox::{Outbox, OutboxEvent, Relay, RelayConfig, RelayHandle};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::Received;
use uuid::Uuid;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "lease-fencing.essay-marked.v1", aggregate = "essay")]
struct EssayMarkedV1 {
    #[outbox_event(aggregate_id)]
    essay_id: String,
    seq: i64,
}

const AGGREGATES: usize = 40;
const PARTITIONS: i32 = 4;
/// A mark by an instance whose lease was taken less than this long before
/// its row trigger fired is not counted as stale: the fence is read from the
/// statement's snapshot, so a mark whose statement started just before the
/// takeover committed may finish just after it (its rows were delivered by
/// that instance, which still held the lease when the statement began).
const TAKEOVER_GRACE: Duration = Duration::from_millis(250);
const DELIVERED_WITHIN: Duration = Duration::from_secs(120);
const QUIET: Duration = Duration::from_secs(2);

/// The scenarios share the machine's two cores and their timing matters:
/// they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Everything the in-process relays logged during the current scenario.
static LOG: Mutex<String> = Mutex::new(String::new());

struct CaptureWriter;

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        LOG.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push_str(&text);
        eprint!("{text}");
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Logging for the in-process relays, captured in [`LOG`] (RUST_LOG,
/// default info).
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_ansi(false)
        .with_writer(|| CaptureWriter)
        .try_init();
    LOG.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clear();
}

fn captured_log() -> String {
    LOG.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

/// Log lines containing `what` and, when given, `instance`.
fn log_lines(log: &str, what: &str, instance: Option<Uuid>) -> usize {
    let instance = instance.map(|id| id.to_string());
    log.lines()
        .filter(|line| line.contains(what))
        .filter(|line| instance.as_deref().map_or(true, |id| line.contains(id)))
        .count()
}

/// What a relay logs when it notices it lost shards, as `(label, text)`.
const NOTICES: [(&str, &str); 4] = [
    ("marks_refused", "marks were refused"),
    ("leases_ran_short", "leases ran short"),
    ("lease_lapsed", "lease lapsed"),
    ("gave_up_marking", "gave up marking"),
];

/// The warnings and errors of `log`, without librdkafka's configuration
/// warnings and sqlx's slow-statement warnings, at most `limit`.
fn notable(log: &str, limit: usize) -> String {
    log.lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| !l.contains("CONFWARN") && !l.contains("slow statement"))
        .take(limit)
        .collect::<Vec<_>>()
        .join("\n")
}

/// What sqlx logs or returns when a connection's replies no longer line up
/// with its requests (a reply left unread on a pooled connection).
const DESYNC: [&str; 3] = [
    "Postgres protocol error",
    "unexpected connection status",
    "there is already a transaction in progress",
];

/// A relay connection out of step with its server is a defect in itself,
/// whatever the fence then catches: its next statements fail, or run inside
/// a transaction the relay does not know it opened (renewals and marks left
/// uncommitted, row locks held), so the relay loses its shards again and
/// delivers whole batches again.
fn check_sync(log: &str, problems: &mut Vec<String>) -> usize {
    let lines: Vec<&str> = log
        .lines()
        .filter(|line| DESYNC.iter().any(|what| line.contains(what)))
        .collect();
    if !lines.is_empty() {
        problems.push(format!(
            "relay connections lost protocol synchronization ({} log lines), e.g.\n  {}",
            lines.len(),
            lines[..lines.len().min(3)].join("\n  ")
        ));
    }
    lines.len()
}

fn notices(log: &str, instance: Option<Uuid>) -> String {
    NOTICES
        .iter()
        .map(|(label, text)| format!("{label}={}", log_lines(log, text, instance)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Audit tables and triggers: every UPDATE or DELETE of an outbox row with
/// the `application_name` of the connection that made it (a relay's is
/// `outbox-relay/<instance id>`), and every change of a lease's owner or
/// epoch; times by the database's `clock_timestamp()`.
const AUDIT: &str = r#"
CREATE TABLE fence_audit_mark (
    id    bigserial   PRIMARY KEY,
    seq   bigint      NOT NULL,
    shard smallint    NOT NULL,
    op    text        NOT NULL,
    app   text        NOT NULL,
    at    timestamptz NOT NULL
);
CREATE FUNCTION fence_audit_mark() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fence_audit_mark (seq, shard, op, app, at)
    VALUES (OLD.seq, OLD.shard, TG_OP, current_setting('application_name'), clock_timestamp());
    RETURN NULL;
END
$$;
CREATE TRIGGER fence_audit_mark AFTER UPDATE OR DELETE ON event_outbox
    FOR EACH ROW EXECUTE FUNCTION fence_audit_mark();

CREATE TABLE fence_audit_lease (
    id          bigserial   PRIMARY KEY,
    shard       smallint    NOT NULL,
    old_owner   uuid,
    new_owner   uuid,
    old_epoch   bigint      NOT NULL,
    new_epoch   bigint      NOT NULL,
    old_expires timestamptz NOT NULL,
    at          timestamptz NOT NULL,
    xid         bigint      NOT NULL
);
CREATE INDEX fence_audit_lease_shard_at ON fence_audit_lease (shard, at);
CREATE FUNCTION fence_audit_lease() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO fence_audit_lease (shard, old_owner, new_owner, old_epoch, new_epoch, old_expires, at, xid)
    VALUES (NEW.shard, OLD.owner, NEW.owner, OLD.epoch, NEW.epoch, OLD.expires_at, clock_timestamp(),
            txid_current());
    RETURN NULL;
END
$$;
CREATE TRIGGER fence_audit_lease AFTER UPDATE ON event_outbox_lease
    FOR EACH ROW
    WHEN (OLD.owner IS DISTINCT FROM NEW.owner OR OLD.epoch IS DISTINCT FROM NEW.epoch)
    EXECUTE FUNCTION fence_audit_lease();
"#;

/// A mark (UPDATE or DELETE of an outbox row) by a relay instance on a row
/// whose shard's lease another instance (or none) held.
#[derive(sqlx::FromRow)]
struct StaleMark {
    seq: i64,
    shard: i16,
    op: String,
    marker: Uuid,
    owner_then: Option<Uuid>,
    at: String,
}

impl std::fmt::Display for StaleMark {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of seq {} (shard {}) by {} at {}, lease then held by {:?}",
            self.op, self.seq, self.shard, self.marker, self.at, self.owner_then
        )
    }
}

/// The relays' stale marks: marks whose shard's lease, by the lease audit,
/// belonged to another instance (or to none) both when the mark's row
/// trigger fired and [`TAKEOVER_GRACE`] before. A lease only leaves its
/// owner by the owner's own release (between batches, after its marks are
/// written) or by another instance taking it after it expired, so such a
/// mark is one the fence should have refused.
async fn stale_marks(pool: &PgPool) -> Vec<StaleMark> {
    sqlx::query_as(
        "SELECT m.seq, m.shard, m.op, m.marker, m.owner_then, m.at::text AS at FROM (
             SELECT a.seq, a.shard, a.op, a.at,
                    substr(a.app, 14)::uuid AS marker,
                    (SELECT l.new_owner FROM fence_audit_lease l
                      WHERE l.shard = a.shard AND l.at <= a.at
                      ORDER BY l.at DESC, l.id DESC LIMIT 1) AS owner_then,
                    (SELECT l.new_owner FROM fence_audit_lease l
                      WHERE l.shard = a.shard AND l.at <= a.at - make_interval(secs => $1)
                      ORDER BY l.at DESC, l.id DESC LIMIT 1) AS owner_before
             FROM fence_audit_mark a
             WHERE a.app ~ '^outbox-relay/[0-9a-f-]{36}$'
         ) m
         WHERE m.owner_then IS DISTINCT FROM m.marker
           AND m.owner_before IS DISTINCT FROM m.marker
         ORDER BY m.at",
    )
    .bind(TAKEOVER_GRACE.as_secs_f64())
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Marks per `application_name`, e.g. `outbox-relay/<id>=1234`.
async fn marks_by_app(pool: &PgPool) -> String {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT app, count(*) FROM fence_audit_mark GROUP BY app ORDER BY app")
            .fetch_all(pool)
            .await
            .unwrap();
    rows.iter()
        .map(|(app, n)| format!("{app}={n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Leases `to` took from `from` after they expired (not after `from` gave
/// them back): how many, and when the first was taken.
async fn takeovers(pool: &PgPool, from: Uuid, to: Uuid) -> (i64, Option<DateTime<Utc>>) {
    sqlx::query_as(
        "SELECT count(*), min(at) FROM fence_audit_lease WHERE old_owner = $1 AND new_owner = $2",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Times an instance lost shards to another: the transactions that took
/// leases from another owner (at least 1, for the bound on duplicates).
async fn loss_events(pool: &PgPool) -> usize {
    let events: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT xid) FROM fence_audit_lease
         WHERE old_owner IS NOT NULL AND new_owner IS NOT NULL AND old_owner <> new_owner",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    usize::try_from(events).unwrap_or(0).max(1)
}

/// Marks by `marker` after `since`.
async fn marks_after(pool: &PgPool, marker: Uuid, since: DateTime<Utc>) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM fence_audit_mark WHERE app = $1 AND at > $2")
        .bind(application_name(marker))
        .bind(since)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Shards whose lease `owner` holds now, by the database's clock.
async fn valid_leases(pool: &PgPool, owner: Uuid) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM event_outbox_lease WHERE owner = $1 AND expires_at > now()",
    )
    .bind(owner)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn db_now(pool: &PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(pool)
        .await
        .unwrap()
}

fn application_name(instance: Uuid) -> String {
    format!("outbox-relay/{instance}")
}

/// Whether `owner` holds every shard's lease within `timeout`.
async fn holds_every_shard(pool: &PgPool, owner: Uuid, timeout: Duration) -> bool {
    wait_until(timeout, || async {
        valid_leases(pool, owner).await == outbox::relay::SHARDS
    })
    .await
}

/// The instance id relay process `a` logs at start, waited for up to 60 s.
async fn logged_instance_id(a: &RelayProcess) -> Uuid {
    let mut a_id = None;
    let ready = wait_until(Duration::from_secs(60), || {
        a_id = a.instance_id();
        let done = a_id.is_some();
        async move { done }
    })
    .await;
    match (ready, a_id) {
        (true, Some(id)) => id,
        _ => panic!("relay A did not log its instance id:\n{}", a.log()),
    }
}

/// Relay A's leases taken by relay B after they expired, read once both
/// are stopped.
struct Takeover {
    count: i64,
    /// When the first was taken.
    first: Option<DateTime<Utc>>,
    /// A's marks after the first was taken (-1: none was).
    a_marks_after: i64,
}

impl Takeover {
    /// The first lease B took from A must have been taken between A's stop
    /// and its continuation.
    fn check_while_stopped(
        &self,
        stopped_at: DateTime<Utc>,
        continued_at: DateTime<Utc>,
        problems: &mut Vec<String>,
    ) {
        match self.first {
            Some(at) if at > stopped_at && at < continued_at => {}
            other => problems.push(format!(
                "B did not take A's leases while A was stopped ({stopped_at} .. {continued_at}): \
                 first takeover {other:?}"
            )),
        }
    }

    async fn read(pool: &PgPool, a: Uuid, b: Uuid) -> Takeover {
        let (count, first) = takeovers(pool, a, b).await;
        let a_marks_after = match first {
            Some(at) => marks_after(pool, a, at).await,
            None => -1,
        };
        Takeover {
            count,
            first,
            a_marks_after,
        }
    }
}

/// The audit's summary of a scenario, once its relays are stopped.
struct Audit {
    /// See [`marks_by_app`].
    by_app: String,
    /// See [`loss_events`].
    losses: usize,
    /// See [`check_marks`].
    stale: usize,
}

impl Audit {
    /// Reads the summary, [`check_marks`] last (its control row, deleted as
    /// `instance`, is a mark by `instance` too).
    async fn read(s: &Setup, instance: Uuid, problems: &mut Vec<String>) -> Audit {
        let by_app = marks_by_app(&s.db.pool).await;
        let losses = loss_events(&s.db.pool).await;
        let stale = check_marks(s, instance, problems).await;
        Audit {
            by_app,
            losses,
            stale,
        }
    }
}

/// Polls `check` every 50 ms until it holds, at most `timeout`.
async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A scenario's database (migrated, with the audit triggers), mock broker
/// with the topic, consumer and outbox handle.
struct Setup {
    db: support::TestDatabase,
    cluster: MockCluster<'static, DefaultProducerContext>,
    bootstrap: String,
    prefix: String,
    reader: PartitionReader,
    outbox: Outbox,
}

/// Relays A and B of a lock scenario and their instance ids: A running, B
/// built but not started yet.
struct RelaysAB {
    a: RelayHandle,
    a_id: Uuid,
    b: Relay,
    b_id: Uuid,
}

impl Setup {
    /// Relay A as a process of its own with batches of `batch`, the leases
    /// of 6 s and the message timeout of 2 s of the relay fixture, and
    /// `settings` after those.
    fn relay_process(&self, batch: usize, settings: &[(&str, &str)]) -> RelayProcess {
        let batch = batch.to_string();
        let mut all = vec![
            ("OUTBOX_BATCH_SIZE", batch.as_str()),
            ("OUTBOX_LEASE_TTL_SECONDS", "6"),
            ("OUTBOX_MESSAGE_TIMEOUT_SECONDS", "2"),
        ];
        all.extend_from_slice(settings);
        RelayProcess::start(&self.db.url, &self.bootstrap, &self.prefix, &all)
    }

    async fn new(label: &str) -> Setup {
        init_logs();
        let prefix = support::unique(&format!("fence-{label}"));
        let topics = fixtures::prefixed_topics(&prefix);
        assert_eq!(topics.len(), 1, "one event type, one topic: {topics:?}");
        let cluster = MockCluster::new(1).expect("mock cluster");
        cluster
            .create_topic(&topics[0], PARTITIONS, 1)
            .expect("mock topic");
        let bootstrap = cluster.bootstrap_servers();
        let db = support::TestDatabase::create(&format!("fence_{label}")).await;
        outbox::migrate(&db.pool).await.unwrap();
        sqlx::raw_sql(AUDIT).execute(&db.pool).await.unwrap();
        let reader = PartitionReader::start(&bootstrap, &topics, PARTITIONS);
        let outbox = Outbox::new(db.pool.clone(), "svc");
        Setup {
            db,
            cluster,
            bootstrap,
            prefix,
            reader,
            outbox,
        }
    }

    /// Relay settings: batches of `batch_size`, leases of `ttl`, a message
    /// timeout of 2 s.
    fn config(&self, batch_size: usize, ttl: Duration) -> RelayConfig {
        let mut config = fixtures::relay_config(&self.prefix);
        config.batch_size = batch_size;
        config.lease_ttl = ttl;
        config.message_timeout = Duration::from_secs(2);
        config
    }

    /// An in-process relay, not started yet. One produce request in flight
    /// per connection: the mock broker checks idempotent sequence numbers
    /// only for transactional producers (see `tests/producer_faults.rs`).
    async fn relay(&self, config: RelayConfig) -> Relay {
        let mut kafka = fixtures::kafka(&self.bootstrap);
        kafka.set("max.in.flight.requests.per.connection", "1");
        Relay::new(self.db.pool.clone(), kafka, config)
            .await
            .unwrap()
    }

    /// Scenarios 1 and 2 up to the lock: `per_aggregate` events of every
    /// aggregate committed, relays A and B with batches of `batch` and
    /// leases of `ttl` (only A started), and `lock_after` events consumed;
    /// the committed event ids and the relays.
    async fn until_the_lock(
        &self,
        per_aggregate: i64,
        batch: usize,
        ttl: Duration,
        lock_after: usize,
        problems: &mut Vec<String>,
    ) -> (Vec<String>, RelaysAB) {
        let committed = publish(self.outbox.clone(), 0..per_aggregate, 2, None).await;
        let a = self.relay(self.config(batch, ttl)).await;
        let b = self.relay(self.config(batch, ttl)).await;
        let (a_id, b_id) = (a.instance_id(), b.instance_id());
        let a = a.spawn();
        self.wait_for_count(lock_after, "the lock", problems).await;
        (committed, RelaysAB { a, a_id, b, b_id })
    }

    /// Waits until `n` messages arrived, at most 60 s; a problem if they
    /// did not arrive before `what` (e.g. "the lock").
    async fn wait_for_count(&self, n: usize, what: &str, problems: &mut Vec<String>) {
        let arrived = self
            .reader
            .wait_until(Duration::from_secs(60), |m| m.len() >= n)
            .await;
        if arrived.is_err() {
            problems.push(format!("{n} events did not arrive before {what}"));
        }
    }

    /// Waits until every event of `committed` arrived, at most
    /// [`DELIVERED_WITHIN`], then until nothing new arrived for [`QUIET`],
    /// at most 30 s; what arrived. A wait that runs out is a problem, the
    /// first saying since when (`after`, e.g. "after the last commit") the
    /// events were due.
    async fn drain(
        &self,
        committed: &[String],
        after: &str,
        problems: &mut Vec<String>,
    ) -> Vec<Received> {
        let delivered = self
            .reader
            .wait_until(DELIVERED_WITHIN, all_arrived(committed))
            .await;
        if delivered.is_err() {
            problems.push(format!(
                "not every event arrived within {DELIVERED_WITHIN:?} {after}"
            ));
        }
        match self.reader.settle(QUIET, Duration::from_secs(30)).await {
            Ok(consumed) => consumed,
            Err(consumed) => {
                problems.push("messages kept arriving for 30 s after delivery".into());
                consumed
            }
        }
    }

    /// Scenarios 1 and 2 once the lock is released: every event delivered
    /// and the stream quiet (see [`Setup::drain`]), then relays B and A
    /// stopped; what arrived.
    async fn after_the_lock(
        &self,
        committed: &[String],
        a: RelayHandle,
        b: RelayHandle,
        problems: &mut Vec<String>,
    ) -> Vec<Received> {
        let consumed = self
            .drain(committed, "after the lock was released", problems)
            .await;
        stop_relay(b, "B", problems).await;
        stop_relay(a, "A", problems).await;
        consumed
    }

    /// The end of a scenario, once its relays are stopped: the audit (see
    /// [`Audit::read`]), then the relays' log (read by `log`) checked for
    /// connections out of step (see [`check_sync`]), and everything torn
    /// down; the tally of `consumed` against `committed`, and the log.
    async fn conclude(
        self,
        committed: &[String],
        consumed: &[Received],
        instance: Uuid,
        log: impl FnOnce() -> String,
        problems: &mut Vec<String>,
    ) -> (Tally, String) {
        let audit = Audit::read(&self, instance, problems).await;
        let log = log();
        let desync = check_sync(&log, problems);
        self.tear_down().await;
        let tally = Tally {
            delivery: Delivery::of(committed, consumed),
            audit,
            desync,
        };
        (tally, log)
    }

    /// Stops the consumer, drops the database and the broker.
    async fn tear_down(self) {
        self.reader.stop().await;
        self.db.drop_db().await;
        drop(self.cluster);
    }
}

/// `LOCK TABLE event_outbox IN … MODE`, taken by a transaction of its own
/// and held until [`TableLock::release`].
struct TableLock {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    /// When it was taken, by the database's clock.
    at: DateTime<Utc>,
    /// Rows pending once it was taken.
    pending: i64,
}

impl TableLock {
    /// Takes the lock in `mode` (e.g. `SHARE`).
    async fn take(pool: &PgPool, mode: &str) -> TableLock {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query(&format!("LOCK TABLE event_outbox IN {mode} MODE"))
            .execute(&mut *tx)
            .await
            .unwrap();
        let at = db_now(pool).await;
        let pending = fixtures::pending_rows(&mut *tx).await;
        TableLock { tx, at, pending }
    }

    /// Commits the lock's transaction; when, by the database's clock (read
    /// just before).
    async fn release(self, pool: &PgPool) -> DateTime<Utc> {
        let released_at = db_now(pool).await;
        self.tx.commit().await.unwrap();
        released_at
    }
}

/// Commits events `seqs` of every aggregate, `per_tx` sequence numbers of
/// every aggregate per transaction, one transaction every `every` (none:
/// back to back); the committed event ids.
async fn publish(
    outbox: Outbox,
    seqs: std::ops::Range<i64>,
    per_tx: i64,
    every: Option<Duration>,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut pace = every.map(tokio::time::interval);
    let mut first = seqs.start;
    while first < seqs.end {
        if let Some(pace) = pace.as_mut() {
            pace.tick().await;
        }
        let last = (first + per_tx).min(seqs.end);
        let events: Vec<EssayMarkedV1> = (first..last)
            .flat_map(|seq| {
                (0..AGGREGATES).map(move |a| EssayMarkedV1 {
                    essay_id: format!("essay-{a}"),
                    seq,
                })
            })
            .collect();
        let published = fixtures::commit_all(&outbox, &events).await;
        ids.extend(published.iter().map(ToString::to_string));
        first = last;
    }
    ids
}

/// What a scenario delivered, from the consumer's view, what the audit
/// found, and the relays' log lines out of step (see [`check_sync`]).
struct Tally {
    delivery: Delivery,
    audit: Audit,
    desync: usize,
}

impl Tally {
    /// Prints the tally line (and appends it to `OUTBOX_TALLY_FILE`), with
    /// `extra` after the counts, then the marks per connection and the
    /// warnings of the relays' `log`.
    fn report(&self, name: &str, extra: &str, log: &str) {
        print_tally_line(&format!(
            "{} stale_marks={} losses={} desync_lines={} {extra}",
            self.delivery.tally_line(&format!("lease_fencing_{name}")),
            self.audit.stale,
            self.audit.losses,
            self.desync,
        ));
        println!(
            "marks by application_name: {}\nrelay warnings:\n{}",
            self.audit.by_app,
            notable(log, 20)
        );
    }

    /// The checks that failed, duplicates allowed up to two batches of
    /// `batch` per loss of shards.
    fn problems(&self, batch: usize) -> Vec<String> {
        let losses = self.audit.losses;
        let duplicates_at_most = 2 * batch * losses;
        let mut problems: Vec<String> = self.delivery.missing_problem().into_iter().collect();
        if self.delivery.order_violations > 0 {
            problems.push(format!(
                "{} first copies arrived after a later event of their aggregate, e.g. \
                 (aggregate, seq, after seq) {:?}",
                self.delivery.order_violations, self.delivery.order_examples
            ));
        }
        if self.delivery.duplicates > duplicates_at_most {
            problems.push(format!(
                "{} duplicates, more than {duplicates_at_most} (two batches of {batch} for each \
                 of the {losses} times an instance lost shards to another)",
                self.delivery.duplicates
            ));
        }
        problems
    }
}

/// Stops an in-process relay, at most 30 s.
async fn stop_relay(relay: RelayHandle, name: &str, problems: &mut Vec<String>) {
    match tokio::time::timeout(Duration::from_secs(30), relay.shutdown()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => problems.push(format!("relay {name} failed: {e}")),
        Err(_) => problems.push(format!("relay {name} did not stop within 30 s")),
    }
}

/// The audit's verdict, once the relays are stopped: the stale marks as
/// problems, and their count. Then a control: a row deleted over a
/// connection named as `instance`'s relay connections are, while `instance`
/// holds no lease, must be counted as one more stale mark (it is what a mark
/// let through by a missing fence would look like).
async fn check_marks(s: &Setup, instance: Uuid, problems: &mut Vec<String>) -> usize {
    let pool = &s.db.pool;
    let stale = stale_marks(pool).await;
    // Past the grace after the relays gave their leases back on shutdown.
    tokio::time::sleep(TAKEOVER_GRACE * 2).await;
    let control = fixtures::commit_all(
        &s.outbox,
        &[EssayMarkedV1 {
            essay_id: "audit-control".into(),
            seq: 0,
        }],
    )
    .await;
    let options = PgConnectOptions::from_str(&s.db.url)
        .unwrap()
        .application_name(&application_name(instance));
    let mut conn = PgConnection::connect_with(&options).await.unwrap();
    sqlx::query("DELETE FROM event_outbox WHERE id = $1")
        .bind(control[0])
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let with_control = stale_marks(pool).await.len();
    if with_control != stale.len() + 1 {
        problems.push(format!(
            "the audit counted {} stale marks after a control DELETE as {instance}, expected {}",
            with_control,
            stale.len() + 1
        ));
    }
    if !stale.is_empty() {
        let examples: Vec<String> = stale.iter().take(5).map(ToString::to_string).collect();
        problems.push(format!(
            "{} marks by an instance on rows of shards another instance held, e.g.\n  {}",
            stale.len(),
            examples.join("\n  ")
        ));
    }
    stale.len()
}

/// Scenario 1: relay A drains a backlog when `LOCK TABLE event_outbox IN
/// ACCESS EXCLUSIVE MODE` is taken from another connection and held until
/// A's leases have lapsed and relay B, started meanwhile, took them. A's
/// claims and marks wait on the lock until its `statement_timeout` cancels
/// them; A backs off, longer after each failure, until it no longer renews
/// its leases in time. B takes them over by expiry while the table is still
/// locked. The lock is then released and both relays run until everything
/// is delivered. Among the cancelled statements is A's claim ahead (a
/// `COPY`): its connection must come back usable (see [`check_sync`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_blocked_behind_a_table_lock_past_its_lease_ttl_loses_its_shards_cleanly() {
    const BATCH: usize = 20;
    const PER_AGGREGATE: i64 = 150;
    const TTL: Duration = Duration::from_secs(6);
    const LOCK_AFTER: usize = 400;
    let _serial = SERIAL.lock().await;
    let s = Setup::new("lock").await;
    let mut problems = Vec::new();

    let (committed, RelaysAB { a, a_id, b, b_id }) = s
        .until_the_lock(PER_AGGREGATE, BATCH, TTL, LOCK_AFTER, &mut problems)
        .await;
    let lock = TableLock::take(&s.db.pool, "ACCESS EXCLUSIVE").await;
    let (locked_at, pending_at_lock) = (lock.at, lock.pending);
    if pending_at_lock == 0 {
        problems.push("the backlog was drained before the lock; raise PER_AGGREGATE".into());
    }
    // A renews between its cancelled statements until its back-off outlasts
    // the lease.
    let lapsed = wait_until(Duration::from_secs(120), || async {
        valid_leases(&s.db.pool, a_id).await == 0
    })
    .await;
    if !lapsed {
        problems.push("A's leases did not lapse within 120 s of the lock".into());
    }
    let b = b.spawn();
    let taken = wait_until(Duration::from_secs(60), || async {
        takeovers(&s.db.pool, a_id, b_id).await.0 > 0
    })
    .await;
    if !taken {
        problems.push("B took none of A's expired leases within 60 s".into());
    }
    let b_leases_at_release = valid_leases(&s.db.pool, b_id).await;
    let released_at = lock.release(&s.db.pool).await;

    let consumed = s.after_the_lock(&committed, a, b, &mut problems).await;

    let takeover = Takeover::read(&s.db.pool, a_id, b_id).await;
    match takeover.first {
        Some(at) if at > locked_at && at < released_at => {}
        other => problems.push(format!(
            "B did not take A's leases while the table was locked ({locked_at} .. {released_at}): \
             first takeover {other:?}"
        )),
    }
    let (tally, log) = s
        .conclude(&committed, &consumed, a_id, captured_log, &mut problems)
        .await;
    tally.report(
        "table_lock_past_ttl",
        &format!(
            "pending_at_lock={pending_at_lock} lock_held_s={:.1} leases_taken_by_b={} \
             b_leases_at_release={b_leases_at_release} a_marks_after_first_takeover={} \
             a_{} statement_timeouts={}",
            (released_at - locked_at).num_milliseconds() as f64 / 1e3,
            takeover.count,
            takeover.a_marks_after,
            notices(&log, Some(a_id)),
            log_lines(&log, "statement timeout", None),
        ),
        &log,
    );
    problems.extend(tally.problems(BATCH));
    assert!(
        problems.is_empty(),
        "table lock past the TTL:\n- {}",
        problems.join("\n- ")
    );
}

/// Whether `instance` has a statement matching `pattern` (a regular
/// expression on `pg_stat_activity.query`) waiting on a lock.
async fn waiting(pool: &PgPool, instance: Uuid, pattern: &str) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                        WHERE application_name = $1 AND wait_event_type = 'Lock' AND query ~* $2)",
    )
    .bind(application_name(instance))
    .bind(pattern)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Scenario 1, with the fence alone in the way: relay A drains a backlog
/// when `LOCK TABLE event_outbox IN SHARE MODE` is taken from another
/// connection. That lock lets claims through (`SELECT`, `COPY`) and stops
/// every mark (`DELETE`, `UPDATE`), so A soon has the mark of a delivered
/// batch waiting on it. While it waits, A's leases and heartbeat are aged in
/// the database, as if the wait had outlasted the TTL (the relay's
/// `statement_timeout` ends real waits sooner), and relay B takes every
/// shard. When the lock is released A's waiting mark runs under the epochs
/// B replaced, while A's own clock still says its leases hold: only the
/// fence can refuse it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_shards_are_taken_while_its_mark_waits_on_a_lock_has_it_refused() {
    const BATCH: usize = 100;
    const PER_AGGREGATE: i64 = 150;
    /// 4 s of `statement_timeout`: the lock is released well within it.
    const TTL: Duration = Duration::from_secs(12);
    const LOCK_AFTER: usize = 500;
    let _serial = SERIAL.lock().await;
    let s = Setup::new("aged").await;
    let mut problems = Vec::new();

    let (committed, RelaysAB { a, a_id, b, b_id }) = s
        .until_the_lock(PER_AGGREGATE, BATCH, TTL, LOCK_AFTER, &mut problems)
        .await;

    let lock = TableLock::take(&s.db.pool, "SHARE").await;
    let pending_at_lock = lock.pending;
    let mark_waits = wait_until(Duration::from_secs(2), || async {
        waiting(&s.db.pool, a_id, r"^\s*(DELETE|UPDATE)").await
    })
    .await;
    if !mark_waits {
        problems.push(format!(
            "A had no mark waiting on the lock within 2 s ({pending_at_lock} rows pending)"
        ));
    }
    sqlx::query(
        "UPDATE event_outbox_lease SET expires_at = now() - interval '1 second' WHERE owner = $1",
    )
    .bind(a_id)
    .execute(&s.db.pool)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE event_outbox_relay SET heartbeat_at = now() - make_interval(secs => $2 + 1)
         WHERE instance_id = $1",
    )
    .bind(a_id)
    .bind(TTL.as_secs_f64())
    .execute(&s.db.pool)
    .await
    .unwrap();
    let b = b.spawn();
    if !holds_every_shard(&s.db.pool, b_id, Duration::from_secs(5)).await {
        problems.push("B did not take every shard within 5 s of A's leases expiring".into());
    }
    // A's waiting mark then runs well after the takeover.
    tokio::time::sleep(TAKEOVER_GRACE * 3).await;
    let still_waiting = waiting(&s.db.pool, a_id, r"^\s*(DELETE|UPDATE)").await;
    let released_at = lock.release(&s.db.pool).await;
    let refused_logged = wait_until(Duration::from_secs(10), || {
        let done = log_lines(&captured_log(), "marks were refused", Some(a_id)) > 0;
        async move { done }
    })
    .await;
    if !refused_logged {
        problems.push("A did not log that its marks were refused".into());
    }

    let consumed = s.after_the_lock(&committed, a, b, &mut problems).await;

    let takeover = Takeover::read(&s.db.pool, a_id, b_id).await;
    if takeover.count == 0 {
        problems.push("B took none of A's leases after they expired".into());
    }
    let (tally, log) = s
        .conclude(&committed, &consumed, a_id, captured_log, &mut problems)
        .await;
    tally.report(
        "lease_taken_while_mark_waits",
        &format!(
            "pending_at_lock={pending_at_lock} \
             leases_taken_by_b={} mark_still_waiting_at_release={still_waiting} \
             release_after_takeover_ms={} a_marks_after_first_takeover={} a_{}",
            takeover.count,
            takeover
                .first
                .map_or(-1, |taken| (released_at - taken).num_milliseconds()),
            takeover.a_marks_after,
            notices(&log, Some(a_id)),
        ),
        &log,
    );
    problems.extend(tally.problems(BATCH));
    assert!(
        problems.is_empty(),
        "lease taken while a mark waits:\n- {}",
        problems.join("\n- ")
    );
}

/// Scenario 2: relay A, a process of its own, drains a backlog while a
/// steady stream is committed; it is stopped with SIGSTOP mid-backlog (with
/// batches produced or in flight), stays stopped past its lease TTL until
/// relay B (in this process) took every shard, and is continued with
/// SIGCONT. Its batch in flight, its unwritten outcome and its claim ahead
/// all date from before the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_process_stopped_past_its_lease_ttl_and_continued_marks_nothing_of_its_lost_shards()
{
    const BATCH: usize = 50;
    const BACKLOG_PER_AGGREGATE: i64 = 100;
    const STREAM_PER_AGGREGATE: i64 = 50;
    const TTL: Duration = Duration::from_secs(6);
    const STOP_AFTER: usize = 600;
    let _serial = SERIAL.lock().await;
    let s = Setup::new("sigstop").await;
    let mut problems = Vec::new();

    let mut committed = publish(s.outbox.clone(), 0..BACKLOG_PER_AGGREGATE, 2, None).await;
    let mut a = s.relay_process(BATCH, &[]);
    let writer = tokio::spawn(publish(
        s.outbox.clone(),
        BACKLOG_PER_AGGREGATE..BACKLOG_PER_AGGREGATE + STREAM_PER_AGGREGATE,
        1,
        Some(Duration::from_millis(250)),
    ));
    let a_id = logged_instance_id(&a).await;
    let b = s.relay(s.config(BATCH, TTL)).await;
    let b_id = b.instance_id();

    s.wait_for_count(STOP_AFTER, "the stop", &mut problems)
        .await;
    a.signal("-STOP");
    let stopped_at = db_now(&s.db.pool).await;
    let pending_at_stop = fixtures::pending_rows(&s.db.pool).await;
    if pending_at_stop == 0 {
        problems.push("A was stopped after the backlog was drained; raise the backlog".into());
    }
    let b = b.spawn();
    if !holds_every_shard(&s.db.pool, b_id, TTL + Duration::from_secs(20)).await {
        problems.push("B did not take every shard while A was stopped".into());
    }
    let consumed_when_b_held_all = s.reader.count();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let continued_at = db_now(&s.db.pool).await;
    a.signal("-CONT");

    committed.extend(writer.await.unwrap());
    let consumed = s
        .drain(&committed, "after the last commit", &mut problems)
        .await;
    if !a.stop().await {
        problems.push("relay A did not stop within 30 s of SIGTERM".into());
    }
    stop_relay(b, "B", &mut problems).await;

    let takeover = Takeover::read(&s.db.pool, a_id, b_id).await;
    takeover.check_while_stopped(stopped_at, continued_at, &mut problems);
    let a_marks_before_rebalance: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fence_audit_mark
         WHERE app = $1 AND at > $2
           AND at < coalesce((SELECT min(at) FROM fence_audit_lease
                              WHERE new_owner = $3 AND at > $2), 'infinity')",
    )
    .bind(application_name(a_id))
    .bind(continued_at)
    .bind(a_id)
    .fetch_one(&s.db.pool)
    .await
    .unwrap();
    let (tally, a_log) = s
        .conclude(&committed, &consumed, a_id, || a.log(), &mut problems)
        .await;
    // Deterministic: A's first lease maintenance after SIGCONT finds the
    // shards it held taken by B.
    if log_lines(&a_log, "lease lapsed", None) == 0 {
        problems.push("A did not log that its lease lapsed and its shards were taken".into());
    }
    tally.report(
        "sigstop_past_ttl",
        &format!(
            "pending_at_stop={pending_at_stop} consumed_when_b_held_all={consumed_when_b_held_all} \
             leases_taken_by_b={} a_marks_after_first_takeover={} \
             a_marks_after_cont_before_reacquiring={a_marks_before_rebalance} a_{}",
            takeover.count,
            takeover.a_marks_after,
            notices(&a_log, None),
        ),
        &a_log,
    );
    problems.extend(tally.problems(BATCH));
    assert!(
        problems.is_empty(),
        "SIGSTOP past the TTL:\n- {}\n--- relay A's log ---\n{a_log}",
        problems.join("\n- ")
    );
}

/// What relay A logs, with the relay loop at debug (`outbox-runtime/src/relay/worker.rs`
/// and `lease.rs`): a batch claimed ahead and kept for the next round, one
/// dropped unused (with its reason), a batch produced (its range in the
/// `outbox.relay.batch` span), shard leases taken.
const HOLDS_AHEAD: &str = "outbox relay holds the batch it claimed ahead";
const DROPPED_AHEAD: &str = "outbox relay dropped the batch it claimed ahead";
const PRODUCED: &str = "outbox batch produced";
const TOOK_LEASES: &str = "outbox relay took shard leases";
/// Relay A's log filter in scenario 3: the relay loop at debug.
const LOOP_AT_DEBUG: &str = "info,outbox_runtime::relay::worker=debug,rdkafka=warn";

/// The first and the last `seq` of a batch, as the relay logs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SeqRange {
    first: i64,
    last: i64,
}

impl std::fmt::Display for SeqRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}..={}", self.first, self.last)
    }
}

/// The value of field `name` among `fields` (`name=value` words), without
/// the quotes around a text value.
fn field<'a>(fields: &'a str, name: &str) -> Option<&'a str> {
    fields
        .split(|c: char| c.is_whitespace() || c == '{' || c == '}')
        .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
        .map(|value| value.trim_matches('"'))
}

/// The `first_seq` and `last_seq` fields among `fields`.
fn seq_range(fields: &str) -> Option<SeqRange> {
    Some(SeqRange {
        first: field(fields, "first_seq")?.parse().ok()?,
        last: field(fields, "last_seq")?.parse().ok()?,
    })
}

/// The fields `line` logs after `message`, if it logs `message`.
fn event_fields<'a>(line: &'a str, message: &str) -> Option<&'a str> {
    line.split_once(message).map(|(_, fields)| fields)
}

/// The batch an "outbox batch produced" line names (its batch span's range).
fn produced(line: &str) -> Option<SeqRange> {
    event_fields(line, PRODUCED)?;
    let span = line.split_once("outbox.relay.batch{")?.1.split_once('}')?.0;
    seq_range(span)
}

/// Batches `log` says were produced since shard leases were last taken.
fn produced_since_take(log: &str) -> usize {
    let lines: Vec<&str> = log.lines().collect();
    let from = lines
        .iter()
        .rposition(|line| line.contains(TOOK_LEASES))
        .map_or(0, |at| at + 1);
    lines[from..]
        .iter()
        .filter(|line| produced(line).is_some())
        .count()
}

/// One stop of relay A, from its log: the lines before line `stop` were
/// written before the stop; `end` is where the next stop begins.
struct StopView {
    /// Whether A took shard leases after the stop.
    retook: bool,
    /// The batches A kept claimed ahead before it took the shards back (the
    /// last one before the stop, any kept after it) and had not produced by
    /// then: claimed under the leases B took while A was stopped.
    held: Vec<SeqRange>,
    /// The batches claimed ahead A dropped unused after the stop, and why.
    dropped: Vec<(SeqRange, String)>,
    /// The batches A produced after it took the shards back, in order.
    produced_after: Vec<SeqRange>,
}

impl StopView {
    fn read(lines: &[&str], stop: usize, end: usize) -> StopView {
        let (before_stop, after_stop) = (&lines[..stop], &lines[stop..end.max(stop)]);
        let retake = after_stop.iter().position(|l| l.contains(TOOK_LEASES));
        let (before_retake, after_retake) = after_stop.split_at(retake.unwrap_or(after_stop.len()));
        let last_kept = before_stop
            .iter()
            .rposition(|l| l.contains(HOLDS_AHEAD))
            .unwrap_or(before_stop.len());
        let (mut kept, mut produced_before) = (Vec::new(), Vec::new());
        for line in before_stop[last_kept..].iter().chain(before_retake) {
            kept.extend(event_fields(line, HOLDS_AHEAD).and_then(seq_range));
            produced_before.extend(produced(line));
        }
        StopView {
            retook: retake.is_some(),
            held: kept
                .into_iter()
                .filter(|range| !produced_before.contains(range))
                .collect(),
            dropped: after_stop
                .iter()
                .filter_map(|line| {
                    let fields = event_fields(line, DROPPED_AHEAD)?;
                    let reason = field(fields, "reason").unwrap_or_default().to_owned();
                    Some((seq_range(fields)?, reason))
                })
                .collect(),
            produced_after: after_retake.iter().filter_map(|l| produced(l)).collect(),
        }
    }

    /// Whether A still held a batch claimed ahead under the old leases when
    /// it took the shards back, and dropped it.
    fn exercised(&self) -> bool {
        self.dropped
            .iter()
            .any(|(range, _)| self.held.contains(range))
    }

    /// The batches A produced after taking the shards back that it had
    /// claimed ahead before (held across the retake, or dropped).
    fn reused(&self) -> Vec<SeqRange> {
        self.produced_after
            .iter()
            .copied()
            .filter(|range| {
                self.held.contains(range) || self.dropped.iter().any(|(d, _)| d == range)
            })
            .collect()
    }
}

/// Waits until `owner`'s leases were last renewed between 100 ms and 1.5 s
/// ago (a relay with its fair share renews every 2 s), so that a stop then
/// does not land inside a renewal's transaction; at most 10 s.
async fn between_renewals(pool: &PgPool, owner: Uuid, ttl: Duration) -> bool {
    wait_until(Duration::from_secs(10), || async {
        let age: Option<f64> = sqlx::query_scalar(
            "SELECT $2 - extract(epoch FROM max(expires_at) - clock_timestamp())::float8
             FROM event_outbox_lease WHERE owner = $1",
        )
        .bind(owner)
        .bind(ttl.as_secs_f64())
        .fetch_one(pool)
        .await
        .unwrap();
        age.is_some_and(|age| (0.1..1.5).contains(&age))
    })
    .await
}

/// The `seq` of the pending row `offset` rows after the lowest.
async fn pending_seq_at(pool: &PgPool, offset: usize) -> Option<i64> {
    sqlx::query_scalar(
        "SELECT seq FROM event_outbox WHERE state = 'pending' ORDER BY seq OFFSET $1 LIMIT 1",
    )
    .bind(i64::try_from(offset).unwrap())
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// Whether a row up to `seq` is still pending.
async fn pending_up_to(pool: &PgPool, seq: i64) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM event_outbox WHERE state = 'pending' AND seq <= $1)",
    )
    .bind(seq)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Scenario 3: a batch claimed ahead never outlives the leases it was
/// claimed under. Relay A, a process of its own with small batches (every
/// round full, so every round claims the next batch ahead), drains a large
/// backlog. Each stop: A is stopped with SIGSTOP (between two lease
/// renewals, never inside one) and stays stopped past its lease TTL until
/// relay B (in this process) took every shard and delivered every row A can
/// have claimed; B stops, giving the shards back, and A is continued and
/// takes them back at new epochs, still holding what it claimed ahead
/// before the stop. A's log says which batch that was, that A dropped it,
/// and which batches A produced after taking the shards back: none may be
/// the stale claim. A stop does not always catch A holding a claim ahead
/// (between rounds, or with a batch in flight whose results do not all come
/// back), so stops are repeated until two did, at most six.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_process_that_takes_its_shards_back_after_a_stop_drops_what_it_claimed_ahead_before_it(
) {
    const BATCH: usize = 20;
    const BACKLOG_PER_AGGREGATE: i64 = 600;
    const TTL: Duration = Duration::from_secs(6);
    const STOPS: usize = 6;
    const EXERCISED: usize = 2;
    /// Batches A produces with every shard before each stop.
    const RUNNING: usize = 5;
    /// Rows B delivers past the lowest pending at the stop: more than A can
    /// hold (a batch whose outcome is unwritten, one in flight, one claimed
    /// ahead).
    const B_DELIVERS: usize = 5 * BATCH;
    let _serial = SERIAL.lock().await;
    let s = Setup::new("ahead").await;
    let pool = s.db.pool.clone();
    let mut problems = Vec::new();

    let committed = publish(s.outbox.clone(), 0..BACKLOG_PER_AGGREGATE, 2, None).await;
    let mut a = s.relay_process(BATCH, &[("RUST_LOG", LOOP_AT_DEBUG)]);
    let a_id = logged_instance_id(&a).await;

    // (line of A's log at the stop, the highest seq B delivered meanwhile)
    let mut stops: Vec<(usize, i64)> = Vec::new();
    let mut exercised = 0;
    for stop in 1..=STOPS {
        let running = wait_until(Duration::from_secs(30), || {
            let done = produced_since_take(&a.log()) >= RUNNING;
            async move { done }
        })
        .await;
        if !running || valid_leases(&pool, a_id).await != outbox::relay::SHARDS {
            problems.push(format!(
                "A was not draining with every shard before stop {stop}"
            ));
            break;
        }
        if fixtures::pending_rows(&pool).await < i64::try_from(10 * BATCH).unwrap() {
            if stop == 1 {
                problems.push("the backlog ran out before the first stop".into());
            }
            break;
        }
        if !between_renewals(&pool, a_id, TTL).await {
            problems.push(format!("A renewed no lease within 10 s before stop {stop}"));
        }
        a.signal("-STOP");
        tokio::time::sleep(Duration::from_millis(200)).await;
        let stop_line = a.log().lines().count();
        let Some(b_delivers_to) = pending_seq_at(&pool, B_DELIVERS).await else {
            problems.push(format!("the backlog ran out at stop {stop}"));
            a.signal("-CONT");
            break;
        };
        let b = s.relay(s.config(BATCH, TTL)).await;
        let b_id = b.instance_id();
        let b = b.spawn();
        if !holds_every_shard(&pool, b_id, TTL + Duration::from_secs(20)).await {
            problems.push(format!(
                "B did not take every shard while A was stopped (stop {stop})"
            ));
        }
        let delivered = wait_until(Duration::from_secs(30), || async {
            !pending_up_to(&pool, b_delivers_to).await
        })
        .await;
        if !delivered {
            problems.push(format!(
                "B did not deliver up to seq {b_delivers_to} within 30 s (stop {stop})"
            ));
        }
        if takeovers(&pool, a_id, b_id).await.0 == 0 {
            problems.push(format!(
                "B took none of A's leases after they expired (stop {stop})"
            ));
        }
        stop_relay(b, "B", &mut problems).await;
        a.signal("-CONT");
        if !holds_every_shard(&pool, a_id, Duration::from_secs(20)).await {
            problems.push(format!(
                "A did not take every shard back within 20 s (stop {stop})"
            ));
        }
        stops.push((stop_line, b_delivers_to));
        let log = a.log();
        let lines: Vec<&str> = log.lines().collect();
        if StopView::read(&lines, stop_line, lines.len()).exercised() {
            exercised += 1;
            if exercised == EXERCISED {
                break;
            }
        }
    }

    let consumed = s
        .drain(&committed, "after the last stop", &mut problems)
        .await;
    if !a.stop().await {
        problems.push("relay A did not stop within 30 s of SIGTERM".into());
    }
    let (tally, a_log) = s
        .conclude(&committed, &consumed, a_id, || a.log(), &mut problems)
        .await;

    // Each stop read up to the next.
    let lines: Vec<&str> = a_log.lines().collect();
    let (mut exercised, mut held, mut reused, mut dropped) = (0, 0, 0, Vec::new());
    for (i, &(stop_line, b_delivered_to)) in stops.iter().enumerate() {
        let end = stops.get(i + 1).map_or(lines.len(), |next| next.0);
        let view = StopView::read(&lines, stop_line, end);
        let number = i + 1;
        println!(
            "stop {number}: held claimed ahead {:?}, dropped {:?}, first batches produced after \
             taking the shards back {:?}",
            view.held
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            view.dropped
                .iter()
                .map(|(range, reason)| format!("{range} ({reason})"))
                .collect::<Vec<_>>(),
            view.produced_after
                .iter()
                .take(3)
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
        );
        if !view.retook {
            problems.push(format!("A logged no lease taken after stop {number}"));
        }
        for range in view.reused() {
            problems.push(format!(
                "after stop {number} A produced {range}, a batch it had claimed ahead under the \
                 leases B took, once it had the shards back at new epochs"
            ));
        }
        for range in view.held.iter().filter(|r| r.last > b_delivered_to) {
            problems.push(format!(
                "A held {range} claimed ahead across stop {number}, beyond the rows B delivered \
                 (up to seq {b_delivered_to}): raise B_DELIVERS"
            ));
        }
        exercised += usize::from(view.exercised());
        held += view.held.len();
        reused += view.reused().len();
        dropped.extend(
            view.dropped
                .iter()
                .map(|(range, reason)| format!("{range}:{reason}")),
        );
    }
    if exercised == 0 {
        problems.push(format!(
            "none of {} stops caught A holding a batch claimed ahead that it then dropped",
            stops.len()
        ));
    }
    tally.report(
        "stale_claim_ahead",
        &format!(
            "stops={} exercised={exercised} held_across_retake={held} reused={reused} \
             dropped={} a_{}",
            stops.len(),
            if dropped.is_empty() {
                "none".to_owned()
            } else {
                dropped.join(",")
            },
            notices(&a_log, None),
        ),
        &a_log,
    );
    problems.extend(tally.problems(BATCH));
    assert!(
        problems.is_empty(),
        "claim ahead across a stop:\n- {}\n--- relay A's log (last 200 lines) ---\n{}",
        problems.join("\n- "),
        lines[lines.len().saturating_sub(200)..].join("\n")
    );
}

/// A relay's lease renewal as `pg_stat_activity.query` shows it (see
/// `outbox-runtime/src/relay/lease.rs`).
const RENEW: &str = r"^\s*UPDATE\s+\S*event_outbox_lease\s+SET\s+expires_at\s*=\s*now\(\)";

/// Locks, in a transaction of its own, the lease row a renewal reaches last
/// (`UPDATE … WHERE owner = $1` scans the 64 rows in physical order, so the
/// visible row version with the highest `ctid`); the transaction and the
/// row's shard. A renewal committed between the lock and the check (in the
/// same transaction) may have moved rows behind it: then it starts over,
/// at most 50 times.
async fn lock_last_lease_row(pool: &PgPool) -> (sqlx::Transaction<'static, sqlx::Postgres>, i16) {
    const LAST: &str = "SELECT shard FROM event_outbox_lease ORDER BY ctid DESC LIMIT 1";
    for _ in 0..50 {
        let mut tx = pool.begin().await.unwrap();
        let locked: i16 = sqlx::query_scalar(&format!("{LAST} FOR UPDATE"))
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        let last: i16 = sqlx::query_scalar(LAST).fetch_one(&mut *tx).await.unwrap();
        if locked == last {
            return (tx, locked);
        }
        tx.rollback().await.unwrap();
    }
    panic!("the last lease row kept moving: 50 attempts to lock it failed");
}

/// Whether a connection of `instance` is `idle in transaction` after a
/// lease renewal (its last statement).
async fn idle_after_renewal(pool: &PgPool, instance: Uuid) -> bool {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                        WHERE application_name = $1 AND state = 'idle in transaction'
                          AND query ~* $2)",
    )
    .bind(application_name(instance))
    .bind(RENEW)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Lease rows another transaction can lock now, as a relay's `acquire`
/// does (`FOR UPDATE SKIP LOCKED`); the locks are given back at once.
async fn lockable_leases(pool: &PgPool) -> i64 {
    let mut tx = pool.begin().await.unwrap();
    let lockable = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT shard FROM event_outbox_lease FOR UPDATE SKIP LOCKED) l",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    lockable
}

/// Scenario 4: relay A, a process of its own, holding every shard once it
/// delivered a backlog, is stopped with SIGSTOP inside its lease maintenance
/// transaction, after its renewal locked every lease row. The staging: the
/// test locks the lease row A's renewal reaches last; A's next renewal
/// locks the other 63 and waits on it (seen in `pg_stat_activity`); A is
/// stopped and the test's lock released, so the renewal completes on the
/// server and A's transaction stays `idle in transaction` holding all 64
/// row locks (checked: no lease row can be locked with `SKIP LOCKED`, as
/// another instance's `acquire` would). The relay's
/// `idle_in_transaction_session_timeout` (a third of the TTL) ends that
/// session: the locks go, the renewal rolls back, the leases expire, and
/// relay B (in this process) takes every shard and delivers what is
/// committed meanwhile, all while A is still stopped. A is then continued:
/// its maintenance fails on the ended session, it backs off, finds its
/// shards taken and gets its share back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_process_paused_inside_its_lease_transaction_does_not_keep_its_shards() {
    const BATCH: usize = 50;
    const BACKLOG_PER_AGGREGATE: i64 = 50;
    /// Committed while A is stopped, then after it is continued.
    const MEANWHILE_PER_AGGREGATE: i64 = 10;
    const TTL: Duration = Duration::from_secs(6);
    /// From the stop: the TTL (the leases expire within it), a third of it
    /// (the session ends that long after the renewal completed) and 6 s for
    /// B to start and maintain its leases (every second while below its
    /// share).
    const TAKEN_WITHIN: Duration = Duration::from_secs(6 + 2 + 6);
    let _serial = SERIAL.lock().await;
    let s = Setup::new("paused").await;
    let pool = s.db.pool.clone();
    let mut problems = Vec::new();

    let mut committed = publish(s.outbox.clone(), 0..BACKLOG_PER_AGGREGATE, 2, None).await;
    let mut a = s.relay_process(BATCH, &[]);
    let a_id = logged_instance_id(&a).await;
    if !holds_every_shard(&pool, a_id, Duration::from_secs(20)).await {
        problems.push("A did not hold every shard within 20 s of starting".into());
    }
    if s.reader
        .wait_until(DELIVERED_WITHIN, all_arrived(&committed))
        .await
        .is_err()
    {
        problems.push("A did not deliver the backlog before the lock".into());
    }

    // A's next renewal locks every lease row but the last and waits on it.
    let (lock, locked_shard) = lock_last_lease_row(&pool).await;
    let renewal_waits = wait_until(Duration::from_secs(5), || async {
        waiting(&pool, a_id, RENEW).await
    })
    .await;
    if !renewal_waits {
        problems.push(format!(
            "A's renewal did not wait on the lock of shard {locked_shard}'s lease within 5 s"
        ));
    }
    a.signal("-STOP");
    let stopped = Instant::now();
    let stopped_at = db_now(&pool).await;
    lock.rollback().await.unwrap();
    // The renewal completes on the server; A, stopped, never commits it.
    let deadline = Instant::now() + Duration::from_secs(1);
    let (idle_holding_locks, lockable_when_stopped) = loop {
        let lockable = lockable_leases(&pool).await;
        let idle = lockable == 0 && idle_after_renewal(&pool, a_id).await;
        if idle || Instant::now() >= deadline {
            break (idle, lockable);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    if !idle_holding_locks {
        problems.push(format!(
            "A's connection was not left idle in transaction after its renewal, holding every \
             lease row lock ({lockable_when_stopped} lease rows lockable)"
        ));
    }
    let b = s.relay(s.config(BATCH, TTL)).await;
    let b_id = b.instance_id();
    let b = b.spawn();
    let meanwhile = publish(
        s.outbox.clone(),
        BACKLOG_PER_AGGREGATE..BACKLOG_PER_AGGREGATE + MEANWHILE_PER_AGGREGATE,
        2,
        None,
    )
    .await;
    committed.extend(meanwhile.iter().cloned());
    let b_took_all =
        holds_every_shard(&pool, b_id, TAKEN_WITHIN.saturating_sub(stopped.elapsed())).await;
    let took_all_after = stopped.elapsed();
    if !b_took_all {
        problems.push(format!(
            "B did not hold every shard within {TAKEN_WITHIN:?} of A's stop inside its lease \
             transaction ({} held by B, {} lease rows lockable)",
            valid_leases(&pool, b_id).await,
            lockable_leases(&pool).await,
        ));
    }
    let delivered_meanwhile = s
        .reader
        .wait_until(
            TAKEN_WITHIN.saturating_sub(stopped.elapsed()),
            all_arrived(&meanwhile),
        )
        .await
        .is_ok();
    let delivered_after = stopped.elapsed();
    if !delivered_meanwhile {
        problems.push(format!(
            "the events committed while A was stopped did not all arrive within \
             {TAKEN_WITHIN:?} of the stop"
        ));
    }
    let a_session_left = idle_after_renewal(&pool, a_id).await;
    if a_session_left {
        problems.push("A's stopped session was still idle in transaction".into());
    }
    let continued_at = db_now(&pool).await;
    a.signal("-CONT");

    // A's maintenance fails on its ended session; A backs off, then finds
    // its shards taken and gets a share back.
    let failed_renewal = wait_until(Duration::from_secs(20), || {
        let log = a.log();
        let done = log
            .lines()
            .any(|l| l.contains("renewing shard leases") && l.contains("backing off"));
        async move { done }
    })
    .await;
    if !failed_renewal {
        problems.push("A did not log a failed lease renewal after it was continued".into());
    }
    let a_recovered = wait_until(Duration::from_secs(30), || async {
        valid_leases(&pool, a_id).await > 0
    })
    .await;
    if !a_recovered {
        problems.push("A held no lease within 30 s of being continued".into());
    }
    committed.extend(
        publish(
            s.outbox.clone(),
            BACKLOG_PER_AGGREGATE + MEANWHILE_PER_AGGREGATE
                ..BACKLOG_PER_AGGREGATE + 2 * MEANWHILE_PER_AGGREGATE,
            2,
            None,
        )
        .await,
    );
    let consumed = s
        .drain(&committed, "after the last commit", &mut problems)
        .await;
    if !a.stop().await {
        problems.push("relay A did not stop within 30 s of SIGTERM".into());
    }
    stop_relay(b, "B", &mut problems).await;

    let takeover = Takeover::read(&pool, a_id, b_id).await;
    takeover.check_while_stopped(stopped_at, continued_at, &mut problems);
    let (tally, a_log) = s
        .conclude(&committed, &consumed, a_id, || a.log(), &mut problems)
        .await;
    let ended_session = log_lines(&a_log, "idle-in-transaction", None);
    tally.report(
        "paused_inside_lease_transaction",
        &format!(
            "locked_shard={locked_shard} \
             renewal_waited={renewal_waits} idle_holding_every_lease={idle_holding_locks} \
             b_held_all_after_s={:.1} meanwhile_delivered_after_s={:.1} leases_taken_by_b={} \
             a_marks_after_first_takeover={} a_failed_renewal={failed_renewal} \
             a_session_ended_lines={ended_session} a_held_leases_again={a_recovered} a_{}",
            took_all_after.as_secs_f64(),
            delivered_after.as_secs_f64(),
            takeover.count,
            takeover.a_marks_after,
            notices(&a_log, None),
        ),
        &a_log,
    );
    problems.extend(tally.problems(BATCH));
    assert!(
        problems.is_empty(),
        "paused inside the lease transaction:\n- {}\n--- relay A's log ---\n{a_log}",
        problems.join("\n- ")
    );
}
