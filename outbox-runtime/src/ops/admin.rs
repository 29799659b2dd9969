//! Operator actions on the outbox table: inspect dead events, send them
//! again, release the aggregates they hold back, and delete old published
//! rows. The `outbox` CLI is a thin layer over these functions; services can
//! call them from their own admin endpoints too.
//!
//! Every function takes the schema the outbox tables live in (`None`: the
//! connection's `search_path`). Actions that make rows deliverable again
//! (`retry`, `retry_all`, `release`) send the relays' wake-up notification in
//! the same transaction, so running relays pick the rows up at once.
//!
//! ```no_run
//! use outbox::ops::admin;
//!
//! # async fn run(pool: sqlx::PgPool) -> Result<(), admin::AdminError> {
//! for event in admin::list_failed(&pool, None, 50).await? {
//!     println!("{} {} {:?}", event.id, event.event_type, event.last_error);
//! }
//! let sent_again = admin::retry_all(&pool, None, Some("files.batch-file-added.v1")).await?;
//! println!("{sent_again} dead events will be delivered again");
//! # Ok(()) }
//! ```

use crate::identifier::{Names, SchemaName};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{PgPool, Postgres, Row};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;
use uuid::Uuid;

/// The state of an outbox row (column `state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum EventState {
    /// Waiting for delivery (or for its next retry).
    Pending,
    /// Delivered; kept only when a retention period is configured.
    Published,
    /// Retries exhausted; kept for operators. Blocks later events of its
    /// aggregate unless the relay runs with `DeadEventPolicy::Continue`.
    Dead,
    /// A dead event an operator released: never delivered, no longer
    /// blocking its aggregate.
    Released,
}

impl EventState {
    /// The name stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Published => "published",
            Self::Dead => "dead",
            Self::Released => "released",
        }
    }
}

impl fmt::Display for EventState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventState {
    type Err = AdminError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(Self::Pending),
            "published" => Ok(Self::Published),
            "dead" => Ok(Self::Dead),
            "released" => Ok(Self::Released),
            other => Err(AdminError::UnknownState {
                state: other.to_owned(),
            }),
        }
    }
}

/// Why an admin action failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// No outbox row has this id (it may have been delivered and deleted).
    #[error(
        "no outbox event has id {id}; it may have been delivered and deleted already \
         (`outbox failed list` shows the dead events)"
    )]
    NotFound {
        /// The id looked up.
        id: Uuid,
    },
    /// The event exists but is not dead, so there is nothing to retry.
    #[error(
        "outbox event {id} is {state}, not dead: only dead events can be retried \
         (pending events are retried by the relay on its own)"
    )]
    NotDead {
        /// The event.
        id: Uuid,
        /// Its current state.
        state: EventState,
    },
    /// An argument is out of range.
    #[error("invalid argument `{argument}`: {reason}")]
    InvalidArgument {
        /// The argument.
        argument: &'static str,
        /// Why, and what is accepted.
        reason: String,
    },
    /// The `state` column holds a value this version does not know: the
    /// table was changed by a newer migration.
    #[error(
        "the outbox table holds an unknown state {state:?}; upgrade the outbox tooling to the \
         version of the migrations applied to this database"
    )]
    UnknownState {
        /// The stored value.
        state: String,
    },
    /// A database statement failed.
    #[error("outbox admin database error while {action}")]
    Database {
        /// What was being done.
        action: &'static str,
        /// sqlx's error.
        #[source]
        source: sqlx::Error,
    },
}

impl AdminError {
    fn db(action: &'static str) -> impl FnOnce(sqlx::Error) -> Self {
        move |source| Self::Database { action, source }
    }
}

/// A dead event, as listed by [`list_failed`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedEvent {
    /// The event id (the envelope's `event_id`).
    pub id: Uuid,
    /// Event type name.
    pub event_type: String,
    /// Registry topic (without any relay topic prefix).
    pub topic: String,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Failed delivery attempts.
    pub retry_count: i32,
    /// The last delivery error.
    pub last_error: Option<String>,
    /// When the event was added to the outbox.
    pub created_at: DateTime<Utc>,
}

/// Everything stored about one event, as returned by [`show`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventDetail {
    /// Commit-order key.
    pub seq: i64,
    /// The event id.
    pub id: Uuid,
    /// Delivery state.
    pub state: EventState,
    /// Event type name.
    pub event_type: String,
    /// Schema version of the payload.
    pub event_version: i32,
    /// Registry topic (without any relay topic prefix).
    pub topic: String,
    /// Kafka message key.
    pub event_key: String,
    /// Aggregate type.
    pub aggregate_type: String,
    /// Aggregate id.
    pub aggregate_id: String,
    /// Shard the aggregate hashes to (0–63).
    pub shard: i16,
    /// Failed delivery attempts.
    pub retry_count: i32,
    /// The last delivery error.
    pub last_error: Option<String>,
    /// When the event was added.
    pub created_at: DateTime<Utc>,
    /// When the next delivery attempt is due.
    pub next_attempt_at: DateTime<Utc>,
    /// When the broker acknowledged it (published rows only).
    pub published_at: Option<DateTime<Utc>>,
    /// Stored headers (correlation id, trace context).
    pub headers: serde_json::Value,
    /// The JSON envelope sent as the Kafka message value.
    pub envelope: serde_json::Value,
}

