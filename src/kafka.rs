//! Kafka plumbing shared by capture and the projector: topic names, topic
//! creation, the idempotent producer.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message as _;
use rdkafka::producer::FutureProducer;
use rdkafka::{config::RDKafkaLogLevel, ClientContext};

use crate::connections::KafkaEndpoint;
use crate::error::{kafka_kind, Classify, ErrorKind};

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("cannot create a Kafka client for {brokers}: {source}\nhint: is the broker up (`vitrina status`)? is kafka.brokers right?")]
    Client {
        brokers: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot create topic {topic}: {source}\nhint: the role needs CREATE on the cluster, or create the topic beforehand")]
    Topic {
        topic: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("Kafka: {what}: {source}\nhint: is the broker up (`vitrina status`)? is kafka.brokers right?")]
    Metadata {
        what: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("Kafka refused this client: {0}\nhint: no retry cures this; check [kafka.properties]: ssl.ca.location must name the CA that signed the broker's certificate (and the broker's name must match it), sasl.mechanism, sasl.username and sasl.password must be what the cluster expects")]
    Refused(String),
    #[error("Kafka task failed: {0}")]
    Task(String),
    #[error("Kafka: {0}\nhint: is the broker up and answering (`vitrina status`)?")]
    Timeout(String),
}

impl Classify for KafkaError {
    fn kind(&self) -> ErrorKind {
        match self {
            KafkaError::Client { source, .. }
            | KafkaError::Topic { source, .. }
            | KafkaError::Metadata { source, .. } => kafka_kind(source),
            KafkaError::Refused(_) | KafkaError::Task(_) => ErrorKind::Definite,
            KafkaError::Timeout(_) => ErrorKind::Transient,
        }
    }
}

/// The context of every client vitrina makes: librdkafka's log lines and
/// errors (a TLS handshake refused, a broker unreachable) go to vitrina's
/// log with the endpoint and librdkafka's reason.
#[derive(Clone, Default)]
pub struct Context;

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_line(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        client_error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for Context {}

/// librdkafka's log line, at its level.
pub fn log_line(level: RDKafkaLogLevel, fac: &str, message: &str) {
    use RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "rdkafka", facility = fac, "{message}")
        }
        L::Warning => tracing::warn!(target: "rdkafka", facility = fac, "{message}"),
        L::Notice | L::Info => tracing::info!(target: "rdkafka", facility = fac, "{message}"),
        L::Debug => tracing::debug!(target: "rdkafka", facility = fac, "{message}"),
    }
}

/// A client-level error (the broker unreachable, a handshake refused).
/// A refusal no retry cures is recorded for [`refused`].
pub fn client_error(error: &rdkafka::error::KafkaError, reason: &str) {
    tracing::warn!(error = %error, reason, "kafka client error");
    if is_refusal(error, reason) {
        refusals().send_if_modified(|r| {
            let first = r.is_none();
            if first {
                *r = Some(reason.to_string());
            }
            first
        });
    }
}

/// Whether a client error is one that retrying cannot cure: the broker's
/// certificate not trusted, or SASL credentials refused. librdkafka gives
/// one code (`__SSL`) for every TLS failure; only its reason separates a
/// certificate refused from a connection dropped mid-handshake (a broker
/// restarting), which stays transient.
pub fn is_refusal(error: &rdkafka::error::KafkaError, reason: &str) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    // A connection that dropped during the handshake says so in its reason.
    let dropped = [
        "transport failure",
        "Disconnected",
        "timed out",
        "Connection refused",
    ]
    .iter()
    .any(|d| reason.contains(d));
    match error.rdkafka_error_code() {
        Some(C::Authentication | C::SaslAuthenticationFailed) => !dropped,
        Some(C::SSL) => reason.contains("certificate") && !dropped,
        _ => false,
    }
}

/// The first refusal this process met (one process is one stage).
fn refusals() -> &'static tokio::sync::watch::Sender<Option<String>> {
    static R: std::sync::OnceLock<tokio::sync::watch::Sender<Option<String>>> =
        std::sync::OnceLock::new();
    R.get_or_init(|| tokio::sync::watch::Sender::new(None))
}

