//! What a relay does beside delivering: refreshing the queue gauges of its
//! metrics, and deleting published rows past their retention.

use crate::error::Chain;
use crate::identifier::Names;
use crate::metrics::OutboxMetrics;
use crate::ops::queue_stats::{fetch_summary, summary_sql};
use crate::relay::config::Retention;
use sqlx::PgPool;
use std::time::{Duration, Instant};

const RETENTION_SWEEP_EVERY: Duration = Duration::from_secs(30);
const RETENTION_SWEEP_ROWS: i64 = 5_000;
/// How often a relay with metrics refreshes the queue gauges.
const QUEUE_GAUGES_EVERY: Duration = Duration::from_secs(5);

/// The relay's periodic chores and when each is due.
pub(crate) struct Chores {
    retention: Retention,
    retention_sql: String,
    next_retention: Instant,
    metrics: Option<OutboxMetrics>,
    queue_sql: String,
    next_queue_gauges: Instant,
}

impl Chores {
    pub(crate) fn new(names: &Names, retention: Retention, metrics: Option<OutboxMetrics>) -> Self {
        Self {
            retention,
            retention_sql: format!(
                "DELETE FROM {o} WHERE seq IN (
                     SELECT seq FROM {o} WHERE state = 'published'
                       AND published_at < now() - make_interval(secs => $1)
                     LIMIT $2)",
                o = names.outbox
            ),
            next_retention: Instant::now(),
            metrics,
            queue_sql: summary_sql(names),
            next_queue_gauges: Instant::now(),
        }
    }

    pub(crate) fn metrics(&self) -> Option<&OutboxMetrics> {
        self.metrics.as_ref()
    }

    /// When the next chore is due, if any is scheduled.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        let retention = matches!(self.retention, Retention::Keep(_)).then_some(self.next_retention);
        let gauges = self.metrics.is_some().then_some(self.next_queue_gauges);
        retention.into_iter().chain(gauges).min()
    }

    /// Marks the loop alive and, at most every few seconds, refreshes the
    /// queue gauges (a cheap query on the partial indexes).
    pub(crate) async fn refresh_gauges(&mut self, pool: &PgPool) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        metrics.relay_loop();
        if Instant::now() < self.next_queue_gauges {
            return;
        }
        self.next_queue_gauges = Instant::now() + QUEUE_GAUGES_EVERY;
        match fetch_summary(pool, &self.queue_sql).await {
            Ok(summary) => metrics.set_queue(&summary),
            Err(error) => tracing::warn!(
                error = %Chain(&error),
                "outbox relay could not refresh the queue gauges"
            ),
        }
    }

    /// Deletes published rows past their retention, in bounded batches.
    pub(crate) async fn sweep_retention(&mut self, pool: &PgPool) {
        let Retention::Keep(keep) = self.retention else {
            return;
        };
        if Instant::now() < self.next_retention {
            return;
        }
        self.next_retention = Instant::now() + RETENTION_SWEEP_EVERY;
        match sqlx::query(&self.retention_sql)
            .persistent(false)
            .bind(keep.as_secs_f64())
            .bind(RETENTION_SWEEP_ROWS)
            .execute(pool)
            .await
        {
            Ok(done) if done.rows_affected() > 0 => {
                tracing::debug!(deleted = done.rows_affected(), "outbox retention sweep");
                if done.rows_affected() == u64::try_from(RETENTION_SWEEP_ROWS).unwrap_or(0) {
                    self.next_retention = Instant::now();
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "outbox retention sweep failed; retrying later"),
        }
    }
}
