//! Producer-side broker faults, injected through librdkafka's mock cluster
//! (`rdkafka::mocking`) while the real relay delivers; no external broker.
//!
//! Each test commits 2,000 events of 40 aggregates (50 each, numbered per
//! aggregate) in paced transactions while a relay delivers them to a
//! three-broker mock cluster, injects one fault once a fifth of them has
//! arrived, and checks from a consumer's view of the topic that
//!
//! - nothing is lost: every committed event id is consumed;
//! - each aggregate's events arrive in order: the first copy of each event
//!   comes after the first copies of its aggregate's earlier events
//!   (another copy of an event already read is a duplicate, not a
//!   reordering), and the tally also counts the events whose first copy
//!   came after a later event of their aggregate (`overtaken`);
//! - duplicates stay within two batches' worth ([`DUPLICATES_AT_MOST`]):
//!   only a message the broker stored without the relay learning it did
//!   (its answer timed out) is sent again, and a fault lasting at most five
//!   seconds with a message timeout of [`MESSAGE_TIMEOUT`] times out at
//!   most two attempts at a batch;
//! - the broker's fault is not counted against the events: after delivery
//!   no row of the outbox has been retried or is dead, and the relay's
//!   stats show no retried or dead event, although `max_retries` is 2.
//!
//! A permanent error on one produce request (MESSAGE_TOO_LARGE,
//! INVALID_RECORD) is the events' own failure: those events may be counted
//! and retried, but none may become dead, nothing may be lost, and no later
//! event of their aggregates may be consumed before them.
//!
//! Each test prints one `scenario=…` tally line (also appended to
//! `OUTBOX_TALLY_FILE` when set).

mod fixtures;
mod mock_broker;
mod support;

use fixtures::tallies::{all_arrived, first_copies, print_tally_line, Delivery};
use mock_broker::{MockKafka, PartitionReader};
use outbox::relay::{RelayStats, Retention};
use outbox::{Outbox, OutboxEvent, Relay, RelayHandle};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr as RespErr};
use serde::Serialize;
use std::collections::HashMap;
use std::time::Duration;
use support::Received;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "producer-faults.essay-scored.v1", aggregate = "essay")]
struct EssayScoredV1 {
    #[outbox_event(aggregate_id)]
    essay_id: String,
    seq: i64,
}

const AGGREGATES: usize = 40;
const PER_AGGREGATE: usize = 50;
const EVENTS: usize = AGGREGATES * PER_AGGREGATE;
/// Events of each aggregate per transaction (80-event transactions).
const PER_TRANSACTION: usize = 2;
/// 25 transactions over 5 s.
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// The fault is injected once this many messages arrived.
const INJECT_AFTER: usize = EVENTS / 5;
const INJECT_WITHIN: Duration = Duration::from_secs(30);

const BROKERS: i32 = 3;
const PARTITIONS: i32 = 6;
/// Partition leaders, round robin: broker 3 leads nothing until a fault
/// moves a partition to it.
const LEADERS: [i32; 2] = [1, 2];
/// The broker whose responses a slow-broker fault delays.
const SLOW_BROKER: i32 = 2;
/// The broker a leader-on-down-broker fault stops and moves a partition to.
const SPARE_BROKER: i32 = 3;

const BATCH_SIZE: usize = 100;
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);
/// At least twice the message timeout plus one second, as the relay requires.
const LEASE_TTL: Duration = Duration::from_secs(10);
/// Low, so a failure counted against an event by mistake soon makes it dead.
const MAX_RETRIES: u32 = 2;
/// How long a fault with a duration lasts: longer than the message timeout.
const FAULT_LASTS: Duration = Duration::from_secs(3);
/// The slow broker's round trip: far beyond the message timeout, so a
/// request times out (librdkafka checks every second) before its answer.
const SLOW_ROUND_TRIP: Duration = Duration::from_secs(10);
/// How long the broker is slow: a request sent in its first two seconds
/// times out before it ends (the answers held back are sent then).
const SLOW_FOR: Duration = Duration::from_secs(5);
const DELIVERED_WITHIN: Duration = Duration::from_secs(60);
/// Duplicates are counted once nothing new arrived for this long.
const QUIET: Duration = Duration::from_secs(1);
const DUPLICATES_AT_MOST: usize = 2 * BATCH_SIZE;

