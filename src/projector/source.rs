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

/// Whether an apply is in flight: a revocation waits for it to commit, so
/// the member that takes the partitions over reads the offsets it commits.
#[derive(Default)]
pub(super) struct InFlight {
    busy: Mutex<bool>,
    done: std::sync::Condvar,
}

impl InFlight {
    /// Marks an apply begun; it ends when the guard drops (on any outcome).
    pub(super) fn begin(self: &Arc<Self>) -> ApplyGuard {
        *self.busy.lock().unwrap_or_else(|p| p.into_inner()) = true;
        ApplyGuard(self.clone())
    }

    /// Waits up to `limit` for the apply in flight to end; whether it did.
    fn wait(&self, limit: Duration) -> bool {
        let busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        let (busy, _) = self
            .done
            .wait_timeout_while(busy, limit, |b| *b)
            .unwrap_or_else(|p| p.into_inner());
        !*busy
    }
}

/// Ends an apply in flight when dropped.
pub(super) struct ApplyGuard(Arc<InFlight>);

impl Drop for ApplyGuard {
    fn drop(&mut self) {
        *self.0.busy.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.0.done.notify_all();
    }
}

/// How long a revocation waits for the apply in flight.
const REVOKE_WAIT: Duration = Duration::from_secs(60);

/// Group mode's rebalances: a revocation waits for the apply in flight to
/// commit; an assignment positions each partition at the offset the
/// showcase committed (read from the showcase: another member may have
/// applied it since this one last held it). Each rebalance bumps
/// `generation`: what the source gathered and has not applied is dropped.
pub(super) struct SeekToShowcase {
    pub(super) offsets: Offsets,
    pub(super) kafka: crate::connections::KafkaEndpoint,
    /// Partitions currently assigned to this member.
    pub(super) assigned: Arc<AtomicUsize>,
    pub(super) showcase: crate::connections::PgEndpoint,
    pub(super) schema: String,
    pub(super) in_flight: Arc<InFlight>,
    pub(super) generation: Arc<std::sync::atomic::AtomicU64>,
}

impl ClientContext for SeekToShowcase {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        kafka::log_line(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        kafka::client_error(&error, reason);
    }
}

