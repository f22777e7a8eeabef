//! Broker workarounds, named and kept here: what a broker we run against
//! answers differently from Apache Kafka's documented behaviour.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::{Context, KafkaError};
use crate::config::Broker;
use crate::connections::KafkaEndpoint;

/// The high watermark of the last Fetch answer for a partition, if any
/// came (librdkafka's cached value; `fetch_watermarks` asks ListOffsets).
pub(super) fn fetched_high_watermark(
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

/// How far before a wanted offset a consumer is positioned on tansu 0.6:
/// more than the records of one producer batch (`batch.num.messages` =
/// 10,000).
pub const FETCH_LOOKBACK: i64 = 10_000;

/// Where to position a consumer that wants the records from `offset` on.
///
/// tansu 0.6.0 (`kafka.broker = "tansu-0.6"`) answers a Fetch at an offset
/// inside a record batch with the batches after it (its dynostore engine,
/// memory storage included, lists batch objects whose base offset is at or
/// above the fetch offset), so the rest of that batch never arrives.
/// Positioned up to one producer batch earlier, the batch holding `offset`
/// comes back; the caller drops what lies before `offset`, and still checks
/// for a gap (a larger batch from another producer). Any other broker is
/// asked for `offset` itself (nisshi 0.8.1 was probed answering a fetch
/// from the middle of a batch with that batch).
pub fn fetch_position(kafka: &KafkaEndpoint, offset: i64) -> rdkafka::Offset {
    let back = match kafka.broker {
        Broker::Tansu06 => FETCH_LOOKBACK,
        Broker::Kafka => 0,
    };
    if offset <= 0 {
        rdkafka::Offset::Beginning
    } else {
        rdkafka::Offset::Offset((offset - back).max(0))
    }
}

/// Whether ListOffsets(Latest) answers must be checked against a Fetch's
/// high watermark: tansu 0.6.0 answers with the newest record batch's base
/// offset + 1 (its object-store engines; the memory engine shares the
/// code), short of the end by the rest of that batch, while its Fetch
/// answers carry the true high watermark.
pub(super) fn short_list_offsets(kafka: &KafkaEndpoint) -> bool {
    kafka.broker == Broker::Tansu06
}

/// The true ends on tansu 0.6 ([`short_list_offsets`]): the high
/// watermark of a Fetch at each listed end (on a broker that answers right,
/// an empty fetch giving the same number).
pub(super) fn fetched_ends(
    consumer: &BaseConsumer<Context>,
    listed: HashMap<(String, i32), i64>,
) -> Result<HashMap<(String, i32), i64>, KafkaError> {
    super::read::assign_offsets(
        consumer,
        listed.iter().map(|(k, o)| (k.clone(), *o)),
        "assigning partitions to read their ends",
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut ends = HashMap::new();
    let result = loop {
        for ((topic, partition), hi) in &listed {
            if ends.contains_key(&(topic.clone(), *partition)) {
                continue;
            }
            if let Some(fetched) = fetched_high_watermark(consumer, topic, *partition) {
                ends.insert((topic.clone(), *partition), fetched.max(*hi));
            }
        }
        if ends.len() == listed.len() {
            break Ok(std::mem::take(&mut ends));
        }
        if std::time::Instant::now() > deadline {
            let missing: Vec<String> = listed
                .keys()
                .filter(|k| !ends.contains_key(*k))
                .map(|(t, p)| format!("{t}[{p}]"))
                .take(3)
                .collect();
            break Err(KafkaError::Metadata {
                what: format!(
                    "no fetch answer within 10 s for {} partition(s), e.g. {}",
                    listed.len() - ends.len(),
                    missing.join(", ")
                ),
                source: rdkafka::error::KafkaError::MetadataFetch(
                    rdkafka::error::RDKafkaErrorCode::OperationTimedOut,
                ),
            });
        }
        // Messages (when the listed end was short) are not wanted: the
        // fetch answer's watermark is.
        let _ = consumer.poll(Duration::from_millis(20));
    };
    let _ = consumer.unassign();
    result
}

/// Where a fetched record stands against the offset expected next on its
/// partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Below the expected offset: read before (a look-back or a rewind).
    Seen,
    /// The expected record, or past a gap a compacted topic may have.
    Next,
    /// Offsets skipped: see [`rewind`].
    Gap,
}

impl Order {
    /// A record at `offset` where `expected` is due (`None`: nothing read
    /// yet, any offset is next). Only a compacted topic may skip offsets.
    pub fn of(offset: i64, expected: Option<i64>, compacted: bool) -> Order {
        match expected {
            Some(e) if offset < e => Order::Seen,
            Some(e) if offset > e && !compacted => Order::Gap,
            _ => Order::Next,
        }
    }
}

/// Reads a partition again from its beginning after a gap ([`Order::Gap`]);
/// the reader skips what it had read by offset. A broker must hand out a
/// partition from the offset asked for; tansu 0.6.0 was seen answering a
/// fetch from the middle of a record batch with the next batch.
pub fn rewind<C: rdkafka::consumer::ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    partition: i32,
    expected: i64,
    got: i64,
) -> Result<(), super::KafkaError> {
    tracing::warn!(
        topic,
        partition,
        expected,
        got,
        "broker skipped offsets; rewinding the partition"
    );
    consumer
        .seek(
            topic,
            partition,
            rdkafka::Offset::Beginning,
            std::time::Duration::from_secs(10),
        )
        .map_err(|e| super::KafkaError::op(format!("rewinding {topic}[{partition}]"), e))
}