/// One fault, injected through the mock cluster.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// The next produce requests, to any broker, fail with these errors,
    /// one error per request.
    ProduceErrors(&'static [RespErr]),
    /// Every broker drops its connections and refuses new ones for
    /// [`FAULT_LASTS`].
    AllBrokersDown,
    /// [`SLOW_BROKER`], leader of half the partitions, answers every request
    /// [`SLOW_ROUND_TRIP`] late for [`SLOW_FOR`]: messages to its partitions
    /// time out (after the broker stored them) while the rest of each batch
    /// gets through.
    SlowBroker,
    /// Partition 0 moves to [`SPARE_BROKER`], which is down, for
    /// [`FAULT_LASTS`]. (A partition left without any leader is not
    /// among the faults: librdkafka 2.12.1's mock broker dereferences the
    /// missing leader when it answers a produce or fetch request for it
    /// with NOT_LEADER and crashes the test process.)
    LeaderOnDownBroker,
}

impl Fault {
    fn inject(self, kafka: &MockKafka) {
        match self {
            Fault::ProduceErrors(errors) => {
                kafka.cluster.request_errors(RDKafkaApiKey::Produce, errors)
            }
            Fault::AllBrokersDown => kafka.cluster.broker_down(-1).unwrap(),
            Fault::SlowBroker => kafka
                .cluster
                .broker_round_trip_time(SLOW_BROKER, SLOW_ROUND_TRIP)
                .unwrap(),
            Fault::LeaderOnDownBroker => {
                kafka.cluster.broker_down(SPARE_BROKER).unwrap();
                for topic in &kafka.topics {
                    kafka
                        .cluster
                        .partition_leader(topic, 0, Some(SPARE_BROKER))
                        .unwrap();
                }
            }
        }
    }

    /// How long the fault lasts; `None`: it is used up by the requests it
    /// hits.
    fn lasts(self) -> Option<Duration> {
        match self {
            Fault::ProduceErrors(_) => None,
            Fault::SlowBroker => Some(SLOW_FOR),
            Fault::AllBrokersDown | Fault::LeaderOnDownBroker => Some(FAULT_LASTS),
        }
    }

    /// How many events the fault refuses for good: one per failed request
    /// (a request carries one message, see [`spawn_relay`]).
    fn refused_events(self) -> usize {
        match self {
            Fault::ProduceErrors(errors) => errors.len(),
            _ => 0,
        }
    }

    fn heal(self, kafka: &MockKafka) {
        match self {
            Fault::ProduceErrors(_) => {}
            Fault::AllBrokersDown => kafka.cluster.broker_up(-1).unwrap(),
            Fault::SlowBroker => kafka
                .cluster
                .broker_round_trip_time(SLOW_BROKER, Duration::ZERO)
                .unwrap(),
            Fault::LeaderOnDownBroker => {
                for topic in &kafka.topics {
                    kafka
                        .cluster
                        .partition_leader(topic, 0, Some(LEADERS[0]))
                        .unwrap();
                }
                kafka.cluster.broker_up(SPARE_BROKER).unwrap();
            }
        }
    }
}

/// Whose failure the fault is.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Blame {
    /// The broker's: nothing may be counted against an event.
    Broker,
    /// The events' own (a permanent error for one request's messages):
    /// they may be counted, but not become dead or be overtaken.
    Events,
}

/// An out-of-order sequence on the first request in flight for a partition
/// is a fatal error of librdkafka's idempotent producer: the request's
/// messages fail with OUT_OF_ORDER_SEQUENCE_NUMBER, the queued ones with
/// `PurgeQueue`, and every later send with `Fatal`, until the producer is
/// replaced. None of it is the events' fault.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_sequence_on_two_produce_requests() {
    const ERRORS: [RespErr; 2] = [RespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER; 2];
    run("oosn", Fault::ProduceErrors(&ERRORS), Blame::Broker).await;
}

/// Retried inside librdkafka after a metadata refresh: the relay sees no
/// failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_leader_for_partition_on_three_produce_requests() {
    const ERRORS: [RespErr; 3] = [RespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 3];
    run("notleader", Fault::ProduceErrors(&ERRORS), Blame::Broker).await;
}

