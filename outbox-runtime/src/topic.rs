//! Kafka topic names: validation and creating the registry's topics.

use crate::registry;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

/// Checks Kafka's rules for a topic name: 1–249 characters from
/// `[A-Za-z0-9._-]`, and neither `.` nor `..`.
///
/// ```
/// assert!(outbox::ops::validate_topic_name("files.batch-file-added.v1").is_ok());
/// assert!(outbox::ops::validate_topic_name("bad topic").is_err());
/// ```
pub fn validate_topic_name(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic name is empty".into());
    }
    if topic.len() > 249 {
        return Err(format!(
            "the topic name has {} characters; Kafka allows at most 249",
            topic.len()
        ));
    }
    if topic == "." || topic == ".." {
        return Err(format!("`{topic}` is not allowed as a Kafka topic name"));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "the topic name `{topic}` contains {c:?}; Kafka allows only [A-Za-z0-9._-]"
        ));
    }
    Ok(())
}

/// Error creating topics.
#[derive(Debug, thiserror::Error)]
#[error("could not create Kafka topic `{topic}`")]
pub struct TopicError {
    /// The topic.
    pub topic: String,
    /// rdkafka's error.
    #[source]
    pub source: KafkaError,
}

/// Creates every topic in the registry (with `prefix` prepended) that does not
/// exist yet. Useful for development and tests; in production topics are
/// usually provisioned by your platform. Returns the topics it created.
pub async fn create_registry_topics(
    client_config: &ClientConfig,
    prefix: &str,
    partitions: i32,
    replication: i32,
) -> Result<Vec<String>, TopicError> {
    let mut topics: Vec<String> = registry::registrations()
        .iter()
        .map(|r| format!("{prefix}{}", r.topic))
        .collect();
    topics.sort();
    topics.dedup();
    create_topics(client_config, &topics, partitions, replication).await
}

/// Creates `topics` that do not exist yet; returns those it created.
pub async fn create_topics(
    client_config: &ClientConfig,
    topics: &[String],
    partitions: i32,
    replication: i32,
) -> Result<Vec<String>, TopicError> {
    let first = topics.first().cloned().unwrap_or_default();
    let admin: AdminClient<DefaultClientContext> =
        client_config.create().map_err(|source| TopicError {
            topic: first,
            source,
        })?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(replication)))
        .collect();
    let results = admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .map_err(|source| TopicError {
            topic: topics.join(","),
            source,
        })?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(topic) => created.push(topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(TopicError {
                    topic,
                    source: KafkaError::AdminOp(code),
                })
            }
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::validate_topic_name;

    #[test]
    fn kafka_topic_rules() {
        assert!(validate_topic_name("a.b_c-D9").is_ok());
        for bad in ["", ".", "..", "a b", "a/b", "ü"] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
    }
}
