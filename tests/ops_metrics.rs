//! Metrics and health: metric values move as events are added, delivered
//! and die; every counter is exposed at zero before anything happens;
//! `/metrics` serves valid OpenMetrics text and `/health` turns unhealthy
//! (503) when a dead event waits.

mod fixtures;
mod support;

use outbox::ops::http::ops_router;
use outbox::ops::{health_check as check, HealthConfig, HealthProbe};
use outbox::{Outbox, OutboxEvent, OutboxMetrics, Relay};
use prometheus_client::encoding::text::encode;
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "ops.file-added.v1", aggregate = "file")]
struct FileAddedV1 {
    #[outbox_event(aggregate_id)]
    file_id: String,
    seq: i64,
}

#[derive(Serialize, OutboxEvent)]
#[outbox_event(topic = "ops.essay-uploaded.v1", aggregate = "essay")]
struct EssayUploadedV1 {
    #[outbox_event(aggregate_id)]
    essay_id: String,
    content: String,
}

struct Setup {
    db: support::TestDatabase,
    prefix: String,
    collector: support::Collector,
    metrics: OutboxMetrics,
    registry: Registry,
}

async fn setup(label: &str) -> Setup {
    support::init_tracing();
    let db = support::TestDatabase::create(label).await;
    outbox::migrate(&db.pool).await.expect("migrations apply");
    let prefix = support::unique(label);
    let topics = fixtures::prefixed_topics(&prefix);
    let bootstrap = support::bootstrap_servers();
    support::create_topics(&bootstrap, &topics, 2).await;
    let collector = support::Collector::start(&bootstrap, &topics);
    let metrics = OutboxMetrics::new();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    Setup {
        db,
        prefix,
        collector,
        metrics,
        registry,
    }
}

fn exposition(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("metrics encode");
    text
}

fn scrape(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("prometheus-parse reads the exposition")
}

/// The value of the sample `name` whose labels include `labels`.
fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use prometheus_parse::Value;
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a scalar: {other:?}"),
        })
}

fn read(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    value(&scrape(&exposition(registry)), name, labels).unwrap_or(0.0)
}

