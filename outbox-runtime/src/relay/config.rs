//! Relay settings: defaults, and `OUTBOX_*` environment variables.

use crate::error::ConfigError;
use crate::identifier::SchemaName;
use crate::topic::validate_topic_name;
use std::time::Duration;

/// What happens to published rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Delete a row as soon as the broker acknowledged it (default).
    Delete,
    /// Keep published rows for this long, then delete them in bounded
    /// batches.
    Keep(Duration),
}

/// What a dead event (retries exhausted) does to later events of its aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadEventPolicy {
    /// Later events of the aggregate wait until an operator retries or
    /// releases the dead event (default: order is never broken silently).
    BlockAggregate,
    /// Later events of the aggregate continue; the dead event stays for
    /// operators.
    Continue,
}

/// Relay settings.
///
/// ```
/// use outbox::RelayConfig;
/// use std::time::Duration;
///
/// let config = RelayConfig::default();
/// assert_eq!(config.batch_size, 100);
/// assert_eq!(config.max_retries, 5);
/// assert_eq!(config.retry_backoff, Duration::from_secs(30));
///
/// let from_env = RelayConfig::from_lookup(|name| match name {
///     "OUTBOX_BATCH_SIZE" => Some("500".to_string()),
///     _ => None,
/// })
/// .unwrap();
/// assert_eq!(from_env.batch_size, 500);
/// ```
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows claimed and produced per batch (`OUTBOX_BATCH_SIZE`, default 100).
    pub batch_size: usize,
    /// Fallback poll interval when no wake-up arrives
    /// (`OUTBOX_POLL_INTERVAL_SECONDS`, default 5).
    pub poll_interval: Duration,
    /// Failed attempts retried before an event is dead
    /// (`OUTBOX_MAX_RETRIES`, default 5).
    pub max_retries: u32,
    /// Delay before the first retry; doubles per attempt, with jitter
    /// (`OUTBOX_ERROR_RETRY_INTERVAL_SECONDS`, default 30).
    pub retry_backoff: Duration,
    /// Upper bound of the retry delay (`OUTBOX_MAX_RETRY_INTERVAL_SECONDS`,
    /// default 900).
    pub max_retry_backoff: Duration,
    /// Published rows: delete or keep (`OUTBOX_RETENTION_SECONDS`, 0 = delete,
    /// the default).
    pub retention: Retention,
    /// Dead events block their aggregate or not (`OUTBOX_DEAD_EVENT_POLICY`:
    /// `block` (default) or `continue`).
    pub dead_event_policy: DeadEventPolicy,
    /// Prepended to every registry topic (`OUTBOX_TOPIC_PREFIX`, default
    /// empty), e.g. `staging.`.
    pub topic_prefix: String,
    /// Schema of the outbox tables (`OUTBOX_SCHEMA`, default: search_path).
    pub schema: Option<SchemaName>,
    /// A relay instance's shard lease lasts this long without renewal; a
    /// crashed instance's shards move to others after it
    /// (`OUTBOX_LEASE_TTL_SECONDS`, default 30).
    pub lease_ttl: Duration,
    /// Kafka `message.timeout.ms`: the longest a produce may take
    /// (`OUTBOX_MESSAGE_TIMEOUT_SECONDS`, default 10). Must be well below the
    /// lease TTL.
    pub message_timeout: Duration,
    /// After a wake-up, poll again this long later to catch commits whose
    /// NOTIFY was folded into an earlier one (default 5 ms).
    pub trailing_poll: Duration,
    /// React to wake-ups: Postgres NOTIFY from any publisher and the
    /// in-process signal of commits in this process (default true). `false`
    /// leaves only polling every `poll_interval`.
    pub listen: bool,
    /// Switches for measuring what each relay mechanism buys; all on by
    /// default. Not a tuning knob: `outbox-bench`'s `relay_mechanisms`
    /// scenario turns one off at a time.
    #[doc(hidden)]
    pub mechanisms: Mechanisms,
}

/// The relay's optional mechanisms (see `docs/design/relay.md`), each of
/// which only makes the relay faster; turning one off keeps every
/// guarantee.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mechanisms {
    /// Claim the batch after a full one while that one is produced.
    pub claim_ahead: bool,
    /// Write a batch's outcome while the next batch is produced.
    pub record_while_producing: bool,
    /// Start claims at the claim floor instead of the pending index's start.
    pub claim_floor: bool,
}

