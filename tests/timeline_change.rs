//! A database timeline change under load: PostgreSQL stopped with
//! `-m immediate` and started again while events are committed. Every
//! committed event must arrive, in order per aggregate, well within the
//! claim floor's periodic reset (60 s).
//!
//! PostgreSQL writes a sequence's WAL record 32 values ahead, and it reaches
//! disk with the next commit of any transaction, so values handed out to
//! transactions that never commit may not be on disk when the server stops:
//! after the restart the sequence hands them out again. The relay has read
//! them (its horizon and claim floor, `outbox-runtime/src/relay/horizon.rs`
//! and `floor.rs`), so rows committed with them after the restart lie below
//! what it knows.
//!
//! With commits every few milliseconds, such values exist only for the
//! moment between a record and the next commit. The test makes that moment
//! long enough for the relay to read the sequence inside it: the publishers
//! hold their transactions open (uncommitted `nextval()`s in flight) and a
//! bulk transaction takes many values, while nothing commits (the relay is
//! idle and just renewed its leases, and the cluster runs nothing else that
//! writes the WAL out); then the server stops at once. The test checks the
//! WAL was not written out before the stop (trying again otherwise: an
//! immediate stop keeps what was written to the operating system, flushed
//! or not, and recovery replays it) and that the
//! sequence did go back, so it never passes without exercising that.
//!
//! It runs a throwaway PostgreSQL 15 cluster of its own (Debian package
//! `postgresql-15`, as user `postgres` when run as root) and librdkafka's
//! mock cluster as the broker.

mod fixtures;
mod mock_broker;
mod support;

