//! The `outbox` binary end to end, as a process against a real Postgres
//! (and a broker where events must arrive): exit codes, tables, `--json`.

mod fixtures;
mod support;

use outbox::{Outbox, OutboxEvent, Relay};
use serde::Serialize;
use serde_json::Value;
use std::process::Command;
use std::time::Duration;
use uuid::Uuid;

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "cli.file-uploaded.v1", aggregate = "file_upload")]
struct FileUploadedV1 {
    #[outbox_event(aggregate_id)]
    file_upload_id: String,
    seq: i64,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs the `outbox` binary with `DATABASE_URL=url` (none when empty).
fn outbox_cli(url: &str, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outbox"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("OUTBOX_SCHEMA")
        .env_remove("OUTBOX_TOPIC_PREFIX")
        .env("RUST_LOG", "warn");
    if !url.is_empty() {
        command.env("DATABASE_URL", url);
    }
    let output = command.output().expect("the outbox binary runs");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs the CLI off the async runtime's threads.
async fn outbox_async(url: &str, args: &[&str]) -> Run {
    let url = url.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        outbox_cli(&url, &args)
    })
    .await
    .expect("the CLI thread finishes")
}

async fn publish(outbox: &Outbox, aggregate: &str, seq: i64) -> Uuid {
    let mut tx = outbox.transactional_publish().await.unwrap();
    let id = tx
        .publish(&FileUploadedV1 {
            file_upload_id: aggregate.to_owned(),
            seq,
        })
        .await
        .unwrap();
    tx.commit().await.unwrap();
    id
}