/// Resolves when a Kafka client of this process has been refused (see
/// [`is_refusal`]): a stage races its run against it and stops with
/// [`KafkaError::Refused`], a definite error, instead of retrying for ever.
pub async fn refused() -> KafkaError {
    let mut rx = refusals().subscribe();
    let reason = rx
        .wait_for(|r| r.is_some())
        .await
        .map(|r| r.clone().unwrap_or_default());
    match reason {
        Ok(reason) => KafkaError::Refused(reason),
        // The sender is a static: never dropped.
        Err(_) => std::future::pending().await,
    }
}

/// The idempotent producer type.
pub type Producer = FutureProducer<Context>;

/// `<prefix>.<entity>.v1`
pub fn topic(prefix: &str, entity: &str) -> String {
    format!("{prefix}.{entity}.v1")
}

/// The event topics of every entity of the contract (not the dead-letter
/// topic).
pub fn event_topics(prefix: &str) -> Vec<String> {
    crate::events::ENTITIES
        .iter()
        .map(|e| topic(prefix, e.name))
        .collect()
}

/// The restricted topic: medical detail under consent, compacted, keyed
/// `<entity>:<key>` (see [`crate::events::Detail`]).
pub fn detail_topic(prefix: &str) -> String {
    format!("{prefix}.medical_detail.v1")
}

/// Capture's own state (the initial load's progress), compacted, keyed
/// by slot: [`crate::capture::load_state`].
pub fn capture_state_topic(prefix: &str) -> String {
    format!("{prefix}.capture_state.v1")
}

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

/// Where changes that cannot be mapped or encoded go, with their reason.
pub fn dead_letter_topic(prefix: &str) -> String {
    format!("{prefix}.deadletter.v1")
}

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
    kafka
        .client_config()
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
        .create_with_context(Context)
        .map_err(|source| KafkaError::Client {
            brokers: kafka.brokers.clone(),
            source,
        })
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

/// End offsets (next offset to be written) of every partition of `topics`,
/// read on a blocking thread.
pub async fn end_offsets(
    kafka: &KafkaEndpoint,
    topics: &[String],
) -> Result<HashMap<(String, i32), i64>, KafkaError> {
    let (k, t) = (kafka.clone(), topics.to_vec());
    tokio::task::spawn_blocking(move || end_offsets_blocking(&k, &t))
        .await
        .map_err(|e| KafkaError::Task(format!("reading end offsets: {e}")))?
}

