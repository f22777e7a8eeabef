//! The publisher and the acker: events go to Kafka in the order they are
//! produced, and the acker confirms a transaction's end LSN to the slot only
//! after every record produced before its commit is acknowledged.
//!
//! ```text
//!   stream loop ──produce(record n)──▶ rdkafka (idempotent, acks=all) ──report n──▶ Tracker
//!        │ enqueue, in order: Commit(end_lsn, upto = next n)                  │ low
//!        ▼                                                                     ▼
//!   acker: wait until low ≥ upto ──▶ confirm end_lsn to the slot, publish progress
//! ```
//!
//! Invariants:
//! - An LSN is confirmed only after Kafka acknowledged every event, dead
//!   letter and watermark produced before its commit marker (records are
//!   numbered as produced; see [`super::acks`]).
//! - At most `capture.max_in_flight` records wait for acknowledgement;
//!   producing waits for room when Kafka is behind (backpressure).
//! - A dead letter carries names of columns and positions, never values.
//! - While the gate has consent changes waiting for their flip
//!   ([`Publisher::hold`]), commit markers wait here, in order, and reach the
//!   acker only after the flip's records ([`Publisher::release`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pg_walstream::SharedLsnFeedback;
use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::producer::BaseRecord;
use tokio::sync::{broadcast, mpsc};

use super::acks::{self, SeqProducer, Tag, Tracker};
use super::CaptureError;
use crate::events::codec::Registry;
use crate::events::{Detail, Event, Watermark};
use crate::kafka;
use crate::lsn;
use crate::observability as obs;

/// Something the acker must see, in production order: it waits until every
/// record numbered below `upto` is acknowledged.
pub(super) enum Ack {
    Commit {
        end_lsn: u64,
        commit_time_micros: i64,
        upto: u64,
    },
    /// Fires when everything produced before it is acknowledged.
    Mark(tokio::sync::oneshot::Sender<()>, u64),
}

/// A change that could not become an event, as written to the dead-letter
/// topic. Carries names of columns and positions, never values.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetter {
    pub reason: String,
    pub kind: &'static str,
    pub table: String,
    pub entity: Option<&'static str>,
    pub op: &'static str,
    pub lsn: String,
    pub commit_lsn: String,
    pub txid: i64,
    pub commit_time_micros: i64,
    pub capture: String,
    /// The entity key and the encoded size, for an event too large to send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<usize>,
}

/// Owns the producer and the order of everything sent.
pub struct Publisher {
    pub(super) producer: SeqProducer,
    /// Acknowledgements by record number (the producer's context holds it).
    pub(super) tracker: Arc<Tracker>,
    /// `capture.max_in_flight`.
    pub(super) max_in_flight: u64,
    pub(super) registry: Registry,
    pub(super) acks: mpsc::Sender<Ack>,
    pub(super) prefix: String,
    pub(super) slot: String,
    /// Topic of each entity, named once rather than per event.
    pub(super) topics: HashMap<&'static str, String>,
    /// Partitions of each topic: where keys go and what TRUNCATEs and
    /// watermarks are broadcast to (one map for both, see
    /// [`kafka::partition`](crate::kafka::Partitioner)).
    pub(super) partitions: HashMap<String, i32>,
    /// The counts as re-read from the cluster.
    pub(super) counts: tokio::sync::watch::Receiver<HashMap<String, i32>>,
    pub(super) partitioner: kafka::Partitioner,
    /// The restricted topic (medical detail under consent).
    pub(super) detail_topic: String,
    /// End LSN of the last commit handed to the acker.
    pub(super) last_commit: u64,
    /// `capture.max_message_bytes`.
    pub(super) max_message_bytes: usize,
    /// Commit markers held back while a consent flip is pending.
    pub(super) held: Option<Vec<(u64, i64)>>,
    /// Restricted-topic records sent, detail and tombstones (handles
    /// looked up once: these go out by the hundred thousand in a flush).
    pub(super) sent: DetailCounters,
    /// The encoded event, one buffer reused (librdkafka copies it).
    pub(super) buf: Vec<u8>,
}

pub(super) struct DetailCounters {
    detail: metrics::Counter,
    tombstone: metrics::Counter,
}

impl Default for DetailCounters {
    fn default() -> Self {
        DetailCounters {
            detail: metrics::counter!(obs::CAPTURE_DETAILS, "kind" => "detail"),
            tombstone: metrics::counter!(obs::CAPTURE_DETAILS, "kind" => "tombstone"),
        }
    }
}

