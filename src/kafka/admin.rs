//! Topic administration: creating what is missing, deleting a bench's own.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;

use super::{Context, KafkaError};
use crate::connections::KafkaEndpoint;

/// Creates the capture state topic when it does not exist: one partition,
/// compacted.
pub async fn ensure_state_topic(
    kafka: &KafkaEndpoint,
    topic: &str,
    replication_factor: i32,
) -> Result<(), KafkaError> {
    create_topics(
        kafka,
        &[(topic.to_string(), 1, COMPACTED)],
        replication_factor,
    )
    .await
}

/// [`ensure_topics`] and [`ensure_state_topic`] in one request.
pub async fn ensure_capture_topics(
    kafka: &KafkaEndpoint,
    topics: &[String],
    state_topic: &str,
    partitions: i32,
    replication_factor: i32,
) -> Result<(), KafkaError> {
    let mut specs = topic_specs(topics, partitions);
    specs.push((state_topic.to_string(), 1, COMPACTED));
    create_topics(kafka, &specs, replication_factor).await
}

/// Creates the topics that do not exist yet: the event log with unlimited
/// retention, the restricted topic compacted.
pub async fn ensure_topics(
    kafka: &KafkaEndpoint,
    topics: &[String],
    partitions: i32,
    replication_factor: i32,
) -> Result<(), KafkaError> {
    create_topics(kafka, &topic_specs(topics, partitions), replication_factor).await
}

/// A topic to create: name, partitions, settings.
type TopicSpec = (String, i32, &'static [(&'static str, &'static str)]);

fn topic_specs(topics: &[String], partitions: i32) -> Vec<TopicSpec> {
    topics
        .iter()
        .map(|t| {
            let settings = if t.ends_with(".medical_detail.v1") {
                COMPACTED
            } else {
                LOG
            };
            (t.clone(), partitions, settings)
        })
        .collect()
}

/// The event log: kept forever.
const LOG: &[(&str, &str)] = &[("retention.ms", "-1"), ("retention.bytes", "-1")];

/// The restricted topic: only the latest record per key is kept, and a
/// tombstone erases it. With these settings Kafka's log cleaner rewrites a
/// segment at the latest a day after it was written (rolled after an hour),
/// and drops tombstones a day after that.
const COMPACTED: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("min.cleanable.dirty.ratio", "0.01"),
    ("segment.ms", "3600000"),
    ("max.compaction.lag.ms", "86400000"),
    ("delete.retention.ms", "86400000"),
];

/// An admin client (closing one blocks for about 0.1 s: drop it off the
/// async runtime's threads).
fn admin_client(kafka: &KafkaEndpoint) -> Result<AdminClient<Context>, KafkaError> {
    kafka
        .client_config()
        .create_with_context(Context)
        .map_err(|source| KafkaError::Client {
            brokers: kafka.brokers.clone(),
            source,
        })
}

/// Creates, in one request, those of `specs` that do not exist yet.
async fn create_topics(
    kafka: &KafkaEndpoint,
    specs: &[TopicSpec],
    replication_factor: i32,
) -> Result<(), KafkaError> {
    if specs.is_empty() {
        return Ok(());
    }
    let admin = admin_client(kafka)?;
    let new: Vec<NewTopic> = specs
        .iter()
        .map(|(t, partitions, settings)| {
            settings.iter().fold(
                NewTopic::new(t, *partitions, TopicReplication::Fixed(replication_factor)),
                |n, (k, v)| n.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|source| KafkaError::Topic {
            topic: specs
                .iter()
                .map(|(t, _, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(","),
            source,
        })?;
    // Closing an admin client blocks for about 0.1 s: not on this thread.
    std::thread::spawn(move || drop(admin));
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::Topic {
                    topic,
                    source: rdkafka::error::KafkaError::AdminOp(code),
                })
            }
        }
    }
    Ok(())
}

/// Deletes those of `topics` that exist (a bench's own, when it ends);
/// the topics it could not delete, with the broker's reason.
pub async fn delete_topics(
    kafka: &KafkaEndpoint,
    topics: &[String],
) -> Result<Vec<(String, String)>, KafkaError> {
    if topics.is_empty() {
        return Ok(vec![]);
    }
    let admin = admin_client(kafka)?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .delete_topics(&names, &opts)
        .await
        .map_err(|source| KafkaError::Topic {
            topic: names.join(","),
            source,
        })?;
    std::thread::spawn(move || drop(admin));
    Ok(results
        .into_iter()
        .filter_map(|r| match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => None,
            Err((topic, code)) => Some((topic, code.to_string())),
        })
        .collect())
}