/// [`end_offsets`] on the calling thread.
///
/// Broker answers known to be wrong are worked around here, and only here:
/// tansu 0.6.0 answers ListOffsets(Latest) with the newest record batch's
/// base offset + 1 (its object-store engines; the memory engine shares the
/// code), short of the end by the rest of that batch. Its Fetch answers
/// carry the true high watermark. So the end is the high watermark of a
/// Fetch at the ListOffsets answer, which is also an empty fetch on a broker
/// that answers right (Apache Kafka, tansu's SQL engines): the same number.
pub fn end_offsets_blocking(
    kafka: &KafkaEndpoint,
    topics: &[String],
) -> Result<HashMap<(String, i32), i64>, KafkaError> {
    let consumer: BaseConsumer<Context> = kafka
        .client_config()
        .set("log_level", "3")
        // Assigned, never subscribed nor committed: the id names no group.
        .set("group.id", "vitrina-end-offsets")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.error.backoff.ms", "10")
        .set("max.partition.fetch.bytes", "1")
        .create_with_context(Context)
        .map_err(|e| KafkaError::Client {
            brokers: kafka.brokers.clone(),
            source: e,
        })?;
    let md = consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| KafkaError::Metadata {
            what: "reading topic metadata".into(),
            source: e,
        })?;
    let mut listed = HashMap::new();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in md
        .topics()
        .iter()
        .filter(|t| topics.iter().any(|x| x == t.name()))
    {
        for p in t.partitions() {
            let (_, hi) = consumer
                .fetch_watermarks(t.name(), p.id(), Duration::from_secs(10))
                .map_err(|e| KafkaError::Metadata {
                    what: format!("reading the offsets of {}", t.name()),
                    source: e,
                })?;
            listed.insert((t.name().to_string(), p.id()), hi);
            tpl.add_partition_offset(t.name(), p.id(), rdkafka::Offset::Offset(hi))
                .map_err(|e| KafkaError::Metadata {
                    what: format!("assigning {}", t.name()),
                    source: e,
                })?;
        }
    }
    if listed.is_empty() {
        return Ok(listed);
    }
    consumer.assign(&tpl).map_err(|e| KafkaError::Metadata {
        what: "assigning partitions to read their ends".into(),
        source: e,
    })?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut ends = HashMap::new();
    loop {
        for ((topic, partition), hi) in &listed {
            if ends.contains_key(&(topic.clone(), *partition)) {
                continue;
            }
            if let Some(fetched) = fetched_high_watermark(&consumer, topic, *partition) {
                ends.insert((topic.clone(), *partition), fetched.max(*hi));
            }
        }
        if ends.len() == listed.len() {
            return Ok(ends);
        }
        if std::time::Instant::now() > deadline {
            let missing: Vec<String> = listed
                .keys()
                .filter(|k| !ends.contains_key(*k))
                .map(|(t, p)| format!("{t}[{p}]"))
                .collect();
            return Err(KafkaError::Metadata {
                what: format!(
                    "no fetch answer within 10 s for {} partition(s), e.g. {}",
                    missing.len(),
                    missing
                        .iter()
                        .take(3)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                source: rdkafka::error::KafkaError::MetadataFetch(
                    RDKafkaErrorCode::OperationTimedOut,
                ),
            });
        }
        // Messages (when the listed end was short) are not wanted: the
        // fetch answer's watermark is.
        let _ = consumer.poll(Duration::from_millis(20));
    }
}

/// A topic's partition and an offset in it.
pub type PartitionOffset = ((String, i32), i64);

/// Of `wanted` (partition, offset), those where the log holds no record
/// at or after the offset: a read from each offset finds the partition's
/// end, or nothing within 10 s. Decides what an end-offset answer only
/// suggests: nisshi 0.8.1 was seen answering an end one below a record the
/// projector had read (docs/decisions/0005-event-log-in-postgresql.md).
pub async fn missing_records(
    kafka: &KafkaEndpoint,
    wanted: &[PartitionOffset],
) -> Result<Vec<PartitionOffset>, KafkaError> {
    let (k, w) = (kafka.clone(), wanted.to_vec());
    tokio::task::spawn_blocking(move || missing_records_blocking(&k, &w))
        .await
        .map_err(|e| KafkaError::Task(format!("reading records at offsets: {e}")))?
}

fn missing_records_blocking(
    kafka: &KafkaEndpoint,
    wanted: &[PartitionOffset],
) -> Result<Vec<PartitionOffset>, KafkaError> {
    if wanted.is_empty() {
        return Ok(vec![]);
    }
    let consumer: BaseConsumer<Context> = kafka
        .client_config()
        .set("log_level", "3")
        .set("group.id", "vitrina-log-check")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "error")
        .create_with_context(Context)
        .map_err(|e| KafkaError::Client {
            brokers: kafka.brokers.clone(),
            source: e,
        })?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for ((topic, partition), offset) in wanted {
        tpl.add_partition_offset(topic, *partition, rdkafka::Offset::Offset(*offset))
            .map_err(|e| KafkaError::Metadata {
                what: format!("assigning {topic}"),
                source: e,
            })?;
    }
    consumer.assign(&tpl).map_err(|e| KafkaError::Metadata {
        what: "assigning partitions to read records at offsets".into(),
        source: e,
    })?;
    let mut open: HashMap<(String, i32), i64> = wanted.iter().cloned().collect();
    let mut missing = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !open.is_empty() && std::time::Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let tp = (m.topic().to_string(), m.partition());
                if open.get(&tp).is_some_and(|at| m.offset() >= *at) {
                    open.remove(&tp);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                // Some topic's partition `p` is at its end: those whose
                // last fetch answer ends at or before the wanted offset
                // hold no record there.
                let ended: Vec<(String, i32)> = open
                    .iter()
                    .filter(|((t, q), at)| {
                        *q == p
                            && fetched_high_watermark(&consumer, t, *q).is_some_and(|hw| hw <= **at)
                    })
                    .map(|(tp, _)| tp.clone())
                    .collect();
                for tp in ended {
                    let at = open.remove(&tp).unwrap_or_default();
                    missing.push((tp, at));
                }
            }
            _ => {}
        }
    }
    // Nothing came within the time: out of range, or no answer.
    missing.extend(open);
    std::thread::spawn(move || drop(consumer));
    Ok(missing)
}