/// Polls until `cond` holds on the current exposition; panics with it on timeout.
async fn wait_until(
    registry: &Registry,
    what: &str,
    timeout: Duration,
    cond: impl Fn(&prometheus_parse::Scrape) -> bool,
) {
    let deadline = Instant::now() + timeout;
    loop {
        let text = exposition(registry);
        if cond(&scrape(&text)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const FILE: [(&str, &str); 2] = [
    ("topic", "ops.file-added.v1"),
    ("event_type", "FileAddedV1"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_published_and_queue_depth_follow_the_events() {
    let s = setup("opsmetrics").await;
    let outbox = Outbox::builder(s.db.pool.clone(), "file_service")
        .metrics(s.metrics.clone())
        .build();

    // 3 committed transactions of 4 events, one committed by the caller,
    // and a rolled-back transaction that must not count.
    for tx_no in 0..3 {
        let mut tx = outbox.transactional_publish().await.unwrap();
        for i in 0..4 {
            tx.publish(&FileAddedV1 {
                file_id: format!("f-{i}"),
                seq: tx_no,
            })
            .await
            .unwrap();
        }
        assert_eq!(
            read(&s.registry, "outbox_events_added_total", &FILE),
            (tx_no * 4) as f64,
            "counted at commit, not before"
        );
        tx.commit().await.unwrap();
    }
    let mut rolled_back = outbox.transactional_publish().await.unwrap();
    rolled_back
        .publish(&FileAddedV1 {
            file_id: "f-rb".into(),
            seq: 99,
        })
        .await
        .unwrap();
    rolled_back.rollback().await.unwrap();
    let mut own = s.db.pool.begin().await.unwrap();
    outbox
        .publish_in(
            &mut own,
            &FileAddedV1 {
                file_id: "f-own".into(),
                seq: 0,
            },
        )
        .await
        .unwrap();
    own.commit().await.unwrap();
    const N: usize = 13;
    assert_eq!(
        read(&s.registry, "outbox_events_added_total", &FILE),
        N as f64
    );

    let summary = s
        .metrics
        .refresh_queue_gauges(&s.db.pool, None)
        .await
        .unwrap();
    assert_eq!(summary.pending, N as u64);
    assert_eq!(read(&s.registry, "outbox_queue_depth", &[]), N as f64);
    assert!(read(&s.registry, "outbox_oldest_pending_age_seconds", &[]) >= 0.0);
    let stats = outbox::ops::queue_stats(&s.db.pool, None).await.unwrap();
    assert_eq!((stats.pending, stats.dead), (N as u64, 0));
    assert_eq!(stats.topics.len(), 1);
    assert_eq!(stats.topics[0].topic, "ops.file-added.v1");
    assert_eq!(stats.topics[0].pending, N as u64);

    let relay = Relay::new(
        s.db.pool.clone(),
        fixtures::kafka(&support::bootstrap_servers()),
        fixtures::relay_config(&s.prefix),
    )
    .await
    .expect("relay starts")
    .with_metrics(s.metrics.clone());
    let counters = relay.counters();
    let handle = relay.spawn();
    s.collector.wait_for(N, Duration::from_secs(30)).await;
    // The relay refreshes the gauges on its own every few seconds.
    wait_until(
        &s.registry,
        "published_total = N and depth 0",
        Duration::from_secs(20),
        |m| {
            value(m, "outbox_events_published_total", &FILE) == Some(N as f64)
                && value(m, "outbox_queue_depth", &[]) == Some(0.0)
        },
    )
    .await;
    let m = scrape(&exposition(&s.registry));
    assert_eq!(
        value(&m, "outbox_events_failed_total", &FILE),
        Some(0.0),
        "nothing died, and the series is there at zero"
    );
    assert_eq!(
        value(&m, "outbox_oldest_pending_age_seconds", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(&m, "outbox_event_age_seconds_count", &[]),
        Some(N as f64),
        "one age per delivered event"
    );
    assert!(value(&m, "outbox_event_age_seconds_sum", &[]).unwrap() > 0.0);
    assert!(value(&m, "outbox_relay_processing_seconds_count", &[]).unwrap() >= 1.0);
    let last_loop = value(&m, "outbox_relay_last_loop_timestamp_seconds", &[]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now - last_loop).abs() < 30.0,
        "last loop {last_loop} vs now {now}"
    );

    // The same registry over HTTP, as the standalone relay serves it.
    let probe = HealthProbe::new(s.db.pool.clone()).relay(counters);
    let addr = serve(Arc::new(s.registry), probe).await;
    let (status, headers, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        headers
            .contains("content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{headers}"
    );
    if let Err(problem) = validate_openmetrics(&body) {
        panic!("/metrics is not valid OpenMetrics text: {problem}\n{body}");
    }
    let served = scrape(&body);
    assert_eq!(
        value(&served, "outbox_events_added_total", &FILE),
        Some(N as f64)
    );
    assert_eq!(
        value(&served, "outbox_events_published_total", &FILE),
        Some(N as f64)
    );
    let (status, _, body) = http_get(addr, "/health").await;
    let report: serde_json::Value = serde_json::from_str(&body).expect("health is JSON");
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["healthy"], true);
    assert_eq!(report["pending"], 0);
    assert_eq!(report["dead"], 0);

    handle.shutdown().await.unwrap();
    s.collector.stop();
    s.db.drop_db().await;
}

/// Alerts on `increase()`/`rate()` and dashboards need every series from
/// the start: a relay that has done nothing serves each counter at zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_relay_serves_every_counter_at_zero() {
    let s = setup("opsidle").await;
    let relay = Relay::new(
        s.db.pool.clone(),
        fixtures::kafka(&support::bootstrap_servers()),
        fixtures::relay_config(&s.prefix),
    )
    .await
    .unwrap()
    .with_metrics(s.metrics.clone());
    let counters = relay.counters();
    let handle = relay.spawn();
    let addr = serve(
        Arc::new(s.registry),
        HealthProbe::new(s.db.pool.clone()).relay(counters),
    )
    .await;
    let (status, _, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200, "{body}");
    validate_openmetrics(&body).unwrap();
    let scraped = scrape(&body);
    for kind in [
        "database",
        "broker_unreachable",
        "delivery",
        "producer",
        "reordered",
    ] {
        assert_eq!(
            value(&scraped, "outbox_relay_errors_total", &[("kind", kind)]),
            Some(0.0),
            "outbox_relay_errors_total{{kind={kind:?}}} in\n{body}"
        );
    }
    for (topic, event_type) in [
        ("ops.file-added.v1", "FileAddedV1"),
        ("ops.essay-uploaded.v1", "EssayUploadedV1"),
    ] {
        for name in [
            "outbox_events_added_total",
            "outbox_events_published_total",
            "outbox_events_failed_total",
        ] {
            assert_eq!(
                value(
                    &scraped,
                    name,
                    &[("topic", topic), ("event_type", event_type)]
                ),
                Some(0.0),
                "{name} for {event_type} in\n{body}"
            );
        }
    }
    handle.shutdown().await.unwrap();
    s.collector.stop();
    s.db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_counts_as_failed_and_makes_health_unhealthy() {
    let s = setup("opspoison").await;
    let outbox = Outbox::builder(s.db.pool.clone(), "svc")
        .metrics(s.metrics.clone())
        .build();
    let mut kafka = fixtures::kafka(&support::bootstrap_servers());
    kafka.set("message.max.bytes", "50000"); // the oversized event is refused
    let mut config = fixtures::relay_config(&s.prefix);
    config.max_retries = 1;
    let relay = Relay::new(s.db.pool.clone(), kafka, config)
        .await
        .unwrap()
        .with_metrics(s.metrics.clone());
    let counters = relay.counters();
    let handle = relay.spawn();

    let mut tx = outbox.transactional_publish().await.unwrap();
    tx.publish(&EssayUploadedV1 {
        essay_id: "poison".into(),
        content: "x".repeat(200_000),
    })
    .await
    .unwrap();
    tx.publish(&EssayUploadedV1 {
        essay_id: "fine".into(),
        content: "small".into(),
    })
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let essay = [
        ("topic", "ops.essay-uploaded.v1"),
        ("event_type", "EssayUploadedV1"),
    ];
    wait_until(
        &s.registry,
        "failed_total 1 and the dead gauge",
        Duration::from_secs(60),
        |m| {
            value(m, "outbox_events_failed_total", &essay) == Some(1.0)
                && value(m, "outbox_dead_events", &[]) == Some(1.0)
        },
    )
    .await;
    let m = scrape(&exposition(&s.registry));
    assert_eq!(
        value(&m, "outbox_events_published_total", &essay),
        Some(1.0),
        "the other aggregate flowed"
    );
    assert_eq!(value(&m, "outbox_events_added_total", &essay), Some(2.0));
    assert!(
        value(&m, "outbox_relay_errors_total", &[("kind", "delivery")]).unwrap_or(0.0) >= 1.0,
        "the first refused attempt is a transient delivery error"
    );

    let report = check(&s.db.pool, None, &HealthConfig::default(), Some(&counters)).await;
    assert!(!report.healthy, "{report:?}");
    assert_eq!(report.dead, Some(1));
    assert_eq!(report.reasons.len(), 1, "{report:?}");
    assert!(
        report.reasons[0].contains("1 dead outbox event"),
        "{report:?}"
    );
    assert!(
        report.reasons[0].contains("outbox failed list"),
        "names the fix: {report:?}"
    );
    let lenient = HealthConfig {
        dead_events_unhealthy: false,
        ..HealthConfig::default()
    };
    assert!(
        check(&s.db.pool, None, &lenient, Some(&counters))
            .await
            .healthy
    );

    let addr = serve(
        Arc::new(s.registry),
        HealthProbe::new(s.db.pool.clone()).relay(counters.clone()),
    )
    .await;
    let (status, headers, body) = http_get(addr, "/health").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        headers.contains("content-type: application/json"),
        "{headers}"
    );
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["healthy"], false);
    assert!(
        json["reasons"][0].as_str().unwrap().contains("dead"),
        "{json}"
    );

    handle.shutdown().await.unwrap();
    // A stopped relay's loop no longer runs: unhealthy past the stall threshold.
    let strict = HealthConfig {
        dead_events_unhealthy: false,
        max_loop_stall: Duration::from_millis(300),
        ..HealthConfig::default()
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stalled = HealthProbe::new(s.db.pool.clone())
        .config(strict.clone())
        .relay(counters)
        .check()
        .await;
    assert!(!stalled.healthy, "{stalled:?}");
    assert!(
        stalled.reasons[0].contains("relay loop last ran"),
        "{stalled:?}"
    );
    assert!(
        HealthProbe::new(s.db.pool.clone())
            .config(strict)
            .check()
            .await
            .healthy,
        "no relay given: no stall check"
    );
    s.collector.stop();
    s.db.drop_db().await;
}

async fn serve(registry: Arc<Registry>, probe: HealthProbe) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, ops_router(registry, probe)).await });
    addr
}

