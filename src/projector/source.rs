//! The source: the consumer, positioned at the showcase's own offsets,
//! gathering decoded events into batches.
//!
//! Invariants:
//! - A partition is read from the offset the showcase committed with its
//!   rows; nothing at or below an applied or in-flight offset is gathered
//!   again.
//! - An event that fails to decode goes to the dead-letter topic with the
//!   reason and its position; the partition goes on. Except an event whose
//!   schema this projector does not know (a newer capture): its partition
//!   stops before it (nothing at or after it is applied or committed), the
//!   projector reports itself not ready, and a projector that knows the
//!   schema resumes from there.
//! - Broker answers known to be wrong are corrected here: a fetch that skips
//!   offsets rewinds the partition.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::sink::{set, Batch};
use super::{ProjectorError, Tp};
use crate::events::codec::{CodecError, Registry};
use crate::events::Message as Decoded;
use crate::kafka;
use crate::observability as obs;
use crate::showcase::apply::DetailChange;

/// Next offset to apply per partition, shared with the rebalance callback.
pub(super) type Offsets = Arc<Mutex<HashMap<Tp, i64>>>;

/// Positions newly assigned partitions at the offsets the showcase holds.
pub(super) struct SeekToShowcase {
    pub(super) offsets: Offsets,
    /// Partitions currently assigned to this member.
    pub(super) assigned: Arc<AtomicUsize>,
}

impl ClientContext for SeekToShowcase {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        kafka::log_line(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        kafka::client_error(&error, reason);
    }
}

impl ConsumerContext for SeekToShowcase {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            let known = self.offsets.lock().unwrap();
            let mut assign = TopicPartitionList::new();
            for e in tpl.elements() {
                let at = known
                    .get(&(e.topic().to_string(), e.partition()))
                    .map(|o| kafka::fetch_position(*o))
                    .unwrap_or(Offset::Beginning);
                let _ = assign.add_partition_offset(e.topic(), e.partition(), at);
            }
            tracing::info!(
                partitions = assign.count(),
                "assigned; positioned at the showcase's offsets"
            );
            self.assigned
                .store(assign.count(), std::sync::atomic::Ordering::SeqCst);
            if let Err(e) = consumer.assign(&assign) {
                tracing::error!(error = %e, "assign failed");
            }
        } else {
            self.assigned.store(0, std::sync::atomic::Ordering::SeqCst);
            let _ = consumer.unassign();
        }
    }
}

/// The Kafka side: the consumer, decoding, dead letters.
pub(super) struct Source {
    pub(super) consumer: StreamConsumer<SeekToShowcase>,
    pub(super) registry: Registry,
    pub(super) dlq: kafka::Producer,
    pub(super) prefix: String,
    /// Next offset expected per partition: what is applied or in flight.
    pub(super) gathered: HashMap<Tp, i64>,
    pub(super) assigned: Arc<AtomicUsize>,
    /// Since when no partition is assigned, and how long that may last.
    pub(super) unassigned_since: Option<Instant>,
    pub(super) rejoin_after: Duration,
    pub(super) topics: Vec<String>,
    /// The restricted topic (medical detail under consent).
    pub(super) detail_topic: String,
    /// Partitions come from the broker's consumer group (else: assigned
    /// by this projector itself).
    pub(super) grouped: bool,
    /// Partitions stopped before an event of an unknown schema, and why.
    pub(super) stalled: HashMap<Tp, String>,
}

/// Assigns every partition of `topics` to `consumer`, positioned at the
/// showcase's offsets (the beginning where it has none); returns how many.
pub(super) fn assign_all(
    consumer: &StreamConsumer<SeekToShowcase>,
    topics: &[String],
    stored: &HashMap<Tp, i64>,
) -> Result<usize, ProjectorError> {
    kafka::assign_at(consumer, topics, |t, p| {
        stored.get(&(t.to_string(), p)).copied()
    })
    .map_err(|e| ProjectorError::consumer("assigning the partitions", e))
}

