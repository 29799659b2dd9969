//! How full the outbox is: pending depth, age of the oldest pending event,
//! and counts per state and per topic. The relay's gauges, the health check
//! and `outbox status` read these.
//!
//! ```no_run
//! # async fn run(pool: sqlx::PgPool) -> Result<(), outbox::ops::StatsError> {
//! // Cheap, for dashboards and probes: uses the partial indexes only.
//! let summary = outbox::ops::queue_summary(&pool, None).await?;
//! println!("{} pending, {} dead", summary.pending, summary.dead);
//!
//! // Per topic and state: reads the whole table, for an operator's `status`.
//! let stats = outbox::ops::queue_stats(&pool, None).await?;
//! for topic in &stats.topics {
//!     println!("{}: {} pending, {} dead", topic.topic, topic.pending, topic.dead);
//! }
//! # Ok(()) }
//! ```

use crate::identifier::{Names, SchemaName};
use serde::Serialize;
use sqlx::{PgPool, Row};
use std::time::Duration;

/// Why reading the outbox statistics failed.
#[derive(Debug, thiserror::Error)]
#[error(
    "outbox database error while {action}; check that the database is reachable and \
     that the outbox migrations ran in this schema (`outbox migrate`)"
)]
pub struct StatsError {
    action: &'static str,
    #[source]
    source: sqlx::Error,
}

impl StatsError {
    fn db(action: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self { action, source }
    }
}

/// The cheap part of the statistics: what the relay's gauges and the health
/// check need. Counting pending rows reads the partial pending index; the
/// oldest pending event is the first pending row in commit order (one index
/// probe); dead rows are counted through the partial index of blocking rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueueSummary {
    /// Rows waiting for delivery (including those waiting for a retry).
    pub pending: u64,
    /// Age of the first pending event in commit order, in seconds (`None`
    /// when nothing is pending).
    pub oldest_pending_age_seconds: Option<f64>,
    /// Dead rows (retries exhausted), waiting for an operator.
    pub dead: u64,
}

impl QueueSummary {
    /// The oldest pending event's age as a [`Duration`].
    pub fn oldest_pending_age(&self) -> Option<Duration> {
        self.oldest_pending_age_seconds.map(seconds)
    }
}

/// Counts of one topic's rows per state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TopicStats {
    /// Registry topic (without any relay topic prefix).
    pub topic: String,
    /// Rows waiting for delivery.
    pub pending: u64,
    /// Delivered rows still kept (only with a retention period).
    pub published: u64,
    /// Dead rows.
    pub dead: u64,
    /// Dead rows an operator released.
    pub released: u64,
    /// Age of this topic's oldest pending event, in seconds.
    pub oldest_pending_age_seconds: Option<f64>,
}

/// The whole table's statistics, per state and per topic (`outbox status`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueStats {
    /// Rows waiting for delivery: the queue depth.
    pub pending: u64,
    /// Delivered rows still kept (only with a retention period).
    pub published: u64,
    /// Dead rows.
    pub dead: u64,
    /// Dead rows an operator released.
    pub released: u64,
    /// Age of the oldest pending event, in seconds (`None` when nothing is
    /// pending).
    pub oldest_pending_age_seconds: Option<f64>,
    /// Per topic, sorted by topic.
    pub topics: Vec<TopicStats>,
}

impl QueueStats {
    /// The oldest pending event's age as a [`Duration`].
    pub fn oldest_pending_age(&self) -> Option<Duration> {
        self.oldest_pending_age_seconds.map(seconds)
    }
}

fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s.max(0.0)).unwrap_or(Duration::MAX)
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

pub(crate) fn summary_sql(names: &Names) -> String {
    let o = &names.outbox;
    format!(
        "SELECT (SELECT count(*) FROM {o} WHERE state = 'pending') AS pending,
                (SELECT EXTRACT(EPOCH FROM (now() - created_at))::float8
                   FROM {o} WHERE state = 'pending' ORDER BY seq LIMIT 1) AS oldest,
                (SELECT count(*) FROM {o} WHERE state = 'dead') AS dead"
    )
}

