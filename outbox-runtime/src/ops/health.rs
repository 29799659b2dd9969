//! The outbox's health: unhealthy when the oldest pending event is too old,
//! when dead events wait for an operator (configurable), or when the relay
//! loop has stalled. Serve [`HealthReport`] from a service's own endpoint, or
//! use `outbox::ops::http::ops_router` (feature `http`) for `/health` and `/metrics`.
//!
//! ```no_run
//! use outbox::ops::{health_check as check, HealthConfig};
//!
//! # async fn run(pool: sqlx::PgPool, relay: outbox::RelayHandle) {
//! let counters = relay.counters();
//! let report = check(&pool, None, &HealthConfig::default(), Some(&counters)).await;
//! if !report.healthy {
//!     for reason in &report.reasons {
//!         eprintln!("outbox unhealthy: {reason}");
//!     }
//! }
//! # }
//! ```

use crate::identifier::{Names, SchemaName};
use crate::ops::queue_stats::{fetch_summary, summary_sql, QueueSummary};
use crate::relay::RelayCounters;
use serde::Serialize;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Thresholds of the health check.
///
/// ```
/// use outbox::ops::HealthConfig;
/// use std::time::Duration;
///
/// let config = HealthConfig {
///     max_oldest_pending_age: Duration::from_secs(10 * 60),
///     dead_events_unhealthy: false,
///     ..HealthConfig::default()
/// };
/// assert_eq!(config.max_loop_stall, Duration::from_secs(120));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// Unhealthy when the oldest pending event is older than this (default
    /// 30 minutes).
    pub max_oldest_pending_age: Duration,
    /// Unhealthy while dead events exist (default true). Set to false when
    /// dead events are handled through alerts on `outbox_dead_events`
    /// instead, so a single poison event does not fail the probe.
    pub dead_events_unhealthy: bool,
    /// Unhealthy when the relay loop has not run for this long (default 2
    /// minutes). Keep it well above the relay's poll interval plus its
    /// longest back-off (30 s). Only checked when relay counters are given.
    pub max_loop_stall: Duration,
    /// Unhealthy when the database does not answer within this (default 5
    /// seconds).
    pub query_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            max_oldest_pending_age: Duration::from_secs(30 * 60),
            dead_events_unhealthy: true,
            max_loop_stall: Duration::from_secs(120),
            query_timeout: Duration::from_secs(5),
        }
    }
}

