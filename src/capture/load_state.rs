//! Where the progress of the initial load lives: a compacted topic on the
//! Kafka cluster capture publishes to (`<prefix>.capture_state.v1`, one
//! partition), keyed by the slot. It survives the capture's container and
//! disk, and lives beside the events whose load it describes.
//!
//! Invariants:
//! - A save returns only once Kafka acknowledged it; a failed save is an
//!   error that stops capture (it restarts and resumes), never a log line.
//! - A read returns the latest saved state: capture first produces a probe
//!   record and reads the partition up to the probe's acknowledged offset,
//!   so it depends on no broker answer about end offsets (tansu's can be
//!   wrong).
//! - A slot that exists while no state is found anywhere is not streamed
//!   as if its load had finished: capture stops and says what to do.
//! - The file of earlier releases (`<state_dir>/capture/<slot>.json`) is
//!   read once when the topic has no state, and its state saved to the
//!   topic.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::snapshot::State;
use super::CaptureError;
use crate::connections::KafkaEndpoint;
use crate::kafka::{self, KafkaError};

/// How long reading the state may take before it counts as a failure.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

pub struct LoadStateStore {
    kafka: KafkaEndpoint,
    producer: kafka::Producer,
    topic: String,
    slot: String,
    legacy: PathBuf,
}

impl LoadStateStore {
    pub fn new(
        kafka: &KafkaEndpoint,
        producer: &kafka::Producer,
        prefix: &str,
        slot: &str,
        legacy: PathBuf,
    ) -> LoadStateStore {
        LoadStateStore {
            kafka: kafka.clone(),
            producer: producer.clone(),
            topic: kafka::capture_state_topic(prefix),
            slot: slot.to_string(),
            legacy,
        }
    }

    /// Where the state lives, for messages.
    pub fn describe(&self) -> String {
        format!("topic {} key {}", self.topic, self.slot)
    }

    /// Records `state`; returns once Kafka acknowledged it.
    pub async fn save(&self, state: &State) -> Result<(), CaptureError> {
        let payload = serde_json::to_vec(state).expect("state serializes");
        self.produce(&self.slot, &payload).await.map(|_| ())
    }

    /// The latest saved state, from the topic or else the legacy file;
    /// None when neither has one.
    pub async fn read(&self) -> Result<Option<State>, CaptureError> {
        let probe = self.produce(&format!("probe:{}", self.slot), b"{}").await?;
        let (k, t, key) = (self.kafka.clone(), self.topic.clone(), self.slot.clone());
        let latest = tokio::task::spawn_blocking(move || read_latest(&k, &t, &key, probe))
            .await
            .map_err(|e| CaptureError::Task(format!("reading the load state: {e}")))??;
        if let Some(bytes) = latest {
            return serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                CaptureError::LoadState(format!(
                    "the load state in {} does not parse: {e}",
                    self.describe()
                ))
            });
        }
        match std::fs::read(&self.legacy) {
            Ok(bytes) => {
                let state: State = serde_json::from_slice(&bytes).map_err(|e| {
                    CaptureError::LoadState(format!(
                        "the load state file {} does not parse: {e}",
                        self.legacy.display()
                    ))
                })?;
                tracing::info!(file = %self.legacy.display(), to = %self.describe(), "load state moved from the file of an earlier release to Kafka");
                self.save(&state).await?;
                Ok(Some(state))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CaptureError::LoadState(format!(
                "cannot read the load state file {}: {e}",
                self.legacy.display()
            ))),
        }
    }

    /// Produces one record to the state topic; its acknowledged offset.
    async fn produce(&self, key: &str, payload: &[u8]) -> Result<i64, CaptureError> {
        let record = FutureRecord::to(&self.topic)
            .key(key)
            .payload(payload)
            .partition(0);
        match self.producer.send(record, Duration::from_secs(60)).await {
            Ok(delivery) => Ok(delivery.offset),
            Err((e, _)) => Err(CaptureError::delivery(&e)),
        }
    }
}

/// The latest payload of `key` in partition 0 of `topic`, reading from the
/// beginning through offset `until`.
fn read_latest(
    kafka: &KafkaEndpoint,
    topic: &str,
    key: &str,
    until: i64,
) -> Result<Option<Vec<u8>>, CaptureError> {
    // librdkafka wants a group even for an assignment; nothing is
    // committed to it and it never joins.
    let consumer: BaseConsumer<kafka::Context> = kafka
        .client_config()
        .set("group.id", format!("{topic}.{key}.reader"))
        .set("enable.auto.commit", "false")
        // A few small records: do not let the broker wait to fill a fetch.
        .set("fetch.wait.max.ms", "10")
        .set("log_level", "3")
        // From offset 0, or the earliest kept when compaction removed it:
        // asking for the beginning first (ListOffsets) cost about 0.5 s
        // before the first fetch on tansu 0.6.0.
        .set("auto.offset.reset", "earliest")
        .create_with_context(kafka::Context)
        .map_err(|e| KafkaError::op("creating a reader of the load state", e))?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(0))
        .map_err(|e| KafkaError::op(format!("assigning {topic}[0]"), e))?;
    consumer
        .assign(&tpl)
        .map_err(|e| KafkaError::op(format!("assigning {topic}[0]"), e))?;
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut latest = None;
    let mut next = 0;
    while next <= until {
        match consumer.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                if m.offset() < next {
                    continue;
                }
                next = m.offset() + 1;
                if m.key() == Some(key.as_bytes()) {
                    // A tombstone (no payload) clears the state.
                    latest = m.payload().map(<[u8]>::to_vec);
                }
            }
            Some(Err(e)) => return Err(KafkaError::op("reading the load state", e).into()),
            None if Instant::now() > deadline => {
                return Err(KafkaError::Timeout(format!(
                    "reading the load state: topic {topic} reached offset {next}, not {until}, within {} s",
                    READ_TIMEOUT.as_secs()
                ))
                .into())
            }
            None => {}
        }
    }
    // Closing a consumer takes about 0.1 s; nothing waits for it.
    std::thread::spawn(move || drop(consumer));
    Ok(latest)
}
