//! Kafka plumbing shared by capture and the projector: topic names, topic
//! creation, the idempotent producer.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot create a Kafka client for {brokers}: {source}\nhint: is the broker up (`vitrina status`)? is kafka.brokers right?")]
    Client {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot create topic {topic}: {message}")]
    Topic { topic: String, message: String },
}

/// `<prefix>.<entity>.v1`
pub fn topic(prefix: &str, entity: &str) -> String {
    format!("{prefix}.{entity}.v1")
}

/// Where changes that cannot be mapped or encoded go, with their reason.
pub fn dead_letter_topic(prefix: &str) -> String {
    format!("{prefix}.deadletter.v1")
}

/// An idempotent producer: acks=all, ordered per partition, retried without
/// duplicates; messages wait for an unavailable broker instead of expiring.
pub fn producer(
    brokers: &str,
    linger_ms: u32,
    compression: &str,
) -> Result<FutureProducer, KafkaError> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", compression)
        .set("linger.ms", linger_ms.to_string())
        .set("message.timeout.ms", "0")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("batch.num.messages", "10000")
        .set("log_level", "4")
        .create()
        .map_err(|source| KafkaError::Client {
            brokers: brokers.to_string(),
            source,
        })
}

/// Creates the topics that do not exist yet, with unlimited retention (the
/// topics are the event log).
pub async fn ensure_topics(
    brokers: &str,
    topics: &[String],
    partitions: i32,
    replication_factor: i32,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|source| KafkaError::Client {
            brokers: brokers.to_string(),
            source,
        })?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| {
            NewTopic::new(t, partitions, TopicReplication::Fixed(replication_factor))
                .set("retention.ms", "-1")
                .set("retention.bytes", "-1")
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|e| KafkaError::Topic {
            topic: topics.join(","),
            message: e.to_string(),
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::Topic {
                    topic,
                    message: code.to_string(),
                })
            }
        }
    }
    Ok(())
}