impl SeekToShowcase {
    /// The showcase's committed offsets, read on a thread of its own (the
    /// callback runs inside the consumer's poll, on a runtime worker).
    fn committed(&self) -> Result<HashMap<Tp, i64>, String> {
        let (db, schema) = (self.showcase.clone(), self.schema.clone());
        let read = move || -> Result<HashMap<Tp, i64>, String> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let c = crate::pg::connect(&db.config())
                    .await
                    .map_err(|e| e.to_string())?;
                crate::showcase::stored_offsets(&c, &schema)
                    .await
                    .map_err(|e| e.to_string())
            })
        };
        std::thread::scope(|s| s.spawn(read).join())
            .map_err(|_| "the reading thread panicked".to_string())?
    }

    fn take(&self, consumer: &BaseConsumer<Self>, tpl: &TopicPartitionList) {
        let committed = match self.committed() {
            Ok(c) => c,
            Err(e) => {
                // Nothing taken: the source sees none assigned and rejoins
                // the group after its grace period.
                metrics::counter!(obs::PROJECTOR_ERRORS, "kind" => "assign").increment(1);
                tracing::error!(error = %e, "reading the showcase's offsets for the group's assignment failed; rejoining when the grace period ends");
                self.assigned.store(0, std::sync::atomic::Ordering::SeqCst);
                return;
            }
        };
        let mut known = self.offsets.lock().unwrap();
        let mut assign = TopicPartitionList::new();
        let mut taken = Ok(());
        // Partitions another member applied past where this one left them.
        let mut advanced = 0;
        for e in tpl.elements() {
            let k = (e.topic().to_string(), e.partition());
            let at = match committed.get(&k) {
                Some(o) => {
                    if known.get(&k).is_some_and(|mine| mine < o) {
                        advanced += 1;
                    }
                    known.insert(k, *o);
                    kafka::fetch_position(&self.kafka, *o)
                }
                None => Offset::Beginning,
            };
            taken = taken.and(assign.add_partition_offset(e.topic(), e.partition(), at));
        }
        drop(known);
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match taken.and_then(|()| consumer.assign(&assign)) {
            Ok(()) => {
                tracing::info!(
                    partitions = assign.count(),
                    advanced_by_others = advanced,
                    "assigned; positioned at the showcase's committed offsets"
                );
                self.assigned
                    .store(assign.count(), std::sync::atomic::Ordering::SeqCst);
            }
            Err(e) => {
                metrics::counter!(obs::PROJECTOR_ERRORS, "kind" => "assign").increment(1);
                tracing::error!(error = %e, partitions = tpl.count(), "taking the group's assignment failed; rejoining when the grace period ends");
                self.assigned.store(0, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    fn give_up(&self, consumer: &BaseConsumer<Self>) {
        // The apply in flight commits before the partitions go: the next
        // owner reads what it committed. Blocking here holds the runtime
        // worker, so the worker's other tasks move to another thread.
        let waited = || self.in_flight.wait(REVOKE_WAIT);
        let done = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(waited)
            }
            _ => waited(),
        };
        if !done {
            tracing::warn!(waited_s = REVOKE_WAIT.as_secs(), "the apply in flight did not end before the partitions were revoked; its commit may land after the next owner starts (applying is idempotent)");
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.assigned.store(0, std::sync::atomic::Ordering::SeqCst);
        if let Err(e) = consumer.unassign() {
            metrics::counter!(obs::PROJECTOR_ERRORS, "kind" => "unassign").increment(1);
            tracing::warn!(error = %e, "giving up the revoked partitions failed");
        }
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
            self.take(consumer, tpl);
        } else {
            self.give_up(consumer);
        }
    }
}

/// Where a fetched record stands against its partition's position.
#[derive(Debug, Clone, Copy)]
struct Seen {
    offset: i64,
    /// The next offset to gather (applied or in flight below it).
    expected: i64,
    /// The partition is stopped before an event of an unknown schema.
    stalled: bool,
    /// At or past the replay's end for this partition.
    capped: bool,
    /// A compacted topic, where skipped offsets are records compaction
    /// removed, not a fault.
    compacted: bool,
}

/// What [`Source::gather`] does with a fetched record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Gather it.
    Take,
    /// Below the position: applied or in flight already; skip it.
    Applied,
    /// The partition must not go on (stalled or capped): stop it and skip.
    Hold,
    /// The broker skipped offsets: read the partition again from its
    /// beginning (what is applied is skipped as [`Verdict::Applied`]).
    Rewind,
}