/// The high watermark of the last Fetch answer for a partition, if any
/// came (librdkafka's cached value; `fetch_watermarks` asks ListOffsets).
fn fetched_high_watermark(
    consumer: &BaseConsumer<Context>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer lives as long as `consumer`; librdkafka
    // only reads the topic name and writes the two offsets.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high)
}

/// How far before a wanted offset a consumer is positioned: more than the
/// records of one producer batch (`batch.num.messages` = 10,000).
pub const FETCH_LOOKBACK: i64 = 10_000;

/// Where to position a consumer that wants the records from `offset` on.
///
/// tansu 0.6.0 answers a Fetch at an offset inside a record batch with the
/// batches after it (its dynostore engine, memory storage included, lists
/// batch objects whose base offset is at or above the fetch offset), so the
/// rest of that batch never arrives. Positioned up to one producer batch
/// earlier, the batch holding `offset` comes back; the caller drops what
/// lies before `offset`, and still checks for a gap (a larger batch from
/// another producer). Apache Kafka returns the same records, a few more read.
pub fn fetch_position(offset: i64) -> rdkafka::Offset {
    if offset <= 0 {
        rdkafka::Offset::Beginning
    } else {
        rdkafka::Offset::Offset((offset - FETCH_LOOKBACK).max(0))
    }
}

/// Assigns every partition of `topics` to `consumer`, each positioned for
/// the offset `at` gives ([`fetch_position`]; the start where it gives
/// none); returns how many.
pub fn assign_at<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl Consumer<C>,
    topics: &[String],
    at: impl Fn(&str, i32) -> Option<i64>,
) -> Result<usize, rdkafka::error::KafkaError> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in topics {
        let md = consumer.fetch_metadata(Some(t), Duration::from_secs(30))?;
        for topic in md.topics() {
            for p in topic.partitions() {
                let offset = at(t, p.id())
                    .map(fetch_position)
                    .unwrap_or(rdkafka::Offset::Beginning);
                tpl.add_partition_offset(t, p.id(), offset)?;
            }
        }
    }
    consumer.assign(&tpl)?;
    Ok(tpl.count())
}

/// A record read back: offset, key, value.
pub type Record = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// Every record of `topic[partition]` from offset `from` up to its end (as
/// [`end_offsets_blocking`] reads it), on the calling thread. For small
/// bookkeeping topics; gives up after `timeout` without reaching the end.
pub fn read_partition_blocking(
    kafka: &KafkaEndpoint,
    topic: &str,
    partition: i32,
    from: i64,
    timeout: Duration,
) -> Result<Vec<Record>, KafkaError> {
    Ok(
        read_partitions_blocking(kafka, &[(topic.to_string(), partition, from)], timeout)?
            .remove(&(topic.to_string(), partition))
            .unwrap_or_default(),
    )
}

/// [`read_partition_blocking`] for several partitions at once: one reading
/// of the ends, one consumer.
pub fn read_partitions_blocking(
    kafka: &KafkaEndpoint,
    what: &[(String, i32, i64)],
    timeout: Duration,
) -> Result<HashMap<(String, i32), Vec<Record>>, KafkaError> {
    let mut topics: Vec<String> = what.iter().map(|w| w.0.clone()).collect();
    topics.dedup();
    let ends = end_offsets_blocking(kafka, &topics)?;
    let ranges: Vec<(String, i32, i64, i64)> = what
        .iter()
        .map(|(t, p, from)| {
            let end = ends.get(&(t.clone(), *p)).copied().unwrap_or(0);
            (t.clone(), *p, *from, end)
        })
        .collect();
    read_ranges_blocking(kafka, &ranges, timeout)
}