impl Default for Mechanisms {
    fn default() -> Self {
        Self {
            claim_ahead: true,
            record_while_producing: true,
            claim_floor: true,
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch_size: 100,
            poll_interval: Duration::from_secs(5),
            max_retries: 5,
            retry_backoff: Duration::from_secs(30),
            max_retry_backoff: Duration::from_secs(900),
            retention: Retention::Delete,
            dead_event_policy: DeadEventPolicy::BlockAggregate,
            topic_prefix: String::new(),
            schema: None,
            lease_ttl: Duration::from_secs(30),
            message_timeout: Duration::from_secs(10),
            trailing_poll: Duration::from_millis(5),
            listen: true,
            mechanisms: Mechanisms::default(),
        }
    }
}

fn parse_secs(var: &'static str, value: String) -> Result<Duration, ConfigError> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or(ConfigError::InvalidEnv {
            var,
            value,
            expected: "a non-negative number of seconds, e.g. 5 or 0.5",
        })
}

fn parse_int<T: std::str::FromStr>(var: &'static str, value: String) -> Result<T, ConfigError> {
    value
        .trim()
        .parse::<T>()
        .map_err(|_| ConfigError::InvalidEnv {
            var,
            value,
            expected: "a non-negative integer",
        })
}

impl RelayConfig {
    /// Defaults overridden by `OUTBOX_*` environment variables, validated.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        if let Some(v) = lookup("OUTBOX_BATCH_SIZE") {
            c.batch_size = parse_int("OUTBOX_BATCH_SIZE", v)?;
        }
        if let Some(v) = lookup("OUTBOX_POLL_INTERVAL_SECONDS") {
            c.poll_interval = parse_secs("OUTBOX_POLL_INTERVAL_SECONDS", v)?;
        }
        if let Some(v) = lookup("OUTBOX_MAX_RETRIES") {
            c.max_retries = parse_int("OUTBOX_MAX_RETRIES", v)?;
        }
        if let Some(v) = lookup("OUTBOX_ERROR_RETRY_INTERVAL_SECONDS") {
            c.retry_backoff = parse_secs("OUTBOX_ERROR_RETRY_INTERVAL_SECONDS", v)?;
        }
        if let Some(v) = lookup("OUTBOX_MAX_RETRY_INTERVAL_SECONDS") {
            c.max_retry_backoff = parse_secs("OUTBOX_MAX_RETRY_INTERVAL_SECONDS", v)?;
        }
        if let Some(v) = lookup("OUTBOX_RETENTION_SECONDS") {
            let keep = parse_secs("OUTBOX_RETENTION_SECONDS", v)?;
            c.retention = if keep.is_zero() {
                Retention::Delete
            } else {
                Retention::Keep(keep)
            };
        }
        if let Some(v) = lookup("OUTBOX_DEAD_EVENT_POLICY") {
            c.dead_event_policy = match v.trim() {
                "block" => DeadEventPolicy::BlockAggregate,
                "continue" => DeadEventPolicy::Continue,
                _ => {
                    return Err(ConfigError::InvalidEnv {
                        var: "OUTBOX_DEAD_EVENT_POLICY",
                        value: v,
                        expected: "`block` or `continue`",
                    })
                }
            };
        }
        if let Some(v) = lookup("OUTBOX_TOPIC_PREFIX") {
            c.topic_prefix = v;
        }
        if let Some(v) = lookup("OUTBOX_SCHEMA") {
            if !v.is_empty() {
                c.schema = Some(SchemaName::new(&v)?);
            }
        }
        if let Some(v) = lookup("OUTBOX_LEASE_TTL_SECONDS") {
            c.lease_ttl = parse_secs("OUTBOX_LEASE_TTL_SECONDS", v)?;
        }
        if let Some(v) = lookup("OUTBOX_MESSAGE_TIMEOUT_SECONDS") {
            c.message_timeout = parse_secs("OUTBOX_MESSAGE_TIMEOUT_SECONDS", v)?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks ranges and consistency; the relay calls it at start-up.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |setting, reason: String| Err(ConfigError::Invalid { setting, reason });
        if self.batch_size == 0 || self.batch_size > 100_000 {
            return invalid(
                "batch_size",
                format!("{} is out of range; use 1..=100000", self.batch_size),
            );
        }
        if self.poll_interval.is_zero() {
            return invalid("poll_interval", "must be greater than zero".into());
        }
        if self.retry_backoff.is_zero() || self.max_retry_backoff < self.retry_backoff {
            return invalid(
                "retry_backoff",
                "must be greater than zero and not above max_retry_backoff".into(),
            );
        }
        if self.message_timeout < Duration::from_millis(100) {
            return invalid("message_timeout", "must be at least 100 ms".into());
        }
        if self.lease_ttl < self.message_timeout * 2 + Duration::from_secs(1) {
            return invalid(
                "lease_ttl",
                format!(
                    "{:?} is too short for message_timeout {:?}: it must be at least twice the \
                     message timeout plus one second, so a batch always finishes while its lease is valid",
                    self.lease_ttl, self.message_timeout
                ),
            );
        }
        if !self.topic_prefix.is_empty() {
            if let Err(reason) = validate_topic_name(&self.topic_prefix) {
                return invalid("topic_prefix", reason);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn reads_every_variable() {
        let c = RelayConfig::from_lookup(env(&[
            ("OUTBOX_BATCH_SIZE", "250"),
            ("OUTBOX_POLL_INTERVAL_SECONDS", "0.5"),
            ("OUTBOX_MAX_RETRIES", "7"),
            ("OUTBOX_ERROR_RETRY_INTERVAL_SECONDS", "2"),
            ("OUTBOX_MAX_RETRY_INTERVAL_SECONDS", "60"),
            ("OUTBOX_RETENTION_SECONDS", "3600"),
            ("OUTBOX_DEAD_EVENT_POLICY", "continue"),
            ("OUTBOX_TOPIC_PREFIX", "staging."),
            ("OUTBOX_SCHEMA", "svc"),
            ("OUTBOX_LEASE_TTL_SECONDS", "40"),
            ("OUTBOX_MESSAGE_TIMEOUT_SECONDS", "15"),
        ]))
        .unwrap();
        assert_eq!(c.batch_size, 250);
        assert_eq!(c.poll_interval, Duration::from_millis(500));
        assert_eq!(c.max_retries, 7);
        assert_eq!(c.retry_backoff, Duration::from_secs(2));
        assert_eq!(c.max_retry_backoff, Duration::from_secs(60));
        assert_eq!(c.retention, Retention::Keep(Duration::from_secs(3600)));
        assert_eq!(c.dead_event_policy, DeadEventPolicy::Continue);
        assert_eq!(c.topic_prefix, "staging.");
        assert_eq!(c.schema.unwrap().as_str(), "svc");
        assert_eq!(c.lease_ttl, Duration::from_secs(40));
    }

    #[test]
    fn bad_values_name_the_variable_and_the_fix() {
        let err = RelayConfig::from_lookup(env(&[("OUTBOX_BATCH_SIZE", "lots")])).unwrap_err();
        assert!(
            err.to_string().contains("OUTBOX_BATCH_SIZE=\"lots\""),
            "{err}"
        );
        let err =
            RelayConfig::from_lookup(env(&[("OUTBOX_POLL_INTERVAL_SECONDS", "-1")])).unwrap_err();
        assert!(
            err.to_string().contains("non-negative number of seconds"),
            "{err}"
        );
        let err =
            RelayConfig::from_lookup(env(&[("OUTBOX_SCHEMA", "x; drop table y")])).unwrap_err();
        assert!(
            err.to_string().contains("not a valid SQL identifier"),
            "{err}"
        );
        let err = RelayConfig::from_lookup(env(&[("OUTBOX_BATCH_SIZE", "0")])).unwrap_err();
        assert!(err.to_string().contains("batch_size"), "{err}");
        let err = RelayConfig::from_lookup(env(&[("OUTBOX_LEASE_TTL_SECONDS", "5")])).unwrap_err();
        assert!(err.to_string().contains("lease_ttl"), "{err}");
        let err =
            RelayConfig::from_lookup(env(&[("OUTBOX_DEAD_EVENT_POLICY", "drop")])).unwrap_err();
        assert!(err.to_string().contains("`block` or `continue`"), "{err}");
    }
}