impl Source {
    pub(super) async fn gather(
        &mut self,
        batch_size: usize,
        wait: Duration,
        cancel: &CancellationToken,
        cap: Option<&HashMap<Tp, i64>>,
    ) -> Result<Batch, ProjectorError> {
        self.watch_assignment()?;
        let mut b = Batch::default();
        let mut cur: Tp = (String::new(), -1);
        let t0 = Instant::now();
        let deadline = t0 + wait;
        while b.messages < batch_size {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::select! {
                _ = cancel.cancelled() => break,
                r = tokio::time::timeout(left.max(Duration::from_millis(1)), self.consumer.recv()) => r,
            };
            let m = match m {
                Err(_) => break,
                Ok(Err(e)) => return Err(ProjectorError::consumer("receiving", e)),
                Ok(Ok(m)) => m,
            };
            // Messages come in runs per partition: the key is built once
            // per run, and the maps below copy it only for a new partition.
            if cur.1 != m.partition() || cur.0 != m.topic() {
                cur = (m.topic().to_string(), m.partition());
            }
            let k = &cur;
            let expected = self.gathered.get(k).copied().unwrap_or(0);
            // Never apply twice what is applied or in flight.
            if m.offset() < expected {
                continue;
            }
            if let Some(cap) = cap {
                if m.offset() >= cap.get(k).copied().unwrap_or(0) {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&k.0, k.1);
                    let _ = self.consumer.pause(&tpl);
                    continue;
                }
            }
            // The broker must hand us the partition from the offset we
            // asked for. Seen with tansu: a fetch from the middle of a
            // record batch returns the next batch. Rewind the partition to
            // its beginning; what is applied already is skipped above.
            // The restricted topic is compacted: there, gaps are records a
            // later one of the same key replaced (Kafka's and tansu's
            // SQLite engine's compaction), not a fault; rewinding would
            // meet the same gap for ever.
            if m.offset() > expected && k.0 != self.detail_topic {
                tracing::warn!(topic = %k.0, partition = k.1, expected, got = m.offset(), "broker skipped offsets; rewinding the partition");
                metrics::counter!(obs::PROJECTOR_REWINDS).increment(1);
                self.consumer
                    .seek(&k.0, k.1, Offset::Beginning, Duration::from_secs(10))
                    .map_err(|e| {
                        ProjectorError::consumer(format!("rewinding {}[{}]", k.0, k.1), e)
                    })?;
                continue;
            }
            if self.stalled.contains_key(k) {
                continue; // fetched before the partition was paused
            }
            let decoded = if k.0 == self.detail_topic {
                None
            } else {
                match self
                    .registry
                    .decode_message(m.payload().unwrap_or_default())
                {
                    Err(CodecError::UnknownSchema { fingerprint }) => {
                        self.stall(k, m.offset(), &fingerprint);
                        continue;
                    }
                    other => Some(other),
                }
            };
            b.messages += 1;
            set(&mut self.gathered, k, m.offset() + 1);
            set(&mut b.next, k, m.offset() + 1);
            if k.0 == self.detail_topic {
                match self.detail(&m) {
                    Ok(d) => b.details.push(d),
                    Err(reason) => self.dead_letter(&m, &reason).await?,
                }
                continue;
            }
            match decoded.expect("decoded above") {
                Ok(Decoded::Event(e)) => {
                    set(&mut b.times, k, e.source.commit_time_micros);
                    b.events.push(e);
                }
                Ok(Decoded::Watermark(w)) => {
                    set(&mut b.times, k, w.commit_time_micros);
                    b.marks
                        .push((k.0.clone(), k.1, w.commit_time_micros, w.commit_lsn));
                }
                Err(err) => self.dead_letter(&m, &err.to_string()).await?,
            }
        }
        b.gather = t0.elapsed();
        Ok(b)
    }

    /// Stops partition `k` before `offset`, whose schema (`fingerprint`)
    /// this projector does not know.
    fn stall(&mut self, k: &Tp, offset: i64, fingerprint: &str) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&k.0, k.1);
        let _ = self.consumer.pause(&tpl);
        let why = format!(
            "{}[{}] stopped at offset {offset}: its event has schema fingerprint {fingerprint}, which this projector does not know (a newer capture?); nothing from there on is applied. Run a projector release that knows it (vitrina schemas lists the known ones); it resumes from this offset",
            k.0, k.1
        );
        tracing::error!(topic = %k.0, partition = k.1, offset, fingerprint, "partition stopped before an event of an unknown schema; upgrade the projector");
        self.stalled.insert(k.clone(), why);
        metrics::gauge!(obs::PROJECTOR_PARTITIONS_STALLED).set(self.stalled.len() as f64);
    }

    /// Why a partition is stopped (the first, when several are).
    pub(super) fn stalled(&self) -> Option<&String> {
        self.stalled.values().next()
    }

    /// A member left without partitions for several session timeouts
    /// rejoins the group. Seen with tansu: members killed in quick
    /// succession leave the survivor with an empty assignment and no
    /// rebalance once their sessions expire. With at most as many members as
    /// partitions, an empty assignment is never the steady state.
    fn watch_assignment(&mut self) -> Result<(), ProjectorError> {
        if !self.grouped {
            return Ok(());
        }
        if self.assigned.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.unassigned_since = None;
            return Ok(());
        }
        let since = *self.unassigned_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.rejoin_after {
            return Ok(());
        }
        tracing::warn!(
            waited_s = since.elapsed().as_secs(),
            "no partitions assigned; rejoining the consumer group"
        );
        self.consumer.unsubscribe();
        let refs: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&refs)
            .map_err(|e| ProjectorError::consumer("rejoining the group", e))?;
        self.unassigned_since = Some(Instant::now());
        Ok(())
    }

    /// A record of the restricted topic: detail, or a tombstone (no value)
    /// keyed `<entity>:<key>`.
    fn detail(&self, m: &rdkafka::message::BorrowedMessage<'_>) -> Result<DetailChange, String> {
        match m.payload() {
            Some(bytes) => self
                .registry
                .decode_detail(bytes)
                .map(DetailChange::Keep)
                .map_err(|e| e.to_string()),
            None => {
                let key = m
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .ok_or("a tombstone without a key")?;
                let (entity, key) = key
                    .split_once(':')
                    .ok_or("a tombstone key is not <entity>:<key>")?;
                Ok(DetailChange::Erase {
                    entity: entity.to_string(),
                    key: key.to_string(),
                })
            }
        }
    }

    async fn dead_letter(
        &self,
        m: &rdkafka::message::BorrowedMessage<'_>,
        reason: &str,
    ) -> Result<(), ProjectorError> {
        metrics::counter!(obs::PROJECTOR_DEAD_LETTERS, "topic" => m.topic().to_string())
            .increment(1);
        tracing::warn!(
            topic = m.topic(),
            partition = m.partition(),
            offset = m.offset(),
            reason,
            "event dead-lettered"
        );
        let body = serde_json::json!({
            "stage": "projector", "reason": reason, "topic": m.topic(),
            "partition": m.partition(), "offset": m.offset(),
        })
        .to_string();
        let dlt = kafka::dead_letter_topic(&self.prefix);
        self.dlq
            .send(
                FutureRecord::to(&dlt).key(m.topic()).payload(&body),
                Duration::from_secs(0),
            )
            .await
            .map_err(|(e, _)| ProjectorError::consumer("writing to the dead-letter topic", e))?;
        Ok(())
    }
}