async fn mark_dead(pool: &sqlx::PgPool, id: Uuid) {
    let n = sqlx::query(
        "UPDATE event_outbox SET state = 'dead', retry_count = 6, last_error = 'Broker: Message size too large'
         WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap()
    .rows_affected();
    assert_eq!(n, 1);
}

async fn state_of(pool: &sqlx::PgPool, id: Uuid) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM event_outbox WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn migrate_then_status_shows_depth_per_topic_and_state() {
    let db = support::TestDatabase::create("cli_status").await;
    let migrated = outbox_async(&db.url, &["migrate"]).await;
    assert_eq!(migrated.code, 0, "{migrated:?}");
    assert!(migrated.stdout.contains("up to date"), "{migrated:?}");
    let again = outbox_async(&db.url, &["migrate", "--json"]).await;
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(again.json()["migrated"], true);

    let empty = outbox_async(&db.url, &["status", "--json"]).await;
    assert_eq!(empty.code, 0, "{empty:?}");
    assert_eq!(empty.json()["pending"], 0);
    assert!(empty.json()["oldest_pending_age_seconds"].is_null());

    let outbox = Outbox::new(db.pool.clone(), "svc");
    for seq in 0..3 {
        publish(&outbox, "f-1", seq).await;
    }
    let dead = publish(&outbox, "f-2", 0).await;
    mark_dead(&db.pool, dead).await;

    let status = outbox_async(&db.url, &["status", "--json"]).await;
    assert_eq!(status.code, 0, "{status:?}");
    let s = status.json();
    assert_eq!(s["pending"], 3, "{status:?}");
    assert_eq!(s["dead"], 1);
    assert!(
        s["oldest_pending_age_seconds"]
            .as_f64()
            .is_some_and(|a| a >= 0.0),
        "{status:?}"
    );
    assert_eq!(s["topics"][0]["topic"], "cli.file-uploaded.v1");
    assert_eq!(s["topics"][0]["pending"], 3);
    assert_eq!(s["topics"][0]["dead"], 1);

    let human = outbox_async(&db.url, &["status"]).await;
    assert_eq!(human.code, 0, "{human:?}");
    assert!(
        human.stdout.contains("queue depth (pending):  3"),
        "{human:?}"
    );
    assert!(human.stdout.contains("cli.file-uploaded.v1"), "{human:?}");
    assert!(
        human.stdout.contains("outbox failed list"),
        "dead events point at the next step: {human:?}"
    );

    // A configured schema.
    let in_schema = outbox_async(&db.url, &["migrate", "--schema", "file_service"]).await;
    assert_eq!(in_schema.code, 0, "{in_schema:?}");
    let status = outbox_async(&db.url, &["status", "--schema", "file_service", "--json"]).await;
    assert_eq!(status.code, 0, "{status:?}");
    assert_eq!(status.json()["pending"], 0);
    let bad = outbox_async(&db.url, &["status", "--schema", "x; drop table y"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("not a valid SQL identifier"), "{bad:?}");
    db.drop_db().await;
}

#[tokio::test]
async fn failed_list_and_show() {
    let db = support::TestDatabase::create("cli_failed").await;
    outbox::migrate(&db.pool).await.unwrap();
    let outbox = Outbox::new(db.pool.clone(), "svc");

    let none = outbox_async(&db.url, &["failed", "list"]).await;
    assert_eq!(none.code, 0, "{none:?}");
    assert!(none.stdout.contains("no dead events"), "{none:?}");

    let dead = publish(&outbox, "f-dead", 0).await;
    let pending = publish(&outbox, "f-ok", 0).await;
    mark_dead(&db.pool, dead).await;

    let list = outbox_async(&db.url, &["failed", "list", "--json"]).await;
    assert_eq!(list.code, 0, "{list:?}");
    let items = list.json();
    let items = items.as_array().expect("an array");
    assert_eq!(items.len(), 1, "{list:?}");
    assert_eq!(items[0]["id"], dead.to_string());
    assert_eq!(items[0]["event_type"], "FileUploadedV1");
    assert_eq!(items[0]["aggregate_id"], "f-dead");
    assert_eq!(items[0]["retry_count"], 6);
    assert_eq!(items[0]["last_error"], "Broker: Message size too large");

    let table = outbox_async(&db.url, &["failed", "list"]).await;
    assert_eq!(table.code, 0, "{table:?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("LAST ERROR"),
        "{table:?}"
    );
    assert!(
        lines[1].contains(&dead.to_string()) && lines[1].contains("file_upload/f-dead"),
        "{table:?}"
    );
    assert!(
        !table.stdout.contains(&pending.to_string()),
        "only dead events are listed"
    );

    let show = outbox_async(&db.url, &["failed", "show", &dead.to_string(), "--json"]).await;
    assert_eq!(show.code, 0, "{show:?}");
    let detail = show.json();
    assert_eq!(detail["state"], "dead");
    assert_eq!(detail["envelope"]["event_id"], dead.to_string());
    assert_eq!(detail["envelope"]["data"]["file_upload_id"], "f-dead");
    assert!(detail["headers"]["correlation_id"].is_string());

    let human = outbox_async(&db.url, &["failed", "show", &dead.to_string()]).await;
    assert_eq!(human.code, 0, "{human:?}");
    assert!(human.stdout.contains("state:        dead"), "{human:?}");
    assert!(
        human.stdout.contains("\"event_type\": \"FileUploadedV1\""),
        "{human:?}"
    );

    let unknown = Uuid::new_v4();
    let missing = outbox_async(&db.url, &["failed", "show", &unknown.to_string()]).await;
    assert_eq!(missing.code, 3, "{missing:?}");
    assert!(
        missing
            .stderr
            .contains(&format!("no outbox event has id {unknown}")),
        "{missing:?}"
    );
    let missing_json =
        outbox_async(&db.url, &["failed", "show", &unknown.to_string(), "--json"]).await;
    assert_eq!(missing_json.code, 3, "{missing_json:?}");
    let error: Value =
        serde_json::from_str(missing_json.stderr.trim()).expect("JSON error on stderr");
    assert_eq!(error["error"]["kind"], "not_found");
    assert_eq!(error["error"]["exit_code"], 3);

    let not_uuid = outbox_async(&db.url, &["failed", "show", "not-a-uuid"]).await;
    assert_eq!(not_uuid.code, 2, "{not_uuid:?}");
    db.drop_db().await;
}

#[tokio::test]
async fn retry_and_release_refuse_what_they_cannot_do() {
    let db = support::TestDatabase::create("cli_refuse").await;
    outbox::migrate(&db.pool).await.unwrap();
    let outbox = Outbox::new(db.pool.clone(), "svc");
    let pending = publish(&outbox, "f-1", 0).await;

    let unknown = outbox_async(&db.url, &["retry", &Uuid::new_v4().to_string()]).await;
    assert_eq!(unknown.code, 3, "{unknown:?}");
    let not_dead = outbox_async(&db.url, &["retry", &pending.to_string()]).await;
    assert_eq!(not_dead.code, 4, "{not_dead:?}");
    assert!(
        not_dead.stderr.contains("is pending, not dead"),
        "{not_dead:?}"
    );
    assert_eq!(
        state_of(&db.pool, pending).await.as_deref(),
        Some("pending")
    );

    let pending_id = pending.to_string();
    for usage in [
        vec!["retry"],
        vec!["retry", "--topic", "cli.file-uploaded.v1"],
        vec!["retry", &pending_id, "--all"],
        vec!["release", "file_upload"],
    ] {
        let run = outbox_async(&db.url, &usage).await;
        assert_eq!(run.code, 2, "{usage:?}: {run:?}");
    }

    let nothing = outbox_async(&db.url, &["retry", "--all", "--json"]).await;
    assert_eq!(nothing.code, 0, "{nothing:?}");
    assert_eq!(nothing.json()["retried"], 0);
    let release = outbox_async(&db.url, &["release", "file_upload", "f-1"]).await;
    assert_eq!(release.code, 3, "{release:?}");
    assert!(release.stderr.contains("has no dead events"), "{release:?}");
    db.drop_db().await;
}

#[tokio::test]
async fn retry_all_by_topic_resets_dead_events() {
    let db = support::TestDatabase::create("cli_retryall").await;
    outbox::migrate(&db.pool).await.unwrap();
    let outbox = Outbox::new(db.pool.clone(), "svc");
    let a = publish(&outbox, "f-a", 0).await;
    let b = publish(&outbox, "f-b", 0).await;
    mark_dead(&db.pool, a).await;
    mark_dead(&db.pool, b).await;
    sqlx::query("UPDATE event_outbox SET topic = 'other.topic.v1' WHERE id = $1")
        .bind(b)
        .execute(&db.pool)
        .await
        .unwrap();

    let run = outbox_async(
        &db.url,
        &[
            "retry",
            "--all",
            "--topic",
            "cli.file-uploaded.v1",
            "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["retried"], 1);
    let row: (String, i32, Option<String>) =
        sqlx::query_as("SELECT state, retry_count, last_error FROM event_outbox WHERE id = $1")
            .bind(a)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(row.0, "pending");
    assert_eq!(
        row.1, 1,
        "a fresh retry budget, and still the head of its aggregate"
    );
    assert_eq!(
        row.2.as_deref(),
        Some("Broker: Message size too large"),
        "the last error is kept"
    );
    assert_eq!(state_of(&db.pool, b).await.as_deref(), Some("dead"));

    let all = outbox_async(&db.url, &["retry", "--all"]).await;
    assert_eq!(all.code, 0, "{all:?}");
    assert!(
        all.stdout.contains("1 dead event(s) are pending again"),
        "{all:?}"
    );
    assert_eq!(state_of(&db.pool, b).await.as_deref(), Some("pending"));
    db.drop_db().await;
}

#[tokio::test]
async fn purge_deletes_only_published_rows_older_than_the_threshold() {
    let db = support::TestDatabase::create("cli_purge").await;
    outbox::migrate(&db.pool).await.unwrap();
    let outbox = Outbox::new(db.pool.clone(), "svc");
    let mut ids = Vec::new();
    for seq in 0..9 {
        ids.push(publish(&outbox, &format!("f-{seq}"), seq).await);
    }
    // 5 published 10 days ago, 2 published an hour ago, 1 dead and 1
    // pending from 10 days ago.
    let set = |sql: &'static str, range: std::ops::Range<usize>| {
        let pool = db.pool.clone();
        let batch: Vec<Uuid> = ids[range].to_vec();
        async move {
            sqlx::query(sql).bind(batch).execute(&pool).await.unwrap();
        }
    };
    set("UPDATE event_outbox SET state = 'published', published_at = now() - interval '10 days' WHERE id = ANY($1)", 0..5).await;
    set("UPDATE event_outbox SET state = 'published', published_at = now() - interval '1 hour' WHERE id = ANY($1)", 5..7).await;
    set("UPDATE event_outbox SET state = 'dead', created_at = now() - interval '10 days' WHERE id = ANY($1)", 7..8).await;
    set(
        "UPDATE event_outbox SET created_at = now() - interval '10 days' WHERE id = ANY($1)",
        8..9,
    )
    .await;

    let bad = outbox_async(&db.url, &["purge", "--published-older-than", "soon"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr.contains("7d"),
        "the error shows the expected syntax: {bad:?}"
    );
    let missing = outbox_async(&db.url, &["purge"]).await;
    assert_eq!(missing.code, 2, "{missing:?}");

    let run = outbox_async(
        &db.url,
        &[
            "purge",
            "--published-older-than",
            "7d",
            "--batch-size",
            "2",
            "--json",
        ],
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.json()["deleted"], 5, "{run:?}");
    let progress: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("rows deleted so far"))
        .collect();
    assert_eq!(
        progress.len(),
        3,
        "one progress line per batch of 2: {run:?}"
    );

    let left: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM event_outbox GROUP BY state ORDER BY state")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        left,
        [
            ("dead".to_owned(), 1),
            ("pending".to_owned(), 1),
            ("published".to_owned(), 2)
        ]
    );

    let human = outbox_async(&db.url, &["purge", "--published-older-than", "30m"]).await;
    assert_eq!(human.code, 0, "{human:?}");
    assert!(
        human
            .stdout
            .contains("deleted 2 published row(s) older than 30m"),
        "{human:?}"
    );
    db.drop_db().await;
}

#[tokio::test]
async fn database_errors_are_operational_and_never_show_the_password() {
    let no_url = outbox_async("", &["status"]).await;
    assert_eq!(no_url.code, 2, "{no_url:?}");
    assert!(no_url.stderr.contains("DATABASE_URL"), "{no_url:?}");

    let url = "postgres://outbox:hunter2-secret@127.0.0.1:1/outbox";
    let unreachable = outbox_async(url, &["failed", "list"]).await;
    assert_eq!(unreachable.code, 1, "{unreachable:?}");
    assert!(
        unreachable.stderr.contains(
            "could not connect to the database at postgres://outbox:****@127.0.0.1:1/outbox"
        ),
        "{unreachable:?}"
    );
    assert!(!unreachable.stderr.contains("hunter2"), "{unreachable:?}");
    let flag = outbox_async("", &["--database-url", url, "status", "--json"]).await;
    assert_eq!(flag.code, 1, "{flag:?}");
    assert!(!flag.stderr.contains("hunter2"), "{flag:?}");
    let error: Value = serde_json::from_str(flag.stderr.trim()).expect("JSON error on stderr");
    assert_eq!(error["error"]["kind"], "failure");

    let help = outbox_async(url, &["--help"]).await;
    assert_eq!(help.code, 0, "{help:?}");
    assert!(
        !help.stdout.contains("hunter2"),
        "env values are hidden in --help: {help:?}"
    );
    assert!(help.stdout.contains("Exit codes"), "{help:?}");
}

#[tokio::test]
async fn registry_of_the_plain_binary_is_empty() {
    let list = outbox_async("", &["registry", "list", "--json"]).await;
    assert_eq!(list.code, 0, "{list:?}");
    assert_eq!(list.json(), serde_json::json!([]));
    assert!(list.stderr.contains("embed the CLI"), "{list:?}");
    let export = outbox_async("", &["registry", "export", "--format", "asyncapi"]).await;
    assert_eq!(export.code, 0, "{export:?}");
    assert_eq!(export.json()["asyncapi"], "3.0.0");
    let bad = outbox_async("", &["registry", "export", "--format", "openapi"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
}

/// Waits until `id` has `state`, or panics after `timeout`.
async fn wait_for_state(pool: &sqlx::PgPool, id: Uuid, state: Option<&str>, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let now = state_of(pool, id).await;
        if now.as_deref() == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "event {id} is {now:?}, expected {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_makes_a_dead_event_arrive_and_release_unblocks_an_aggregate() {
    support::init_tracing();
    let db = support::TestDatabase::create("cli_deliver").await;
    outbox::migrate(&db.pool).await.unwrap();
    let prefix = support::unique("cli_deliver");
    let topic = format!("{prefix}cli.file-uploaded.v1");
    let bootstrap = support::bootstrap_servers();
    support::create_topics(&bootstrap, std::slice::from_ref(&topic), 2).await;
    let collector = support::Collector::start(&bootstrap, std::slice::from_ref(&topic));
    let outbox = Outbox::new(db.pool.clone(), "svc");

    // Dead before the relay starts: `retried` alone; `held` is dead with a
    // later event of its aggregate waiting behind it.
    let retried = publish(&outbox, "f-retry", 0).await;
    let held = publish(&outbox, "f-held", 0).await;
    let behind = publish(&outbox, "f-held", 1).await;
    mark_dead(&db.pool, retried).await;
    mark_dead(&db.pool, held).await;

    let relay = Relay::new(
        db.pool.clone(),
        fixtures::kafka(&bootstrap),
        fixtures::relay_config(&prefix),
    )
    .await
    .expect("relay starts")
    .spawn();
    // A marker on another aggregate proves the relay runs and skipped the rest.
    let marker = publish(&outbox, "f-marker", 0).await;
    let got = collector.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].headers["event_id"], marker.to_string());
    let settled = collector.settle(Duration::from_secs(2)).await;
    assert_eq!(
        settled.len(),
        1,
        "dead events and what waits behind them stay put"
    );
    assert_eq!(state_of(&db.pool, behind).await.as_deref(), Some("pending"));

    let retry = outbox_async(&db.url, &["retry", &retried.to_string()]).await;
    assert_eq!(retry.code, 0, "{retry:?}");
    assert!(retry.stdout.contains("pending again"), "{retry:?}");
    let got = collector.wait_for(2, Duration::from_secs(30)).await;
    assert_eq!(
        got[1].headers["event_id"],
        retried.to_string(),
        "the retried event arrives"
    );
    wait_for_state(&db.pool, retried, None, Duration::from_secs(10)).await;

    let release = outbox_async(&db.url, &["release", "file_upload", "f-held", "--json"]).await;
    assert_eq!(release.code, 0, "{release:?}");
    assert_eq!(release.json()["released"], 1);
    let got = collector.wait_for(3, Duration::from_secs(30)).await;
    assert_eq!(
        got[2].headers["event_id"],
        behind.to_string(),
        "the later event of the released aggregate arrives"
    );
    let all = collector.settle(Duration::from_secs(2)).await;
    assert_eq!(all.len(), 3, "the released event itself is never sent");
    assert_eq!(state_of(&db.pool, held).await.as_deref(), Some("released"));
    let again = outbox_async(&db.url, &["release", "file_upload", "f-held"]).await;
    assert_eq!(again.code, 3, "{again:?}");

    relay.shutdown().await.unwrap();
    collector.stop();
    db.drop_db().await;
}

/// A plain HTTP/1.1 GET over TCP: status code and body.
fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_process_delivers_serves_metrics_and_health_and_stops_on_sigterm() {
    let db = support::TestDatabase::create("cli_relay").await;
    let bootstrap = support::bootstrap_servers();
    let bad = outbox_async(&db.url, &["relay", "--bootstrap-servers", &bootstrap]).await;
    assert_eq!(bad.code, 1, "no tables yet: {bad:?}");
    assert!(bad.stderr.contains("run the migrations"), "{bad:?}");
    outbox::migrate(&db.pool).await.unwrap();

    let prefix = support::unique("cli_relay");
    let topic = format!("{prefix}cli.file-uploaded.v1");
    support::create_topics(&bootstrap, std::slice::from_ref(&topic), 1).await;
    let collector = support::Collector::start(&bootstrap, std::slice::from_ref(&topic));
    let outbox = Outbox::new(db.pool.clone(), "svc");
    let id = publish(&outbox, "f-relay", 0).await;

    let port = support::free_port();
    let addr = format!("127.0.0.1:{port}");
    let child = Command::new(env!("CARGO_BIN_EXE_outbox"))
        .args(["relay", "--metrics-addr", &addr])
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
        .env("OUTBOX_TOPIC_PREFIX", &prefix)
        .env("OUTBOX_POLL_INTERVAL_SECONDS", "0.25")
        .env("RUST_LOG", "warn")
        .env_remove("OUTBOX_SCHEMA")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the relay process starts");

    let got = collector.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got[0].headers["event_id"], id.to_string());

    let (metrics, health) = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let metrics = http_get(port, "/metrics");
            if let Ok((200, body)) = &metrics {
                if body.contains("outbox_events_published_total{") {
                    return (body.clone(), http_get(port, "/health"));
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no published metric: {metrics:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    assert!(metrics.contains("outbox_queue_depth"), "{metrics}");
    let (status, body) = health.expect("/health answers");
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).expect("/health is JSON");
    assert_eq!(report["healthy"], true, "{body}");

    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .expect("the relay process exits");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "graceful stop: {stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("outbox relay stopped: 1 delivered"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(
        state_of(&db.pool, id).await,
        None,
        "delivered rows are deleted"
    );
    let leased: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_outbox_lease WHERE owner IS NOT NULL AND expires_at > now()",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(leased, 0, "the stopped relay gave its leases back");

    let invalid = Command::new(env!("CARGO_BIN_EXE_outbox"))
        .args(["relay", "--bootstrap-servers", &bootstrap])
        .env("DATABASE_URL", &db.url)
        .env("OUTBOX_BATCH_SIZE", "lots")
        .output()
        .unwrap();
    assert_eq!(invalid.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&invalid.stderr).contains("OUTBOX_BATCH_SIZE"));
    collector.stop();
    db.drop_db().await;
}