pub(crate) async fn fetch_summary(pool: &PgPool, sql: &str) -> Result<QueueSummary, StatsError> {
    let action = "reading the outbox queue depth";
    let row = sqlx::query(sql)
        .fetch_one(pool)
        .await
        .map_err(StatsError::db(action))?;
    let read = || -> Result<QueueSummary, sqlx::Error> {
        Ok(QueueSummary {
            pending: count(row.try_get("pending")?),
            oldest_pending_age_seconds: row.try_get("oldest")?,
            dead: count(row.try_get("dead")?),
        })
    };
    read().map_err(StatsError::db(action))
}

/// Pending depth, oldest pending age and dead count; cheap enough to call
/// every few seconds (see [`QueueSummary`]). `schema`: where the outbox
/// tables live (`None`: the connection's `search_path`).
pub async fn queue_summary(
    pool: &PgPool,
    schema: Option<&SchemaName>,
) -> Result<QueueSummary, StatsError> {
    fetch_summary(pool, &summary_sql(&Names::new(schema))).await
}

/// Counts per topic and state, and the oldest pending age overall and per
/// topic. Reads the whole outbox table: meant for an operator's `outbox
/// status`, not for a probe polled every second (use [`queue_summary`]).
pub async fn queue_stats(
    pool: &PgPool,
    schema: Option<&SchemaName>,
) -> Result<QueueStats, StatsError> {
    let names = Names::new(schema);
    let sql = format!(
        "SELECT topic, state, count(*) AS n,
                EXTRACT(EPOCH FROM (now() - min(created_at)))::float8 AS oldest
         FROM {} GROUP BY topic, state ORDER BY topic, state",
        names.outbox
    );
    let action = "counting outbox rows per topic and state";
    let rows = sqlx::query(&sql)
        .fetch_all(pool)
        .await
        .map_err(StatsError::db(action))?;
    let mut grouped = Vec::with_capacity(rows.len());
    for row in &rows {
        let read = || -> Result<(String, String, i64, Option<f64>), sqlx::Error> {
            Ok((
                row.try_get("topic")?,
                row.try_get("state")?,
                row.try_get("n")?,
                row.try_get("oldest")?,
            ))
        };
        grouped.push(read().map_err(StatsError::db(action))?);
    }
    Ok(fold_stats(grouped))
}

/// Folds `(topic, state, count, oldest age)` groups, sorted by topic, into
/// totals and per-topic rows.
fn fold_stats(groups: Vec<(String, String, i64, Option<f64>)>) -> QueueStats {
    let mut stats = QueueStats::default();
    for (topic, state, n, oldest) in groups {
        let n = count(n);
        if stats.topics.last().map(|t| t.topic.as_str()) != Some(topic.as_str()) {
            stats.topics.push(TopicStats {
                topic,
                ..TopicStats::default()
            });
        }
        let Some(t) = stats.topics.last_mut() else {
            continue;
        };
        match state.as_str() {
            "pending" => {
                t.pending += n;
                t.oldest_pending_age_seconds = oldest;
                stats.pending += n;
                stats.oldest_pending_age_seconds = match (stats.oldest_pending_age_seconds, oldest)
                {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
            }
            "published" => {
                t.published += n;
                stats.published += n;
            }
            "dead" => {
                t.dead += n;
                stats.dead += n;
            }
            "released" => {
                t.released += n;
                stats.released += n;
            }
            // A state added by a newer migration: not counted here.
            _ => {}
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_groups_into_totals_and_topics() {
        let g = |t: &str, s: &str, n, o| (t.to_owned(), s.to_owned(), n, o);
        let stats = fold_stats(vec![
            g("a.v1", "dead", 1, Some(900.0)),
            g("a.v1", "pending", 3, Some(12.5)),
            g("b.v1", "pending", 2, Some(40.0)),
            g("b.v1", "published", 7, Some(99.0)),
            g("b.v1", "released", 1, Some(5.0)),
        ]);
        assert_eq!(
            (stats.pending, stats.published, stats.dead, stats.released),
            (5, 7, 1, 1)
        );
        assert_eq!(stats.oldest_pending_age_seconds, Some(40.0));
        assert_eq!(stats.oldest_pending_age(), Some(Duration::from_secs(40)));
        assert_eq!(stats.topics.len(), 2);
        assert_eq!(stats.topics[0].topic, "a.v1");
        assert_eq!((stats.topics[0].pending, stats.topics[0].dead), (3, 1));
        assert_eq!(stats.topics[0].oldest_pending_age_seconds, Some(12.5));
        assert_eq!(stats.topics[1].published, 7);
        assert_eq!(fold_stats(Vec::new()), QueueStats::default());
    }
}