/// A plain HTTP/1.1 GET: status, lower-cased header block, body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers end");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let head = head.to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("a content-length (not chunked)");
    assert_eq!(length, body.len());
    (status, head, body.to_owned())
}

/// Checks `text` against the OpenMetrics 1.0 text format: metadata before
/// samples, each family once, sample names matching the family's type,
/// well-formed names, labels and values, monotonic histogram buckets ending
/// at `+Inf` equal to `_count`, and `# EOF` last.
fn validate_openmetrics(text: &str) -> Result<(), String> {
    fn metric_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }
    fn label_name(s: &str) -> bool {
        let mut chars = s.chars();
        matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    }
    fn number(s: &str) -> Option<f64> {
        match s {
            "+Inf" => Some(f64::INFINITY),
            "-Inf" => Some(f64::NEG_INFINITY),
            "NaN" => Some(f64::NAN),
            _ => s.parse::<f64>().ok().filter(|v| v.is_finite()),
        }
    }
    /// `{a="x",b="y"}` → pairs; escapes `\\`, `\"`, `\n` only.
    fn labels(s: &str) -> Result<Vec<(String, String)>, String> {
        let mut out = Vec::new();
        let mut rest = s
            .strip_prefix('{')
            .and_then(|r| r.strip_suffix('}'))
            .ok_or("labels not in braces")?;
        while !rest.is_empty() {
            let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
            if !label_name(name) {
                return Err(format!("bad label name {name:?}"));
            }
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c @ ('\\' | '"'))) => value.push(c),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    Some((i, '"')) => break i,
                    Some((_, '\n')) => return Err("raw newline in label value".into()),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            };
            out.push((name.to_owned(), value));
            rest = &after[end + 1..];
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
            } else if !rest.is_empty() {
                return Err(format!("expected , between labels at {rest:?}"));
            }
        }
        Ok(out)
    }

    let body = text
        .strip_suffix("# EOF\n")
        .ok_or("does not end with `# EOF`")?;
    let mut seen = HashSet::new();
    let mut family: Option<(String, String)> = None; // (name, type)
    let mut samples_started = false;
    let mut buckets: Vec<f64> = Vec::new();
    let mut inf_bucket: Option<f64> = None;
    let mut hist_count: Option<f64> = None;
    let histogram_complete = |inf: Option<f64>,
                              count: Option<f64>,
                              fam: &Option<(String, String)>| match fam
    {
        Some((name, ty)) if ty == "histogram" && (inf.is_none() || inf != count) => Err(format!(
            "histogram {name}: +Inf bucket {inf:?} and _count {count:?} must exist and agree"
        )),
        _ => Ok(()),
    };
    for (n, line) in body.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if let Some(meta) = line.strip_prefix("# ") {
            let mut parts = meta.splitn(3, ' ');
            let (kind, name, rest) = (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            if !metric_name(name) {
                return Err(at("bad family name".into()));
            }
            let same = family.as_ref().is_some_and(|(f, _)| f == name);
            if !same {
                histogram_complete(inf_bucket, hist_count, &family)?;
                if !seen.insert(name.to_owned()) {
                    return Err(at("family declared twice".into()));
                }
                family = Some((name.to_owned(), "unknown".into()));
                samples_started = false;
                buckets.clear();
                inf_bucket = None;
                hist_count = None;
            } else if samples_started {
                return Err(at("metadata after samples".into()));
            }
            match kind {
                "HELP" => {}
                "TYPE" => {
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "gaugehistogram",
                        "stateset",
                        "info",
                        "summary",
                        "unknown",
                    ];
                    if !known.contains(&rest) {
                        return Err(at("unknown type".into()));
                    }
                    if let Some((_, t)) = family.as_mut() {
                        *t = rest.to_owned();
                    }
                }
                "UNIT" => {
                    if rest.is_empty() || !name.ends_with(&format!("_{rest}")) {
                        return Err(at("unit is not the name's suffix".into()));
                    }
                }
                _ => return Err(at("unknown metadata".into())),
            }
            continue;
        }
        let (name_labels, value) = line.rsplit_once(' ').ok_or_else(|| at("no value".into()))?;
        let value = number(value).ok_or_else(|| at("bad value".into()))?;
        let (name, label_text) = match name_labels.find('{') {
            Some(i) => (&name_labels[..i], &name_labels[i..]),
            None => (name_labels, ""),
        };
        if !metric_name(name) {
            return Err(at("bad sample name".into()));
        }
        let pairs = if label_text.is_empty() {
            Vec::new()
        } else {
            labels(label_text).map_err(at)?
        };
        let (fam, ty) = family
            .clone()
            .ok_or_else(|| at("sample before any family".into()))?;
        let suffix = name
            .strip_prefix(fam.as_str())
            .ok_or_else(|| at(format!("not in family {fam}")))?;
        let allowed: &[&str] = match ty.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "summary" => &["", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        if !allowed.contains(&suffix) {
            return Err(at(format!("suffix {suffix:?} not allowed for a {ty}")));
        }
        if ty == "counter" && suffix == "_total" && value < 0.0 {
            return Err(at("negative counter".into()));
        }
        if suffix == "_bucket" {
            let le = pairs
                .iter()
                .find(|(k, _)| k == "le")
                .ok_or_else(|| at("bucket without le".into()))?;
            let bound = number(&le.1).ok_or_else(|| at("bad le".into()))?;
            if buckets.last().is_some_and(|prev| *prev > value) {
                return Err(at("bucket counts decrease".into()));
            }
            buckets.push(value);
            if bound == f64::INFINITY {
                inf_bucket = Some(value);
            }
        }
        if suffix == "_count" && ty == "histogram" {
            hist_count = Some(value);
        }
        samples_started = true;
    }
    histogram_complete(inf_bucket, hist_count, &family)
}

