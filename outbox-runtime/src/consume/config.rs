//! Consumer loop settings.

use crate::error::ConfigError;
use crate::inbox::Inbox;
use crate::topic::validate_topic_name;
use std::time::Duration;

/// Where messages that cannot be handled go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetterTopic {
    /// The source topic with this suffix, e.g. `.dlq`:
    /// `essay.spellcheck.completed.v1` → `essay.spellcheck.completed.v1.dlq`.
    Suffix(String),
    /// One topic for every source topic.
    Fixed(String),
}

impl DeadLetterTopic {
    /// The dead-letter topic for messages read from `topic`.
    pub fn for_topic(&self, topic: &str) -> String {
        match self {
            Self::Suffix(suffix) => format!("{topic}{suffix}"),
            Self::Fixed(name) => name.clone(),
        }
    }
}

impl Default for DeadLetterTopic {
    fn default() -> Self {
        Self::Suffix(".dlq".to_owned())
    }
}

/// Consumer loop settings.
///
/// ```
/// use outbox::consume::{ConsumerConfig, DeadLetterTopic};
/// use std::time::Duration;
///
/// let config = ConsumerConfig::new("cj_assessment_service");
/// assert_eq!(config.max_retries, 5);
/// assert_eq!(config.dead_letter.for_topic("essay.spellcheck.completed.v1"),
///            "essay.spellcheck.completed.v1.dlq");
/// assert_eq!(config.inbox.as_ref().map(|i| i.consumer()), Some("cj_assessment_service"));
/// assert_eq!(config.inbox_retention, Some(Duration::from_secs(7 * 24 * 3600)));
/// assert_eq!(config.batch_size, 500);
/// assert_eq!(config.group_instance_id, None);
///
/// // Static membership: a restarted pod takes its partitions back at once.
/// let config = ConsumerConfig {
///     group_instance_id: Some("cj-assessment-0".into()),
///     ..ConsumerConfig::new("cj_assessment_service")
/// };
/// assert!(config.validate().is_ok());
/// let zero = ConsumerConfig { batch_size: 0, ..ConsumerConfig::new("g") };
/// assert!(zero.validate().unwrap_err().to_string().contains("batch_size"));
/// ```
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Kafka consumer group id (`group.id`).
    pub group_id: String,
    /// Topics to subscribe to. Empty (the default): the topics of the
    /// dispatcher's event types, with [`topic_prefix`](Self::topic_prefix).
    pub topics: Vec<String>,
    /// Prepended to registry topics, like the relay's `topic_prefix`.
    pub topic_prefix: String,
    /// Failed handler attempts retried before the message is dead-lettered
    /// (default 5; 0 dead-letters on the first failure).
    pub max_retries: u32,
    /// Delay before the first retry; grows exponentially with jitter
    /// (default 200 ms).
    pub retry_backoff: Duration,
    /// Upper bound of the retry delay, also used while the database is
    /// unreachable (default 10 s).
    pub max_retry_backoff: Duration,
    /// The dead-letter topic (default: the source topic + `.dlq`).
    pub dead_letter: DeadLetterTopic,
    /// The inbox that makes effects happen once (default: an inbox named
    /// after the group id). `None` runs handlers for every delivery,
    /// redeliveries included.
    pub inbox: Option<Inbox>,
    /// Inbox rows older than this are purged by the running consumer
    /// (default 7 days; `None` keeps them).
    pub inbox_retention: Option<Duration>,
    /// How often the running consumer purges old inbox rows (default 10 min).
    pub inbox_purge_interval: Duration,
    /// Rows deleted per purge statement (default 1,000).
    pub inbox_purge_batch: u32,
    /// Most messages of one partition handled in one transaction
    /// (default 500; 1 handles each message in its own transaction).
    pub batch_size: usize,
    /// How long a partition's worker waits for more messages once it has
    /// one, before handling what it has (default 5 ms; zero takes only
    /// what is already there).
    pub batch_wait: Duration,
    /// Most partitions handled at the same time, each in its own
    /// transaction (default 8). Keep it at or below the pool's connections.
    pub max_partitions_in_flight: usize,
    /// Static group membership (`group.instance.id`), e.g. the pod name:
    /// a member restarted within the session timeout gets its partitions
    /// back without a rebalance (default `None`: dynamic membership). Each
    /// live member needs its own id.
    pub group_instance_id: Option<String>,
}