use outbox::{Outbox, OutboxEvent, Relay};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::ClientConfig;
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "timeline.counter-ticked.v1", aggregate = "counter")]
struct CounterTickedV1 {
    #[outbox_event(aggregate_id)]
    counter_id: String,
    seq: i64,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PUBLISHERS: usize = 4;
const AGGREGATES_PER_PUBLISHER: usize = 3;
const EVENTS_PER_TRANSACTION: i64 = 3;
/// Values the bulk transaction takes before the server stops.
const BULK_VALUES: i64 = 1_000;
const PARTITIONS: i32 = 4;
/// How long after the restart every committed event must have arrived.
const DELIVERED_WITHIN: Duration = Duration::from_secs(20);
/// The sequence of `event_outbox.seq`.
const SEQUENCE: &str = "pg_get_serial_sequence('event_outbox', 'seq')";

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// A PostgreSQL tool, run as user `postgres` when the test runs as root (the
/// server refuses to run as root).
fn pg_tool(tool: &str) -> Command {
    let path = Path::new(PG_BIN).join(tool);
    assert!(
        path.is_file(),
        "{} is missing: this test runs a PostgreSQL 15 cluster of its own; install the Debian package postgresql-15 (scripts/test.sh installs it)",
        path.display()
    );
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

fn run(mut command: Command, what: &str) {
    let out = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A throwaway cluster in a directory of its own, on a free port. Dropping
/// it stops the server (`-m immediate`) and removes the directory, also when
/// the test fails.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn start() -> Cluster {
        // Fails early, naming the package, before anything is created.
        drop(pg_tool("initdb"));
        let dir = std::env::temp_dir().join(format!(
            "outbox-timeline-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).expect("the cluster's directory");
        let cluster = Cluster {
            dir,
            port: support::free_port(),
        };
        if running_as_root() {
            let mut chown = Command::new("chown");
            chown.args(["-R", "postgres:postgres"]).arg(&cluster.dir);
            run(
                chown,
                "chown of the cluster's directory to postgres (a user the Debian package creates)",
            );
        }
        let mut initdb = pg_tool("initdb");
        initdb
            .arg("-D")
            .arg(cluster.data())
            .args(["-U", "postgres", "--auth=trust", "--no-sync"]);
        run(initdb, "initdb");
        cluster.pg_ctl_start();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn pg_ctl_start(&self) {
        // Nothing but commits flushes the WAL: no checkpoint by time, no
        // autovacuum, and no standby snapshots (`wal_level=minimal`; the
        // background writer logs one every 15 s otherwise, flushed by the
        // WAL writer).
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=100 \
             -c checkpoint_timeout=1h -c autovacuum=off -c wal_level=minimal -c max_wal_senders=0",
            self.port,
            self.dir.display()
        );
        let mut start = pg_tool("pg_ctl");
        start
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.join("server.log"))
            .args(["-o", &options, "-w", "-t", "120", "start"]);
        run(start, "pg_ctl start");
    }

    fn stop_immediately(&self) {
        let mut stop = pg_tool("pg_ctl");
        stop.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"]);
        run(stop, "pg_ctl stop -m immediate");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let mut stop = pg_tool("pg_ctl");
            stop.arg("-D")
                .arg(self.data())
                .args(["-m", "immediate", "-w", "stop"]);
            let _ = stop.output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An event: its aggregate and its number in the aggregate.
type Tick = (String, i64);

/// What a consumer read, in order, with when it arrived.
type Arrivals = Arc<Mutex<Vec<(Tick, Instant)>>>;

/// Reads every partition of `topic` from the beginning (no consumer group).
fn read_all(bootstrap: &str, topic: &str) -> (Arrivals, tokio::task::JoinHandle<()>) {
    let consumer = mock_broker::assigned_from_beginning(
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("timeline-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50"),
        &[topic.to_owned()],
        PARTITIONS,
    );
    let received: Arrivals = Arc::default();
    let sink = received.clone();
    let task = tokio::spawn(async move {
        loop {
            match consumer.recv().await {
                Ok(message) => {
                    let payload: serde_json::Value = message
                        .payload()
                        .and_then(|p| serde_json::from_slice(p).ok())
                        .unwrap_or_default();
                    let data = &payload["data"];
                    let counter = data["counter_id"].as_str().unwrap_or_default().to_owned();
                    let seq = data["seq"].as_i64().unwrap_or(-1);
                    sink.lock().unwrap().push(((counter, seq), Instant::now()));
                }
                Err(error) => {
                    tracing::debug!(%error, "consumer error; continuing");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    (received, task)
}

/// What the publishers committed (with when the `COMMIT` returned), and
/// what they cannot tell (a `COMMIT` whose answer was lost may have
/// committed).
#[derive(Default)]
struct Ledger {
    committed: Vec<(Tick, Instant)>,
    uncertain: Vec<Tick>,
    failed_transactions: usize,
}

/// Publishers and the switch that holds them before `COMMIT`.
struct Load {
    ledger: Arc<Mutex<Ledger>>,
    hold: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(outbox: &Outbox) -> Load {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let hold = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..PUBLISHERS)
            .map(|publisher| {
                tokio::spawn(publish(
                    publisher,
                    outbox.clone(),
                    ledger.clone(),
                    hold.clone(),
                    held.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Load {
            ledger,
            hold,
            held,
            stop,
            tasks,
        }
    }

    async fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        self.hold.store(false, Ordering::SeqCst);
        for task in self.tasks {
            task.await.expect("publisher");
        }
        std::mem::take(&mut *self.ledger.lock().unwrap())
    }
}

/// One publisher: transactions of a few events of one of its aggregates,
/// with pauses between the inserts (so `nextval()`s stay uncommitted a
/// while), one aggregate's transactions one after another. Connection
/// errors end a transaction; only a `COMMIT` that succeeded counts.
async fn publish(
    publisher: usize,
    outbox: Outbox,
    ledger: Arc<Mutex<Ledger>>,
    hold: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) {
    let mut next: Vec<i64> = vec![0; AGGREGATES_PER_PUBLISHER];
    let mut round = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let aggregate = round % AGGREGATES_PER_PUBLISHER;
        round += 1;
        let counter = format!("c{publisher}-{aggregate}");
        let mut tx = match outbox.transactional_publish().await {
            Ok(tx) => tx,
            Err(_) => {
                ledger.lock().unwrap().failed_transactions += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut ticks = Vec::new();
        let mut inserted = true;
        for _ in 0..EVENTS_PER_TRANSACTION {
            let seq = next[aggregate];
            next[aggregate] += 1;
            let event = CounterTickedV1 {
                counter_id: counter.clone(),
                seq,
            };
            if tx.publish(&event).await.is_err() {
                inserted = false;
                break;
            }
            ticks.push((counter.clone(), seq));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if !inserted {
            ledger.lock().unwrap().failed_transactions += 1;
            drop(tx);
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if hold.load(Ordering::SeqCst) {
            held.fetch_add(1, Ordering::SeqCst);
            while hold.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            held.fetch_sub(1, Ordering::SeqCst);
        }
        let committed = tx.commit().await;
        let mut ledger = ledger.lock().unwrap();
        match committed {
            Ok(_) => {
                let at = Instant::now();
                ledger
                    .committed
                    .extend(ticks.into_iter().map(|tick| (tick, at)));
            }
            Err(_) => {
                ledger.failed_transactions += 1;
                ledger.uncertain.extend(ticks);
            }
        }
    }
}

async fn scalar_i64(pool: &PgPool, sql: &str) -> Option<i64> {
    sqlx::query_scalar::<_, Option<i64>>(sql)
        .fetch_one(pool)
        .await
        .expect(sql)
}

/// Waits until the relay's heartbeat moves: it just renewed its leases (a
/// commit, which flushes the WAL) and does not again for about 2 s.
async fn after_lease_renewal(pool: &PgPool) {
    let heartbeat =
        "SELECT (extract(epoch FROM max(heartbeat_at)) * 1e6)::int8 FROM event_outbox_relay";
    let before = scalar_i64(pool, heartbeat).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while scalar_i64(pool, heartbeat).await == before {
        assert!(Instant::now() < deadline, "the relay renewed no lease");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The renewal's second statement.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Takes [`BULK_VALUES`] values of the sequence in the open transaction on
/// `bulk`; returns the highest and where the WAL ends after them.
async fn take_values(bulk: &mut PgConnection) -> (i64, String) {
    sqlx::query_as(&format!(
        "SELECT max(nextval({SEQUENCE})), pg_current_wal_insert_lsn()::text
         FROM generate_series(1, {BULK_VALUES})"
    ))
    .fetch_one(bulk)
    .await
    .expect("the bulk transaction takes values")
}

/// Stops the load before COMMIT, waits for the relay to drain, and takes
/// [`BULK_VALUES`] more sequence values in an open transaction; returns that
/// transaction and the highest value taken once the WAL holding them is
/// still unwritten 400 ms later. Tried again after a second of load when
/// something wrote it out meanwhile.
async fn hold_everything_uncommitted(
    pool: &PgPool,
    cluster: &Cluster,
    load: &Load,
) -> (PgConnection, i64) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        after_lease_renewal(pool).await;
        load.hold.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        while load.held.load(Ordering::SeqCst) < PUBLISHERS {
            assert!(
                Instant::now() < deadline,
                "the publishers did not stop before COMMIT"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        relay_drained(pool).await;
        let mut bulk = PgConnection::connect(&cluster.url())
            .await
            .expect("bulk connection");
        sqlx::query("BEGIN")
            .execute(&mut bulk)
            .await
            .expect("BEGIN");
        let (taken, wal_end) = take_values(&mut bulk).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
        if !written_to(pool, &wal_end).await {
            return (bulk, taken);
        }
        assert!(
            attempts < 5,
            "the WAL was written out before the stop {attempts} times: something commits"
        );
        println!("the WAL was written out before the stop; trying again");
        drop(bulk);
        load.hold.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Whether the WAL is written out up to `lsn` (to the operating system:
/// an immediate stop keeps it, flushed or not).
async fn written_to(pool: &PgPool, lsn: &str) -> bool {
    sqlx::query_scalar("SELECT pg_current_wal_lsn() >= $1::pg_lsn")
        .bind(lsn)
        .fetch_one(pool)
        .await
        .expect("the written WAL position")
}

/// Waits until nothing committed is pending: the relay delivered it and
/// wrote the outcome (its last commit before it is idle).
async fn relay_drained(pool: &PgPool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pending = scalar_i64(
            pool,
            "SELECT count(*) FROM event_outbox WHERE state = 'pending'",
        )
        .await;
        if pending == Some(0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the relay did not drain: {pending:?} pending"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every key's events in the order received, first arrivals only: the
/// numbers that arrived out of order.
fn order_violations(received: &[Tick]) -> Vec<(String, i64, i64)> {
    let mut seen = HashSet::new();
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut violations = Vec::new();
    for (counter, seq) in received {
        if !seen.insert((counter, seq)) {
            continue;
        }
        if let Some(&before) = last.get(counter.as_str()) {
            if *seq <= before {
                violations.push((counter.clone(), before, *seq));
            }
        }
        last.insert(counter, *seq);
    }
    violations
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_event_arrives_soon_after_an_immediate_restart_under_load() {
    support::init_tracing();
    let cluster = Cluster::start();
    let pool = PgPoolOptions::new()
        .max_connections(12)
        .acquire_timeout(Duration::from_secs(3))
        .connect(&cluster.url())
        .await
        .expect("the test cluster accepts connections");
    outbox::migrate(&pool).await.expect("migrations apply");

    let prefix = support::unique("timeline");
    let topics = fixtures::prefixed_topics(&prefix);
    let [topic] = topics.as_slice() else {
        panic!("one event type, one topic: {topics:?}");
    };
    let kafka = MockCluster::new(1).expect("librdkafka mock cluster");
    kafka
        .create_topic(topic, PARTITIONS, 1)
        .expect("mock topic");
    let bootstrap = kafka.bootstrap_servers();
    let (received, reader) = read_all(&bootstrap, topic);

    let mut config = fixtures::relay_config(&prefix);
    config.batch_size = 20;
    config.poll_interval = Duration::from_millis(20);
    config.listen = true;
    let relay = Relay::new(pool.clone(), fixtures::kafka(&bootstrap), config)
        .await
        .expect("relay starts")
        .spawn();
    let relay_started = Instant::now();

    let outbox = Outbox::new(pool.clone(), "timeline");
    let load = Load::start(&outbox);
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The moment before the stop: nothing commits, every publisher holds a
    // transaction with uncommitted values, a bulk transaction takes many
    // more, and the relay (idle, in its floor's settling time after its last
    // batch) reads the sequence. A commit between the last look at the WAL
    // and the stop (a lease renewal on a slow machine) flushes the values
    // taken; the restart then hands out none again, and the whole stop is
    // tried again after a second of load. More restarts only make the
    // delivery claim below stronger.
    let mut restarts = 0;
    let restarted = loop {
        restarts += 1;
        let (bulk, taken) = hold_everything_uncommitted(&pool, &cluster, &load).await;
        cluster.stop_immediately();
        cluster.pg_ctl_start();
        let restarted = Instant::now();
        drop(bulk);
        // Before any publisher goes on: where the sequence continues.
        let mut probe = PgConnection::connect(&cluster.url()).await.expect("probe");
        let resumed: Option<i64> =
            sqlx::query_scalar(&format!("SELECT pg_sequence_last_value({SEQUENCE})"))
                .fetch_one(&mut probe)
                .await
                .expect("the sequence after the restart");
        drop(probe);
        load.hold.store(false, Ordering::SeqCst);
        let resumed = resumed.unwrap_or(0);
        println!(
            "sequence: {taken} handed out before the stop, continues after {resumed} after it; \
             {} values handed out again",
            taken - resumed
        );
        if resumed < taken {
            break restarted;
        }
        assert!(
            restarts < 4,
            "the scenario needs values handed out again after the restart; {restarts} restarts \
             found the WAL written past them (sequence at {resumed}, {taken} taken before it)"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    tokio::time::sleep(Duration::from_secs(5)).await;
    let ledger = load.finish().await;
    let committed: HashMap<&Tick, Instant> = ledger
        .committed
        .iter()
        .map(|(tick, at)| (tick, *at))
        .collect();
    assert!(
        committed.len() > 1_000,
        "too little load to say anything: {} committed",
        committed.len()
    );

    let deadline = restarted + DELIVERED_WITHIN;
    let arrived = loop {
        let arrived: HashMap<Tick, Instant> =
            received.lock().unwrap().iter().rev().cloned().collect();
        let all = committed.keys().all(|tick| arrived.contains_key(*tick));
        if all || Instant::now() >= deadline {
            break arrived;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let received: Vec<Tick> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(tick, _)| tick.clone())
        .collect();
    let mut missing: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for tick in committed
        .keys()
        .filter(|tick| !arrived.contains_key(**tick))
    {
        missing.entry(tick.0.as_str()).or_default().push(tick.1);
    }
    let missing_count: usize = missing.values().map(Vec::len).sum();
    // How long after its COMMIT each event arrived, for those committed
    // after the restart (the ones that can take values handed out again).
    let slowest_after_restart = committed
        .iter()
        .filter(|(_, at)| **at > restarted)
        .filter_map(|(tick, at)| {
            arrived
                .get(*tick)
                .map(|got| got.saturating_duration_since(*at))
        })
        .max()
        .unwrap_or_default();
    let violations = order_violations(&received);
    let uncertain_arrived = ledger
        .uncertain
        .iter()
        .filter(|tick| arrived.contains_key(*tick))
        .count();
    let not_published: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, state FROM event_outbox ORDER BY seq LIMIT 5")
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
    println!(
        "committed={} received={} distinct={} missing={missing_count} order_violations={} \
         uncertain={} (arrived {uncertain_arrived}) failed_transactions={} \
         slowest_delivery_of_an_event_committed_after_the_restart={slowest_after_restart:?} \
         restart_after_relay_start={:?}",
        committed.len(),
        received.len(),
        arrived.len(),
        violations.len(),
        ledger.uncertain.len(),
        ledger.failed_transactions,
        restarted - relay_started,
    );

    let stats = relay.shutdown().await;
    reader.abort();
    drop(kafka);

    let summary: Vec<String> = missing
        .iter()
        .map(|(counter, seqs)| {
            format!(
                "{counter}: {} from {}",
                seqs.len(),
                seqs.iter().min().unwrap_or(&-1)
            )
        })
        .collect();
    assert_eq!(
        missing_count,
        0,
        "committed events missing {DELIVERED_WITHIN:?} after the restart ({}); \
         first rows left in the outbox: {not_published:?}",
        summary.join(", ")
    );
    assert!(
        violations.is_empty(),
        "out of order per aggregate (aggregate, before, after): {:?}",
        &violations[..violations.len().min(10)]
    );
    assert!(stats.is_ok(), "the relay stops cleanly: {stats:?}");
}