#[test]
fn the_validator_rejects_broken_expositions() {
    let good = "# HELP a x\n# TYPE a counter\na_total{k=\"v\",l=\"a\\\"b\"} 1\n# EOF\n";
    assert_eq!(validate_openmetrics(good), Ok(()));
    assert!(
        validate_openmetrics("# TYPE a counter\na 1\n# EOF\n").is_err(),
        "counter sample without _total"
    );
    assert!(
        validate_openmetrics("# TYPE a counter\na_total 1\n").is_err(),
        "no EOF"
    );
    assert!(
        validate_openmetrics("# TYPE a gauge\na{k=\"v} 1\n# EOF\n").is_err(),
        "unterminated label"
    );
    assert!(
        validate_openmetrics("# TYPE a gauge\na one\n# EOF\n").is_err(),
        "bad value"
    );
    assert!(
        validate_openmetrics("# TYPE a gauge\na 1\n# TYPE a gauge\n# EOF\n").is_err(),
        "metadata after samples"
    );
    assert!(
        validate_openmetrics("# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\n# TYPE a gauge\n# EOF\n")
            .is_err(),
        "family twice"
    );
    let hist = "# TYPE h histogram\nh_sum 3\nh_count 2\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\n# EOF\n";
    assert_eq!(validate_openmetrics(hist), Ok(()));
    let hist = "# TYPE h histogram\nh_sum 3\nh_count 3\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\n# EOF\n";
    assert!(
        validate_openmetrics(hist).is_err(),
        "_count differs from the +Inf bucket"
    );
    let hist = "# TYPE h histogram\nh_sum 3\nh_bucket{le=\"1.0\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n# EOF\n";
    assert!(validate_openmetrics(hist).is_err(), "decreasing buckets");
}