impl ConsumerConfig {
    /// Defaults for the consumer group `group_id`.
    pub fn new(group_id: impl Into<String>) -> Self {
        let group_id = group_id.into();
        Self {
            inbox: Some(Inbox::new(group_id.clone())),
            group_id,
            topics: Vec::new(),
            topic_prefix: String::new(),
            max_retries: 5,
            retry_backoff: Duration::from_millis(200),
            max_retry_backoff: Duration::from_secs(10),
            dead_letter: DeadLetterTopic::default(),
            inbox_retention: Some(Duration::from_secs(7 * 24 * 3600)),
            inbox_purge_interval: Duration::from_secs(600),
            inbox_purge_batch: 1_000,
            batch_size: 500,
            batch_wait: Duration::from_millis(5),
            max_partitions_in_flight: 8,
            group_instance_id: None,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.group_id.trim().is_empty() {
            return Err(ConfigError::Invalid {
                setting: "group_id",
                reason: "the consumer group id is empty; name the consuming service, e.g. \
                         `cj_assessment_service`"
                    .into(),
            });
        }
        if self.retry_backoff > self.max_retry_backoff {
            return Err(ConfigError::Invalid {
                setting: "retry_backoff",
                reason: format!(
                    "{:?} exceeds max_retry_backoff {:?}; lower it or raise the maximum",
                    self.retry_backoff, self.max_retry_backoff
                ),
            });
        }
        if let DeadLetterTopic::Suffix(suffix) = &self.dead_letter {
            if suffix.is_empty() {
                return Err(ConfigError::Invalid {
                    setting: "dead_letter",
                    reason:
                        "an empty suffix would dead-letter into the source topic; use e.g. `.dlq`"
                            .into(),
                });
            }
        }
        if self.batch_size == 0 {
            return Err(ConfigError::Invalid {
                setting: "batch_size",
                reason: "a batch of 0 messages would never handle anything; use 1 for one \
                         transaction per message, or e.g. 500"
                    .into(),
            });
        }
        if self.max_partitions_in_flight == 0 {
            return Err(ConfigError::Invalid {
                setting: "max_partitions_in_flight",
                reason: "0 partitions in flight would never handle anything; use at least 1 \
                         (at most the database pool's connections)"
                    .into(),
            });
        }
        if let Some(id) = &self.group_instance_id {
            check_instance_id(id)?;
        }
        for topic in &self.topics {
            check_topic("topics", topic)?;
            check_topic("dead_letter", &self.dead_letter.for_topic(topic))?;
        }
        Ok(())
    }
}

pub(crate) fn check_topic(setting: &'static str, topic: &str) -> Result<(), ConfigError> {
    validate_topic_name(topic).map_err(|reason| ConfigError::Invalid {
        setting,
        reason: format!("`{topic}`: {reason}"),
    })
}

/// The broker's rules for `group.instance.id`: 1 to 249 characters from
/// `[a-zA-Z0-9._-]`.
fn check_instance_id(id: &str) -> Result<(), ConfigError> {
    let valid = (1..=249).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            setting: "group_instance_id",
            reason: format!(
                "`{id}` is not a valid group instance id: use 1 to 249 characters from \
                 [a-zA-Z0-9._-], e.g. the pod name"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_settings_name_the_setting() {
        let mut c = ConsumerConfig::new(" ");
        assert!(c.validate().unwrap_err().to_string().contains("group_id"));
        c.group_id = "g".into();
        c.dead_letter = DeadLetterTopic::Suffix(String::new());
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("dead_letter"));
        c.dead_letter = DeadLetterTopic::Fixed("all.dlq".into());
        c.topics = vec!["bad topic".into()];
        assert!(c.validate().unwrap_err().to_string().contains("bad topic"));
        c.topics = vec!["good.topic".into()];
        assert_eq!(c.validate(), Ok(()));
        for (setting, broken) in [
            (
                "batch_size",
                ConsumerConfig {
                    batch_size: 0,
                    ..c.clone()
                },
            ),
            (
                "max_partitions_in_flight",
                ConsumerConfig {
                    max_partitions_in_flight: 0,
                    ..c.clone()
                },
            ),
            (
                "group_instance_id",
                ConsumerConfig {
                    group_instance_id: Some("pod 0".into()),
                    ..c.clone()
                },
            ),
            (
                "group_instance_id",
                ConsumerConfig {
                    group_instance_id: Some(String::new()),
                    ..c.clone()
                },
            ),
        ] {
            let text = broken.validate().unwrap_err().to_string();
            assert!(text.contains(setting), "{text}");
        }
        assert_eq!(c.dead_letter.for_topic("x"), "all.dlq");
    }
}
