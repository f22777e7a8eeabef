//! The idempotent producer.

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{Context, KafkaError};
use crate::connections::KafkaEndpoint;

/// The idempotent producer type.
pub type Producer = FutureProducer<Context>;

/// An idempotent producer: acks=all, ordered per partition, retried without
/// duplicates; messages wait for an unavailable broker instead of expiring.
/// Messages up to `max_message_bytes` pass librdkafka's own size check
/// (the caller dead-letters larger ones before producing).
pub fn producer(
    kafka: &KafkaEndpoint,
    linger_ms: u32,
    compression: &str,
    max_message_bytes: usize,
) -> Result<Producer, KafkaError> {
    create(
        kafka,
        &producer_config(kafka, linger_ms, compression, max_message_bytes),
        Context,
    )
}

/// A client of `kafka` made from `config` with `context`; a failure names
/// the brokers.
pub fn create<T, C>(
    kafka: &KafkaEndpoint,
    config: &rdkafka::ClientConfig,
    context: C,
) -> Result<T, KafkaError>
where
    C: rdkafka::ClientContext,
    T: rdkafka::config::FromClientConfigAndContext<C>,
{
    config
        .create_with_context(context)
        .map_err(|source| KafkaError::Client {
            brokers: kafka.brokers.clone(),
            source,
        })
}

/// The settings of [`producer`], for a producer with a context of its own
/// (capture's, which counts acknowledgements by delivery report).
pub fn producer_config(
    kafka: &KafkaEndpoint,
    linger_ms: u32,
    compression: &str,
    max_message_bytes: usize,
) -> rdkafka::ClientConfig {
    let mut config = kafka.client_config();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", compression)
        .set("linger.ms", linger_ms.to_string())
        .set("message.timeout.ms", "0")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("batch.num.messages", "10000")
        // A record batch's framing comes on top of the message itself.
        .set(
            "message.max.bytes",
            (max_message_bytes + 65_536).to_string(),
        )
        .set("log_level", "4")
        // Topics are made by provisioning, with the settings they need; a
        // broker's auto-creation would make them with its defaults (a 7-day
        // log) when one is missing, e.g. after a broker lost its log.
        .set("allow.auto.create.topics", "false")
        // Where a Java producer would put each key (murmur2 by default).
        .set("partitioner", &kafka.partitioner);
    config
}

/// Writes one bookkeeping record (a manifest entry, an upload journal
/// entry, a checkpoint part) and waits for its acknowledgement: its offset.
pub async fn append(
    producer: &Producer,
    topic: &str,
    key: Option<&str>,
    body: &[u8],
) -> Result<i64, rdkafka::error::KafkaError> {
    let mut record = FutureRecord::<str, [u8]>::to(topic).payload(body);
    if let Some(k) = key {
        record = record.key(k);
    }
    producer
        .send(record, Duration::from_secs(0))
        .await
        .map(|d| d.offset)
        .map_err(|(e, _)| e)
}

/// Writes a dead letter of a reading stage (the projector, the ProStore
/// feed, the RDM client) to `<prefix>.dead-letter`: a JSON object naming
/// the stage and the reason, with whatever locates the input (`fields`),
/// keyed by `key` (the source topic or table). Capture writes its own
/// through its ordered publisher.
pub async fn dead_letter(
    producer: &Producer,
    prefix: &str,
    stage: &str,
    reason: &str,
    key: &str,
    fields: serde_json::Value,
) -> Result<(), rdkafka::error::KafkaError> {
    let mut body = serde_json::json!({ "stage": stage, "reason": reason });
    if let (Some(b), serde_json::Value::Object(f)) = (body.as_object_mut(), fields) {
        b.extend(f);
    }
    let body = body.to_string();
    append(
        producer,
        &super::dead_letter_topic(prefix),
        Some(key),
        body.as_bytes(),
    )
    .await
    .map(|_| ())
}