impl Publisher {
    /// Produces one record, numbered for the acker; waits for room when
    /// `capture.max_in_flight` records are unacknowledged.
    async fn produce(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
        partition: Option<i32>,
        tag: Tag,
    ) -> Result<(), CaptureError> {
        self.tracker.check()?;
        let seq = self.tracker.produced();
        if self.tracker.in_flight() >= self.max_in_flight {
            self.tracker.room(seq + 1 - self.max_in_flight).await?;
        }
        // No payload: a tombstone (compaction erases the key).
        // Every record names its partition: a keyed one by the
        // partitioner over the counts broadcasts use.
        let partition = partition.unwrap_or_else(|| {
            let n = self.partitions.get(topic).copied().unwrap_or(1);
            self.partitioner.partition(key.as_bytes(), n)
        });
        let mut record: BaseRecord<'_, str, [u8], usize> =
            BaseRecord::with_opaque_to(topic, acks::opaque(seq, tag))
                .key(key)
                .partition(partition);
        if let Some(p) = payload {
            record = record.payload(p);
        }
        if let Some(after) = crate::failpoint!("capture-producer-fatal") {
            inject_fatal(&self.producer, after.parse().unwrap_or(1));
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.tracker.sent(seq);
                    return Ok(());
                }
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => return Err(CaptureError::delivery(&e)),
            }
        }
    }

    /// Partitions of the restricted topic.
    pub(super) fn restricted_partitions(&self) -> i32 {
        self.partitions
            .get(&self.detail_topic)
            .copied()
            .unwrap_or(1)
    }

    /// Takes up partitions an operator added since the last call: keys
    /// spread over them from the next record on, and broadcasts reach them.
    /// The restricted topic may not grow: a key's detail and its tombstone
    /// must share a partition for compaction to erase the detail.
    pub(super) fn refresh_partitions(&mut self) -> Result<(), CaptureError> {
        if !self.counts.has_changed().unwrap_or(false) {
            return Ok(());
        }
        let counts = self.counts.borrow_and_update().clone();
        for (topic, now) in counts {
            let Some(was) = self.partitions.get(&topic).copied() else {
                continue;
            };
            if now <= was {
                continue;
            }
            if topic == self.detail_topic {
                return Err(CaptureError::RestrictedPartitions { topic, was, now });
            }
            tracing::warn!(
                topic = %topic,
                was,
                now,
                "the topic has more partitions: keys spread over them from here on (a key's later events may be on another partition than its earlier ones; vitrina's stages order by journal position)"
            );
            metrics::counter!(obs::CAPTURE_PARTITIONS_ADDED).increment((now - was) as u64);
            self.partitions.insert(topic, now);
        }
        Ok(())
    }

    /// Whether every commit handed to the acker is confirmed: nothing of
    /// what the stream delivered waits for Kafka.
    pub fn drained(&self, progress: &Progress) -> bool {
        progress.confirmed.load(Ordering::SeqCst) >= self.last_commit
    }

    /// The capture's name (its slot), as dead letters carry it.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    fn topic(&self, entity: &str) -> &str {
        self.topics
            .get(entity)
            .map(String::as_str)
            .unwrap_or_default()
    }

    async fn enqueue(&self, a: Ack) -> Result<(), CaptureError> {
        self.acks
            .send(a)
            .await
            .map_err(|_| CaptureError::Task("the acker stopped".into()))
    }

    /// The dead letter of an event that cannot be sent.
    fn dead(&self, e: &Event, reason: String, kind: &'static str) -> DeadLetter {
        DeadLetter {
            reason,
            kind,
            table: e.source.table.clone(),
            entity: Some(e.entity.name),
            op: e.op.symbol(),
            lsn: lsn::format(e.source.lsn),
            commit_lsn: lsn::format(e.source.commit_lsn),
            txid: e.source.txid,
            commit_time_micros: e.source.commit_time_micros,
            capture: self.slot.clone(),
            key: None,
            size_bytes: None,
        }
    }

    pub async fn send_event(&mut self, e: &Event, partition_key: &str) -> Result<(), CaptureError> {
        self.refresh_partitions()?;
        let mut buf = std::mem::take(&mut self.buf);
        let sent = match self.registry.encode_into(e, &mut buf) {
            Ok(()) if buf.len() + partition_key.len() > self.max_message_bytes => {
                let size = buf.len() + partition_key.len();
                let mut dl = self.dead(
                    e,
                    format!(
                        "the event is {size} bytes, over capture.max_message_bytes = {}; raise it (and the topic's max.message.bytes) to send such rows",
                        self.max_message_bytes
                    ),
                    "oversize",
                );
                dl.key = Some(e.key.clone());
                dl.size_bytes = Some(size);
                self.dead_letter(dl).await
            }
            Ok(()) => {
                let topic = self.topic(e.entity.name);
                let tag = acks::event_tag(e.entity, e.op);
                let sent = self
                    .produce(topic, partition_key, Some(&buf), None, tag)
                    .await;
                for q in e.quality.iter().filter(|_| sent.is_ok()) {
                    metrics::counter!(obs::CAPTURE_QUALITY_FLAGS, "entity" => e.entity.name, "flag" => q.clone()).increment(1);
                }
                sent
            }
            Err(err) => {
                let dl = self.dead(e, err.to_string(), "encode");
                self.dead_letter(dl).await
            }
        };
        // A huge row's buffer is not kept.
        if buf.capacity() <= 64 * 1024 {
            self.buf = buf;
        }
        sent
    }

    /// TRUNCATE events go to every partition, so each key's stream sees
    /// the truncate in order with its own events. One that does not encode
    /// is dead-lettered, as any other event.
    pub async fn send_to_all_partitions(&mut self, e: &Event) -> Result<(), CaptureError> {
        self.refresh_partitions()?;
        let bytes = match self.registry.encode(e) {
            Ok(bytes) => bytes,
            Err(err) => {
                let dl = self.dead(e, err.to_string(), "encode");
                return self.dead_letter(dl).await;
            }
        };
        let topic = self.topic(e.entity.name);
        let n = self.partitions.get(topic).copied().unwrap_or(1);
        let tag = acks::event_tag(e.entity, e.op);
        for p in 0..n {
            self.produce(topic, &e.key, Some(&bytes), Some(p), tag)
                .await?;
        }
        Ok(())
    }

    /// A row's medical detail to the restricted topic (only under consent:
    /// the caller, [`super::gate`], decides).
    pub async fn send_detail(&mut self, d: &Detail) -> Result<(), CaptureError> {
        self.refresh_partitions()?;
        let bytes = self.registry.encode_detail(d);
        let key = Detail::kafka_key(d.entity.name, &d.key);
        self.produce(&self.detail_topic, &key, Some(&bytes), None, acks::OTHER)
            .await?;
        self.sent.detail.increment(1);
        Ok(())
    }

    /// A tombstone (no value) for a row's detail on the restricted topic:
    /// compaction then drops every earlier record of the key.
    pub async fn send_tombstone(&mut self, entity: &str, key: &str) -> Result<(), CaptureError> {
        self.refresh_partitions()?;
        let k = Detail::kafka_key(entity, key);
        self.produce(&self.detail_topic, &k, None, None, acks::OTHER)
            .await?;
        self.sent.tombstone.increment(1);
        Ok(())
    }

    pub async fn dead_letter(&mut self, dl: DeadLetter) -> Result<(), CaptureError> {
        tracing::warn!(table = %dl.table, kind = dl.kind, reason = %dl.reason, lsn = %dl.lsn, size_bytes = dl.size_bytes, "change dead-lettered");
        metrics::counter!(obs::CAPTURE_DEAD_LETTERS, "table" => dl.table.clone(), "kind" => dl.kind).increment(1);
        let payload = serde_json::to_vec(&dl).expect("dead letter serializes");
        let topic = kafka::dead_letter_topic(&self.prefix);
        self.produce(&topic, &dl.table, Some(&payload), None, acks::OTHER)
            .await
    }

    pub async fn watermarks(
        &mut self,
        commit_lsn: u64,
        commit_time_micros: i64,
    ) -> Result<(), CaptureError> {
        self.refresh_partitions()?;
        let now = chrono::Utc::now().timestamp_micros();
        let topics: Vec<(String, i32)> = self
            .partitions
            .iter()
            .filter(|(t, _)| {
                **t != kafka::dead_letter_topic(&self.prefix) && **t != self.detail_topic
            })
            .map(|(t, n)| (t.clone(), *n))
            .collect();
        for (topic, n) in topics {
            for p in 0..n {
                let bytes = self.registry.encode_watermark(&Watermark {
                    capture: self.slot.clone(),
                    commit_lsn,
                    commit_time_micros,
                    emitted_at_micros: now,
                    partition: p,
                });
                self.produce(&topic, "", Some(&bytes), Some(p), acks::OTHER)
                    .await?;
                metrics::counter!(obs::CAPTURE_WATERMARKS).increment(1);
            }
        }
        Ok(())
    }

    /// A receiver that fires once everything sent so far is acknowledged.
    pub async fn mark(&self) -> Result<tokio::sync::oneshot::Receiver<()>, CaptureError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.enqueue(Ack::Mark(tx, self.tracker.produced())).await?;
        Ok(rx)
    }

    /// Waits until everything sent so far is acknowledged.
    pub async fn flush_and_wait(&self) -> Result<(), CaptureError> {
        self.mark()
            .await?
            .await
            .map_err(|_| CaptureError::Task("the acker stopped before acknowledging".into()))
    }

    pub async fn commit(
        &mut self,
        end_lsn: u64,
        commit_time_micros: i64,
    ) -> Result<(), CaptureError> {
        self.last_commit = self.last_commit.max(end_lsn);
        if let Some(held) = &mut self.held {
            held.push((end_lsn, commit_time_micros));
            return Ok(());
        }
        self.enqueue(Ack::Commit {
            end_lsn,
            commit_time_micros,
            upto: self.tracker.produced(),
        })
        .await
    }

    /// From now on commit markers wait until [`Publisher::release`]: what
    /// is sent before the release confirms with them.
    pub fn hold(&mut self) {
        self.held.get_or_insert_with(Vec::new);
    }

    /// Commit markers held now.
    pub fn held_len(&self) -> usize {
        self.held.as_ref().map_or(0, Vec::len)
    }

    /// Hands the first `n` held commit markers to the acker, in order; the
    /// rest stay held.
    pub async fn release_first(&mut self, n: usize) -> Result<(), CaptureError> {
        let Some(held) = &mut self.held else {
            return Ok(());
        };
        let first: Vec<(u64, i64)> = held.drain(..n.min(held.len())).collect();
        for (end_lsn, commit_time_micros) in first {
            self.enqueue(Ack::Commit {
                end_lsn,
                commit_time_micros,
                upto: self.tracker.produced(),
            })
            .await?;
        }
        Ok(())
    }

    /// Hands the held commit markers to the acker, in order.
    pub async fn release(&mut self) -> Result<(), CaptureError> {
        for (end_lsn, commit_time_micros) in self.held.take().unwrap_or_default() {
            self.enqueue(Ack::Commit {
                end_lsn,
                commit_time_micros,
                upto: self.tracker.produced(),
            })
            .await?;
        }
        Ok(())
    }
}