/// Retried inside librdkafka: the relay sees no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timed_out_on_three_produce_requests() {
    const ERRORS: [RespErr; 3] = [RespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT; 3];
    run("reqtimeout", Fault::ProduceErrors(&ERRORS), Blame::Broker).await;
}

/// Retried inside librdkafka: the relay sees no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_enough_replicas_on_three_produce_requests() {
    const ERRORS: [RespErr; 3] = [RespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 3];
    run("replicas", Fault::ProduceErrors(&ERRORS), Blame::Broker).await;
}

/// Retried inside librdkafka after a metadata refresh: the relay sees no
/// failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_not_available_on_three_produce_requests() {
    const ERRORS: [RespErr; 3] = [RespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE; 3];
    run("noleaderreq", Fault::ProduceErrors(&ERRORS), Blame::Broker).await;
}

/// The mock broker closes the connection instead of answering;
/// librdkafka reconnects and sends again: the relay sees no failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_on_three_produce_requests() {
    const ERRORS: [RespErr; 3] = [RespErr::RD_KAFKA_RESP_ERR__TRANSPORT; 3];
    run("dropped", Fault::ProduceErrors(&ERRORS), Blame::Broker).await;
}

/// The batch in flight times out whole (`MessageTimedOut`) and is retried
/// as the broker's failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_brokers_down_for_three_seconds() {
    run("down", Fault::AllBrokersDown, Blame::Broker).await;
}

/// A partial outage: in each batch the messages to the slow broker's
/// partitions time out (`MessageTimedOut`) while the others are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broker_slower_than_the_message_timeout_for_five_seconds() {
    run("slow", Fault::SlowBroker, Blame::Broker).await;
}

/// A partial outage: messages to partition 0 time out (`MessageTimedOut`)
/// while the other partitions take theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_led_by_a_down_broker_for_three_seconds() {
    run("leaderdown", Fault::LeaderOnDownBroker, Blame::Broker).await;
}

/// A permanent error for one request's messages: librdkafka fails them
/// (`MessageSizeTooLarge`), bumps the producer epoch and sends the
/// partition's next messages, later events of the same aggregates among
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_too_large_on_one_produce_request() {
    const ERRORS: [RespErr; 1] = [RespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE];
    run("toolarge", Fault::ProduceErrors(&ERRORS), Blame::Events).await;
}

/// As above, with `InvalidRecord`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_record_on_one_produce_request() {
    const ERRORS: [RespErr; 1] = [RespErr::RD_KAFKA_RESP_ERR_INVALID_RECORD];
    run(
        "invalidrecord",
        Fault::ProduceErrors(&ERRORS),
        Blame::Events,
    )
    .await;
}

