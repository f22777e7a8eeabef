//! Reading offsets and records: the ends of partitions, bookkeeping topics
//! read whole, consumers positioned at stored offsets.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message as _;

use super::quirks::{fetch_position, fetched_high_watermark};
use super::{Context, KafkaError};
use crate::connections::KafkaEndpoint;

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
