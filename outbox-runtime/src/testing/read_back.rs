//! Reading back what reached the mock broker: every partition of every
//! topic from its beginning, without a consumer group.

use super::listing::published;
use super::{RecordedEvent, TestingError};
use crate::consume::MessageLocation;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;

type Partition = (String, i32);

/// How long one wait for a message lasts before the loop looks at the
/// clock and the watermarks again.
const POLL: Duration = Duration::from_millis(100);

/// Every message in `topics` once at least `at_least` arrived (and what the
/// partitions held at that moment), ordered by [`merge_partitions`].
pub(crate) async fn read_back(
    bootstrap: &str,
    topics: &[String],
    partitions: i32,
    at_least: usize,
    within: Duration,
) -> Result<Vec<RecordedEvent>, TestingError> {
    let consumer = assigned_from_beginning(bootstrap, topics, partitions)?;
    let deadline = Instant::now() + within;
    let mut read: Vec<RecordedEvent> = Vec::new();
    let mut next_offset: HashMap<Partition, i64> = HashMap::new();
    let mut ends: Option<Vec<(Partition, i64)>> = None;
    loop {
        if ends.is_none() && read.len() >= at_least {
            ends = Some(high_watermarks(bootstrap, topics, partitions).await);
        }
        if let Some(ends) = &ends {
            let at_end =
                |(p, high): &(Partition, i64)| next_offset.get(p).copied().unwrap_or(0) >= *high;
            if ends.iter().all(at_end) {
                break;
            }
        }
        let now = Instant::now();
        if now >= deadline {
            if ends.is_some() {
                break;
            }
            let arrived: Vec<&RecordedEvent> = read.iter().collect();
            return Err(TestingError::NotProduced {
                expected: at_least,
                arrived: read.len(),
                within,
                listing: published(&arrived),
            });
        }
        let message = match tokio::time::timeout(POLL.min(deadline - now), consumer.recv()).await {
            Err(_) => continue,
            Ok(Err(error)) => {
                tracing::debug!(%error, "mock broker reader error; continuing");
                continue;
            }
            Ok(Ok(message)) => message,
        };
        let partition = (message.topic().to_owned(), message.partition());
        let offset = message.offset();
        if next_offset
            .get(&partition)
            .is_some_and(|next| offset < *next)
        {
            continue;
        }
        next_offset.insert(partition, offset + 1);
        read.push(recorded(&message)?);
    }
    Ok(merge_partitions(read))
}

fn assigned_from_beginning(
    bootstrap: &str,
    topics: &[String],
    partitions: i32,
) -> Result<StreamConsumer, TestingError> {
    let consumer: StreamConsumer = reader_config(bootstrap)
        .create()
        .map_err(TestingError::kafka("creating the reader"))?;
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .map_err(TestingError::kafka("assigning the partitions"))?;
        }
    }
    consumer
        .assign(&assignment)
        .map_err(TestingError::kafka("assigning the partitions"))?;
    Ok(consumer)
}

fn reader_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set(
            "group.id",
            format!("outbox-testing-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50");
    config
}

/// The high watermark of every partition; an empty list when they cannot
/// be read (then the reader returns what it has).
async fn high_watermarks(
    bootstrap: &str,
    topics: &[String],
    partitions: i32,
) -> Vec<(Partition, i64)> {
    let config = reader_config(bootstrap);
    let topics = topics.to_vec();
    // `fetch_watermarks` blocks on a request to the broker.
    let fetched = tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = config.create()?;
        let mut ends = Vec::new();
        for topic in topics {
            for p in 0..partitions {
                let (_, high) = client.fetch_watermarks(&topic, p, Duration::from_secs(5))?;
                ends.push(((topic.clone(), p), high));
            }
        }
        Ok::<_, rdkafka::error::KafkaError>(ends)
    })
    .await
    .map_err(|error| error.to_string())
    .and_then(|ends| ends.map_err(|error| error.to_string()));
    fetched.unwrap_or_else(|error| {
        tracing::warn!(%error, "cannot read the mock broker's watermarks; later messages may be missed");
        Vec::new()
    })
}

fn recorded(message: &BorrowedMessage<'_>) -> Result<RecordedEvent, TestingError> {
    let location = MessageLocation {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
    };
    let origin = || format!("the message at {location}");
    let key = message
        .key()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    RecordedEvent::parse(
        origin,
        location.topic.clone(),
        key,
        message.payload().unwrap_or_default(),
        Some(location.clone()),
    )
}

/// The events of each partition in partition order, partitions interleaved
/// by event id (UUID v7: creation order).
pub(crate) fn merge_partitions(events: Vec<RecordedEvent>) -> Vec<RecordedEvent> {
    let mut queues: Vec<(Option<MessageLocation>, VecDeque<RecordedEvent>)> = Vec::new();
    for event in events {
        let same = |l: &Option<MessageLocation>| {
            l.as_ref().map(|l| (&l.topic, l.partition))
                == event.location.as_ref().map(|l| (&l.topic, l.partition))
        };
        match queues.iter_mut().find(|(l, _)| same(l)) {
            Some((_, queue)) => queue.push_back(event),
            None => queues.push((event.location.clone(), VecDeque::from([event]))),
        }
    }
    let mut merged = Vec::new();
    while let Some(queue) = queues
        .iter_mut()
        .filter(|(_, q)| !q.is_empty())
        .min_by_key(|(_, q)| q.front().map(|e| e.envelope.event_id))
    {
        match queue.1.pop_front() {
            Some(event) => merged.push(event),
            None => break,
        }
    }
    merged
}