/// The scenario: mock cluster, database, consumer, relay and writer; the
/// fault; then the checks, made after everything is stopped and the
/// database dropped, so a failing test cleans up too.
async fn run(name: &str, fault: Fault, blame: Blame) {
    support::init_tracing();
    let prefix = support::unique(&format!("pf-{name}"));
    let topics = fixtures::prefixed_topics(&prefix);
    let kafka = MockKafka::start(BROKERS, &topics, PARTITIONS, &LEADERS);
    let bootstrap = kafka.bootstrap();
    let db = support::TestDatabase::create(&format!("pf_{name}")).await;
    outbox::migrate(&db.pool).await.unwrap();
    let outbox = Outbox::new(db.pool.clone(), "svc");

    let reader = PartitionReader::start(&bootstrap, &topics, PARTITIONS);
    let relay = spawn_relay(&db.pool, &bootstrap, &prefix).await;
    let writer = tokio::spawn(write_events(outbox));
    let mut problems = Vec::new();

    if reader
        .wait_until(INJECT_WITHIN, |m| m.len() >= INJECT_AFTER)
        .await
        .is_err()
    {
        problems.push(format!(
            "only {} of {INJECT_AFTER} events arrived before the fault, within {INJECT_WITHIN:?}",
            reader.count()
        ));
    }
    fault.inject(&kafka);
    if let Some(lasts) = fault.lasts() {
        tokio::time::sleep(lasts).await;
        fault.heal(&kafka);
    }
    let committed: Vec<String> = match writer.await {
        Ok(ids) => ids,
        Err(e) => {
            problems.push(format!("the writer failed: {e}"));
            Vec::new()
        }
    };
    let arrived = all_arrived(&committed);
    // A dead event is never retried by itself: waiting on is pointless.
    let counters = relay.counters();
    let arrived_or_dead = |messages: &[Received]| arrived(messages) || counters.snapshot().dead > 0;
    match reader.wait_until(DELIVERED_WITHIN, arrived_or_dead).await {
        Ok(messages) if arrived(&messages) => {}
        Ok(_) => {
            problems.push("stopped waiting for delivery once the relay had made events dead".into())
        }
        Err(_) => problems.push(format!(
            "not every event arrived within {DELIVERED_WITHIN:?} after the last commit"
        )),
    }
    let consumed = match reader.settle(QUIET, Duration::from_secs(20)).await {
        Ok(all) => all,
        Err(all) => {
            problems.push("messages kept arriving for 20 s after delivery".into());
            all
        }
    };

    let stats = stop_relay(relay, &mut problems).await;
    let (counted_rows, dead_rows): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE retry_count > 0), count(*) FILTER (WHERE state = 'dead')
         FROM event_outbox",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap_or_else(|e| {
        problems.push(format!("cannot read the outbox's retry counts: {e}"));
        (-1, -1)
    });
    reader.stop().await;
    db.drop_db().await;
    drop(kafka);

    let tally = Tally::of(&committed, &consumed, counted_rows, dead_rows, stats);
    tally.report(name);
    problems.extend(tally.problems(blame, fault.refused_events()));
    assert!(
        problems.is_empty(),
        "{name} ({fault:?}):\n- {}",
        problems.join("\n- ")
    );
}

/// The relay under test: batches of [`BATCH_SIZE`], quick retries that
/// count, published rows kept (with their retry counts) for the check.
///
/// One produce request in flight per connection: the mock broker checks
/// idempotent sequence numbers only for transactional producers, so it
/// accepts a request sent behind a failed one, and librdkafka then takes
/// the failed request's messages as acknowledged ("implicitly acked by
/// subsequent batch success") although they never reached the log. A real
/// broker refuses that later request with OUT_OF_ORDER_SEQUENCE_NUMBER and
/// librdkafka sends both again.
///
/// One message per produce request: an error injected into one request
/// concerns one event, and the events after it in its partition, later
/// events of its aggregate among them, travel in later requests.
async fn spawn_relay(pool: &sqlx::PgPool, bootstrap: &str, prefix: &str) -> RelayHandle {
    let mut config = fixtures::relay_config(prefix);
    config.batch_size = BATCH_SIZE;
    config.message_timeout = MESSAGE_TIMEOUT;
    config.lease_ttl = LEASE_TTL;
    config.max_retries = MAX_RETRIES;
    config.retry_backoff = Duration::from_millis(100);
    config.max_retry_backoff = Duration::from_millis(500);
    config.retention = Retention::Keep(Duration::from_secs(3600));
    let mut kafka = fixtures::kafka(bootstrap);
    kafka
        .set("max.in.flight.requests.per.connection", "1")
        .set("batch.num.messages", "1");
    Relay::new(pool.clone(), kafka, config)
        .await
        .unwrap()
        .spawn()
}

/// Stops the relay (its batch in flight is produced and recorded); its
/// final counters.
async fn stop_relay(relay: RelayHandle, problems: &mut Vec<String>) -> RelayStats {
    let counters = relay.counters();
    match tokio::time::timeout(Duration::from_secs(30), relay.shutdown()).await {
        Ok(Ok(stats)) => stats,
        Ok(Err(e)) => {
            problems.push(format!("the relay failed: {e}"));
            counters.snapshot()
        }
        Err(_) => {
            problems.push("the relay did not stop within 30 s".into());
            counters.snapshot()
        }
    }
}