/// What a running capture has achieved, for its owner (the demo, the
/// benches, `/readyz`): the confirmed position, acknowledged events, and a
/// feed of confirmed transactions for those who subscribe.
pub struct Progress {
    /// Highest end LSN confirmed to the slot.
    pub confirmed: AtomicU64,
    /// Events acknowledged by Kafka.
    pub events: AtomicU64,
    /// Records of every kind acknowledged by Kafka (events, restricted-topic
    /// detail and tombstones, dead letters, watermarks), as of the last
    /// confirmed commit.
    pub records: AtomicU64,
    /// Rows of the initial load, set once every one is acknowledged.
    pub loaded_rows: AtomicU64,
    /// When streaming began (µs since the epoch; 0: not yet).
    pub streaming_since_micros: AtomicI64,
    /// Where streaming time goes, summed since the start.
    pub spent: Spent,
    commits: broadcast::Sender<Confirmed>,
}

/// Microseconds the stream loop spent per activity, and the position of
/// the last message it handled: `vitrina bench capture` prints them as a
/// breakdown of its runs.
#[derive(Default)]
pub struct Spent {
    /// Waiting for the next message of the replication stream (the server
    /// sending, pg_walstream decoding it).
    pub reading_micros: AtomicU64,
    /// Handling messages: mapping, the gate, encoding, producing, and
    /// waiting for Kafka when `capture.max_in_flight` is reached.
    pub handling_micros: AtomicU64,
    /// Of handling: consent flushes landing (their records sent); and the
    /// time their journal queries took, on a task beside the stream.
    pub flush_micros: AtomicU64,
    pub flush_query_micros: AtomicU64,
    pub flushes: AtomicU64,
    /// Records the flushes sent (detail and tombstones).
    pub flush_records: AtomicU64,
    /// WAL position of the last message handled.
    pub handled_lsn: AtomicU64,
}