impl Verdict {
    /// The order matters: a stalled partition's later records are not a
    /// gap (they are past the stalled offset, which is never gathered), so
    /// the stall is checked before the gap, or a resumed stalled partition
    /// rewinds for ever.
    fn of(s: Seen) -> Verdict {
        match kafka::Order::of(s.offset, Some(s.expected), s.compacted) {
            kafka::Order::Seen => Verdict::Applied,
            _ if s.stalled || s.capped => Verdict::Hold,
            kafka::Order::Gap => Verdict::Rewind,
            kafka::Order::Next => Verdict::Take,
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
    /// Self-assigned: the partition count of each topic taken, and the
    /// counts as re-read from the cluster (partitions an operator added are
    /// taken from their beginning).
    pub(super) taken: HashMap<String, i32>,
    pub(super) counts: Option<tokio::sync::watch::Receiver<HashMap<String, i32>>>,
    /// The showcase's offsets as last committed to the consumer group.
    pub(super) group_commits: kafka::GroupCommits,
    /// Next offset to apply per partition as committed (shared with the
    /// sink and the rebalance callback).
    pub(super) offsets: Offsets,
}

/// Assigns every partition of `topics` to `consumer`, positioned at the
/// showcase's offsets (the beginning where it has none); returns the
/// partition count of each topic.
pub(super) fn assign_all(
    kafka: &crate::connections::KafkaEndpoint,
    consumer: &StreamConsumer<SeekToShowcase>,
    topics: &[String],
    stored: &HashMap<Tp, i64>,
) -> Result<HashMap<String, i32>, ProjectorError> {
    kafka::assign_at(kafka, consumer, topics, |t, p| {
        stored.get(&(t.to_string(), p)).copied()
    })
    .map_err(|e| ProjectorError::kafka("assigning the partitions", e))
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
        self.take_added()?;
        let mut b = Batch::default();
        let mut generation = self.generation();
        let mut cur: Tp = (String::new(), -1);
        let t0 = Instant::now();
        let deadline = t0 + wait;
        while b.messages < batch_size {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::select! {
                _ = cancel.cancelled() => break,
                r = tokio::time::timeout(left.max(Duration::from_millis(1)), self.consumer.recv()) => r,
            };
            if self.generation() != generation {
                // A rebalance ran inside the receive: what was gathered may
                // belong to partitions given up; positions are the
                // showcase's again.
                generation = self.generation();
                b = Batch::default();
                self.gathered = self.offsets.lock().unwrap().clone();
            }
            let m = match m {
                Err(_) => break,
                Ok(Err(e)) => return Err(ProjectorError::kafka("receiving", e)),
                Ok(Ok(m)) => m,
            };
            // Messages come in runs per partition: the key is built once
            // per run, and the maps below copy it only for a new partition.
            if cur.1 != m.partition() || cur.0 != m.topic() {
                cur = (m.topic().to_string(), m.partition());
            }
            let k = &cur;
            let expected = self.gathered.get(k).copied().unwrap_or(0);
            let capped = cap.is_some_and(|c| m.offset() >= c.get(k).copied().unwrap_or(0));
            let verdict = Verdict::of(Seen {
                offset: m.offset(),
                expected,
                stalled: self.stalled.contains_key(k),
                capped,
                compacted: k.0 == self.detail_topic,
            });
            match verdict {
                Verdict::Take => {}
                Verdict::Applied => continue,
                Verdict::Hold => {
                    // A stalled partition can be resumed by a new assignment
                    // (a rebalance): stopped again, it waits at its offset.
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition(&k.0, k.1);
                    if let Err(e) = self.consumer.pause(&tpl) {
                        return Err(ProjectorError::kafka(
                            format!("pausing {}[{}]", k.0, k.1),
                            e,
                        ));
                    }
                    continue;
                }
                Verdict::Rewind => {
                    metrics::counter!(obs::PROJECTOR_REWINDS).increment(1);
                    kafka::rewind(&self.consumer, &k.0, k.1, expected, m.offset())?;
                    continue;
                }
            }
            let decoded = if k.0 == self.detail_topic {
                None
            } else {
                match self
                    .registry
                    .decode_message(m.payload().unwrap_or_default())
                {
                    Err(CodecError::UnknownSchema { fingerprint }) => {
                        self.stall(k, m.offset(), &fingerprint)?;
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

    fn generation(&self) -> u64 {
        self.consumer
            .context()
            .generation
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops partition `k` before `offset`, whose schema (`fingerprint`)
    /// this projector does not know.
    fn stall(&mut self, k: &Tp, offset: i64, fingerprint: &str) -> Result<(), ProjectorError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&k.0, k.1);
        self.consumer
            .pause(&tpl)
            .map_err(|e| ProjectorError::kafka(format!("pausing {}[{}]", k.0, k.1), e))?;
        let why = format!(
            "{}[{}] stopped at offset {offset}: its event has schema fingerprint {fingerprint}, which this projector does not know (a newer capture?); nothing from there on is applied. Run a projector release that knows it (vitrina schemas lists the known ones); it resumes from this offset",
            k.0, k.1
        );
        tracing::error!(topic = %k.0, partition = k.1, offset, fingerprint, "partition stopped before an event of an unknown schema; upgrade the projector");
        self.stalled.insert(k.clone(), why);
        metrics::gauge!(obs::PROJECTOR_PARTITIONS_STALLED).set(self.stalled.len() as f64);
        Ok(())
    }

    /// Why a partition is stopped (the first, when several are).
    pub(super) fn stalled(&self) -> Option<&String> {
        self.stalled.values().next()
    }

    /// Commits the showcase's `offsets` to the consumer group (after the
    /// showcase's own commit; informational, for the standard lag tools).
    /// A group member commits only the partitions it holds: its map may
    /// keep older offsets of partitions another member applies now.
    pub(super) fn commit_group(&mut self, mut offsets: HashMap<Tp, i64>) {
        if self.grouped {
            let Ok(held) = self.consumer.assignment() else {
                return;
            };
            let held: std::collections::HashSet<Tp> = held
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect();
            offsets.retain(|k, _| held.contains(k));
        }
        self.group_commits
            .commit(&self.consumer, &offsets, "projector");
    }

    /// Self-assigned: takes the partitions added to the topics since the
    /// last call (a group member gets them by a rebalance).
    fn take_added(&mut self) -> Result<(), ProjectorError> {
        let Some(rx) = self.counts.as_mut() else {
            return Ok(());
        };
        if self.grouped || !rx.has_changed().unwrap_or(false) {
            return Ok(());
        }
        let counts = rx.borrow_and_update().clone();
        let added = kafka::assign_added(&self.consumer, &mut self.taken, &counts)?;
        self.assigned
            .fetch_add(added.len(), std::sync::atomic::Ordering::SeqCst);
        Ok(())
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
            .map_err(|e| ProjectorError::kafka("rejoining the group", e))?;
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
                .map(|d| DetailChange::Keep(d, m.offset()))
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
                    offset: m.offset(),
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
        let at = serde_json::json!({
            "topic": m.topic(), "partition": m.partition(), "offset": m.offset(),
        });
        kafka::dead_letter(&self.dlq, &self.prefix, "projector", reason, m.topic(), at)
            .await
            .map_err(|e| ProjectorError::kafka("writing to the dead-letter topic", e))
    }
}

#[cfg(test)]
mod tests {
    use super::{Seen, Verdict};

    fn seen(offset: i64, expected: i64) -> Seen {
        Seen {
            offset,
            expected,
            stalled: false,
            capped: false,
            compacted: false,
        }
    }

    #[test]
    fn records_below_the_position_are_applied_and_a_gap_rewinds() {
        assert_eq!(Verdict::of(seen(4, 5)), Verdict::Applied);
        assert_eq!(Verdict::of(seen(5, 5)), Verdict::Take);
        assert_eq!(Verdict::of(seen(7, 5)), Verdict::Rewind);
        let compacted = Seen {
            compacted: true,
            ..seen(7, 5)
        };
        assert_eq!(Verdict::of(compacted), Verdict::Take);
    }

    /// A partition stalled at offset 5 and resumed (a new assignment):
    /// the broker sends 5, 6, 7 again. None is a gap; each stops it again.
    /// Before the fix, 6 was taken for a gap and the partition rewound to
    /// its beginning, met 6 again, and rewound for ever.
    #[test]
    fn a_resumed_stalled_partition_waits_instead_of_rewinding() {
        for offset in [5, 6, 7] {
            let s = Seen {
                stalled: true,
                ..seen(offset, 5)
            };
            assert_eq!(Verdict::of(s), Verdict::Hold, "offset {offset}");
        }
        assert_eq!(
            Verdict::of(Seen {
                stalled: true,
                ..seen(3, 5)
            }),
            Verdict::Applied
        );
    }

    #[test]
    fn a_replay_stops_each_partition_at_its_end() {
        let s = Seen {
            capped: true,
            ..seen(9, 5)
        };
        assert_eq!(Verdict::of(s), Verdict::Hold);
    }
}