/// Commits every event, [`PER_TRANSACTION`] per aggregate in each
/// transaction, one transaction every [`COMMIT_EVERY`]; the committed ids.
async fn write_events(outbox: Outbox) -> Vec<String> {
    let mut ids = Vec::with_capacity(EVENTS);
    let mut pace = tokio::time::interval(COMMIT_EVERY);
    for first in (0..PER_AGGREGATE).step_by(PER_TRANSACTION) {
        pace.tick().await;
        let events: Vec<EssayScoredV1> = (first..first + PER_TRANSACTION)
            .flat_map(|seq| {
                (0..AGGREGATES).map(move |a| EssayScoredV1 {
                    essay_id: format!("essay-{a}"),
                    seq: seq as i64,
                })
            })
            .collect();
        let published = fixtures::commit_all(&outbox, &events).await;
        ids.extend(published.iter().map(ToString::to_string));
    }
    ids
}

/// What a scenario delivered, and what the relay counted.
struct Tally {
    delivery: Delivery,
    /// Events whose first copy came after a later event of their aggregate.
    overtaken: usize,
    /// The first few overtaken events: (aggregate, seq, latest seq before it).
    overtaken_examples: Vec<(String, i64, i64)>,
    counted_rows: i64,
    dead_rows: i64,
    stats: RelayStats,
}

impl Tally {
    fn of(
        committed: &[String],
        consumed: &[Received],
        counted_rows: i64,
        dead_rows: i64,
        stats: RelayStats,
    ) -> Tally {
        let mut latest: HashMap<String, i64> = HashMap::new();
        let (mut overtaken, mut overtaken_examples) = (0, Vec::new());
        for (aggregate, seq) in first_copies(consumed) {
            let latest = latest.entry(aggregate.clone()).or_insert(-1);
            if seq < *latest {
                overtaken += 1;
                if overtaken_examples.len() < 5 {
                    overtaken_examples.push((aggregate, seq, *latest));
                }
            } else {
                *latest = seq;
            }
        }
        Tally {
            delivery: Delivery::of(committed, consumed),
            overtaken,
            overtaken_examples,
            counted_rows,
            dead_rows,
            stats,
        }
    }

    /// Prints the tally line (and appends it to `OUTBOX_TALLY_FILE`).
    fn report(&self, name: &str) {
        print_tally_line(&format!(
            "{} overtaken={} counted_failures={} dead={} \
             relay_retried={} relay_dead={} relay_errors={} relay_batches={}",
            self.delivery.tally_line(&format!("producer_fault_{name}")),
            self.overtaken,
            self.counted_rows,
            self.dead_rows,
            self.stats.retried,
            self.stats.dead,
            self.stats.errors,
            self.stats.batches,
        ));
    }

    /// The checks `blame` calls for that failed; with [`Blame::Events`], at
    /// most `refused` events may be counted.
    fn problems(&self, blame: Blame, refused: usize) -> Vec<String> {
        let mut problems = Vec::new();
        problems.extend(self.delivery.missing_problem());
        if self.delivery.order_violations > 0 || self.overtaken > 0 {
            problems.push(format!(
                "{} order violations; {} events arrived (first copy) after a later event of \
                 their aggregate, e.g. (aggregate, seq, after seq) {:?}",
                self.delivery.order_violations, self.overtaken, self.overtaken_examples
            ));
        }
        if self.delivery.duplicates > DUPLICATES_AT_MOST {
            problems.push(format!(
                "{} duplicates, more than {DUPLICATES_AT_MOST} (two batches)",
                self.delivery.duplicates
            ));
        }
        if self.dead_rows > 0 || self.stats.dead > 0 {
            problems.push(format!(
                "{} events dead in the outbox, {} by the relay's stats",
                self.dead_rows, self.stats.dead
            ));
        }
        match blame {
            Blame::Broker => {
                if self.counted_rows > 0 || self.stats.retried > 0 {
                    problems.push(format!(
                        "the broker's fault was counted against events: {} rows with \
                         retry_count > 0, {} retried attempts by the relay's stats",
                        self.counted_rows, self.stats.retried
                    ));
                }
            }
            Blame::Events => {
                if self.counted_rows > refused as i64 {
                    problems.push(format!(
                        "{} events counted, {refused} refused by the broker",
                        self.counted_rows
                    ));
                }
            }
        }
        problems
    }
}