impl Spent {
    pub(crate) fn add(counter: &AtomicU64, since: std::time::Instant) {
        counter.fetch_add(since.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

/// One transaction confirmed to the slot.
#[derive(Debug, Clone, Copy)]
pub struct Confirmed {
    pub end_lsn: u64,
    pub commit_time_micros: i64,
    /// When the acker confirmed it (µs since the epoch).
    pub confirmed_at_micros: i64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            confirmed: AtomicU64::new(0),
            events: AtomicU64::new(0),
            records: AtomicU64::new(0),
            loaded_rows: AtomicU64::new(0),
            streaming_since_micros: AtomicI64::new(0),
            spent: Spent::default(),
            commits: broadcast::channel(1 << 16).0,
        }
    }
}

impl Progress {
    /// Confirmed transactions from now on (a slow receiver misses some:
    /// `RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Confirmed> {
        self.commits.subscribe()
    }
}

/// Confirms commits in order, each once every record produced before it
/// is acknowledged.
pub(super) async fn acker(
    mut rx: mpsc::Receiver<Ack>,
    tracker: Arc<Tracker>,
    feedback: Arc<SharedLsnFeedback>,
    last_commit_time: Arc<AtomicI64>,
    progress: Arc<Progress>,
) -> Result<(), CaptureError> {
    let ack_latency = metrics::histogram!(obs::CAPTURE_ACK_LATENCY);
    let transactions = metrics::counter!(obs::CAPTURE_TRANSACTIONS);
    let confirmed_lsn = metrics::gauge!(obs::CAPTURE_CONFIRMED_LSN);
    let in_flight_now = metrics::gauge!(obs::CAPTURE_IN_FLIGHT);
    while let Some(a) = rx.recv().await {
        match a {
            Ack::Mark(tx, upto) => {
                tracker.acknowledged(upto).await?;
                let _ = tx.send(());
            }
            Ack::Commit {
                end_lsn,
                commit_time_micros,
                upto,
            } => {
                tracker.acknowledged(upto).await?;
                progress.records.store(tracker.low(), Ordering::Relaxed);
                feedback.update_flushed_lsn(end_lsn);
                feedback.update_applied_lsn(end_lsn);
                progress.confirmed.fetch_max(end_lsn, Ordering::SeqCst);
                last_commit_time.fetch_max(commit_time_micros, Ordering::SeqCst);
                let now = chrono::Utc::now().timestamp_micros();
                let latency = ((now - commit_time_micros) as f64 / 1e6).max(0.0);
                ack_latency.record(latency);
                if progress.commits.receiver_count() > 0 {
                    let _ = progress.commits.send(Confirmed {
                        end_lsn,
                        commit_time_micros,
                        confirmed_at_micros: now,
                    });
                }
                transactions.increment(1);
                confirmed_lsn.set(end_lsn as f64);
            }
        }
        in_flight_now.set(tracker.in_flight() as f64);
    }
    Ok(())
}

/// A fatal error of the idempotent producer, raised through librdkafka's
/// own test hook once per process, at the `after`-th message (the
/// `capture-producer-fatal` failpoint).
fn inject_fatal(producer: &SeqProducer, after: u64) {
    use rdkafka::producer::Producer as _;
    use std::sync::atomic::AtomicBool;
    static SEEN: AtomicI64 = AtomicI64::new(0);
    static FIRED: AtomicBool = AtomicBool::new(false);
    if ((SEEN.fetch_add(1, Ordering::SeqCst) + 1) as u64) < after
        || FIRED.swap(true, Ordering::SeqCst)
    {
        return;
    }
    tracing::warn!("failpoint: raising a fatal producer error");
    let reason = std::ffi::CString::new("raised by a failpoint").expect("no NUL");
    // SAFETY: the client pointer lives as long as `producer`; librdkafka
    // copies the reason.
    unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            producer.client().native_ptr(),
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            reason.as_ptr(),
        );
    }
}
