//! Reading offsets and records: the ends of partitions, bookkeeping topics
//! read whole, consumers positioned at stored offsets.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;

use super::quirks::{fetch_position, fetched_ends, fetched_high_watermark, short_list_offsets};
use super::{Context, KafkaError};
use crate::connections::KafkaEndpoint;

/// (topic, partition) → offset.
pub type Offsets = HashMap<(String, i32), i64>;

/// One client for the ends of the log and the partitions of topics, made
/// once per stage and asked every few seconds: on a SASL cluster a client
/// per question is a login per question. The ends of all partitions are one
/// ListOffsets request per leader broker.
pub struct Ends {
    consumer: BaseConsumer<Context>,
    kafka: KafkaEndpoint,
    /// Serializes the tansu correction, which assigns partitions.
    correcting: std::sync::Mutex<()>,
}

impl Ends {
    pub fn new(kafka: &KafkaEndpoint) -> Result<std::sync::Arc<Ends>, KafkaError> {
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
        Ok(std::sync::Arc::new(Ends {
            consumer,
            kafka: kafka.clone(),
            correcting: std::sync::Mutex::new(()),
        }))
    }

    /// The partition count of each of `topics` the cluster has (a topic it
    /// does not have is left out), from one metadata request.
    pub fn partitions_blocking(
        &self,
        topics: &[String],
    ) -> Result<HashMap<String, i32>, KafkaError> {
        // Events the client queued (errors, logs) are not wanted here.
        let _ = self.consumer.poll(Duration::ZERO);
        let one = (topics.len() == 1).then(|| topics[0].as_str());
        let md = self
            .consumer
            .fetch_metadata(one, Duration::from_secs(10))
            .map_err(|e| KafkaError::Metadata {
                what: "reading topic metadata".into(),
                source: e,
            })?;
        Ok(md
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && !t.partitions().is_empty())
            .filter(|t| topics.iter().any(|x| x == t.name()))
            .map(|t| (t.name().to_string(), t.partitions().len() as i32))
            .collect())
    }

    /// End offsets (next offset to be written) of every partition of
    /// `topics`, on the calling thread.
    pub fn read_blocking(&self, topics: &[String]) -> Result<Offsets, KafkaError> {
        let counts = self.partitions_blocking(topics)?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for (t, n) in &counts {
            for p in 0..*n {
                // ListOffsets with the timestamp -1: the latest offset.
                tpl.add_partition_offset(t, p, rdkafka::Offset::End)
                    .map_err(|e| KafkaError::Metadata {
                        what: format!("listing {t}[{p}]"),
                        source: e,
                    })?;
            }
        }
        if tpl.count() == 0 {
            return Ok(HashMap::new());
        }
        let answer = self
            .consumer
            .offsets_for_times(tpl, Duration::from_secs(10))
            .map_err(|e| KafkaError::Metadata {
                what: "reading the end offsets".into(),
                source: e,
            })?;
        let mut listed = HashMap::new();
        for e in answer.elements() {
            let what = || format!("reading the end offset of {}[{}]", e.topic(), e.partition());
            e.error().map_err(|source| KafkaError::Metadata {
                what: what(),
                source,
            })?;
            let end = match e.offset() {
                rdkafka::Offset::Offset(o) => o,
                // No answer for it: the partition's own query.
                _ => {
                    self.consumer
                        .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
                        .map_err(|source| KafkaError::Metadata {
                            what: what(),
                            source,
                        })?
                        .1
                }
            };
            listed.insert((e.topic().to_string(), e.partition()), end);
        }
        if short_list_offsets(&self.kafka) {
            let _one = self.correcting.lock().unwrap_or_else(|p| p.into_inner());
            return fetched_ends(&self.consumer, listed);
        }
        Ok(listed)
    }

    /// [`Ends::read_blocking`] on a blocking thread.
    pub async fn read(
        self: &std::sync::Arc<Self>,
        topics: &[String],
    ) -> Result<Offsets, KafkaError> {
        let (me, t) = (self.clone(), topics.to_vec());
        tokio::task::spawn_blocking(move || me.read_blocking(&t))
            .await
            .map_err(|e| KafkaError::Task(format!("reading end offsets: {e}")))?
    }

    /// [`Ends::partitions_blocking`] on a blocking thread.
    pub async fn partitions(
        self: &std::sync::Arc<Self>,
        topics: &[String],
    ) -> Result<HashMap<String, i32>, KafkaError> {
        let (me, t) = (self.clone(), topics.to_vec());
        tokio::task::spawn_blocking(move || me.partitions_blocking(&t))
            .await
            .map_err(|e| KafkaError::Task(format!("reading partitions: {e}")))?
    }
}