fn failed_event(row: &PgRow) -> Result<FailedEvent, sqlx::Error> {
    Ok(FailedEvent {
        id: row.try_get("id")?,
        event_type: row.try_get("event_type")?,
        topic: row.try_get("topic")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        retry_count: row.try_get("retry_count")?,
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
    })
}

fn event_detail(row: &PgRow) -> Result<EventDetail, AdminError> {
    let state: String = row
        .try_get("state")
        .map_err(AdminError::db("reading an outbox row"))?;
    let state = state.parse()?;
    let detail = |row: &PgRow| -> Result<EventDetail, sqlx::Error> {
        Ok(EventDetail {
            seq: row.try_get("seq")?,
            id: row.try_get("id")?,
            state,
            event_type: row.try_get("event_type")?,
            event_version: row.try_get("event_version")?,
            topic: row.try_get("topic")?,
            event_key: row.try_get("event_key")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            shard: row.try_get("shard")?,
            retry_count: row.try_get("retry_count")?,
            last_error: row.try_get("last_error")?,
            created_at: row.try_get("created_at")?,
            next_attempt_at: row.try_get("next_attempt_at")?,
            published_at: row.try_get("published_at")?,
            headers: row.try_get("headers")?,
            envelope: row.try_get("event_data")?,
        })
    };
    detail(row).map_err(AdminError::db("reading an outbox row"))
}

/// Dead events, oldest first, at most `limit` (1 to 10 000).
pub async fn list_failed(
    pool: &PgPool,
    schema: Option<&SchemaName>,
    limit: i64,
) -> Result<Vec<FailedEvent>, AdminError> {
    if !(1..=10_000).contains(&limit) {
        return Err(AdminError::InvalidArgument {
            argument: "limit",
            reason: format!("{limit} is out of range; use 1 to 10000"),
        });
    }
    let names = Names::new(schema);
    let sql = format!(
        "SELECT id, event_type, topic, aggregate_type, aggregate_id, retry_count, last_error, created_at
         FROM {} WHERE state = 'dead' ORDER BY seq LIMIT $1",
        names.outbox
    );
    let rows = sqlx::query(&sql)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(AdminError::db("listing dead events"))?;
    rows.iter()
        .map(failed_event)
        .collect::<Result<_, _>>()
        .map_err(AdminError::db("reading dead events"))
}

/// Everything stored about event `id`, in any state; `None` when no row has
/// that id.
pub async fn show(
    pool: &PgPool,
    schema: Option<&SchemaName>,
    id: Uuid,
) -> Result<Option<EventDetail>, AdminError> {
    let names = Names::new(schema);
    let sql = format!(
        "SELECT seq, id, state, event_type, event_version, topic, event_key, aggregate_type,
                aggregate_id, shard, retry_count, last_error, created_at, next_attempt_at,
                published_at, headers, event_data
         FROM {} WHERE id = $1",
        names.outbox
    );
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(AdminError::db("reading an outbox event"))?;
    row.as_ref().map(event_detail).transpose()
}

/// Sends dead event `id` again: it becomes pending, due now, with
/// `retry_count` 1 (a fresh retry budget less the attempt that brought it
/// here). Its `last_error` is kept, so the reason stays visible until the
/// event is delivered (delivery clears it; a new failure replaces it).
/// Running relays are woken.
///
/// Ordering holds: a pending row with `retry_count` above 0 is the head of
/// its aggregate, so the relay produces it alone, and the later events of
/// the aggregate that waited behind it are claimed only once it is
/// delivered. Were it claimed beside them, a failure of it could let them
/// reach the broker first.
///
/// Fails with [`AdminError::NotFound`] when no row has the id and
/// [`AdminError::NotDead`] when the event is not dead.
pub async fn retry(pool: &PgPool, schema: Option<&SchemaName>, id: Uuid) -> Result<(), AdminError> {
    let names = Names::new(schema);
    let sql = format!(
        "UPDATE {} SET state = 'pending', retry_count = 1, next_attempt_at = now()
         WHERE id = $1 AND state = 'dead'",
        names.outbox
    );
    let updated = change_dead_events(
        pool,
        &names,
        sqlx::query(&sql).bind(id),
        Change {
            begin: "beginning the retry transaction",
            update: "marking a dead event pending",
            commit: "committing the retry",
        },
    )
    .await?;
    if updated > 0 {
        return Ok(());
    }
    let state: Option<String> =
        sqlx::query_scalar(&format!("SELECT state FROM {} WHERE id = $1", names.outbox))
            .bind(id)
            .fetch_optional(pool)
            .await
            .map_err(AdminError::db("reading an outbox event's state"))?;
    Err(match state {
        None => AdminError::NotFound { id },
        Some(state) => AdminError::NotDead {
            id,
            state: state.parse()?,
        },
    })
}