/// The result of a health check, served as JSON on `/health`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthReport {
    /// Whether every check passed.
    pub healthy: bool,
    /// One sentence per failed check: the problem, the numbers, the fix.
    pub reasons: Vec<String>,
    /// Pending rows (`None` when the database could not be read).
    pub pending: Option<u64>,
    /// Age of the oldest pending event in seconds (`None` when nothing is
    /// pending or the database could not be read).
    pub oldest_pending_age_seconds: Option<f64>,
    /// Dead rows (`None` when the database could not be read).
    pub dead: Option<u64>,
    /// Seconds since the relay loop last ran (`None` without relay
    /// counters, or before the loop first ran).
    pub relay_last_loop_seconds_ago: Option<f64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Checks the outbox in `schema` (`None`: the connection's `search_path`)
/// and, when given, the relay whose counters these are. Never fails: a
/// database that cannot be read makes the report unhealthy, with the reason.
pub async fn check(
    pool: &PgPool,
    schema: Option<&SchemaName>,
    config: &HealthConfig,
    relay: Option<&RelayCounters>,
) -> HealthReport {
    let sql = summary_sql(&Names::new(schema));
    let summary = match tokio::time::timeout(config.query_timeout, fetch_summary(pool, &sql)).await
    {
        Ok(Ok(summary)) => Ok(summary),
        Ok(Err(error)) => Err(format!("cannot read the outbox table: {error}")),
        Err(_) => Err(format!(
            "the database did not answer the outbox health query within {}; check the database \
             and the connection pool (DATABASE_URL, pool size)",
            secs(config.query_timeout.as_secs_f64())
        )),
    };
    let last_loop_ms = relay.map(|r| r.snapshot().last_loop_unix_ms);
    evaluate(config, summary, last_loop_ms, now_ms())
}

fn secs(s: f64) -> String {
    if s >= 120.0 {
        format!("{:.0} min", s / 60.0)
    } else {
        format!("{s:.0} s")
    }
}

/// The checks themselves, over what was observed.
fn evaluate(
    config: &HealthConfig,
    summary: Result<QueueSummary, String>,
    last_loop_ms: Option<u64>,
    now_ms: u64,
) -> HealthReport {
    let mut reasons = Vec::new();
    let mut report = HealthReport {
        healthy: false,
        reasons: Vec::new(),
        pending: None,
        oldest_pending_age_seconds: None,
        dead: None,
        relay_last_loop_seconds_ago: None,
    };
    match summary {
        Err(reason) => reasons.push(reason),
        Ok(s) => {
            report.pending = Some(s.pending);
            report.oldest_pending_age_seconds = s.oldest_pending_age_seconds;
            report.dead = Some(s.dead);
            let max = config.max_oldest_pending_age.as_secs_f64();
            if let Some(age) = s.oldest_pending_age_seconds.filter(|age| *age > max) {
                reasons.push(format!(
                    "the oldest pending outbox event is {} old (threshold {}, {} pending): events \
                     are not being delivered; check that a relay is running and can reach the \
                     broker (relay logs, `outbox_relay_errors_total`, `outbox status`)",
                    secs(age),
                    secs(max),
                    s.pending
                ));
            }
            if config.dead_events_unhealthy && s.dead > 0 {
                reasons.push(format!(
                    "{} dead outbox event(s) wait for an operator (under the default dead-event policy \
                     they hold back later events of their aggregates): inspect them with `outbox \
                     failed list` and `outbox failed show ID`, fix the cause, then `outbox retry \
                     ID`, or `outbox release AGGREGATE_TYPE AGGREGATE_ID` to give up on them and \
                     let the aggregate continue",
                    s.dead
                ));
            }
        }
    }
    match last_loop_ms {
        None => {}
        Some(0) => reasons.push(
            "the relay loop has not run yet: the relay is starting, or was never spawned".into(),
        ),
        Some(last) => {
            let ago = now_ms.saturating_sub(last) as f64 / 1000.0;
            report.relay_last_loop_seconds_ago = Some(ago);
            let max = config.max_loop_stall.as_secs_f64();
            if ago > max {
                reasons.push(format!(
                    "the relay loop last ran {} ago (threshold {}): the relay is stalled or \
                     stopped; check its logs and restart it (another relay instance takes over \
                     its shards once their leases expire)",
                    secs(ago),
                    secs(max)
                ));
            }
        }
    }
    report.healthy = reasons.is_empty();
    report.reasons = reasons;
    report
}

/// Everything a `/health` endpoint needs: the pool, the schema, the
/// thresholds and, optionally, the counters of a relay running in this
/// process (for the stall check).
///
/// ```no_run
/// use outbox::ops::{HealthConfig, HealthProbe};
///
/// # async fn run(pool: sqlx::PgPool, relay: outbox::RelayHandle) {
/// let probe = HealthProbe::new(pool)
///     .config(HealthConfig::default())
///     .relay(relay.counters());
/// let report = probe.check().await;
/// println!("{}", serde_json::to_string(&report).unwrap_or_default());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct HealthProbe {
    pool: PgPool,
    schema: Option<SchemaName>,
    config: HealthConfig,
    relay: Option<Arc<RelayCounters>>,
}