/// End offsets of every partition of `topics` with a client of its own
/// (for a one-off question; a stage that asks again keeps an [`Ends`]).
pub async fn end_offsets(kafka: &KafkaEndpoint, topics: &[String]) -> Result<Offsets, KafkaError> {
    Ends::new(kafka)?.read(topics).await
}

/// [`end_offsets`] on the calling thread.
pub fn end_offsets_blocking(
    kafka: &KafkaEndpoint,
    topics: &[String],
) -> Result<Offsets, KafkaError> {
    Ends::new(kafka)?.read_blocking(topics)
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
    assign_offsets(
        &consumer,
        wanted.iter().cloned(),
        "assigning partitions to read records at offsets",
    )?;
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

/// Assigns every partition of `topics` to `consumer`, each positioned for
/// the offset `at` gives ([`fetch_position`]; the start where it gives
/// none); returns the partition count of each topic.
pub fn assign_at<C: rdkafka::consumer::ConsumerContext>(
    kafka: &KafkaEndpoint,
    consumer: &impl Consumer<C>,
    topics: &[String],
    at: impl Fn(&str, i32) -> Option<i64>,
) -> Result<HashMap<String, i32>, rdkafka::error::KafkaError> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut counts = HashMap::new();
    for t in topics {
        let md = consumer.fetch_metadata(Some(t), Duration::from_secs(30))?;
        for topic in md.topics() {
            counts.insert(t.clone(), topic.partitions().len() as i32);
            for p in topic.partitions() {
                let offset = at(t, p.id())
                    .map(|o| fetch_position(kafka, o))
                    .unwrap_or(rdkafka::Offset::Beginning);
                tpl.add_partition_offset(t, p.id(), offset)?;
            }
        }
    }
    consumer.assign(&tpl)?;
    Ok(counts)
}

/// Adds to `consumer`'s assignment the partitions `counts` has beyond
/// `assigned` (a topic an operator grew), each from its beginning (no
/// record of a new partition was read before); `assigned` follows. Returns
/// the partitions added.
pub fn assign_added<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl Consumer<C>,
    assigned: &mut HashMap<String, i32>,
    counts: &HashMap<String, i32>,
) -> Result<Vec<(String, i32)>, KafkaError> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    let mut added = Vec::new();
    for (t, n) in counts {
        let Some(had) = assigned.get(t).copied() else {
            continue;
        };
        for p in had..*n {
            tpl.add_partition_offset(t, p, rdkafka::Offset::Beginning)
                .map_err(|e| KafkaError::op(format!("assigning {t}[{p}]"), e))?;
            added.push((t.clone(), p));
        }
    }
    if added.is_empty() {
        return Ok(added);
    }
    consumer
        .incremental_assign(&tpl)
        .map_err(|e| KafkaError::op("assigning the partitions added to the topics", e))?;
    for (t, p) in &added {
        assigned.insert(t.clone(), p + 1);
        tracing::warn!(topic = %t, partition = p, "a partition was added to the topic; reading it from its beginning");
    }
    Ok(added)
}

/// Assigns `consumer` the partitions of `at`, each at its offset.
pub(super) fn assign_offsets(
    consumer: &BaseConsumer<Context>,
    at: impl IntoIterator<Item = PartitionOffset>,
    what: &str,
) -> Result<(), KafkaError> {
    let mut tpl = rdkafka::TopicPartitionList::new();
    for ((topic, partition), offset) in at {
        tpl.add_partition_offset(&topic, partition, rdkafka::Offset::Offset(offset))
            .map_err(|e| KafkaError::Metadata {
                what: format!("assigning {topic}"),
                source: e,
            })?;
    }
    consumer.assign(&tpl).map_err(|e| KafkaError::Metadata {
        what: what.into(),
        source: e,
    })
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
            tpl.add_partition_offset(t, *p, fetch_position(kafka, *from))
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

/// How long reading a bookkeeping topic to its end may take.
const BOOKKEEPING_READ: Duration = Duration::from_secs(120);

/// The JSON records of a one-partition bookkeeping topic (the ProStore
/// manifest, the RDM upload journal) from offset `from` on, each with its
/// offset and parsed, or the reason it does not parse as `T`.
#[allow(clippy::type_complexity)]
pub fn read_json_blocking<T: serde::de::DeserializeOwned>(
    kafka: &KafkaEndpoint,
    topic: &str,
    from: i64,
) -> Result<Vec<(i64, Result<T, String>)>, KafkaError> {
    Ok(
        read_partition_blocking(kafka, topic, 0, from, BOOKKEEPING_READ)?
            .into_iter()
            .map(|(offset, _, value)| {
                let parsed = serde_json::from_slice(value.as_deref().unwrap_or_default())
                    .map_err(|e| e.to_string());
                (offset, parsed)
            })
            .collect(),
    )
}