/// Sends every dead event again (only those of registry topic `topic` when
/// given), like [`retry`]; returns how many. One statement, one transaction.
pub async fn retry_all(
    pool: &PgPool,
    schema: Option<&SchemaName>,
    topic: Option<&str>,
) -> Result<u64, AdminError> {
    let names = Names::new(schema);
    let sql = format!(
        "UPDATE {} SET state = 'pending', retry_count = 1, next_attempt_at = now()
         WHERE state = 'dead' AND ($1::text IS NULL OR topic = $1)",
        names.outbox
    );
    change_dead_events(
        pool,
        &names,
        sqlx::query(&sql).bind(topic),
        Change {
            begin: "beginning the retry transaction",
            update: "marking dead events pending",
            commit: "committing the retry",
        },
    )
    .await
}

/// Releases aggregate `aggregate_type`/`aggregate_id`: its dead events become
/// `released` (kept, never delivered) so the events after them continue.
/// Returns how many were released; 0 when the aggregate has no dead events.
pub async fn release(
    pool: &PgPool,
    schema: Option<&SchemaName>,
    aggregate_type: &str,
    aggregate_id: &str,
) -> Result<u64, AdminError> {
    let names = Names::new(schema);
    let sql = format!(
        "UPDATE {} SET state = 'released'
         WHERE state = 'dead' AND aggregate_type = $1 AND aggregate_id = $2",
        names.outbox
    );
    change_dead_events(
        pool,
        &names,
        sqlx::query(&sql).bind(aggregate_type).bind(aggregate_id),
        Change {
            begin: "beginning the release transaction",
            update: "releasing dead events",
            commit: "committing the release",
        },
    )
    .await
}

/// Deletes published rows older than `older_than` (by `published_at`), in
/// batches of at most `batch` rows, each its own short transaction, so no
/// lock is held for long and the relay keeps running. `progress` is called
/// after every batch with the running total. Returns the number deleted.
///
/// The cut-off is fixed when the purge starts: rows published while it runs
/// are not touched, so it always ends.
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), outbox::ops::admin::AdminError> {
/// use std::time::Duration;
/// let week = Duration::from_secs(7 * 24 * 3600);
/// let deleted = outbox::ops::admin::purge_published(&pool, None, week, 5_000, |done| {
///     eprintln!("{done} rows deleted");
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn purge_published(
    pool: &PgPool,
    schema: Option<&SchemaName>,
    older_than: Duration,
    batch: i64,
    mut progress: impl FnMut(u64),
) -> Result<u64, AdminError> {
    if !(1..=1_000_000).contains(&batch) {
        return Err(AdminError::InvalidArgument {
            argument: "batch",
            reason: format!("{batch} is out of range; use 1 to 1000000"),
        });
    }
    let names = Names::new(schema);
    let cutoff: DateTime<Utc> = sqlx::query_scalar("SELECT now() - make_interval(secs => $1)")
        .bind(older_than.as_secs_f64())
        .fetch_one(pool)
        .await
        .map_err(AdminError::db("computing the purge cut-off"))?;
    let sql = format!(
        "DELETE FROM {o} WHERE seq IN (
             SELECT seq FROM {o}
             WHERE state = 'published' AND published_at < $1
             LIMIT $2)",
        o = names.outbox
    );
    let mut total = 0u64;
    loop {
        let deleted = sqlx::query(&sql)
            .bind(cutoff)
            .bind(batch)
            .execute(pool)
            .await
            .map_err(AdminError::db("deleting published rows"))?
            .rows_affected();
        if deleted == 0 {
            break;
        }
        total += deleted;
        progress(total);
    }
    Ok(total)
}

/// What the steps of an operator's change to dead events are called in
/// its errors.
struct Change {
    begin: &'static str,
    update: &'static str,
    commit: &'static str,
}

/// Runs `update`, a statement over dead events, in a transaction of its
/// own that also wakes the relays when it changed rows (they deliver what
/// it made pending, or what waited behind what it released). Returns the
/// rows changed.
async fn change_dead_events(
    pool: &PgPool,
    names: &Names,
    update: Query<'_, Postgres, PgArguments>,
    change: Change,
) -> Result<u64, AdminError> {
    let mut tx = pool.begin().await.map_err(AdminError::db(change.begin))?;
    let updated = update
        .execute(&mut *tx)
        .await
        .map_err(AdminError::db(change.update))?
        .rows_affected();
    if updated > 0 {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(&names.channel)
            .execute(&mut *tx)
            .await
            .map_err(AdminError::db("waking the relays"))?;
    }
    tx.commit().await.map_err(AdminError::db(change.commit))?;
    Ok(updated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip() {
        for state in [
            EventState::Pending,
            EventState::Published,
            EventState::Dead,
            EventState::Released,
        ] {
            assert_eq!(state.as_str().parse::<EventState>().ok(), Some(state));
            assert_eq!(
                serde_json::to_value(state).ok(),
                Some(serde_json::Value::from(state.as_str()))
            );
        }
        assert!(matches!(
            "lost".parse::<EventState>(),
            Err(AdminError::UnknownState { .. })
        ));
    }
}