impl HealthProbe {
    /// A probe of the outbox in the pool's `search_path`, default
    /// thresholds, no relay stall check.
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            schema: None,
            config: HealthConfig::default(),
            relay: None,
        }
    }

    /// The schema of the outbox tables (`None`: `search_path`).
    pub fn schema(mut self, schema: Option<SchemaName>) -> Self {
        self.schema = schema;
        self
    }

    /// The thresholds.
    pub fn config(mut self, config: HealthConfig) -> Self {
        self.config = config;
        self
    }

    /// Also checks that this relay's loop keeps running
    /// ([`Relay::counters`](crate::Relay::counters),
    /// [`RelayHandle::counters`](crate::RelayHandle::counters)).
    pub fn relay(mut self, counters: Arc<RelayCounters>) -> Self {
        self.relay = Some(counters);
        self
    }

    /// Runs [`check`].
    pub async fn check(&self) -> HealthReport {
        check(
            &self.pool,
            self.schema.as_ref(),
            &self.config,
            self.relay.as_deref(),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn summary(pending: u64, oldest: Option<f64>, dead: u64) -> Result<QueueSummary, String> {
        Ok(QueueSummary {
            pending,
            oldest_pending_age_seconds: oldest,
            dead,
        })
    }

    #[test]
    fn empty_queue_and_running_relay_are_healthy() {
        let r = evaluate(
            &HealthConfig::default(),
            summary(0, None, 0),
            Some(NOW - 500),
            NOW,
        );
        assert!(r.healthy, "{r:?}");
        assert!(r.reasons.is_empty());
        assert_eq!(r.relay_last_loop_seconds_ago, Some(0.5));
        let r = evaluate(
            &HealthConfig::default(),
            summary(3, Some(10.0), 0),
            None,
            NOW,
        );
        assert!(r.healthy);
        assert_eq!(r.pending, Some(3));
    }

    #[test]
    fn old_pending_event_is_unhealthy_with_the_numbers() {
        let r = evaluate(
            &HealthConfig::default(),
            summary(42, Some(31.0 * 60.0), 0),
            None,
            NOW,
        );
        assert!(!r.healthy);
        assert_eq!(r.reasons.len(), 1);
        let reason = &r.reasons[0];
        assert!(reason.contains("31 min old"), "{reason}");
        assert!(reason.contains("threshold 30 min"), "{reason}");
        assert!(reason.contains("42 pending"), "{reason}");
        assert!(reason.contains("relay"), "{reason}");
    }

    #[test]
    fn dead_events_are_unhealthy_unless_configured_otherwise() {
        let r = evaluate(&HealthConfig::default(), summary(0, None, 2), None, NOW);
        assert!(!r.healthy);
        assert!(r.reasons[0].starts_with("2 dead outbox event(s)"), "{r:?}");
        assert!(r.reasons[0].contains("outbox failed list"));
        assert!(r.reasons[0].contains("outbox retry ID"));
        let lenient = HealthConfig {
            dead_events_unhealthy: false,
            ..HealthConfig::default()
        };
        let r = evaluate(&lenient, summary(0, None, 2), None, NOW);
        assert!(r.healthy, "{r:?}");
        assert_eq!(r.dead, Some(2));
    }

    #[test]
    fn stalled_or_unstarted_relay_is_unhealthy() {
        let config = HealthConfig::default();
        let r = evaluate(&config, summary(0, None, 0), Some(NOW - 180_000), NOW);
        assert!(!r.healthy);
        assert!(r.reasons[0].contains("last ran 3 min ago"), "{r:?}");
        assert!(r.reasons[0].contains("threshold 2 min"), "{r:?}");
        let r = evaluate(&config, summary(0, None, 0), Some(0), NOW);
        assert!(!r.healthy);
        assert!(r.reasons[0].contains("has not run yet"));
    }

    #[test]
    fn unreadable_database_is_unhealthy_and_every_reason_is_listed() {
        let r = evaluate(
            &HealthConfig::default(),
            Err("cannot read the outbox table: connection refused".into()),
            Some(NOW - 300_000),
            NOW,
        );
        assert!(!r.healthy);
        assert_eq!(r.reasons.len(), 2, "{r:?}");
        assert_eq!(r.pending, None);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["healthy"], false);
        assert_eq!(json["reasons"].as_array().map(Vec::len), Some(2));
    }
}