/// The records of each `(topic, partition, from, end)`: offsets `from`
/// up to `end` (exclusive), on the calling thread; one consumer.
pub fn read_ranges_blocking(
    kafka: &KafkaEndpoint,
    what: &[(String, i32, i64, i64)],
    timeout: Duration,
) -> Result<HashMap<(String, i32), Vec<Record>>, KafkaError> {
    let mut out: HashMap<(String, i32), Vec<Record>> = HashMap::new();
    let mut next: HashMap<(String, i32), (i64, i64)> = HashMap::new();
    let mut tpl = rdkafka::TopicPartitionList::new();
    for (t, p, from, end) in what {
        out.insert((t.clone(), *p), Vec::new());
        let end = *end;
        if *from < end {
            next.insert((t.clone(), *p), (*from, end));
            tpl.add_partition_offset(t, *p, fetch_position(*from))
                .map_err(|e| KafkaError::Metadata {
                    what: format!("assigning {t}[{p}]"),
                    source: e,
                })?;
        }
    }
    if next.is_empty() {
        return Ok(out);
    }
    let consumer: BaseConsumer<Context> = kafka
        .client_config()
        .set("log_level", "3")
        // Assigned, never subscribed nor committed: the id names no group.
        .set("group.id", "vitrina-reader")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "10")
        .create_with_context(Context)
        .map_err(|e| KafkaError::Client {
            brokers: kafka.brokers.clone(),
            source: e,
        })?;
    consumer.assign(&tpl).map_err(|e| KafkaError::Metadata {
        what: "assigning partitions to read".into(),
        source: e,
    })?;
    let deadline = std::time::Instant::now() + timeout;
    while !next.is_empty() {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                let k = (m.topic().to_string(), m.partition());
                let Some((at, end)) = next.get_mut(&k) else {
                    continue;
                };
                if m.offset() < *at {
                    continue;
                }
                *at = m.offset() + 1;
                let done = *at >= *end;
                out.entry(k.clone()).or_default().push((
                    m.offset(),
                    m.key().map(<[u8]>::to_vec),
                    m.payload().map(<[u8]>::to_vec),
                ));
                if done {
                    next.remove(&k);
                }
            }
            Some(Err(e)) => {
                return Err(KafkaError::Metadata {
                    what: "reading partitions".into(),
                    source: e,
                })
            }
            None if std::time::Instant::now() > deadline => {
                let ((t, p), (at, end)) = next.iter().next().expect("not empty");
                return Err(KafkaError::Timeout(format!(
                    "reading {t}[{p}]: reached offset {at}, not its end {end}, within {} s",
                    timeout.as_secs()
                )));
            }
            None => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::KafkaError as K;
    use rdkafka::types::RDKafkaErrorCode as C;

    #[test]
    fn certificate_and_credential_refusals_are_told_from_dropped_connections() {
        let ssl = K::Global(C::SSL);
        assert!(is_refusal(
            &ssl,
            "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed"
        ));
        // A broker restarting mid-handshake: retry.
        assert!(!is_refusal(
            &ssl,
            "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: Disconnected"
        ));
        assert!(is_refusal(
            &K::Global(C::Authentication),
            "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error"
        ));
        // SASL over a connection that dropped: retry.
        assert!(!is_refusal(
            &K::Global(C::Authentication),
            "sasl_ssl://127.0.0.1:39391/bootstrap: SASL PLAIN mechanism handshake failed: Local: Broker transport failure: broker's supported mechanisms: (n/a) (after 0ms in state DOWN)"
        ));
        assert!(!is_refusal(
            &K::Global(C::AllBrokersDown),
            "1/1 brokers are down"
        ));
    }
}
