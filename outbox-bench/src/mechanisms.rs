//! `relay_mechanisms`: what each of the relay's optional mechanisms buys.
//!
//! The same backlog is drained by the relay as it ships and by the relay
//! with one mechanism switched off (`RelayConfig::mechanisms`, or the
//! producer's `linger.ms` for the zero linger), alternating which goes
//! first, on one broker per mechanism. The figure per mechanism is the
//! median of the per-pair ratios "with / without": above 1 means the
//! mechanism makes the drain faster. `docs/design/relay.md` quotes it.

use crate::broker::Broker;
use crate::scenarios::Sizes;
use crate::setup::{
    load_backlog, topic, wait_drained, wait_first_delivery, BenchDb, BoxError, Env,
};
use crate::stats::{median, Report};
use outbox::relay::Mechanisms;
use outbox::{Relay, RelayConfig};
use std::time::Duration;

const BATCH: usize = 1_000;
/// Pairs of drains (with, without) per mechanism.
const PAIRS: usize = 3;

/// One relay variant: its mechanisms and whether the producer lingers.
#[derive(Clone, Copy)]
struct Variant {
    mechanisms: Mechanisms,
    linger_ms: Option<u32>,
}

const SHIPPED: Variant = Variant {
    mechanisms: Mechanisms {
        claim_ahead: true,
        record_while_producing: true,
        claim_floor: true,
    },
    linger_ms: None,
};

/// The mechanisms measured, each with the variant that lacks it.
fn without() -> [(&'static str, Variant); 4] {
    let off = |f: fn(&mut Mechanisms)| {
        let mut mechanisms = SHIPPED.mechanisms;
        f(&mut mechanisms);
        Variant {
            mechanisms,
            linger_ms: None,
        }
    };
    [
        ("claim_ahead", off(|m| m.claim_ahead = false)),
        (
            "record_while_producing",
            off(|m| m.record_while_producing = false),
        ),
        ("claim_floor", off(|m| m.claim_floor = false)),
        (
            "zero_linger",
            Variant {
                // librdkafka's default
                linger_ms: Some(5),
                ..SHIPPED
            },
        ),
    ]
}

/// The relay's mechanisms for the other scenarios: all on, except those
/// named in `OUTBOX_BENCH_MECHANISMS_OFF` (comma-separated: `claim_ahead`,
/// `record_while_producing`, `claim_floor`), to measure a scenario without
/// one of them.
pub fn from_env() -> Mechanisms {
    let mut mechanisms = SHIPPED.mechanisms;
    let off = std::env::var("OUTBOX_BENCH_MECHANISMS_OFF").unwrap_or_default();
    for name in off.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "claim_ahead" => mechanisms.claim_ahead = false,
            "record_while_producing" => mechanisms.record_while_producing = false,
            "claim_floor" => mechanisms.claim_floor = false,
            other => eprintln!("OUTBOX_BENCH_MECHANISMS_OFF: unknown mechanism {other:?}, ignored"),
        }
    }
    if !off.is_empty() {
        println!("mechanisms: {mechanisms:?}");
    }
    mechanisms
}

pub async fn relay_mechanisms(
    env: &Env,
    sizes: &Sizes,
    report: &mut Report,
) -> Result<(), BoxError> {
    let n = sizes.backlog;
    for (name, lacking) in without() {
        let broker = env.brokers.broker(&format!("mechanisms_{name}")).await?;
        let mut ratios = Vec::with_capacity(PAIRS);
        for pair in 0..PAIRS {
            // Alternate which side drains first.
            let (first, second) = if pair % 2 == 0 {
                (SHIPPED, lacking)
            } else {
                (lacking, SHIPPED)
            };
            let a = drain(env, &broker, n, first, name).await?;
            let b = drain(env, &broker, n, second, name).await?;
            let (with, without) = if pair % 2 == 0 { (a, b) } else { (b, a) };
            report.figure(
                &format!("relay_mechanisms.{name}.pair{pair}_with_events_per_s"),
                with,
            );
            report.figure(
                &format!("relay_mechanisms.{name}.pair{pair}_without_events_per_s"),
                without,
            );
            ratios.push(with / without);
        }
        report.figure(
            &format!("relay_mechanisms.{name}.with_vs_without"),
            median(&ratios),
        );
    }
    Ok(())
}

/// Drains a backlog of `n` events with `variant`; events per second from the
/// first delivered batch on.
async fn drain(
    env: &Env,
    broker: &Broker,
    n: i64,
    variant: Variant,
    label: &str,
) -> Result<f64, BoxError> {
    let db = BenchDb::create(env, "mechanisms").await?;
    load_backlog(&db.pool, n, 1_000).await?;
    let prefix = topic(broker, label, 4).await?;
    let mut kafka = broker.kafka();
    if let Some(ms) = variant.linger_ms {
        kafka.set("linger.ms", ms.to_string());
    }
    let config = RelayConfig {
        batch_size: BATCH,
        topic_prefix: prefix,
        poll_interval: Duration::from_millis(50),
        mechanisms: variant.mechanisms,
        ..RelayConfig::default()
    };
    let handle = Relay::new(db.pool.clone(), kafka, config).await?.spawn();
    let started = wait_first_delivery(&db.pool, Duration::from_secs(60)).await?;
    let took = wait_drained(&db.pool, started, Duration::from_secs(600)).await?;
    handle.shutdown().await?;
    db.drop_db().await?;
    Ok((n - BATCH as i64) as f64 / took.as_secs_f64())
}
